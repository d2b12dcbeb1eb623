"""Hosts as Linux network namespaces on a private bridge, for multi-host deployment tests.

Each host is a namespace with loopback up and one veth pair: ``eth0`` inside, the other end on a
bridge in the test's own namespace, which also has an address on the private subnet (it stands
for the central team's workstation, where the flwr CLI runs). ``cut`` / ``restore`` take a
host's link down and up from the bridge side, as a pulled cable would. Everything created is
recorded and removed by ``close``, even after a failed setup; ``leftovers`` names what is still
there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def can_build_namespaces() -> str | None:
    """None when this process may create namespaces and links; otherwise why not."""
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CI runs as root)"
    return None


@dataclass
class Hosts:
    """Namespaces ``<prefix>-<name>`` with addresses ``<subnet>.<k>`` (k = 1, 2, ...)."""

    names: list[str]
    prefix: str = field(default_factory=lambda: f"sq{os.getpid() % 100000}")
    subnet: str = "10.213.77"
    made_links: list[str] = field(default_factory=list)
    made_namespaces: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def workstation(self) -> str:
        """The test process' own address on the bridge."""
        return f"{self.subnet}.254"

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{self.names.index(host) + 1}"

    def veth(self, host: str) -> str:
        """The bridge side of ``host``'s link (at most 15 characters, as Linux wants)."""
        return f"{self.prefix}v{self.names.index(host)}"

    def exec(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def open(self) -> Hosts:
        ip("link", "add", self.bridge, "type", "bridge")
        self.made_links.append(self.bridge)
        ip("addr", "add", f"{self.workstation}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for host in self.names:
            ns, veth = self.namespace(host), self.veth(host)
            ip("netns", "add", ns)
            self.made_namespaces.append(ns)
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.made_links.append(veth)
            ip("link", "set", veth, "master", self.bridge)
            ip("link", "set", veth, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        return self

    def cut(self, host: str) -> None:
        ip("link", "set", self.veth(host), "down")

    def restore(self, host: str) -> None:
        ip("link", "set", self.veth(host), "up")

    def close(self) -> None:
        """Remove every link and namespace this object made (veths first, then namespaces)."""
        for link in reversed(self.made_links):
            ip("link", "del", link, check=False)
        for ns in reversed(self.made_namespaces):
            ip("netns", "del", ns, check=False)

    def leftovers(self) -> list[str]:
        """Links and namespaces of this object's that still exist."""
        links = ip("-o", "link", "show").stdout
        spaces = set(ip("netns", "list").stdout.split())
        return ([f"link {name}" for name in self.made_links if f" {name}:" in links
                 or f" {name}@" in links]
                + [f"namespace {ns}" for ns in self.made_namespaces if ns in spaces])
