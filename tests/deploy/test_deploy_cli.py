"""The deployment commands without starting Flower: credentials, refusals, built command lines."""

from __future__ import annotations

import shlex
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from server.credentials import CredentialPaths, create_credentials
from simulation import cli
from simulation.cli.site_commands import node_config


def test_credentials_make_a_ca_a_server_certificate_and_site_keys(tmp_path):
    rep = create_credentials(tmp_path / "c", ["site-a", "site-b"], hosts=["link.example", "10.0.0.5"])
    p = rep.paths
    ca = x509.load_pem_x509_certificate(p.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(p.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "link.example"} <= set(san.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.0.0.5"} <= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    for site in ("site-a", "site-b"):
        key = load_ssh_private_key(p.site_key(site).read_bytes(), None)
        pub = load_ssh_public_key(p.site_public_key(site).read_bytes())
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert key.public_key().public_numbers() == pub.public_numbers()
    for private in (p.ca_key, p.server_key, p.site_key("site-a")):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700

    # a second call keeps every file and adds a site signed by the same CA
    before = {f: f.read_bytes() for f in rep.created}
    again = create_credentials(tmp_path / "c", ["site-a", "site-c"])
    assert all(f.read_bytes() == b for f, b in before.items())
    assert again.created == [p.site_key("site-c"), p.site_public_key("site-c")]


@pytest.mark.parametrize("sites", [["ok", "bad name"], ["a", "a"], ["../up"]])
def test_credentials_reject_bad_site_names(tmp_path, sites, capsys):
    assert cli.main(["credentials", "--out", str(tmp_path), "--sites", *sites]) == 2
    assert "site names" in capsys.readouterr().err


def test_credentials_command_prints_how_to_register(tmp_path, capsys):
    assert cli.main(["credentials", "--out", str(tmp_path / "c"), "--sites", "s1"]) == 0
    out = capsys.readouterr().out
    assert f"flwr supernode register {tmp_path / 'c' / 'sites' / 's1' / 's1.pub'} seqanom" in out


def test_credentials_refuse_a_kept_certificate_that_lacks_a_requested_host(tmp_path, capsys):
    """Asking again with --host superlink (docker/README.md) must not silently keep a certificate
    the sites' host name fails against."""
    out = tmp_path / "c"
    create_credentials(out, ["s1"])
    assert cli.main(["credentials", "--out", str(out), "--sites", "s2", "--host", "superlink"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "server.pem" in err and "superlink" in err
    assert not CredentialPaths(out).site_key("s2").exists()
    # names the certificate has are fine, and a new certificate gets the new name
    assert cli.main(["credentials", "--out", str(out), "--sites", "s2", "--host", "127.0.0.1"]) == 0
    for f in (CredentialPaths(out).server_cert, CredentialPaths(out).server_key):
        f.unlink()
    assert cli.main(["credentials", "--out", str(out), "--sites", "s2", "--host", "superlink"]) == 0
    server = x509.load_pem_x509_certificate(CredentialPaths(out).server_cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "superlink" in san.get_values_for_type(x509.DNSName)


def test_superlink_refuses_to_run_without_certificates(capsys):
    assert cli.main(["superlink", "--dry-run"]) == 2
    assert "needs TLS" in capsys.readouterr().err


def test_superlink_command_has_tls_and_node_authentication(tmp_path, capsys):
    create_credentials(tmp_path, [])
    paths = CredentialPaths(tmp_path)
    assert cli.main(["superlink", "--credentials", str(tmp_path), "--port", "9999",
                     "--database", str(tmp_path / "s.db"), "--dry-run"]) == 0
    argv = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    exe = next(a for a in argv if a.endswith("flower-superlink"))
    args = argv[argv.index(exe) + 1:]
    assert "--enable-supernode-auth" in args and "--insecure" not in args
    for opt, path in (("--ssl-ca-certfile", paths.ca_cert), ("--ssl-certfile", paths.server_cert),
                      ("--ssl-keyfile", paths.server_key)):
        assert args[args.index(opt) + 1] == str(path.resolve())
    assert args[args.index("--port") + 1] == "9999"
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in argv


def test_insecure_superlink_warns_loudly(capsys):
    assert cli.main(["superlink", "--insecure", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "WARNING: INSECURE MODE" in err and "authentication is OFF" in err
    assert "--insecure" in out and "--enable-supernode-auth" not in out


def test_supernode_refuses_without_root_certificate_and_key(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("x")
    assert cli.main(["supernode", "--superlink", "h:1", "--data", str(data), "--ledger",
                     str(tmp_path / "l.json"), "--dry-run"]) == 2
    assert "--root-certificates" in capsys.readouterr().err


def test_supernode_node_config_round_trips_through_flowers_parser(tmp_path, capsys):
    from flwr.common.config import parse_config_args

    create_credentials(tmp_path / "c", ["s1"])
    paths = CredentialPaths(tmp_path / "c")
    data = tmp_path / "my data" / "events.parquet"
    data.parent.mkdir()
    data.write_text("x")
    assert cli.main(["supernode", "--superlink", "127.0.0.1:9092", "--root-certificates",
                     str(paths.ca_cert), "--private-key", str(paths.site_key("s1")), "--data",
                     str(data), "--ledger", str(tmp_path / "led" / "s1.json"),
                     "--privacy-budget", "4", "--dry-run"]) == 0
    argv = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    cfg = parse_config_args([argv[argv.index("--node-config") + 1]])
    assert cfg == {"data-path": str(data), "format": "seqanom",
                   "ledger-path": str(tmp_path / "led" / "s1.json"), "privacy-budget": 4.0,
                   "device": "auto", "site-name": "events"}
    assert argv[argv.index("--auth-supernode-private-key") + 1] == str(paths.site_key("s1"))
    assert "OMP_NUM_THREADS=1" in argv
    assert parse_config_args([node_config({"p": "it's"})]) == {"p": "it's"}


def test_supernode_policy_flags_reach_the_site_policy(tmp_path, capsys):
    from flwr.common.config import parse_config_args

    from seqanom_core.federation.site_policy import SitePolicy

    create_credentials(tmp_path / "c", ["s1"])
    paths = CredentialPaths(tmp_path / "c")
    data = tmp_path / "events.parquet"
    data.write_text("x")
    base = ["supernode", "--superlink", "127.0.0.1:9092", "--root-certificates",
            str(paths.ca_cert), "--private-key", str(paths.site_key("s1")), "--data", str(data),
            "--ledger", str(tmp_path / "s1.json"), "--dry-run"]

    def policy(*flags: str) -> SitePolicy:
        assert cli.main([*base, *flags]) == 0
        argv = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
        return SitePolicy.from_node_config(
            parse_config_args([argv[argv.index("--node-config") + 1]]))

    assert policy() == SitePolicy()  # the strict defaults: DP, epsilon 8, delta 1e-5, no seed
    assert policy("--privacy-budget", "3", "--max-delta", "1e-6", "--max-rounds", "10",
                  "--allow-no-dp", "--allow-dp-seed") == SitePolicy(
        require_dp=False, budget=3.0, max_delta=1e-6, max_rounds=10, allow_dp_seed=True)
    assert cli.main([*base, "--max-rounds", "0"]) == 2
    assert "--max-rounds" in capsys.readouterr().err


def test_connection_is_written_to_flwr_home(tmp_path, monkeypatch, capsys):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    create_credentials(tmp_path / "c", [])
    assert cli.main(["connection", "--name", "prod", "--address", "link:9093",
                     "--root-certificates", str(tmp_path / "c" / "ca.pem"), "--default"]) == 0
    cfg = tomllib.loads((tmp_path / "home" / "config.toml").read_text())["superlink"]
    assert cfg["default"] == "prod"
    assert cfg["prod"] == {"address": "link:9093",
                           "root-certificates": str((tmp_path / "c" / "ca.pem").resolve())}
    assert cli.main(["connection", "--address", "link:9093"]) == 2


@pytest.mark.parametrize("budget", ["nan", "inf", "-1"])
def test_supernode_refuses_a_budget_that_is_not_a_positive_number(tmp_path, capsys, budget):
    create_credentials(tmp_path / "c", ["s1"])
    paths = CredentialPaths(tmp_path / "c")
    data = tmp_path / "events.parquet"
    data.write_text("x")
    assert cli.main(["supernode", "--superlink", "127.0.0.1:9092", "--root-certificates",
                     str(paths.ca_cert), "--private-key", str(paths.site_key("s1")), "--data",
                     str(data), "--ledger", str(tmp_path / "s1.json"), "--privacy-budget", budget,
                     "--dry-run"]) == 2
    assert "--privacy-budget" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["superlink", "--insecure", "--port", "70000", "--dry-run"], "1..65535"),
    (["superlink", "--insecure", "--port", "abc", "--dry-run"], "not a port"),
    (["connection", "--insecure", "--address", "nohost"], "HOST:PORT"),
    (["connection", "--insecure", "--address", "127.0.0.1:0"], "1..65535"),
    (["credentials", "--out", "x", "--sites", "a", "--host", "bad host!"], "host name"),
])
def test_deployment_addresses_and_ports_are_checked(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and needle in capsys.readouterr().err


def test_deployment_files_and_values_are_checked_before_anything_starts(tmp_path, capsys):
    create_credentials(tmp_path / "c", ["s1"])
    paths = CredentialPaths(tmp_path / "c")
    data = tmp_path / "events.parquet"
    data.write_text("x")
    site = ["supernode", "--superlink", "127.0.0.1:9092", "--root-certificates", str(paths.ca_cert),
            "--data", str(data), "--ledger", str(tmp_path / "s1.json"), "--dry-run"]
    key = ["--private-key", str(paths.site_key("s1"))]
    for extra, needle in (
        (["--private-key", str(paths.site_public_key("s1"))], "not a PEM private key"),
        (key + ["--format", "nosuch"], "--format"),
        (key + ["--threads", "0"], "--threads"),
        (key + ["--max-retries", "-1"], "--max-retries"),
        (key + ["--device", "gpu"], "--device"),
    ):
        assert cli.main(site + extra) == 2, extra
        assert needle in capsys.readouterr().err
    assert cli.main(["superlink", "--credentials", str(tmp_path / "c"), "--ssl-certfile", str(data),
                     "--dry-run"]) == 2
    assert "not a PEM certificate" in capsys.readouterr().err
    assert cli.main(["superlink", "--credentials", str(tmp_path / "c"), "--database",
                     str(tmp_path), "--dry-run"]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert cli.main(["connection", "--insecure", "--root-certificates", str(paths.ca_cert),
                     "--address", "127.0.0.1:9093"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
