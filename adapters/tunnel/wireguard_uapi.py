"""WireGuard in userspace: supervises `wireguard-go -f IFNAME` and drives its UAPI socket.

The one rule: peers change by diffs, one `public_key=` block per touched peer in one `set=1`
request; an empty diff sends nothing. The private key only ever travels over the UAPI socket
(mode 0700, root): never in argv, the environment or a log line.

The UAPI is wireguard-go's documented cross-platform text protocol on
`/var/run/wireguard/IFNAME.sock`: `set=1` / `get=1` requests of `key=value` lines ended by an
empty line, keys in hex, answered by `errno=N` and an empty line. Links, addresses and routes
go through ip(8) (`links.Links`); the TUN device vanishes with the process.

Crash safety (`process_guard`): wireguard-go is spawned through `setpriv --pdeathsig KILL`,
so it dies with the daemon and its TUN device, addresses and routes with it (no traffic with
any peer until a running daemon re-applies a verified map); a wireguard-go a crashed daemon of
ours left behind is killed at the next start, proven ours by the PID record; any other holder
of the interface is refused.

Quirks met here: wireguard-go prints a banner claiming kernel support even when the module is
missing (ignored); SIGKILL leaves the socket behind (removed at `stop` and, if stale, at
`start`); `ip netns exec`, setpriv and the guard's shell exec without forking, so the PID we
hold is wireguard-go's own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import structlog
from rustynet.adapters.tunnel.process_guard import (
    KILL_WAIT_S,
    PidRecord,
    guarded_argv,
    kill_recorded,
    record_path,
)
from rustynet.adapters.tunnel.wireguard_base import DeviceState, WireGuardBackendBase

from rustynet.domain.errors import DecodeError
from rustynet.domain.keys import TunnelKey, TunnelKeyScheme, TunnelPrivateKey
from rustynet.domain.tunnel import (
    InterfaceConfig,
    PeerConfig,
    PeerDiff,
    PeerStats,
    UnderlayEndpoint,
    required_capabilities,
)
from rustynet.ports.tunnel import BackendUnavailable, TunnelError

SOCKET_DIR: Final = "/var/run/wireguard"
_UAPI_TIMEOUT: Final = 5.0
_REPLY_LIMIT: Final = 64 * 1024 * 1024  # `get=1` with thousands of peers is a few MB
_STOP_GRACE: Final = 2.0
GUARD_PROGRAMS: Final = ("setpriv", "/bin/sh")

_log = structlog.get_logger("rustynet.tunnel")


class WireGuardUapiBackend(WireGuardBackendBase):
    """One wireguard-go interface, optionally inside a network namespace.

    `change_operations` counts `set=1` requests that changed peers; `peer_blocks` counts the
    peer blocks they carried (diff minimality is visible on the wire).
    """

    backend_name = "wireguard-userspace"

    def __init__(
        self,
        *,
        netns: str | None = None,
        wireguard_go: str = "wireguard-go",
        socket_dir: str = SOCKET_DIR,
        start_timeout: float = 5.0,
    ) -> None:
        super().__init__(netns)
        self._program = wireguard_go
        self._socket_dir = Path(socket_dir)
        self._start_timeout = start_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=20)
        self._drain: asyncio.Task[None] | None = None
        self.peer_blocks = 0

    @property
    def pid(self) -> int | None:
        """PID of the supervised wireguard-go, None when not running."""
        return self._proc.pid if self._proc is not None else None

    def socket_path(self, interface: str) -> Path:
        """Where wireguard-go puts the UAPI socket of `interface`."""
        return self._socket_dir / f"{interface}.sock"

    async def check_available(self) -> None:
        """wireguard-go on PATH, /dev/net/tun present, root, and the namespace exists."""
        if shutil.which(self._program) is None:
            raise BackendUnavailable(f"{self._program} not found on PATH")
        missing = [p for p in GUARD_PROGRAMS if shutil.which(p) is None]
        if missing:
            raise BackendUnavailable(
                f"{', '.join(missing)} not found (setpriv is util-linux: it ties wireguard-go "
                "to the daemon's life)"
            )
        if not Path("/dev/net/tun").exists():
            raise BackendUnavailable("/dev/net/tun is missing (no TUN support)")
        if os.geteuid() != 0:
            raise BackendUnavailable("creating a TUN interface needs root (CAP_NET_ADMIN)")
        if self._netns is not None:
            if shutil.which("ip") is None:
                raise BackendUnavailable("ip(8) is needed to enter a network namespace")
            if not Path("/var/run/netns", self._netns).exists():
                raise BackendUnavailable(f"network namespace {self._netns} does not exist")

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, config: InterfaceConfig) -> None:
        """Start wireguard-go (or re-apply to the running one): key, port, addresses, routes."""
        self.require(*required_capabilities(addresses=config.addresses, routes=config.routes))
        if self._interface is not None and self._interface != config.name:
            raise TunnelError(f"backend already runs interface {self._interface}")
        if self._proc is not None and self._proc.returncode is not None:
            await self.stop()  # it died: start afresh
        fresh = self._proc is None
        if fresh:
            await self._spawn(config.name)
        try:
            await self._set_device(config.private_key, config.underlay_port, fresh=fresh)
            await self._configure_link(config)
        except BaseException:
            if fresh:
                await self.stop()
            raise

    async def _spawn(self, interface: str) -> None:
        await self.check_available()
        sock = self.socket_path(interface)
        await self._clear_leftover(interface, sock)
        # Dies with this daemon (PR_SET_PDEATHSIG through setpriv, parent re-checked after it).
        argv = guarded_argv([self._program, "-f", interface], os.getpid())
        if self._netns is not None:
            argv = ["ip", "netns", "exec", self._netns, *argv]
        # A minimal environment: nothing secret is ever passed to the child.
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LOG_LEVEL": "error",
        }
        self._output.clear()
        self._proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._interface = interface
        self._drain = asyncio.create_task(self._keep_output(self._proc))
        try:
            await self._wait_for_socket(self._proc, sock)
        except TunnelError:
            await self.stop()
            raise
        record = PidRecord.of(self._proc.pid)
        if record is not None:  # what the next start may kill if we die without `stop`
            record.save(record_path(self._socket_dir, interface))

    async def _clear_leftover(self, interface: str, sock: Path) -> None:
        """Kill a wireguard-go a crashed daemon of ours left on `interface` (proven by our
        record: same PID, same start time, same program); refuse anything else."""
        recorded = record_path(self._socket_dir, interface)
        killed = False
        if sock.exists() and await _answers(sock):
            record = PidRecord.load(recorded)
            ours = record is not None and await asyncio.to_thread(
                kill_recorded, record, self._program
            )
            if not ours or await _answers(sock):
                raise TunnelError(f"interface {interface} is already run by another process")
            _log.warning(
                "tunnel.leftover_killed",
                interface=interface,
                pid=record.pid if record else None,
            )
            killed = True
        sock.unlink(missing_ok=True)  # stale, left by a SIGKILLed wireguard-go
        recorded.unlink(missing_ok=True)
        # The TUN link goes with its process; the kernel may take a moment after the kill.
        deadline = time.monotonic() + (KILL_WAIT_S if killed else 0.0)
        while await self._links.exists(interface):
            if time.monotonic() >= deadline:
                raise TunnelError(f"a link called {interface} already exists")
            await asyncio.sleep(0.05)

    async def _wait_for_socket(self, proc: asyncio.subprocess.Process, sock: Path) -> None:
        try:
            async with asyncio.timeout(self._start_timeout):
                while not (sock.exists() and await _answers(sock)):
                    if proc.returncode is not None:
                        break
                    await asyncio.sleep(0.01)
        except TimeoutError as exc:
            raise TunnelError(f"{self._program} did not open {sock} in time") from exc
        if proc.returncode is not None:
            await asyncio.sleep(0.05)  # let the drain task catch the last words
            raise TunnelError(
                f"{self._program} exited with {proc.returncode}: " + " | ".join(self._output)
            )

    async def _keep_output(self, proc: asyncio.subprocess.Process) -> None:
        """Keep the last lines wireguard-go printed (for error messages); drains the pipe."""
        assert proc.stdout is not None
        async for line in proc.stdout:
            text = line.decode("utf-8", "replace").strip()
            if text and not text.startswith(("│", "┌", "└")):  # the kernel-support banner
                self._output.append(text)

    async def _set_device(
        self, private_key: TunnelPrivateKey, port: int | None, *, fresh: bool
    ) -> None:
        secret = private_key.export_secret()
        try:
            # The hex string is immutable and cannot be wiped; it lives only for this request.
            lines = [f"private_key={secret.hex()}", f"listen_port={port or 0}"]
        finally:
            secret[:] = bytes(len(secret))
        if fresh:
            lines.append("replace_peers=true")
        await self._set(lines)

    async def stop(self) -> None:
        """Stop our wireguard-go (our PID only), remove socket, link and routes. Idempotent."""
        proc, self._proc = self._proc, None
        interface, self._interface = self._interface, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(_STOP_GRACE):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
            self._drain = None
        if interface is not None:
            self.socket_path(interface).unlink(missing_ok=True)
            record_path(self._socket_dir, interface).unlink(missing_ok=True)
            # The TUN device goes with the process; delete it if anything kept it alive.
            await self._links.delete(interface)

    # -- peers -----------------------------------------------------------------------------

    def _check_running(self) -> str:
        if self._interface is None or self._proc is None:
            raise TunnelError("tunnel interface is not started")
        if self._proc.returncode is not None:
            raise TunnelError(
                f"{self._program} for {self._interface} exited with {self._proc.returncode}"
            )
        return self._interface

    async def apply(self, diff: PeerDiff) -> None:
        """One `set=1` request with one block per touched peer; nothing for an empty diff."""
        self._check_running()
        self.require(*required_capabilities(diff=diff))
        if diff.empty:
            return
        lines: list[str] = []
        for peer in (*diff.add, *diff.update):
            lines += [f"public_key={_hex(peer.key)}", "replace_allowed_ips=true"]
            lines += [f"allowed_ip={net}" for net in peer.overlay_prefixes]
            if peer.underlay_endpoint is not None:
                lines.append(f"endpoint={peer.underlay_endpoint}")
            lines.append(f"persistent_keepalive_interval={peer.keepalive_seconds or 0}")
        for key in diff.remove:
            lines += [f"public_key={_hex(key)}", "remove=true"]
        await self._set(lines)
        self.change_operations += 1
        self.peer_blocks += diff.touched

    # -- UAPI ------------------------------------------------------------------------------

    async def _request(self, text: str) -> list[str]:
        interface = self._check_running()
        sock = self.socket_path(interface)
        try:
            async with asyncio.timeout(_UAPI_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(sock, limit=_REPLY_LIMIT)
                try:
                    writer.write(text.encode())
                    await writer.drain()
                    reply = await reader.readuntil(b"\n\n")
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (
            OSError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            raise TunnelError(f"UAPI request to {sock} failed: {exc!r}") from exc
        lines = reply.decode("utf-8", "replace").rstrip("\n").split("\n")
        if not lines or lines[-1] != "errno=0":
            raise TunnelError(f"UAPI request to {interface} refused: {lines[-1] if lines else ''}")
        return lines[:-1]

    async def _set(self, lines: list[str]) -> None:
        await self._request("set=1\n" + "".join(f"{line}\n" for line in lines) + "\n")

    async def _read_device(self) -> DeviceState:
        """Config and counters per peer (`get=1`)."""
        return _parse_get(await self._request("get=1\n\n"))


async def _answers(sock: Path) -> bool:
    """True when something accepts connections on `sock` (a live wireguard-go)."""
    try:
        _, writer = await asyncio.open_unix_connection(sock)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _hex(key: TunnelKey) -> str:
    if key.scheme is not TunnelKeyScheme.X25519:
        raise TunnelError(f"WireGuard cannot use {key.scheme.value} tunnel keys")
    return key.raw.hex()


class _PeerFields:
    """Fields of one `public_key=` block of a `get=1` reply."""

    def __init__(self, key: TunnelKey) -> None:
        self.key = key
        self.prefixes: list[str] = []
        self.endpoint: UnderlayEndpoint | None = None
        self.keepalive = 0
        self.handshake_sec = 0
        self.handshake_nsec = 0
        self.rx = 0
        self.tx = 0

    def build(self) -> tuple[PeerConfig, PeerStats]:
        seen = None
        if self.handshake_sec or self.handshake_nsec:
            seen = datetime.fromtimestamp(self.handshake_sec + self.handshake_nsec / 1e9, UTC)
        config = PeerConfig(self.key, self.prefixes, self.endpoint, self.keepalive or None)
        return config, PeerStats(self.key, seen, self.rx, self.tx, self.endpoint)


_COUNTERS: Final = {
    "persistent_keepalive_interval": "keepalive",
    "last_handshake_time_sec": "handshake_sec",
    "last_handshake_time_nsec": "handshake_nsec",
    "rx_bytes": "rx",
    "tx_bytes": "tx",
}


def _parse_get(lines: list[str]) -> dict[TunnelKey, tuple[PeerConfig, PeerStats]]:
    blocks: list[_PeerFields] = []
    try:
        for line in lines:
            name, _, value = line.partition("=")
            if name == "public_key":
                blocks.append(_PeerFields(TunnelKey(TunnelKeyScheme.X25519, bytes.fromhex(value))))
            elif not blocks:
                continue  # device fields (private_key among them: never kept, never logged)
            elif name == "allowed_ip":
                blocks[-1].prefixes.append(value)
            elif name == "endpoint":
                blocks[-1].endpoint = _endpoint(value)
            elif name in _COUNTERS:
                setattr(blocks[-1], _COUNTERS[name], int(value))
        return {block.key: block.build() for block in blocks}
    except (ValueError, DecodeError) as exc:
        raise TunnelError(f"unexpected UAPI reply: {exc}") from exc


def _endpoint(text: str) -> UnderlayEndpoint:
    endpoint = UnderlayEndpoint.parse(text)
    if endpoint.address.version == 6 and endpoint.address.ipv4_mapped is not None:
        return UnderlayEndpoint(endpoint.address.ipv4_mapped, endpoint.port)
    return endpoint
