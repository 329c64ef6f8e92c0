"""WireGuard in the kernel: rtnetlink creates the link, generic netlink configures the device.

The one rule: peers change by diffs, one generic-netlink `WG_CMD_SET_DEVICE` per touched peer
(pyroute2's `WireGuard.set(peer=...)` carries one peer); an empty diff sends nothing. The
private key crosses only the netlink socket, never argv or logs.

`check_available()` is what bootstrap's `auto` selection calls: without the module, the
`WireGuard` constructor fails to resolve the "wireguard" genl family (`NetlinkError(2)`), and
`ip link add type wireguard` says "Unknown device type"; both become `BackendUnavailable`.

Quirks: pyroute2's `WireGuard` takes and returns keys in base64 (it encodes to raw bytes on the
wire); its `info()` is a dump that may span several messages (peers are merged by key); the
async variant needs `await setup_endpoint()` before use (pyroute2 0.9), so the synchronous
class is used from a worker thread; a dump interrupted by a concurrent change raises
`NetlinkDumpInterrupted` (wgkex retries it) and is retried here too.
"""

from __future__ import annotations

import asyncio
import base64
import errno
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from pyroute2 import AsyncWireGuard, WireGuard
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError
from rustynet.adapters.tunnel.wireguard_base import DeviceState, WireGuardBackendBase

from rustynet.domain.errors import DecodeError
from rustynet.domain.keys import TunnelKey, TunnelKeyScheme
from rustynet.domain.tunnel import (
    InterfaceConfig,
    PeerConfig,
    PeerDiff,
    PeerStats,
    UnderlayEndpoint,
    required_capabilities,
)
from rustynet.ports.tunnel import BackendUnavailable, TunnelError

_DUMP_RETRIES: Final = 3

_T = TypeVar("_T")


class WireGuardKernelBackend(WireGuardBackendBase):
    """One kernel WireGuard interface, optionally inside a network namespace.

    `change_operations` counts netlink set requests (one per touched peer, one per device set).
    """

    backend_name = "wireguard-kernel"

    def __init__(self, *, netns: str | None = None) -> None:
        super().__init__(netns)

    async def check_available(self) -> None:
        """Raise `BackendUnavailable` unless the kernel's wireguard genl family resolves."""

        # The async class, so the socket can be closed when binding fails: the synchronous
        # `WireGuard` constructor raises from inside and leaks its transport (pyroute2 0.9.7).
        wg = AsyncWireGuard(netns=self._netns, flags=0)
        try:
            await wg.setup_endpoint()  # binds and resolves the genl family (pyroute2 0.9 needs it)
        except NetlinkError as exc:
            reason = "not loaded" if exc.code == errno.ENOENT else f"error {exc.code}"
            raise BackendUnavailable(
                f"kernel WireGuard is unavailable: generic netlink family 'wireguard' {reason}"
                " (no wireguard kernel module); use the userspace backend"
            ) from exc
        except OSError as exc:
            raise BackendUnavailable(f"kernel WireGuard is unavailable: {exc}") from exc
        finally:
            wg.close()

    async def _genl(self, what: str, work: Callable[[Any], _T]) -> _T:
        def call() -> _T:
            for attempt in range(_DUMP_RETRIES):
                try:
                    with WireGuard(netns=self._netns, flags=0) as wg:
                        return work(wg)
                except NetlinkDumpInterrupted:
                    if attempt == _DUMP_RETRIES - 1:
                        raise TunnelError(f"{what}: dump kept being interrupted") from None
                except NetlinkError as exc:
                    raise TunnelError(f"{what} failed: netlink error {exc.code}") from exc
                except (OSError, ValueError) as exc:
                    raise TunnelError(f"{what} failed: {exc}") from exc
            raise TunnelError(f"{what} failed")  # pragma: no cover - loop always returns/raises

        return await asyncio.to_thread(call)

    async def start(self, config: InterfaceConfig) -> None:
        """Create the link (if new), set key and port, addresses, link up, routes."""
        self.require(*required_capabilities(addresses=config.addresses, routes=config.routes))
        if self._interface is not None and self._interface != config.name:
            raise TunnelError(f"backend already runs interface {self._interface}")
        await self.check_available()
        fresh = self._interface is None
        if fresh:
            if await self._links.exists(config.name):
                raise TunnelError(f"a link called {config.name} already exists")
            try:
                await self._links.create(config.name, "wireguard")
            except TunnelError as exc:
                raise BackendUnavailable(f"cannot create a kernel WireGuard link: {exc}") from exc
            self._interface = config.name
        secret = config.private_key.export_secret()
        try:
            # pyroute2 wants base64 text; the str cannot be wiped and lives for this call only.
            private_b64 = base64.b64encode(secret).decode()
        finally:
            secret[:] = bytes(len(secret))
        try:
            await self._genl(
                f"configuring {config.name}",
                lambda wg: wg.set(
                    config.name, private_key=private_b64, listen_port=config.underlay_port or 0
                ),
            )
            self.change_operations += 1
            await self._configure_link(config)
        except BaseException:
            if fresh:
                await self.stop()
            raise

    def _check_running(self) -> str:
        if self._interface is None:
            raise TunnelError("tunnel interface is not started")
        return self._interface

    async def apply(self, diff: PeerDiff) -> None:
        """One netlink set per touched peer; nothing for an empty diff."""
        interface = self._check_running()
        self.require(*required_capabilities(diff=diff))
        if diff.empty:
            return
        requests: list[dict[str, Any]] = []
        for peer in (*diff.add, *diff.update):
            request: dict[str, Any] = {
                "public_key": _b64(peer.key),
                "replace_allowed_ips": True,
                "allowed_ips": [str(n) for n in peer.overlay_prefixes],
                "persistent_keepalive": peer.keepalive_seconds or 0,
            }
            if peer.underlay_endpoint is not None:
                request["endpoint_addr"] = str(peer.underlay_endpoint.address)
                request["endpoint_port"] = peer.underlay_endpoint.port
            requests.append(request)
        requests += [{"public_key": _b64(key), "remove": True} for key in diff.remove]

        def work(wg: Any) -> None:
            for request in requests:
                wg.set(interface, peer=request)

        await self._genl(f"changing peers of {interface}", work)
        self.change_operations += len(requests)

    async def _read_device(self) -> DeviceState:
        """Config and counters per peer (a netlink device dump)."""
        interface = self._check_running()
        messages: list[Any] = await self._genl(
            f"reading {interface}", lambda wg: list(wg.info(interface))
        )
        try:
            return _parse_info(messages)
        except (KeyError, TypeError, ValueError, DecodeError) as exc:
            raise TunnelError(f"unexpected netlink reply for {interface}: {exc}") from exc

    async def stop(self) -> None:
        """Delete the link (routes and addresses go with it). Idempotent."""
        interface, self._interface = self._interface, None
        if interface is not None:
            await self._links.delete(interface)


