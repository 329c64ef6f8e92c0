"""The node daemon's use case: own one agent across `up`, `down`, re-enrollment and shutdown.

The one rule: the daemon never runs half-trusted and never drifts between states: it is
always in one `lifecycle.DaemonState` and moves only along `lifecycle.TRANSITIONS`. An
enrolled node whose identity or tunnel key is missing refuses to start (`failed`; it never
quietly becomes a new identity); the control plane is reached only through the client that
`NodePorts.control_factory` builds from the join token (at join) or the saved node state
(afterwards: the pinned HTTPS client in production); `shutdown` tears the interface, its
routes and the firewall table down even when no agent ran.

The agent's loop runs as a supervised task: an unexpected error is logged and the loop
restarted with backoff; a loop that ends because control refused our identity moves the
daemon to `revoked`. `NodeDaemon` implements the local API's `NodeControl`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final

import attrs
import structlog

from rustynet.application.node.agent import NodeAgent
from rustynet.application.node.errors import AlreadyEnrolled, JoinFailed, NotEnrolled, NotRunning
from rustynet.application.node.lifecycle import DaemonState, Lifecycle
from rustynet.application.node.netcheck import NetcheckTools, daemon_netcheck
from rustynet.application.node.reenroll import check_reenroll, discard_revoked
from rustynet.application.node.settings import AgentSettings
from rustynet.application.node.status import AgentStatus
from rustynet.domain.errors import DecodeError, RustynetError
from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.node_state import NodeState
from rustynet.ports.clock import Clock
from rustynet.ports.control_plane import ControlPlaneClient
from rustynet.ports.entropy import Entropy
from rustynet.ports.firewall import Firewall
from rustynet.ports.interfaces import InterfaceAddresses, InterfaceChanges, ReflexiveDiscovery
from rustynet.ports.keystore import Keystore
from rustynet.ports.node_state_store import NodeStateStore
from rustynet.ports.punch import PrePunchPort
from rustynet.ports.relay import RelayTransport
from rustynet.ports.relay_path import RelayBridgePort
from rustynet.ports.tunnel import TunnelBackend

SUPERVISE_BACKOFF_MAX: Final = 30.0

_log = structlog.get_logger(__name__)

ControlFactory = Callable[[str, bytes], ControlPlaneClient]
"""(control URL, SHA-256 of its TLS SPKI) → a client that refuses any other server."""


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
    default_hostname: Callable[[], str]
    relay: RelayTransport | None = None
    bridge: RelayBridgePort | None = None
    interfaces: InterfaceAddresses | None = None
    reflexive: ReflexiveDiscovery | None = None
    changes: InterfaceChanges | None = None
    netcheck: NetcheckTools | None = None
    puncher: PrePunchPort | None = None


class NodeDaemon:
    """Owns the node agent across `up`/`down` and implements the local API's `NodeControl`."""

    def __init__(self, ports: NodePorts, settings: AgentSettings) -> None:
        self.ports = ports
        self.settings = settings
        self._agent: NodeAgent | None = None
        self._control: ControlPlaneClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._lifecycle = Lifecycle()
        self._lock = asyncio.Lock()
        self._rejected_before = 0

    # --- NodeControl ------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """The tunnel backend's name."""
        return self.ports.tunnel.name

    @property
    def lifecycle(self) -> DaemonState:
        """The daemon's state (a `str`: not_enrolled | starting | running | down | ...)."""
        return self._lifecycle.state

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
        return None if state is None else AgentStatus.offline(state, self.backend)

    async def netcheck(self) -> dict[str, object]:
        """The netcheck document, measured with the applied peer map's STUN servers and relays
        (`application/node/netcheck.py`)."""
        tools, agent = self.ports.netcheck, self._agent
        if tools is None:
            raise NotRunning("netcheck: this daemon has no network probe (memory backend)")
        peer_map = agent.intake.applied if agent is not None else None
        if agent is None or agent.state is None or peer_map is None:
            raise NotRunning("netcheck needs the tunnel up with a peer map (rustynet status)")
        return await daemon_netcheck(
            tools, peer_map, agent.state.control_url, self.settings.underlay_port
        )

    async def up(self, token: str | None, hostname: str | None) -> None:
        """Join with `token` (only when not enrolled), then start the tunnel if it is not."""
        async with self._lock:
            state = self.ports.state_store.load()
            if token is not None:
                if state is not None:
                    hint = (
                        "it was revoked: rustynet up --reenroll --token-file FILE"
                        if self.lifecycle is DaemonState.REVOKED
                        else "a join token is not needed (rustynet up)"
                    )
                    raise AlreadyEnrolled(
                        f"this node is already enrolled as {state.name} ({state.node_id}); {hint}"
                    )
                await self._join(token, hostname or self.ports.default_hostname())
                return
            if state is None:
                raise NotEnrolled("this node is not enrolled: rustynet up --token-file FILE")
            if self.lifecycle in (DaemonState.RUNNING, DaemonState.STARTING):
                return
            await self._bring_up(state)

    async def down(self) -> None:
        """Stop the loop and tear the tunnel and firewall down; the node stays enrolled."""
        async with self._lock:
            await self._stop_agent()
            enrolled = self.ports.state_store.load() is not None
            if enrolled and self.lifecycle is not DaemonState.REVOKED:
                self._lifecycle.move(DaemonState.DOWN)

    async def rotate_key(self) -> tuple[str, str]:
        """Rotate the tunnel key now (the agent publishes it to control, then cuts over)."""
        async with self._lock:
            agent = self._agent
            if agent is None or self.lifecycle is not DaemonState.RUNNING or agent.state is None:
                raise NotRunning(f"the tunnel is {self.lifecycle}: rustynet up first")
            await agent.rotate_tunnel_key()
            state = agent.state
            return state.tunnel_key.to_text(), state.tunnel_key_expires_at.isoformat()

    async def reenroll(self, token: str, hostname: str | None) -> None:
        """A revoked node joins again with `token`: fresh keys and node id, same config and
        key store, and its old name unless `hostname` is given (`reenroll.py`)."""
        async with self._lock:
            check_reenroll(self.lifecycle, self.ports.state_store, token)
            await self._stop_agent()
            old = discard_revoked(self.ports.state_store, self.ports.keystore)
            _log.info("node.reenrolling", old_node=old.node_id, node_name=old.name)
            self._lifecycle.move(DaemonState.NOT_ENROLLED)
            await self._join(token, hostname or old.name)

    # --- start and shutdown ---------------------------------------------------------------------

    async def start(self) -> None:
        """At daemon start: an enrolled node brings its tunnel up (missing keys raise)."""
        async with self._lock:
            state = self.ports.state_store.load()
            if state is None:
                self._lifecycle.move(DaemonState.NOT_ENROLLED)
                _log.info("node.not_enrolled", hint="rustynet up --token-file FILE")
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

    # --- one agent --------------------------------------------------------------------------------

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
            interfaces=p.interfaces,
            reflexive=p.reflexive,
            changes=p.changes,
            puncher=p.puncher,
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
        _log.info("node.joined", node=state.node_id, node_name=state.name)
        await self._start_agent(agent, control)

    async def _bring_up(self, state: NodeState) -> None:
        control = self.ports.control_factory(state.control_url, state.tls_spki_sha256)
        await self._start_agent(self._new_agent(control), control)

    async def _start_agent(self, agent: NodeAgent, control: ControlPlaneClient) -> None:
        self._lifecycle.move(DaemonState.STARTING)
        try:
            await agent.start()
        except BaseException:
            self._lifecycle.move(DaemonState.FAILED)
            with contextlib.suppress(RustynetError):
                await agent.teardown()
            await control.close()
            raise
        if self._agent is not None:
            self._rejected_before += self._agent.rejected_maps
        self._agent, self._control = agent, control
        self._task = asyncio.create_task(self._supervise(agent), name="rustynet-agent")
        self._lifecycle.move(DaemonState.RUNNING)

    async def _supervise(self, agent: NodeAgent) -> None:
        delay = 1.0
        while True:
            try:
                await agent.run()
            except Exception as exc:  # noqa: BLE001 - the daemon outlives one bad iteration
                _log.error("node.agent_failed", error=type(exc).__name__, detail=str(exc)[:300])
                await asyncio.sleep(delay)
                delay = min(delay * 2, SUPERVISE_BACKOFF_MAX)
                continue
            if agent.revoked:
                self._lifecycle.move(DaemonState.REVOKED)
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


__all__ = ["SUPERVISE_BACKOFF_MAX", "ControlFactory", "NodeDaemon", "NodePorts"]
