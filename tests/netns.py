"""Network-namespace lab for root tests: namespaces, veth pairs, a bridge, commands inside.

Everything a `NetLab` creates carries a unique random suffix and is removed when the lab
closes, even after a failure: processes still running inside its namespaces (ours: nobody
else runs in a namespace we just made) are killed, then the namespaces are deleted, which
takes their veths, bridges, TUN devices and routes with them. Stale UAPI-style sockets under
`socket_dirs` named after registered interfaces are removed too.

Use from a test module::

    @pytest.fixture
    def lab() -> Iterator[NetLab]:
        require_root("ip", "wireguard-go")
        with NetLab() as lab:
            yield lab

    def test_x(lab: NetLab) -> None:
        a, b = lab.namespace(), lab.namespace()
        lab.veth(a, "198.51.100.1/24", b, "198.51.100.2/24")
        a.run("ping", "-c1", "-W1", "198.51.100.2")

Address rules (docs/lab.md): underlay 198.51.100.0/24 and 203.0.113.0/24 only, overlay
100.64.0.0/10, never 192.0.2.0/24.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

FORBIDDEN_PREFIX = "192.0.2."


def require_root(*tools: str) -> None:
    """Skip the calling test (with the reason printed) unless root and every tool is present."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")


def require_in_ci(*tools: str) -> None:
    """In CI (`CI` is true/1/yes) a missing tool fails the test instead of skipping it (tools
    that tools/setup.sh installs; outside CI `require_root` skips with the reason)."""
    if os.environ.get("CI", "").strip().lower() not in {"1", "true", "yes"}:
        return
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}; CI requires it (tools/setup.sh)", pytrace=False)


def unique_name(prefix: str = "rn", length: int = 15) -> str:
    """`prefix` + random hex, at most `length` characters (Linux interface names: 15)."""
    return (prefix + secrets.token_hex(8))[:length]


def _check_address(address: str) -> None:
    if address.startswith(FORBIDDEN_PREFIX):
        raise ValueError("192.0.2.0/24 is the machine's uplink: never use it in tests")


class Namespace:
    """One named network namespace."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace; output captured as text, `stdin` fed to it."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=stdin,
        )

    def popen(self, *argv: str) -> subprocess.Popen[bytes]:
        """Start a command inside the namespace (the lab kills it at close if still running)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def ip(self, *argv: str) -> str:
        """`ip -n NS ...`, returning stdout."""
        return subprocess.run(
            ["ip", "-n", self.name, *argv], check=True, capture_output=True, text=True
        ).stdout

    def links(self) -> list[str]:
        """Names of the links in the namespace."""
        out = self.ip("-o", "link", "show")
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def pids(self) -> list[int]:
        """PIDs of processes running in the namespace."""
        out = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        ).stdout
        return [int(p) for p in out.split()]


class ClosedOnExit:
    """`with Lab() as lab:` calls `lab.close()` on the way out, even after a failure."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove everything the lab made."""
        raise NotImplementedError


class NetLab(ClosedOnExit):
    """Owns namespaces and what lives in them; `close()` removes all of it."""

    def __init__(self, socket_dirs: tuple[str, ...] = ("/var/run/wireguard",)) -> None:
        self.namespaces: list[Namespace] = []
        self.interfaces: list[str] = []
        self.socket_dirs = socket_dirs
        self._bridge: Namespace | None = None

    def namespace(self, prefix: str = "rnt") -> Namespace:
        """A fresh namespace with loopback up."""
        ns = Namespace(unique_name(prefix, 24))
        subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def interface_name(self) -> str:
        """A unique interface name, registered for socket cleanup."""
        name = unique_name("rn")
        self.interfaces.append(name)
        return name

    def veth(
        self,
        a: Namespace,
        addr_a: str | None,
        b: Namespace,
        addr_b: str | None,
        names: tuple[str, str] | None = None,
    ) -> tuple[str, str]:
        """Join two namespaces with a veth pair, addresses given as `IP/len` (or None).

        The ends get unique names unless `names` are given (each end is created inside its
        namespace, so a fixed name such as `wan` only needs to be unique there). Returns the
        names of the two ends.
        """
        end_a, end_b = names or (unique_name("va"), unique_name("vb"))
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                end_a,
                "netns",
                a.name,
                "type",
                "veth",
                "peer",
                "name",
                end_b,
                "netns",
                b.name,
            ],
            check=True,
            capture_output=True,
        )
        for ns, end, addr in ((a, end_a, addr_a), (b, end_b, addr_b)):
            if addr is not None:
                _check_address(addr)
                ns.ip("addr", "add", addr, "dev", end)
            ns.ip("link", "set", end, "up")
        return end_a, end_b

    def bridge(self) -> Namespace:
        """The lab's bridge namespace (created on first use) holding bridge `br0`."""
        if self._bridge is None:
            self._bridge = self.namespace("rnb")
            self._bridge.ip("link", "add", "br0", "type", "bridge")
            self._bridge.ip("link", "set", "br0", "up")
        return self._bridge

    def attach(self, ns: Namespace, address: str, name: str | None = None) -> None:
        """Connect `ns` to the bridge with a veth carrying `address` (`IP/len`) on its side
        (named `name` there, or a unique name)."""
        _check_address(address)
        bridge = self.bridge()
        end_ns, end_br = name or unique_name("vn"), unique_name("vbr")
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                end_ns,
                "netns",
                ns.name,
                "type",
                "veth",
                "peer",
                "name",
                end_br,
                "netns",
                bridge.name,
            ],
            check=True,
            capture_output=True,
        )
        bridge.ip("link", "set", end_br, "master", "br0")
        bridge.ip("link", "set", end_br, "up")
        ns.ip("addr", "add", address, "dev", end_ns)
        ns.ip("link", "set", end_ns, "up")

    def close(self) -> None:
        """Kill what runs in our namespaces, delete them, remove stale sockets. Never raises."""
        for ns in reversed(self.namespaces):
            for pid in ns.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)
        self.namespaces.clear()
        self._bridge = None
        for name in self.interfaces:
            for directory in self.socket_dirs:
                with contextlib.suppress(OSError):
                    Path(directory, f"{name}.sock").unlink(missing_ok=True)
        self.interfaces.clear()


@contextlib.contextmanager
def netlab() -> Iterator[NetLab]:
    """A `NetLab` closed on exit (even on failure)."""
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()
