"""docker/: compose files valid against the Compose specification, and what the schema cannot see.

The schema is the official compose-spec JSON schema as vendored in the ``check-jsonschema``
package (``dev`` extra; ``make setup`` installs it): nothing is fetched at test time. Beyond
the schema: every secret, volume and bind mount the services use is declared and exists in the
repository or is documented in docker/README.md as made by a setup step, the SuperNodes reach
the SuperLink on the port it listens on, each site has its own data, ledger, key and name, the
node config holds only keys the ClientApp knows, and the Dockerfiles copy files that exist.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from importlib import resources
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILES = ("compose.yaml", "compose.cuda.yaml")
SITES = ("site-a", "site-b", "site-c")
README = (DOCKER / "README.md").read_text()
_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\})")


def compose_schema() -> dict:
    """The compose-spec JSON schema shipped in the check-jsonschema package."""
    try:
        vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        pytest.fail("check-jsonschema is not installed: run `make setup` (it is in the dev extra)")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


def interpolate(node, env: dict[str, str]):
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` and ``$$`` on every string."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, str):
        return _VAR.sub(lambda m: "$" if m.group(0) == "$$"
                        else env.get(m["name"]) or (m["default"] or ""), node)
    return node


def load(name: str, env: dict[str, str] | None = None) -> dict:
    """A compose file as docker compose sees it: YAML (anchors, merge keys), then interpolated."""
    return interpolate(yaml.safe_load((DOCKER / name).read_text()), env or {})


@pytest.fixture(scope="module")
def validator():
    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load("compose.yaml")


def _flags(command: list[str]) -> dict[str, str]:
    """``--name=value`` and ``--name value`` arguments of a service command."""
    out, i = {}, 0
    while i < len(command):
        arg = str(command[i])
        if arg.startswith("--") and "=" in arg:
            k, v = arg[2:].split("=", 1)
            out[k] = v
        elif arg.startswith("--"):
            nxt = command[i + 1] if i + 1 < len(command) else None
            if nxt is not None and not str(nxt).startswith("--"):
                out[arg[2:]] = str(nxt)
                i += 1
            else:
                out[arg[2:]] = ""
        i += 1
    return out


def _mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """Container path -> (source, read_only) of a service's short-syntax volumes."""
    out = {}
    for v in service.get("volumes", []):
        parts = v.split(":")
        out[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
    return out


def _secret_targets(service: dict) -> dict[str, str]:
    """Container path -> secret name, for a service's secrets."""
    out = {}
    for s in service.get("secrets", []):
        name = s if isinstance(s, str) else s["source"]
        target = f"/run/secrets/{name}" if isinstance(s, str) else s.get("target", name)
        out[target if target.startswith("/") else f"/run/secrets/{target}"] = name
    return out


def _inside(path: str, root: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(root))


def _node_config(service: dict) -> dict:
    from flwr.common.config import parse_config_args

    return parse_config_args([_flags(service["command"])["node-config"]])


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_follow_the_compose_specification(validator, name):
    errors = sorted(validator.iter_errors(load(name)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{name}: {list(e.path)}: {e.message}" for e in errors)


def test_the_schema_rejects_a_broken_compose_file(validator, compose):
    """The validation is not vacuous: a misspelt key and a wrong type are errors."""
    broken = copy.deepcopy(compose)
    broken["services"]["superlink"]["comand"] = broken["services"]["superlink"].pop("command")
    broken["services"]["site-a"]["ports"] = {"8000": 8000}
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("comand" in m for m in messages)
    assert any("is not of type 'array'" in m for m in messages)


def test_interpolation_follows_compose_rules():
    env = {"SET": "x"}
    assert interpolate("${SET:-d} ${UNSET:-d} ${UNSET-e} ${UNSET} $$HOME", env) == "x d e  $HOME"


# --------------------------------------------------------------------------- cross references


def test_every_secret_and_volume_is_declared_and_every_file_exists_or_is_documented(compose):
    declared_secrets, declared_volumes = set(compose["secrets"]), set(compose["volumes"])
    used_secrets, used_volumes = set(), set()
    for name, svc in compose["services"].items():
        used_secrets |= set(_secret_targets(svc).values())
        for source, _ in _mounts(svc).values():
            if source.startswith((".", "/", "~")):
                path = (DOCKER / source).resolve()
                rel = path.relative_to(ROOT).as_posix()
                assert path.exists() or rel in README, \
                    f"{name}: bind mount {source} neither exists nor is documented ({rel})"
            else:
                used_volumes.add(source)
    assert used_secrets == declared_secrets, "declared secrets and used secrets differ"
    assert used_volumes == declared_volumes, "declared volumes and used volumes differ"
    for secret, spec in compose["secrets"].items():
        path = (DOCKER / spec["file"]).resolve()
        rel = path.relative_to(ROOT).as_posix()
        assert path.exists() or (rel in README and _made_by_credentials(rel)), \
            f"secret {secret}: {rel} neither exists nor is documented as made by the credentials step"


def _made_by_credentials(rel: str) -> bool:
    """docker/README.md names the file in its credentials section (which runs the command)."""
    section = README.split("## 1. Credentials", 1)[-1].split("\n## ", 1)[0]
    return "seqanom credentials" in section and rel in section


def test_superlink_serves_tls_with_supernode_auth_on_its_published_port(compose):
    svc = compose["services"]["superlink"]
    flags = _flags(svc["command"])
    port = flags.get("port", "8000")
    assert flags.get("host") == "0.0.0.0"
    assert "insecure" not in flags and "enable-supernode-auth" in flags
    assert "disable-runtime-dependency-installation" in flags
    published = {p.rsplit(":", 2)[-1] for p in svc["ports"]}
    assert published == {port}, f"published container ports {published}, SuperLink listens on {port}"
    secrets = _secret_targets(svc)
    for key in ("ssl-ca-certfile", "ssl-certfile", "ssl-keyfile"):
        assert flags[key] in secrets, f"--{key}={flags[key]} is not a mounted secret"
    assert _inside(flags["database"], "/app/state") and "/app/state" in _mounts(svc)
    # the ServerApp runs in /app (the image's WORKDIR): the default checkpoint-dir lands in the
    # checkpoints volume
    ckpt = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"][
        "checkpoint-dir"]
    assert _inside("/app/" + ckpt, "/app/runs") and _mounts(svc)["/app/runs"][0] == "checkpoints"


def test_each_site_reaches_the_superlink_with_its_own_key_data_ledger_and_name(compose):
    from client.site_resources import NODE_KEYS

    link_port = _flags(compose["services"]["superlink"]["command"]).get("port", "8000")
    seen: dict[str, set] = {"data": set(), "ledger": set(), "key": set(), "name": set()}
    assert set(SITES) <= set(compose["services"])
    for site in SITES:
        svc = compose["services"][site]
        flags = _flags(svc["command"])
        assert flags["superlink"] == f"superlink:{link_port}"
        assert "insecure" not in flags
        secrets, mounts = _secret_targets(svc), _mounts(svc)
        assert secrets.get(flags["root-certificates"]) == "ca-cert"
        key = secrets.get(flags["auth-supernode-private-key"])
        assert key is not None and key != "ca-cert", f"{site}: private key is not a mounted secret"
        cfg = _node_config(svc)
        assert set(cfg) <= NODE_KEYS, f"{site}: node config keys {set(cfg) - NODE_KEYS} unknown"
        assert cfg["site-name"] == site
        data_src, data_ro = mounts["/app/data"]
        assert _inside(cfg["data-path"], "/app/data") and data_ro, f"{site}: data not read-only"
        ledger_src, _ = mounts["/app/ledger"]
        assert _inside(cfg["ledger-path"], "/app/ledger") and not ledger_src.startswith(".")
        for kind, value in (("data", data_src), ("ledger", ledger_src), ("key", key),
                            ("name", cfg["site-name"])):
            assert value not in seen[kind], f"{site} shares its {kind} ({value}) with another site"
            seen[kind].add(value)
        assert site in compose["secrets"][key]["file"]
        assert "superlink" in svc["depends_on"]
        assert svc["environment"]["OMP_NUM_THREADS"]


def test_cuda_variant_overrides_only_the_sites_with_a_cuda_torch_and_gpus():
    cuda = load("compose.cuda.yaml")
    assert set(cuda["services"]) == set(SITES)
    for svc in cuda["services"].values():
        assert "/whl/cu" in svc["build"]["args"]["TORCH_INDEX_URL"]
        assert svc["image"] != load("compose.yaml")["services"]["site-a"]["image"]
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]


# --------------------------------------------------------------------------- Dockerfiles


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        buf += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            instr, _, rest = buf.partition(" ")
            lines.append((instr.upper(), rest.strip()))
            buf = ""
    return lines


def _dockerignored(rel: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return any(PurePosixPath(rel).is_relative_to(p) or PurePosixPath(rel).match(p)
               for p in patterns)


@pytest.mark.parametrize("service", ["superlink", "site-a"])
def test_dockerfiles_copy_existing_files_on_flower_images(compose, service):
    build = compose["services"][service]["build"]
    context = (DOCKER / build["context"]).resolve()
    dockerfile = context / build["dockerfile"]
    assert context == ROOT and dockerfile.is_file()
    instructions = _dockerfile(dockerfile)
    args = {}
    for instr, rest in instructions:
        if instr == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args.setdefault(k, v)
    # defaults agree with the compose build args, pyproject's flwr pin and the Makefile's torch
    for k, v in build["args"].items():
        assert args.get(k) == v, f"{dockerfile.name}: ARG {k} default {args.get(k)} != compose {v}"
    federation = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["federation"]
    pins = [d.split("==")[1] for d in federation if d.startswith("flwr[") and "==" in d]
    assert pins == [args["FLWR_VERSION"]], federation
    assert f"torch=={args['TORCH_VERSION']}" in (ROOT / "Makefile").read_text()
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    image = "superlink" if service == "superlink" else "supernode"
    froms = [rest for instr, rest in instructions if instr == "FROM"]
    assert froms == [f"flwr/{image}:${{FLWR_VERSION}}-${{FLWR_BASE}}"]
    assert "alpine" not in args["FLWR_BASE"], "torch has no wheels for Alpine (musl)"
    assert ("WORKDIR", "/app") in instructions
    assert not any(instr in ("ENTRYPOINT", "USER") for instr, _ in instructions), \
        "keep Flower's entrypoint and its non-root user"
    copies = [shlex.split(rest) for instr, rest in instructions if instr in ("COPY", "ADD")]
    assert copies
    for words in copies:
        sources = [w for w in words if not w.startswith("--")][:-1]
        for src in sources:
            assert (context / src).exists(), f"{dockerfile.name}: COPY source {src} does not exist"
            assert not _dockerignored(src), f"{dockerfile.name}: COPY source {src} is .dockerignored"
    # every package the project installs is copied (pyproject's packages.find, minus simulation)
    copied = {s for words in copies for s in words if not s.startswith("--")}
    for pkg in ("seqanom_core", "client", "server", "pyproject.toml", "README.md"):
        assert pkg in copied


def test_credentials_and_site_data_are_never_committed():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "docker/certs/" in ignored and "docker/sites/" in ignored
    assert _dockerignored("docker/certs") and _dockerignored("docker/sites")


def test_readme_gives_every_step():
    for step in ("seqanom credentials", "flwr supernode register", "docker compose up",
                 "flwr run . seqanom-docker", "root-certificates", "docker compose down",
                 "compose.cuda.yaml", "runs/flwr/checkpoints", "chown"):
        assert step in README, f"docker/README.md does not mention {step!r}"
    for site in SITES:
        assert f"docker/sites/{site}" in README
        assert f"docker/certs/sites/{site}/{site}.pub" in README

