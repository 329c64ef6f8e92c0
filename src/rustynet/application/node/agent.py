"""The node agent: composes the node's use cases and runs its loop.

The one rule: the tunnel and the firewall only ever hold what the last ACCEPTED peer map says
(or nothing); the agent owns no security rule itself, it only sequences the modules that do:

* `enrollment.py`: `join(token)`, once;
* `credentials.py`: the identity and tunnel keys (loaded, never made up, at start), the access
  token (renewed on demand), tunnel-key rotation;
* `map_intake.py`: long poll, verify, save, apply; the saved map held back at start;
* `reconciler.py`: the plan against the backends' actual state;
* `paths.py`: each peer's path controller (direct or relay), fed before each plan;
* `relay_link.py`: the session with the home relay.

Theory of operation.

* `start()`: load state and keys (a missing identity key is an error, never a new identity),
  bring the interface up with NO peer, re-verify the saved last good map offline and hold it
  back (`map_intake.py`).
* `step()` (what `run()` repeats): renew the access token when it is close to expiry, rotate
  the tunnel key when it is close to expiry, long-poll for a newer map, reconcile. Errors:
  `ControlUnreachable` (or a non-401 refusal) → `connected` becomes False, the tunnel keeps
  the last good map until that map expires (then every peer is removed: fail closed), and
  `run()` retries with jittered exponential backoff; the first successful poll resyncs.
  A 401 on a node route triggers one token renewal; a 401 on renewal means the node was
  revoked: the agent tears the tunnel and the firewall down and `run()` returns.
* A ticker re-plans every `reconcile_interval` s while a long poll is parked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import attrs
import structlog

from rustynet.application.node.candidates import CandidateReporter, CandidateSettings
from rustynet.application.node.credentials import Contact, Credentials
from rustynet.application.node.enrollment import Enrollment
from rustynet.application.node.errors import AgentRevoked
from rustynet.application.node.map_intake import MapIntake
from rustynet.application.node.map_source import MapSource
from rustynet.application.node.paths import PathKeeper
from rustynet.application.node.punching import NUDGE_DELAY
from rustynet.application.node.reconciler import Reconciler
from rustynet.application.node.relay_link import RelayLink
from rustynet.application.node.saved_state import SavedState
from rustynet.application.node.settings import AgentSettings
from rustynet.application.node.status import AgentStatus, first_address, peer_statuses
from rustynet.domain import path as paths
from rustynet.domain.keys import TunnelKey
from rustynet.domain.node_state import NodeState
from rustynet.domain.reconcile import Action
from rustynet.ports.clock import Clock
from rustynet.ports.control_plane import ControlPlaneClient, ControlRejected, ControlUnreachable
from rustynet.ports.entropy import Entropy
from rustynet.ports.firewall import Firewall, FirewallError
from rustynet.ports.interfaces import InterfaceAddresses, InterfaceChanges, ReflexiveDiscovery
from rustynet.ports.keystore import Keystore
from rustynet.ports.node_state_store import NodeStateStore
from rustynet.ports.punch import PrePunchPort
from rustynet.ports.relay import RelayTransport
from rustynet.ports.relay_path import RelayBridgePort
from rustynet.ports.tunnel import TunnelBackend, TunnelError
from rustynet.ports.wire.v1 import Trust

_log = structlog.get_logger(__name__)


@attrs.define
class LoopState:
    """The loop's flags: asked to stop, revoked."""

    stopping: bool = False
    revoked: bool = False