def _b64(key: TunnelKey) -> str:
    if key.scheme is not TunnelKeyScheme.X25519:
        raise TunnelError(f"WireGuard cannot use {key.scheme.value} tunnel keys")
    return base64.b64encode(key.raw).decode()


def _parse_info(messages: Iterable[Any]) -> dict[TunnelKey, tuple[PeerConfig, PeerStats]]:
    """Merge a (possibly multi-message) device dump into configs and stats per peer."""
    prefixes: dict[TunnelKey, list[str]] = {}
    fields: dict[TunnelKey, dict[str, Any]] = {}
    for msg in messages:
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or ():
            raw = peer.get_attr("WGPEER_A_PUBLIC_KEY")
            key = TunnelKey(TunnelKeyScheme.X25519, base64.b64decode(raw["value"]))
            seen = fields.setdefault(key, {})
            for name in ("WGPEER_A_ENDPOINT", "WGPEER_A_LAST_HANDSHAKE_TIME"):
                if peer.get_attr(name) is not None:
                    seen[name] = peer.get_attr(name)
            for name in (
                "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL",
                "WGPEER_A_RX_BYTES",
                "WGPEER_A_TX_BYTES",
            ):
                if peer.get_attr(name) is not None:
                    seen[name] = int(peer.get_attr(name))
            for allowed in peer.get_attr("WGPEER_A_ALLOWEDIPS") or ():
                if allowed.get("addr"):
                    prefixes.setdefault(key, []).append(allowed["addr"])
    out: dict[TunnelKey, tuple[PeerConfig, PeerStats]] = {}
    for key, seen in fields.items():
        endpoint = None
        if "WGPEER_A_ENDPOINT" in seen:
            addr, port = seen["WGPEER_A_ENDPOINT"]["addr"], seen["WGPEER_A_ENDPOINT"]["port"]
            text = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
            endpoint = UnderlayEndpoint.parse(text) if port else None
        handshake = None
        if "WGPEER_A_LAST_HANDSHAKE_TIME" in seen:
            sec = seen["WGPEER_A_LAST_HANDSHAKE_TIME"]["tv_sec"]
            nsec = seen["WGPEER_A_LAST_HANDSHAKE_TIME"]["tv_nsec"]
            if sec or nsec:
                handshake = datetime.fromtimestamp(sec + nsec / 1e9, UTC)
        keepalive = seen.get("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 0) or None
        config = PeerConfig(key, prefixes.get(key, []), endpoint, keepalive)
        stats = PeerStats(
            key,
            handshake,
            seen.get("WGPEER_A_RX_BYTES", 0),
            seen.get("WGPEER_A_TX_BYTES", 0),
            endpoint,
        )
        out[key] = (config, stats)
    return out
