"""Deployment credentials: a private CA, the SuperLink's TLS certificate, one key pair per site.

Layout under the output directory (private keys are created 0600 in 0700 directories and never
overwritten; an existing CA is reused, so sites can be added later)::

    ca.pem                      CA certificate: SuperLink, every site and the flwr CLI trust it
    ca.key                      CA private key: stays with the central team
    superlink/server.pem        SuperLink TLS certificate (SAN localhost, 127.0.0.1, --host names)
    superlink/server.key        its private key
    sites/<site>/<site>.key     the site's node-authentication private key (OpenSSH, ECDSA P-384):
                                only this site holds it (flower-supernode --auth-supernode-private-key)
    sites/<site>/<site>.pub     its public key, registered with ``flwr supernode register``

docker/compose.yaml mounts this layout as it is (its sites dial the SuperLink as ``superlink``:
``--host superlink``). A kept SuperLink certificate must already name every ``--host`` asked for.

Only the ``cryptography`` package is used (Flower depends on it); nothing here imports flwr.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from seqanom_core.errors import ConfigError

_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CURVE = ec.SECP384R1()
_HASH = hashes.SHA384()
MAX_DAYS = 36500  # certificate validity: a century at most


@dataclass(frozen=True)
class CredentialPaths:
    """Where ``create_credentials`` puts each file under ``root``."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "superlink" / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "superlink" / "server.key"

    def site_key(self, site: str) -> Path:
        return self.root / "sites" / site / f"{site}.key"

    def site_public_key(self, site: str) -> Path:
        return self.root / "sites" / site / f"{site}.pub"


@dataclass
class CredentialReport:
    """Which files were created and which already existed (kept as they were)."""

    paths: CredentialPaths
    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Create ``path`` (never overwrite); private files are 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o755)
    if private:
        os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "seqanom federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _load_or_create_ca(paths: CredentialPaths, days: int, report: CredentialReport
                       ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if paths.ca_cert.exists() or paths.ca_key.exists():
        if not (paths.ca_cert.is_file() and paths.ca_key.is_file()):
            raise ConfigError(f"{paths.root}: found only one of ca.pem / ca.key; restore the "
                              "other or remove both to create a new CA")
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{paths.ca_key}: not an EC private key")
        report.kept += [paths.ca_cert, paths.ca_key]
        return key, x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    key = ec.generate_private_key(_CURVE)
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(_name("seqanom federation CA")).issuer_name(_name("seqanom federation CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, _HASH))
    _write(paths.ca_key, _pem_key(key), private=True)
    _write(paths.ca_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    report.created += [paths.ca_cert, paths.ca_key]
    return key, cert


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in ["localhost", "127.0.0.1", *hosts]:
        if _general_name(h) not in names:
            names.append(_general_name(h))
    return x509.SubjectAlternativeName(names)


def _check_kept_names(cert_path: Path, hosts: list[str]) -> None:
    """A kept SuperLink certificate must already name every ``--host`` asked for now (a silent
    keep would leave sites dialling a name the certificate lacks)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as err:
        raise ConfigError(f"{cert_path}: not a PEM certificate") from err
    try:
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        have = x509.SubjectAlternativeName([])
    missing = [h for h in hosts if _general_name(h) not in have]
    if missing:
        raise ConfigError(f"{cert_path}: kept from an earlier run, but it does not name "
                          f"{', '.join(missing)}; remove it and server.key to issue a new one")


def _server_certificate(paths: CredentialPaths, ca_key: ec.EllipticCurvePrivateKey,
                        ca_cert: x509.Certificate, hosts: list[str], days: int,
                        report: CredentialReport) -> None:
    if paths.server_cert.exists() or paths.server_key.exists():
        if paths.server_cert.is_file():
            _check_kept_names(paths.server_cert, hosts)
        report.kept += [p for p in (paths.server_cert, paths.server_key) if p.exists()]
        return
    key = ec.generate_private_key(_CURVE)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(hosts[0] if hosts else "localhost"))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=True, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, _HASH))
    _write(paths.server_key, _pem_key(key), private=True)
    _write(paths.server_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    report.created += [paths.server_cert, paths.server_key]


def _site_keys(paths: CredentialPaths, site: str, report: CredentialReport) -> None:
    priv, pub = paths.site_key(site), paths.site_public_key(site)
    if priv.exists() or pub.exists():
        if not (priv.is_file() and pub.is_file()):
            raise ConfigError(f"{priv.parent}: found only one of {priv.name} / {pub.name}; "
                              "remove it to create a new key pair")
        report.kept += [priv, pub]
        return
    key = ec.generate_private_key(_CURVE)
    _write(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()), private=True)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH)
    _write(pub, line + f" seqanom-{site}\n".encode(), private=False)
    report.created += [priv, pub]


def create_credentials(out: str | Path, sites: list[str], hosts: list[str] | None = None,
                       days: int = 365) -> CredentialReport:
    """Create (or complete) the CA, the SuperLink certificate and one key pair per site."""
    hosts = list(hosts or [])
    bad = [s for s in sites if not _SITE_NAME.match(s)]
    if bad:
        raise ConfigError(f"--sites: site names must be letters, digits, '_', '.', '-' (max 64): {bad}")
    if len(set(sites)) != len(sites):
        raise ConfigError(f"site names repeat: {sites}")
    if not 1 <= days <= MAX_DAYS:  # past year 9999 the certificate dates overflow
        raise ConfigError(f"--days must be 1..{MAX_DAYS}, not {days}")
    paths = CredentialPaths(Path(out))
    paths.root.mkdir(parents=True, exist_ok=True)
    report = CredentialReport(paths)
    ca_key, ca_cert = _load_or_create_ca(paths, days, report)
    _server_certificate(paths, ca_key, ca_cert, hosts, days, report)
    for site in sites:
        _site_keys(paths, site, report)
    return report
