# SuperLink + ServerApp: Flower's SuperLink image with seqanom's dependencies installed, so the
# ServerApp that `flwr run` ships (a FAB holding the project's code) runs inside this container
# (isolation "subprocess", Flower's default). Build from the repository root:
#   docker build -f docker/superlink.Dockerfile -t seqanom/superlink .
# CUDA variant (not needed here: the server only aggregates) works as for supernode.Dockerfile.
ARG FLWR_VERSION=1.42.0
# Flower's plain version tag is Alpine (musl libc), for which torch has no wheels: use Ubuntu.
ARG FLWR_BASE=py3.13-ubuntu24.04
FROM flwr/superlink:${FLWR_VERSION}-${FLWR_BASE}

ARG FLWR_VERSION
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# Flower's images run as the non-root user `app` (uid 49999) in /app, with a virtualenv on PATH.
WORKDIR /app
COPY --chown=app:app pyproject.toml README.md /app/src/
COPY --chown=app:app seqanom_core /app/src/seqanom_core
COPY --chown=app:app client /app/src/client
COPY --chown=app:app server /app/src/server

# torch first, from the chosen index, so that pip never resolves it on its own (which would pull
# CUDA wheels); then seqanom's own dependencies, keeping the image's flwr and that torch.
RUN python -m pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && python -m pip install --no-cache-dir /app/src "torch==${TORCH_VERSION}" "flwr==${FLWR_VERSION}" \
    && rm -rf /app/src \
    && mkdir -p /app/state /app/runs /app/certificates

# The image already holds every dependency: Flower must not `uv sync` the app at run time.
ENV FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
EXPOSE 8000
# ENTRYPOINT stays Flower's `flower-superlink`; docker/compose.yaml passes its arguments.
