# Merchant SuperNode + ClientApp: Flower's SuperNode image with seqanom's dependencies installed,
# so the ClientApp of each run executes inside this container (isolation "subprocess", Flower's
# default) next to the site's data and privacy ledger. Build from the repository root:
#   docker build -f docker/supernode.Dockerfile -t seqanom/supernode .
# CUDA variant: a CUDA build of torch (its wheels bundle the CUDA runtime; the host needs the
# NVIDIA driver and the NVIDIA Container Toolkit), e.g.
#   docker build -f docker/supernode.Dockerfile \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t seqanom/supernode:cuda .
ARG FLWR_VERSION=1.42.0
# Flower's plain version tag is Alpine (musl libc), for which torch has no wheels: use Ubuntu.
ARG FLWR_BASE=py3.13-ubuntu24.04
FROM flwr/supernode:${FLWR_VERSION}-${FLWR_BASE}

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
# /app/data (the site's events, mounted read-only) and /app/ledger (its privacy ledger, a
# volume) are created here so that new volumes belong to `app`.
RUN python -m pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && python -m pip install --no-cache-dir /app/src "torch==${TORCH_VERSION}" "flwr==${FLWR_VERSION}" \
    && rm -rf /app/src \
    && mkdir -p /app/data /app/ledger /app/certificates

# Threads per ClientApp process (several sites may share one host); compose sets it per site.
ENV OMP_NUM_THREADS=2
# ENTRYPOINT stays Flower's `flower-supernode`; docker/compose.yaml passes its arguments.
