"""Composition root of `rustynetd`, the node daemon: config → ports → agent → local API.

The one rule: the daemon never runs half-trusted. Before anything else it turns core dumps
off and checks the crypto policy; an enrolled node whose identity or tunnel key is missing
from the key store refuses to start (it never quietly becomes a new identity); the control
plane is reached only through the pinned HTTPS client built from the join token (at join) or
the saved node state (afterwards); SIGTERM tears the interface, its routes and the nftables
table down before exit 0.

Lifecycle (`NodeDaemon.lifecycle`, shown by `rustynet status`): `not_enrolled` (no node state;
waits for `rustynet up --token-file`), `starting`, `running` (the agent's loop runs as a
supervised task: an unexpected error is logged and the loop restarted with backoff), `down`
(`rustynet down`: tunnel removed, still enrolled), `revoked` (control refused our identity;
the agent tore the tunnel down), `failed` (start-up of the tunnel failed; see the log).

Backend selection: `auto` probes the kernel backend (`check_available`: the wireguard genl
family must resolve) and falls back to userspace (wireguard-go); `status` shows which. The
`memory` backend (with the in-memory firewall) needs no privileges: for tests and trials.

SIGHUP re-reads the config file: the log level applies at once; a change of anything else
(socket, interface, backend, ports, key store) is logged as needing a restart.

Namespaces: rustynetd creates its interface and nftables table in the network namespace it
runs in and reaches the control plane from there; the CLI talks to it over the UNIX socket,
which works across namespaces (`rustynet ping` runs ping in the CALLER's namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

import attrs

from rustynet.adapters.clock import SystemClock
from rustynet.adapters.config import NodeConfig, load_node_config
from rustynet.adapters.control_client import ControlClient, pinned_ssl_context
from rustynet.adapters.control_plane_http import HttpControlPlane
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.firewall.memory import MemoryFirewall
from rustynet.adapters.firewall.nftables import NftablesFirewall, table_name_for
from rustynet.adapters.local_api import LocalApiServer
from rustynet.adapters.node_state_file import FileNodeStateStore
from rustynet.adapters.relay.bridge import RelayBridge
from rustynet.adapters.relay.client import WebSocketRelayTransport
from rustynet.adapters.relay.probe import DirectProber, probe_port
from rustynet.adapters.tunnel.memory import MemoryTunnelBackend
from rustynet.adapters.tunnel.wireguard_uapi import WireGuardUapiBackend
from rustynet.application.node_agent import (
    AgentSettings,
    AgentStatus,
    AlreadyEnrolled,
    JoinFailed,
    NodeAgent,
    NotEnrolled,
    NotRunning,
)
from rustynet.application.reenroll import check_reenroll, discard_revoked
from rustynet.bootstrap.node_main import open_keystore, rustynetd_main
from rustynet.domain.errors import DecodeError, RustynetError
from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.node_state import NodeState
from rustynet.domain.tls_pin import SpkiPin
from rustynet.ports.clock import Clock
from rustynet.ports.control_plane import ControlPlaneClient
from rustynet.ports.entropy import Entropy
from rustynet.ports.firewall import Firewall
from rustynet.ports.keystore import Keystore
from rustynet.ports.node_state_store import NodeStateStore
from rustynet.ports.relay import RelayTransport
from rustynet.ports.relay_path import RelayBridgePort
from rustynet.ports.tunnel import BackendUnavailable, TunnelBackend

STATE_FILE: Final = "node-state.json"
SUPERVISE_BACKOFF_MAX: Final = 30.0

_log = logging.getLogger("rustynet.node.daemon")

ControlFactory = Callable[[str, bytes], ControlPlaneClient]


def https_control(url: str, pin: bytes) -> ControlPlaneClient:
    """The pinned TLS 1.3 client for `url` (pin = SHA-256 of the server's SPKI)."""
    return HttpControlPlane(ControlClient(url, SpkiPin(pin)))


async def select_backend(kind: str) -> TunnelBackend:
    """`auto`: kernel when its module is there, else userspace; or exactly the one asked."""
    if kind == "memory":
        return MemoryTunnelBackend()
    reason = "asked for"
    if kind in ("auto", "kernel"):
        # Imported only when asked for: a userspace node does not load the genl WireGuard code.
        from rustynet.adapters.tunnel.wireguard_kernel import (  # noqa: PLC0415
            WireGuardKernelBackend,
        )

        kernel = WireGuardKernelBackend()
        try:
            await kernel.check_available()
        except BackendUnavailable as exc:
            if kind == "kernel":
                raise
            reason = f"kernel backend unavailable ({exc})"
        else:
            _log.info("tunnel.backend_selected", extra={"backend": kernel.name, "kind": kind})
            return kernel
    userspace = WireGuardUapiBackend()
    await userspace.check_available()
    _log.info(
        "tunnel.backend_selected",
        extra={"backend": userspace.name, "kind": kind, "reason": reason},
    )
    return userspace


def default_hostname() -> str:
    """This host's short name, lowercased (the control plane makes it a unique node name)."""
    return socket.gethostname().split(".", 1)[0].lower() or "node"


@attrs.define
class NodePorts:
    """The adapters one daemon runs on (tests pass memory ones and a local control plane)."""

    tunnel: TunnelBackend
    firewall: Firewall
    keystore: Keystore
    state_store: NodeStateStore
    clock: Clock
    entropy: Entropy
    control_factory: ControlFactory
    relay: RelayTransport | None = None
    bridge: RelayBridgePort | None = None
    prober: DirectProber | None = None


class NodeDaemon:
    """Owns the node agent across `up`/`down` and implements the local API's `NodeControl`."""

    def __init__(self, ports: NodePorts, settings: AgentSettings) -> None:
        self.ports = ports
        self.settings = settings
        self._agent: NodeAgent | None = None
        self._control: ControlPlaneClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._lifecycle = "not_enrolled"
        self._lock = asyncio.Lock()
        self._rejected_before = 0

    # --- NodeControl ------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """The tunnel backend's name."""
        return self.ports.tunnel.name

    @property
    def lifecycle(self) -> str:
        """not_enrolled | starting | running | down | revoked | failed."""
        return self._lifecycle

    @property
    def rejected_maps(self) -> int:
        """Peer maps rejected since the daemon started."""
        current = self._agent.rejected_maps if self._agent is not None else 0
        return self._rejected_before + current

    async def status(self) -> AgentStatus | None:
        """The agent's snapshot, or one from the saved state when no agent runs."""
        if self._agent is not None and self._agent.state is not None:
            return await self._agent.status()
        state = self.ports.state_store.load()
        if state is None:
            return None
        own = state.overlay_addresses[0].split("/")[0] if state.overlay_addresses else ""
        return AgentStatus(
            node_name=state.name,
            node_id=state.node_id,
            overlay_ip=own,
            control_url=state.control_url,
            connected=False,
            backend=self.backend,
            peermap_serial=state.peer_map_watermark,
            peers=(),
        )

    async def up(self, token: str | None, hostname: str | None) -> None:
        """Join with `token` (only when not enrolled), then start the tunnel if it is not."""
        async with self._lock:
            state = self.ports.state_store.load()
            if token is not None:
                if state is not None:
                    hint = (
                        "it was revoked: rustynet up --reenroll --token-file FILE"
                        if self._lifecycle == "revoked"
                        else "a join token is not needed (rustynet up)"
                    )
                    raise AlreadyEnrolled(
                        f"this node is already enrolled as {state.name} ({state.node_id}); {hint}"
                    )
                await self._join(token, hostname or default_hostname())
                return
            if state is None:
                raise NotEnrolled("this node is not enrolled: rustynet up --token-file FILE")
            if self._lifecycle in ("running", "starting"):
                return
            await self._bring_up(state)

    async def down(self) -> None:
        """Stop the loop and tear the tunnel and firewall down; the node stays enrolled."""
        async with self._lock:
            await self._stop_agent()
            if self.ports.state_store.load() is not None and self._lifecycle != "revoked":
                self._lifecycle = "down"

    async def rotate_key(self) -> tuple[str, str]:
        """Rotate the tunnel key now (the agent publishes it to control, then cuts over)."""
        async with self._lock:
            agent = self._agent
            if agent is None or self._lifecycle != "running" or agent.state is None:
                raise NotRunning(f"the tunnel is {self._lifecycle}: rustynet up first")
            await agent.rotate_tunnel_key()
            state = agent.state
            return state.tunnel_key.to_text(), state.tunnel_key_expires_at.isoformat()

    async def reenroll(self, token: str, hostname: str | None) -> None:
        """A revoked node joins again with `token`: fresh keys and node id, same config and
        key store, and its old name unless `hostname` is given (application/reenroll.py)."""
        async with self._lock:
            check_reenroll(self._lifecycle, self.ports.state_store, token)
            await self._stop_agent()
            old = discard_revoked(self.ports.state_store, self.ports.keystore)
            _log.info("node.reenrolling", extra={"old_node": old.node_id, "node_name": old.name})
            self._lifecycle = "not_enrolled"
            await self._join(token, hostname or old.name)

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """At daemon start: an enrolled node brings its tunnel up (missing keys raise)."""
        if self.ports.prober is not None:
            await self.ports.prober.start()
        async with self._lock:
            state = self.ports.state_store.load()
            if state is None:
                self._lifecycle = "not_enrolled"
                _log.info("node.not_enrolled", extra={"hint": "rustynet up --token-file FILE"})
                return
            await self._bring_up(state)

    async def shutdown(self) -> None:
        """SIGTERM: stop the loop, remove interface, routes and firewall table."""
        async with self._lock:
            await self._stop_agent()
            # Nothing may outlive the daemon even when no agent ran (a failed start).
            await self.ports.tunnel.stop()
            await self.ports.firewall.remove()
            if self.ports.bridge is not None:
                self.ports.bridge.close()
            if self.ports.prober is not None:
                self.ports.prober.close()

    def _new_agent(self, control: ControlPlaneClient) -> NodeAgent:
        p = self.ports
        return NodeAgent(
            control=control,
            tunnel=p.tunnel,
            firewall=p.firewall,
            keystore=p.keystore,
            state_store=p.state_store,
            clock=p.clock,
            entropy=p.entropy,
            settings=self.settings,
            relay=p.relay,
            bridge=p.bridge,
            prober=p.prober,
        )

    async def _join(self, token: str, hostname: str) -> None:
        try:
            parsed = JoinToken.parse(token)
        except DecodeError as exc:
            raise JoinFailed(f"not a valid join token: {exc}") from None
        url, pin = parsed.control_url, parsed.tls_spki_sha256
        parsed.wipe()
        control = self.ports.control_factory(url, pin)
        agent = self._new_agent(control)
        try:
            state = await agent.join(token, hostname)
        except BaseException:
            await control.close()
            raise
        _log.info("node.joined", extra={"node": state.node_id, "node_name": state.name})
        await self._start_agent(agent, control)

    async def _bring_up(self, state: NodeState) -> None:
        control = self.ports.control_factory(state.control_url, state.tls_spki_sha256)
        await self._start_agent(self._new_agent(control), control)

    async def _start_agent(self, agent: NodeAgent, control: ControlPlaneClient) -> None:
        self._lifecycle = "starting"
        try:
            await agent.start()
        except BaseException:
            self._lifecycle = "failed"
            with contextlib.suppress(RustynetError):
                await agent.teardown()
            await control.close()
            raise
        if self._agent is not None:
            self._rejected_before += self._agent.rejected_maps
        self._agent, self._control = agent, control
        self._task = asyncio.create_task(self._supervise(agent), name="rustynet-agent")
        self._lifecycle = "running"

    async def _supervise(self, agent: NodeAgent) -> None:
        delay = 1.0
        while True:
            try:
                await agent.run()
            except Exception as exc:  # noqa: BLE001 - the daemon outlives one bad iteration
                _log.error(
                    "node.agent_failed",
                    extra={"error": type(exc).__name__, "detail": str(exc)[:300]},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, SUPERVISE_BACKOFF_MAX)
                continue
            if agent.revoked:
                self._lifecycle = "revoked"
            return

    async def _stop_agent(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        agent, control = self._agent, self._control
        self._control = None
        if agent is not None:
            await agent.stop()
            agent.connected = False
        if control is not None:
            await control.close()


# --- the process ------------------------------------------------------------------------------


def _reload(path: Path | None, running: NodeConfig) -> NodeConfig:
    """SIGHUP: re-read; apply the log level; name the settings that need a restart."""
    try:
        fresh = load_node_config(path)
    except RustynetError as exc:
        _log.error("config.reload_failed", extra={"error": str(exc)})
        return running
    logging.getLogger().setLevel(fresh.log_level.upper())
    changed = sorted(
        name
        for name in attrs.fields_dict(NodeConfig)
        if name != "log_level" and getattr(fresh, name) != getattr(running, name)
    )
    _log.info(
        "config.reloaded",
        extra={"log_level": fresh.log_level, "needs_restart": changed},
    )
    return attrs.evolve(running, log_level=fresh.log_level)


def build_daemon(config: NodeConfig, tunnel: TunnelBackend, keystore: Keystore) -> NodeDaemon:
    """Wire the real adapters around `tunnel` and `keystore`."""
    firewall: Firewall = (
        MemoryFirewall()
        if config.backend == "memory"
        else NftablesFirewall(table=table_name_for(config.interface))
    )
    port = config.underlay_port
    # The relay path needs the tunnel's own UDP port (the bridge sends relayed packets to it)
    # and probes use port + 1: both come with a configured underlay_port.
    ports = NodePorts(
        tunnel=tunnel,
        firewall=firewall,
        keystore=keystore,
        state_store=FileNodeStateStore(config.state_dir / STATE_FILE),
        clock=SystemClock(),
        entropy=OsEntropy(),
        control_factory=https_control,
        relay=None if port is None else WebSocketRelayTransport(ssl_context=pinned_ssl_context),
        bridge=None if port is None else RelayBridge(lambda: port),
        prober=None if port is None else DirectProber(probe_port(port)),
    )
    settings = AgentSettings(
        interface=config.interface,
        underlay_port=config.underlay_port,
        endpoints=config.underlay_endpoints,
    )
    return NodeDaemon(ports, settings)


async def run_daemon(
    config: NodeConfig, config_path: Path | None, keystore: Keystore | None = None
) -> int:
    """Run until SIGTERM/SIGINT; tear everything down; 0 on a clean stop.

    `keystore`: one opened by `open_keystore` (the daemon closes it), else opened here."""
    if keystore is None:
        keystore = open_keystore(config)
    try:
        tunnel = await select_backend(config.backend)
        daemon = build_daemon(config, tunnel, keystore)
        api = LocalApiServer(daemon, config.socket, config.socket_group)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        running = config

        def hangup() -> None:
            nonlocal running
            running = _reload(config_path, running)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, hangup)
        try:
            await daemon.start()
            await api.start()
            # Start-up garbage is gone; what is left lives as long as the daemon: keep it out
            # of the collector's generations so idle collections stay short.
            gc.collect()
            gc.freeze()
            sys.stderr.write(
                f"rustynetd: ready; socket {config.socket} backend {daemon.backend} "
                f"state {daemon.lifecycle}\n"
            )
            sys.stderr.flush()
            await stop.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            await api.close()
            await daemon.shutdown()
            _log.info("node.stopped")
    finally:
        keystore.close()
    return 0


__all__ = [
    "NodeDaemon",
    "NodePorts",
    "build_daemon",
    "https_control",
    "run_daemon",
    "rustynetd_main",
    "select_backend",
]