class NodeAgent:
    """One node. Construct with its ports (bootstrap), then `join` once and `start` + `run`."""

    def __init__(
        self,
        *,
        control: ControlPlaneClient,
        tunnel: TunnelBackend,
        firewall: Firewall,
        keystore: Keystore,
        state_store: NodeStateStore,
        clock: Clock,
        entropy: Entropy,
        settings: AgentSettings,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        relay: RelayTransport | None = None,
        bridge: RelayBridgePort | None = None,
        interfaces: InterfaceAddresses | None = None,
        reflexive: ReflexiveDiscovery | None = None,
        changes: InterfaceChanges | None = None,
        puncher: PrePunchPort | None = None,
    ) -> None:
        self.control, self.tunnel, self.clock, self.entropy = control, tunnel, clock, entropy
        self.settings = settings
        self._sleep = sleep
        self.saved = SavedState(state_store)
        self.contact = Contact()
        self.enrollment = Enrollment(control, keystore, self.saved, clock, entropy, settings)
        self.credentials = Credentials(
            control=control,
            keystore=keystore,
            saved=self.saved,
            clock=clock,
            entropy=entropy,
            settings=settings,
            contact=self.contact,
        )
        self.intake = MapIntake(
            control=control,
            credentials=self.credentials,
            saved=self.saved,
            clock=clock,
            settings=settings,
            contact=self.contact,
            reconcile=self.reconcile,
        )
        self.relay_link: RelayLink | None = None
        if relay is not None and bridge is not None:
            bridge.allowed = self.intake.is_peer
            self.relay_link = RelayLink(
                transport=relay,
                bridge=bridge,
                control=control,
                clock=clock,
                credentials=self.credentials.fresh,
                identity=self.credentials.identity,
                trust=self._trust_texts,
                home=self.intake.home_relay,
            )
        self.path_keeper = PathKeeper(
            tunnel=tunnel,
            bridge=bridge,
            clock=clock,
            settings=settings,
            current_map=lambda: self.intake.applied,
            relay_up=lambda: self.relay_link is not None and self.relay_link.up,
            relay_id=self._relay_id,
            puncher=puncher,
            own_key=self._own_tunnel_key,
            own_candidates=lambda: self.candidates.reported or (),
            relay_session=lambda: None if self.relay_link is None else self.relay_link.session,
            own_nat=lambda: self.candidates.reported_nat,
        )
        self.reconciler = Reconciler(
            tunnel=tunnel,
            firewall=firewall,
            clock=clock,
            settings=settings,
            credentials=self.credentials,
            intake=self.intake,
            path_keeper=self.path_keeper,
        )
        self.candidates = CandidateReporter(
            CandidateSettings(
                interface=settings.interface,
                port=settings.underlay_port,
                configured=settings.endpoints,
                exclude=settings.candidate_exclude,
            ),
            control,
            interfaces,
            reflexive,
        )
        self.candidates.current_map = lambda: self.intake.applied
        self._changes = changes
        self._interfaces = interfaces
        self.loop = LoopState()

    # --- what the daemon and the status read --------------------------------------------------

    @property
    def state(self) -> NodeState | None:
        """The saved node state (None before `join` or `start`)."""
        return self.saved.current

    @property
    def connected(self) -> bool:
        """True while control answers."""
        return self.contact.connected

    @connected.setter
    def connected(self, value: bool) -> None:
        self.contact.connected = value

    @property
    def revoked(self) -> bool:
        """True once control refused our identity (the loop has ended)."""
        return self.loop.revoked

    @property
    def rejected_maps(self) -> int:
        """Peer maps rejected by this agent (security events)."""
        return self.intake.state.rejected

    @property
    def map_source(self) -> MapSource | None:
        """Where the applied map came from (None before `start`)."""
        return self.intake.state.source

    def path_of(self, peer_id: str) -> paths.StatusPath | None:
        """The controller's path for a peer (None when it is not in the map)."""
        return self.path_keeper.path_of(peer_id)

    def _own_tunnel_key(self) -> TunnelKey | None:
        key = self.credentials.tunnel_key
        return None if key is None else key.public_key

    def _trust_texts(self) -> tuple[str, tuple[str, ...]]:
        state = self.saved.require()
        return state.root_certificate, tuple(state.signing_certificates)

    # --- join, start, stop ----------------------------------------------------------------------

    async def join(
        self, token_text: str, hostname: str, requested_tags: tuple[str, ...] | None = None
    ) -> NodeState:
        """Enroll with a join token (`enrollment.py`); the agent then holds its credentials."""
        enrolled = await self.enrollment.join(token_text, hostname, requested_tags)
        self.credentials.adopt(
            enrolled.identity,
            enrolled.tunnel_key,
            enrolled.access_token,
            enrolled.access_token_expires_at,
        )
        return enrolled.state

    async def start(self) -> None:
        """Load state and keys, bring the interface up, hold the saved map back."""
        state = self.saved.load()
        key = self.credentials.load(state)
        self.intake.open(state, self.clock.now())
        await self.reconciler.start_interface(key)
        await self.reconcile()

    async def teardown(self) -> None:
        """Remove the interface, its routes and the firewall table (idempotent)."""
        await self.reconciler.teardown()

    async def stop(self) -> None:
        """Stop `run()` and tear down."""
        self.loop.stopping = True
        await self.teardown()

    # --- the use cases, one call each -------------------------------------------------------------

    async def renew_token(self) -> None:
        """Challenge → identity-key signature → fresh access token; 401 means revoked."""
        await self.credentials.renew_token()

    async def poll(self, timeout: float | None = None) -> bool:
        """One long poll; True when a newer map was accepted and applied."""
        return await self.intake.poll(timeout)

    async def offer_peer_map(self, envelope: str, trust: Trust) -> bool:
        """Accept and apply a map; a rejection is logged, counted and changes nothing."""
        return await self.intake.offer(envelope, trust)

    async def reconcile(self) -> tuple[Action, ...]:
        """Plan against the backends' actual state and run the actions; returns them."""
        return await self.reconciler.reconcile()

    async def rotate_tunnel_key(self) -> None:
        """Cut over to a fresh tunnel key (`credentials.py` tells why it is a cut-over)."""
        before = self.saved.require()
        new_key, expires = await self.credentials.publish_next_key()
        async with self.reconciler.lock:  # no plan may run half on the old key
            await self.reconciler.set_key(new_key)
            self.credentials.promote(new_key, expires, before)
        _log.info("tunnel_key.rotated", fingerprint=new_key.public_key.fingerprint().to_text())

    # --- the loop ---------------------------------------------------------------------------------

    async def step(self, timeout: float | None = None) -> bool:
        """One iteration: token, rotation, one long poll, reconcile. True if a map applied."""
        try:
            await self.credentials.ensure_token()
            if self.credentials.rotation_due():
                await self.rotate_tunnel_key()
            if self.candidates.reported is None:
                await self._report_candidates()
            applied = await self.poll(timeout)
            if applied and self.relay_link is not None:
                self.relay_link.map_applied()  # a first (or new) home relay: connect now
            discovery = self.candidates.discovery
            if applied and discovery is not None and discovery.stale(self.intake.applied):
                self.candidates.wake.set()  # new STUN servers: classify now, not at the tick
        except (ControlUnreachable, ControlRejected):
            self.contact.connected = False
            await self.reconcile()  # an expired map fails closed even while control is down
            raise
        if not applied:
            await self.reconcile()
        return applied

    async def run(self) -> None:
        """Repeat `step` until stopped or revoked; outages back off with jitter."""
        if not self.reconciler.started:
            await self.start()
        tasks = [
            asyncio.create_task(self._reconcile_ticker()),
            asyncio.create_task(self._candidate_ticker(), name="candidates"),
        ]
        if self._changes is not None:
            tasks.append(asyncio.create_task(self._watch_changes(), name="interface-changes"))
        if self.relay_link is not None:
            tasks.append(asyncio.create_task(self.relay_link.run(), name="relay-link"))
        try:
            await self._run_steps()
        finally:
            every = (*tasks, *self.path_keeper.probes())
            for task in every:
                task.cancel()
            self.path_keeper.udp.close()
            for task in every:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _reconcile_ticker(self) -> None:
        """Re-plan every `reconcile_interval` s (responders waking up, expiries, lost peers)."""
        while not self.loop.stopping:
            await asyncio.sleep(self._until_next_plan())
            try:
                await self.reconcile()
            except (TunnelError, FirewallError) as exc:
                _log.warning("tunnel.reconcile_failed", error=str(exc)[:200])

    def _until_next_plan(self) -> float:
        """Seconds to the next plan: `reconcile_interval`, or sooner when an endpoint trial's
        attempt ends (a re-kick on time is what keeps a NAT pair's connect time short)."""
        interval = self.settings.reconcile_interval
        due = self.path_keeper.wake_at()
        if due is None:
            return interval
        return min(interval, max(0.02, (due - self.clock.now()).total_seconds()))

    async def _candidate_ticker(self) -> None:
        """Re-gather every `candidate_interval` s; report only a changed list."""
        wake = self.candidates.wake
        while not self.loop.stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.settings.candidate_interval)
            wake.clear()
            if self.candidates.reported is None:
                continue  # the loop's step reports first (it holds a fresh token)
            try:
                await self._report_candidates()
            except (ControlUnreachable, ControlRejected, TunnelError) as exc:
                _log.info("candidates.report_failed", error=str(exc)[:200])
            except FirewallError as exc:
                _log.warning("tunnel.reconcile_failed", error=str(exc)[:200])

    async def _report_candidates(self) -> None:
        """Report our candidates; when our NAT class changed, plan at once: whether a peer's
        direct path is worth an attempt depends on it (`domain.nat.direct_unlikely`), and both
        ends of a pair should decide at nearly the same instant (each switch to the relay
        starts a fresh session)."""
        before = self.candidates.reported_nat
        await self.candidates.report(self.credentials.node_credentials())
        if self.candidates.reported_nat is not before:
            await self.reconcile()

    async def _watch_changes(self) -> None:
        """An address or route change: after `change_debounce` s of quiet, re-classify and
        re-gather at once (roaming: new candidates reach control within ~1-2 s)."""
        changes = self._changes
        assert changes is not None
        try:
            known = await self._host_addresses()
            while not self.loop.stopping:
                await changes.changed()
                while True:  # debounce: a burst (DHCP, a link flap) is one re-gather
                    try:
                        await asyncio.wait_for(changes.changed(), self.settings.change_debounce)
                    except TimeoutError:
                        break
                discovery = self.candidates.discovery
                if discovery is not None:
                    discovery.invalidate()
                _log.info("candidates.interfaces_changed")
                now = await self._host_addresses()
                if known is None or now is None or known - now:
                    await self._reconnect()
                known = now if now is not None else known
                self.candidates.wake.set()
                await self._nudge_peers()
        finally:
            await changes.close()

    async def _host_addresses(self) -> frozenset[str] | None:
        """The host's addresses outside the tunnel that a connection to control or a relay
        can come from: no loopback or link-local ones (None: this node cannot read them)."""
        if self._interfaces is None:
            return None
        try:
            found = await self._interfaces.addresses()
        except (TunnelError, OSError) as exc:
            _log.warning("interfaces.read_failed", error=str(exc)[:200])
            return None
        tunnel = self.settings.interface
        return frozenset(
            str(a)
            for name, addrs in found.items()
            if name != tunnel
            for a in addrs
            if not (a.is_loopback or a.is_link_local)
        )

    async def _reconnect(self) -> None:
        """An address of this host went away: connections to control and to the relay made
        from it are dead, and a request parked on one (the long poll) would only time out.
        Dropping them makes the next request (the candidate report first) connect from where
        the host is now."""
        _log.info("node.reconnecting", reason="a host address went away")
        await self.control.reconnect()
        if self.relay_link is not None:
            await self.relay_link.reconnect()

    async def _nudge_peers(self) -> None:
        """Our addresses changed (roaming): every tunnel endpoint is set again and a keepalive
        goes out from where we are now, at once (two plans, a nudge apart), so peers follow
        us without waiting for the new candidates to travel through control."""
        self.path_keeper.punching.nudge_all(self.intake.applied, self.clock.now())
        try:
            await self.reconcile()
            await asyncio.sleep(NUDGE_DELAY.total_seconds())
            await self.reconcile()
        except (TunnelError, FirewallError) as exc:
            _log.warning("tunnel.reconcile_failed", error=str(exc)[:200])

    async def _run_steps(self) -> None:
        delay = self.settings.backoff_initial
        while not self.loop.stopping:
            try:
                rejected = self.rejected_maps
                await self.step()
                if self.rejected_maps > rejected:
                    # A server answering at once with bad maps must not make us spin: back
                    # off exactly as for an outage (the last good map stays applied).
                    await self._sleep(self._jitter(delay))
                    delay = min(delay * 2, self.settings.backoff_max)
                    continue
                delay = self.settings.backoff_initial
            except AgentRevoked:
                self.loop.revoked = True
                _log.warning("node.revoked", node=self.state.node_id if self.state else "-")
                await self.teardown()
                return
            except (ControlUnreachable, ControlRejected) as exc:
                _log.info("control.unreachable", error=str(exc)[:200], retry_in=delay)
                await self._sleep(self._jitter(delay))
                delay = min(delay * 2, self.settings.backoff_max)

    def _jitter(self, delay: float) -> float:
        """Uniform in [delay/2, delay] (full jitter would allow near-zero retries)."""
        fraction = int.from_bytes(self.entropy.token_bytes(2), "big") / 65535
        return delay * (0.5 + fraction / 2)

    # --- status ----------------------------------------------------------------------------------

    def _relay_id(self) -> str | None:
        """The relay relayed peers go through (the map's home relay), for status and logs."""
        home = self.intake.home_relay()
        return None if home is None else home.relay_id

    async def status(self) -> AgentStatus:
        """The CLI's status snapshot."""
        state = self.saved.require("no node state")
        stats = await self.tunnel.stats() if self.reconciler.started else {}
        peers = peer_statuses(
            self.intake.applied,
            stats,
            self.path_keeper.state.controllers,
            self.settings.path_policy,
            self.clock.now(),
            relay_id=self._relay_id(),
            transport=self.path_keeper.transport,
        )
        watermark = self.intake.watermark
        source = self.map_source
        return AgentStatus(
            node_name=state.name,
            node_id=state.node_id,
            overlay_ip=first_address(state.overlay_addresses),
            control_url=state.control_url,
            connected=self.connected,
            backend=self.tunnel.name,
            peermap_serial=state.peer_map_watermark if watermark is None else watermark,
            peers=peers,
            peermap_source=source.status_text() if source else "none",
        )


__all__ = ["LoopState", "NodeAgent"]
