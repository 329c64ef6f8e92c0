"""wireguard-go cannot outlive the daemon, and a daemon restarted after a crash clears what a
crashed daemon of ours left, but never kills what it cannot prove is its own.

Real wireguard-go, real setpriv, a namespace per test (tests.netns); the "daemon" of the first
test is a separate Python process (tests/integration/tunnel_child.py) killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rustynet.adapters.tunnel.process_guard import (
    NOT_OUR_PARENT_EXIT,
    PidRecord,
    guarded_argv,
    record_path,
)
from rustynet.adapters.tunnel.wireguard_uapi import SOCKET_DIR, WireGuardUapiBackend

from rustynet.domain.keys import TunnelKeyScheme, TunnelPrivateKey
from rustynet.domain.tunnel import InterfaceConfig
from rustynet.ports.tunnel import TunnelError
from tests.netns import Namespace, NetLab, require_root

ROOT = Path(__file__).resolve().parents[2]
GONE_S = 3.0


@pytest.fixture
def lab() -> Iterator[NetLab]:
    """Root, wireguard-go and setpriv, or skip; the lab is removed afterwards."""
    require_root("ip", "wireguard-go", "setpriv", "wg")
    with NetLab() as made:
        yield made
        for name in made.interfaces:  # our PID records, next to the sockets NetLab removes
            record_path(Path(SOCKET_DIR), name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"


def _wait_gone(pid: int, timeout: float = GONE_S) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _config(name: str) -> InterfaceConfig:
    key = TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, os.urandom(32))
    return InterfaceConfig(name, key, None, ["100.64.7.2/32"], [])


def _orphan(ns: Namespace, name: str) -> subprocess.Popen[bytes]:
    """A wireguard-go on `name` that nothing ties to a daemon (what a crash left before)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, "wireguard-go", "-f", name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    sock = Path(SOCKET_DIR, f"{name}.sock")
    deadline = time.monotonic() + 5
    while not sock.exists():
        assert time.monotonic() < deadline, "wireguard-go did not open its socket"
        time.sleep(0.02)
    peer = "Jk2NpRQv7Z2yeA2lV2pRvqbUGIo5N1SBQ9qNm9vXbnc="
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns.name,
            "wg",
            "set",
            name,
            "peer",
            peer,
            "allowed-ips",
            "100.64.9.9/32",
            "endpoint",
            "203.0.113.9:51820",
        ],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return proc


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.root
def test_wireguard_go_dies_with_a_daemon_killed_by_sigkill(lab: NetLab) -> None:
    """A stand-in daemon starts wireguard-go from its event loop, lets other threads end
    (wireguard-go survives that), is SIGKILLed: wireguard-go and its TUN link are gone within
    GONE_S seconds."""
    ns, name = lab.namespace(), lab.interface_name()
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.tunnel_child", ns.name, name],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    with _reaped(child):
        assert child.stdout is not None
        line = child.stdout.readline().decode()
        assert line.startswith("pid "), line
        wg_pid = int(line.split()[1])
        time.sleep(0.3)  # the worker threads have ended
        assert _alive(wg_pid), "wireguard-go died with a thread that was not its parent"
        assert name in ns.links()
        record = PidRecord.load(record_path(Path(SOCKET_DIR), name))
        assert record is not None
        assert record.pid == wg_pid
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        gone = _wait_gone(wg_pid)
        if not gone:
            os.kill(wg_pid, signal.SIGKILL)  # ours: started by the stand-in for this test
        assert gone, "wireguard-go outlived its daemon"
        deadline = time.monotonic() + GONE_S
        while name in ns.links():  # the kernel unregisters the TUN link just after the exit
            assert time.monotonic() < deadline, f"{name} outlived its wireguard-go"
            time.sleep(0.02)


def test_guard_does_not_start_the_program_when_its_parent_is_not_the_daemon(
    tmp_path: Path,
) -> None:
    """The parent re-check after arming the signal: a guard told another daemon PID (here 1:
    as if the daemon died before the prctl and the child was re-parented) exits 111 and never
    execs the program; told the right PID, it runs it."""
    if subprocess.run(["which", "setpriv"], capture_output=True, check=False).returncode:
        pytest.skip("setpriv (util-linux) is not installed")
    marker = tmp_path / "ran"
    done = subprocess.run(guarded_argv(["touch", str(marker)], 1), check=False)
    assert done.returncode == NOT_OUR_PARENT_EXIT
    assert not marker.exists()
    done = subprocess.run(guarded_argv(["touch", str(marker)], os.getpid()), check=False)
    assert done.returncode == 0
    assert marker.exists()


@pytest.mark.root
def test_a_leftover_of_ours_is_killed_and_the_interface_starts_clean(lab: NetLab) -> None:
    """A wireguard-go with a stale peer, recorded by a crashed daemon of ours (PID record with
    its start time), holds the interface: start kills it and runs a fresh one with no peer."""
    ns, name = lab.namespace(), lab.interface_name()
    with _reaped(_orphan(ns, name)) as orphan:
        record = PidRecord.of(orphan.pid)
        assert record is not None
        record.save(record_path(Path(SOCKET_DIR), name))
        backend = WireGuardUapiBackend(netns=ns.name)

        async def start() -> tuple[int | None, int]:
            await backend.start(_config(name))
            try:
                return backend.pid, len(await backend.peers())
            finally:
                await backend.stop()

        new_pid, peers = asyncio.run(start())
        assert orphan.wait(GONE_S) == -signal.SIGKILL
    assert new_pid not in (None, orphan.pid)
    assert peers == 0, "the stale peer survived the restart"


@pytest.mark.root
@pytest.mark.parametrize("record", ["none", "another start time"])
def test_a_process_not_proven_ours_is_refused_and_left_alive(lab: NetLab, record: str) -> None:
    """Without our record, or with one whose start time is not the running process's (a
    reused PID), start refuses as before and the process keeps running."""
    ns, name = lab.namespace(), lab.interface_name()
    with _reaped(_orphan(ns, name)) as other:
        if record != "none":
            found = PidRecord.of(other.pid)
            assert found is not None
            PidRecord(other.pid, found.started - 1).save(record_path(Path(SOCKET_DIR), name))
        backend = WireGuardUapiBackend(netns=ns.name)
        with pytest.raises(TunnelError, match="already run by another process"):
            asyncio.run(backend.start(_config(name)))
        assert other.poll() is None
        assert _alive(other.pid)
