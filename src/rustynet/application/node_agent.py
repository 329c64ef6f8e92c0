"""The node agent use case: join, follow the signed peer map, keep the tunnel reconciled.

The one rule: the tunnel and the firewall only ever hold what the last ACCEPTED peer map says
(or nothing): a map is applied only after `PeerMapAcceptor` verified chain, addressee, expiry
and a serial above the persisted watermark, and the watermark and the map are saved before the
tunnel changes; a rejected map changes nothing and is logged as the security event
`peer_map.rejected`.

Theory of operation.

* `join(token)`: parse the join token (control URL, root fingerprint, TLS SPKI pin: the
  control-plane adapter is built from these by bootstrap and refuses any other server), make an
  identity key and a tunnel key, store both in the key store BEFORE completing enrollment, run
  the challenge/proof exchange, pin the returned root certificate to the token's fingerprint,
  save `NodeState`.
* `start()`: load state and keys (a missing identity key is an error, never a new identity),
  bring the interface up with NO peer, re-verify the saved last good map offline and hold it
  back: it applies only when control confirms it current (nothing newer) or after
  `stored_map_fallback` without control (`map_source.py`; `status` says which). The access
  token is kept in memory only and renewed on demand.
* `step()` (what `run()` repeats): renew the access token when it is close to expiry, rotate
  the tunnel key when it is close to expiry, long-poll for a newer map, reconcile. Errors:
  `ControlUnreachable` (or a non-401 refusal) → `connected` becomes False, the tunnel keeps
  the last good map until that map expires (then every peer is removed: fail closed), and
  `run()` retries with jittered exponential backoff; the first successful poll resyncs.
  A 401 on a node route triggers one token renewal; a 401 on renewal means the node was
  revoked: the agent tears the tunnel and the firewall down and `run()` returns.
* Reconcile: `reconcile.desired_state` (who initiates each pair: docs/lab.md pitfall 1) vs the
  backends' actual state → `reconcile.plan` → firewall first, then addresses, peers (one
  `PeerDiff`), routes.
* Tunnel-key rotation: the tunnel protocol holds ONE private key per interface, so rotation is
  a cut-over, not an overlap: the new key is stored as `node.tunnel.next`, bound by the identity
  key and published to control (which bumps every peer's map), then set on the interface
  (peers stay configured) and promoted to `node.tunnel`. Until a peer applies its new map it
  still holds our old public key, so handshakes fail for that short window (one long-poll
  round trip, well under a second with control up) and then re-handshake; established data
  keeps flowing on the old session keys meanwhile, so connectivity survives with at most a
  brief stall. Rotation starts `rotate_before` the expiry, long before peers would drop us.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Final

import attrs

from rustynet.application.map_source import STORED_MAP_FALLBACK, MapSource
from rustynet.application.relay_link import RelayLink
from rustynet.domain import path as paths
from rustynet.domain import reconcile
from rustynet.domain.enrollment import EnrollmentClient, IssueChallenge
from rustynet.domain.errors import (
    DecodeError,
    LocalProtocolError,
    RemoteProtocolError,
    RustynetError,
)
from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.key_hierarchy import TUNNEL_KEY_DEFAULT_LIFETIME, issue_tunnel_key_binding
from rustynet.domain.keys import Purpose, SigningKey, TunnelKey, TunnelKeyScheme, TunnelPrivateKey
from rustynet.domain.netmap import (
    PeerMap,
    PeerMapAcceptor,
    PeerMapRejected,
    PeerMapTrust,
    accept_peer_map,
)
from rustynet.domain.node_state import NodeState
from rustynet.domain.reconcile import Action
from rustynet.domain.tokens import token_renewal_message
from rustynet.domain.tunnel import (
    Capability,
    IPInterface,
    IPNetwork,
    PeerDiff,
    PeerStats,
    UnderlayEndpoint,
)
from rustynet.ports.clock import Clock
from rustynet.ports.control_plane import (
    ControlPlaneClient,
    ControlRejected,
    ControlUnreachable,
    EnrollmentOffer,
    NodeCredentials,
    TrustTexts,
    is_revocation,
)
from rustynet.ports.entropy import Entropy
from rustynet.ports.firewall import Firewall, FirewallError
from rustynet.ports.keystore import KeyNotFound, Keystore, load_or_create
from rustynet.ports.node_state_store import NodeStateStore
from rustynet.ports.relay import RelayEndpoint, RelayTransport
from rustynet.ports.relay_path import DirectProbePort, RelayBridgePort
from rustynet.ports.tunnel import TunnelBackend, TunnelError

_log = logging.getLogger("rustynet.node")
_events = logging.getLogger("rustynet.node.events")

IDENTITY_KEY: Final = "node.identity"
TUNNEL_KEY: Final = "node.tunnel"
NEXT_TUNNEL_KEY: Final = "node.tunnel.next"


class AgentError(RustynetError):
    """The agent cannot do what was asked; the message is for the operator."""


class NotEnrolled(AgentError):  # noqa: N818 - names the state
    """There is no saved node state: run `join` first."""


class AlreadyEnrolled(AgentError):  # noqa: N818 - names the state
    """This state directory already holds an enrolled node."""


class JoinFailed(AgentError):  # noqa: N818 - names the outcome
    """Enrollment was refused or the control plane answered something we do not trust."""


class AgentRevoked(AgentError):  # noqa: N818 - names the state
    """Control refused our identity (401 on token renewal): the node was revoked."""


class NotRunning(AgentError):  # noqa: N818 - names the state
    """The tunnel is not running (`rustynet up` first)."""


@attrs.frozen
class AgentSettings:
    """How the agent runs (filled from rustynetd's config by bootstrap)."""

    interface: str
    underlay_port: int | None = None
    long_poll_seconds: float = 60.0
    renew_before: timedelta = timedelta(seconds=60)
    rotate_before: timedelta = timedelta(days=7)
    tunnel_key_lifetime: timedelta = TUNNEL_KEY_DEFAULT_LIFETIME
    keepalive_seconds: int = reconcile.DEFAULT_KEEPALIVE_SECONDS
    responder_grace: timedelta = reconcile.DEFAULT_RESPONDER_GRACE
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    endpoints: tuple[str, ...] = ()
    # Re-plan this often while a long poll is parked: the responder side of a pair must start
    # talking within the handshake-retry window (docs/lab.md pitfall 1), not after the next map.
    reconcile_interval: float = 1.0
    path_policy: paths.PathPolicy = attrs.field(factory=paths.PathPolicy)
    # After a start, how long without the control plane before the saved map applies.
    stored_map_fallback: timedelta = STORED_MAP_FALLBACK


Path = paths.StatusPath  # direct | relay | trying (unconfirmed) | none (no path)


@attrs.frozen
class PeerStatus:
    """One peer as `rustynet status` shows it."""

    name: str
    overlay_ip: str
    path: Path
    last_handshake: datetime | None
    rx_bytes: int
    tx_bytes: int
    phase: str | None = None  # the path controller's phase (domain/path.py); None: none runs


@attrs.frozen
class AgentStatus:
    """The status snapshot for the CLI (`status --json`)."""

    node_name: str
    node_id: str
    overlay_ip: str
    control_url: str
    connected: bool
    backend: str
    peermap_serial: int
    peers: tuple[PeerStatus, ...]
    peermap_source: str = "none"  # map_source.MapSource.status_text

    def to_json(self) -> dict[str, object]:
        """The documented `status --json` shape."""
        return {
            "node": {"name": self.node_name, "id": self.node_id, "overlay_ip": self.overlay_ip},
            "control": {"url": self.control_url, "connected": self.connected},
            "backend": self.backend,
            "peermap_serial": self.peermap_serial,
            "peermap_source": self.peermap_source,
            "peers": [
                {
                    "name": p.name,
                    "overlay_ip": p.overlay_ip,
                    "path": p.path,
                    "phase": p.phase,
                    "last_handshake": None
                    if p.last_handshake is None
                    else p.last_handshake.isoformat(),
                    "rx_bytes": p.rx_bytes,
                    "tx_bytes": p.tx_bytes,
                }
                for p in self.peers
            ],
        }


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
        prober: DirectProbePort | None = None,
    ) -> None:
        self.control = control
        self.tunnel = tunnel
        self.firewall = firewall
        self.keystore = keystore
        self.state_store = state_store
        self.clock = clock
        self.entropy = entropy
        self.settings = settings
        self._sleep = sleep
        self.state: NodeState | None = None
        self.connected = False
        self.revoked = False
        self._identity: SigningKey | None = None
        self._tunnel_key: TunnelPrivateKey | None = None
        self._token: str | None = None
        self._token_expires: datetime | None = None
        self._acceptor: PeerMapAcceptor | None = None
        self._map: PeerMap | None = None
        self.map_source: MapSource | None = None
        self._addresses: tuple[IPInterface, ...] = ()
        self._routes: tuple[IPNetwork, ...] = ()
        self._listed_since: dict[TunnelKey, datetime] = {}
        self._started = False
        self._stopping = False
        self.rejected_maps = 0
        self._endpoints_reported = False
        self._reconcile_lock = asyncio.Lock()
        self.bridge, self.prober = bridge, prober
        self._paths: dict[str, paths.PeerPath] = {}
        self._new_session: set[TunnelKey] = set()
        self._probes: set[asyncio.Task[None]] = set()
        self.relay_link: RelayLink | None = None
        if relay is not None and bridge is not None:
            bridge.allowed = self._is_peer
            self.relay_link = RelayLink(
                transport=relay,
                bridge=bridge,
                control=control,
                clock=clock,
                credentials=self._fresh_creds,
                identity=self._identity_key,
                trust=self._trust_texts,
                home=self._home_relay,
            )

    # --- join ---------------------------------------------------------------------------------

    async def join(
        self, token_text: str, hostname: str, requested_tags: tuple[str, ...] | None = None
    ) -> NodeState:
        """Enroll with a join token; keys go to the key store, the state to the state store."""
        if self.state_store.load() is not None:
            raise AlreadyEnrolled("this node is already enrolled (state exists)")
        try:
            token = JoinToken.parse(token_text)
        except DecodeError as exc:
            raise JoinFailed(f"not a valid join token: {exc}") from exc
        try:
            return await self._enroll(token, token_text, hostname, requested_tags)
        finally:
            token.wipe()

    async def _enroll(
        self,
        token: JoinToken,
        token_text: str,
        hostname: str,
        requested_tags: tuple[str, ...] | None,
    ) -> NodeState:
        now = self.clock.now()
        identity = SigningKey.generate(self.entropy)
        tunnel_key = TunnelPrivateKey.generate(self.entropy, TunnelKeyScheme.X25519)
        binding = issue_tunnel_key_binding(
            identity, tunnel_key.public_key, now, self.settings.tunnel_key_lifetime
        )
        # Keys are stored before the server commits the enrollment: a crash afterwards leaves a
        # node that can still prove it is the enrolled identity.
        self.keystore.put(IDENTITY_KEY, identity.secret_text().encode("ascii"))
        self.keystore.put(TUNNEL_KEY, tunnel_key.secret_text().encode("ascii"))
        client = EnrollmentClient(identity, tunnel_key.public_key, hostname)
        client.start(token.token_id.to_text())
        offer = EnrollmentOffer(
            join_secret=token_text,
            identity_key=identity.public_key.to_text(),
            tunnel_key=tunnel_key.public_key.to_text(),
            tunnel_key_binding=binding.to_text(),
            hostname=hostname.lower(),
            requested_tags=requested_tags,
        )
        try:
            challenge = await self.control.enroll(offer)
            proof = client.receive(IssueChallenge(challenge.challenge_id, challenge.expires_at))
            if proof is None:
                raise JoinFailed("enrollment produced no proof")
            grant = await self.control.complete_enrollment(proof.challenge_id, proof.signature)
        except ControlRejected as exc:
            raise JoinFailed(f"enrollment refused: {exc}") from exc
        try:
            PeerMapTrust.from_texts(
                grant.trust.root_certificate,
                token.root_fingerprint,
                grant.trust.signing_certificates,
                now,
            )
        except (RemoteProtocolError, LocalProtocolError) as exc:
            _events.warning("enrollment.untrusted_root", extra={"reason": str(exc)[:200]})
            raise JoinFailed("control's root certificate does not match the join token") from exc
        state = NodeState(
            node_id=grant.node_id,
            name=grant.name,
            overlay_addresses=grant.overlay_addresses,
            control_url=token.control_url,
            root_fingerprint=token.root_fingerprint,
            tls_spki_sha256=token.tls_spki_sha256,
            root_certificate=grant.trust.root_certificate,
            signing_certificates=grant.trust.signing_certificates,
            tunnel_key=tunnel_key.public_key,
            tunnel_key_expires_at=binding.validity.not_after,
        )
        self.state_store.save(state)
        self.state = state
        self._identity, self._tunnel_key = identity, tunnel_key
        self._token, self._token_expires = grant.access_token, grant.access_token_expires_at
        _log.info("node.enrolled", extra={"node": grant.node_id, "node_name": grant.name})
        return state

    # --- start / stop -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load state and keys, bring the interface up, re-apply the saved map if still valid."""
        state = self.state_store.load()
        if state is None:
            raise NotEnrolled("no node state: join first")
        self.state = state
        if self._identity is None:
            seed = load_or_create(self.keystore, IDENTITY_KEY, bytearray, must_exist=True)
            self._identity = SigningKey.from_secret_text(seed.decode("ascii"))
            seed[:] = bytes(len(seed))
        if self._tunnel_key is None:
            secret = load_or_create(self.keystore, TUNNEL_KEY, bytearray, must_exist=True)
            self._tunnel_key = TunnelPrivateKey.from_secret_text(secret.decode("ascii"))
            secret[:] = bytes(len(secret))
        if self._tunnel_key.public_key != state.tunnel_key:
            raise AgentError("the stored tunnel key does not match the node state")
        now = self.clock.now()
        trust = self._trust(state.root_certificate, state.signing_certificates, now)
        self._acceptor = PeerMapAcceptor(trust, state.node_id, state.peer_map_watermark)
        held = None
        if state.last_peer_map is not None:
            try:
                saved = accept_peer_map(
                    state.last_peer_map, trust, state.node_id, state.peer_map_watermark - 1, now
                )
                if saved.serial == state.peer_map_watermark:
                    held = saved
            except PeerMapRejected as exc:
                _log.info("peer_map.saved_unusable", extra={"reason": str(exc)[:200]})
        # No peer before control speaks (or the bound passes): see application/map_source.py.
        self.map_source = MapSource.at_start(now, held, self.settings.stored_map_fallback)
        desired = self._desired(now, {})
        await self.tunnel.start(
            reconcile.interface_config(
                self.settings.interface, self._tunnel_key, desired, self.settings.underlay_port
            )
        )
        self._addresses, self._routes = desired.addresses, desired.routes
        self._started = True
        await self.reconcile()

    async def teardown(self) -> None:
        """Remove the interface, its routes and the firewall table (idempotent)."""
        self._map = None
        await self.tunnel.stop()
        await self.firewall.remove()
        self._addresses, self._routes = (), ()
        self._started = False

    async def stop(self) -> None:
        """Stop `run()` and tear down."""
        self._stopping = True
        await self.teardown()

    # --- control-plane calls --------------------------------------------------------------------

    def _creds(self) -> NodeCredentials:
        if self.state is None or self._token is None:
            raise LocalProtocolError("no access token")
        return NodeCredentials(self.state.node_id, self._token)

    async def renew_token(self) -> None:
        """Challenge → identity-key signature → fresh access token; 401 means revoked."""
        if self.state is None or self._identity is None:
            raise NotEnrolled("start the agent first")
        node_id = self.state.node_id
        try:
            challenge = await self.control.token_challenge(node_id)
            signature = self._identity.sign(
                Purpose.TOKEN_RENEWAL, token_renewal_message(challenge.challenge_id, node_id)
            )
            grant = await self.control.renew_token(node_id, challenge.challenge_id, signature)
        except ControlRejected as exc:
            if is_revocation(exc):
                raise AgentRevoked("control refused this node's identity") from exc
            raise
        self._token, self._token_expires = grant.access_token, grant.expires_at
        self.connected = True  # control answered a signed request: we are in touch

    async def _ensure_token(self) -> None:
        now = self.clock.now()
        if (
            self._token is None
            or self._token_expires is None
            or self._token_expires - now <= self.settings.renew_before
        ):
            await self.renew_token()

    async def poll(self, timeout: float | None = None) -> bool:
        """One long poll; True when a newer map was accepted and applied."""
        wait = self.settings.long_poll_seconds if timeout is None else timeout
        if not self.connected or (self.map_source is not None and self.map_source.pending):
            wait = 0.0  # (re)connecting: ask without parking, so status and the map catch up now
        await self._ensure_token()
        after = self._acceptor.watermark if self._acceptor else 0
        try:
            delivery = await self.control.peer_map(self._creds(), after, wait)
        except ControlRejected as exc:
            if not is_revocation(exc):
                raise
            await self.renew_token()  # a void token; a revoked node fails here
            delivery = await self.control.peer_map(self._creds(), after, wait)
        self.connected = True
        if delivery is None:
            # Nothing newer than our watermark: the saved map (held back at start) is current.
            confirmed = self.map_source.control_answered(False) if self.map_source else None
            if confirmed is not None and self._map is None:
                self._map = confirmed  # step() reconciles it
            return False
        applied = await self.offer_peer_map(delivery.envelope, delivery.trust)
        if applied and self.map_source is not None:
            self.map_source.control_answered(True)
        return applied

    async def offer_peer_map(self, envelope: str, trust: TrustTexts) -> bool:
        """Accept and apply a map; a rejection is logged, counted and changes nothing."""
        state, acceptor = self.state, self._acceptor
        if state is None or acceptor is None:
            raise NotEnrolled("start the agent first")
        now = self.clock.now()
        try:
            candidate = self._trust(trust.root_certificate, trust.signing_certificates, now)
            peer_map = accept_peer_map(envelope, candidate, state.node_id, acceptor.watermark, now)
        except (PeerMapRejected, RemoteProtocolError, LocalProtocolError) as exc:
            self.rejected_maps += 1
            _events.warning(
                "peer_map.rejected",
                extra={
                    "node": state.node_id,
                    "reason": type(exc).__name__,
                    "detail": str(exc)[:200],
                    "watermark": acceptor.watermark,
                },
            )
            return False
        new_state = state.with_peer_map(peer_map.serial, envelope).with_trust(
            trust.root_certificate, tuple(trust.signing_certificates)
        )
        self.state_store.save(new_state)  # the watermark is durable before the tunnel changes
        self.state = new_state
        acceptor.trust, acceptor.watermark = candidate, peer_map.serial
        self._map = peer_map
        _log.info(
            "peer_map.applied", extra={"serial": peer_map.serial, "peers": len(peer_map.peers)}
        )
        await self.reconcile()
        return True

    def _trust(self, root: str, signing: tuple[str, ...], now: datetime) -> PeerMapTrust:
        if self.state is None:
            raise NotEnrolled("no node state")
        try:
            return PeerMapTrust.from_texts(root, self.state.root_fingerprint, signing, now)
        except (DecodeError, LocalProtocolError) as exc:
            raise PeerMapRejected(f"trust certificates do not parse: {exc}") from exc

    # --- tunnel-key rotation --------------------------------------------------------------------

    async def rotate_tunnel_key(self) -> None:
        """Cut over to a fresh tunnel key (see the module docstring)."""
        state, identity = self.state, self._identity
        if state is None or identity is None or self._tunnel_key is None:
            raise NotEnrolled("start the agent first")
        now = self.clock.now()
        new_key = TunnelPrivateKey.generate(self.entropy, TunnelKeyScheme.X25519)
        self.keystore.put(NEXT_TUNNEL_KEY, new_key.secret_text().encode("ascii"))
        binding = issue_tunnel_key_binding(
            identity, new_key.public_key, now, self.settings.tunnel_key_lifetime
        )
        await self._ensure_token()
        expires = await self.control.rotate_tunnel_key(
            self._creds(), new_key.public_key.to_text(), binding.to_text()
        )
        async with self._reconcile_lock:  # no plan may run half on the old key
            desired = self._desired(self.clock.now(), {})
            await self.tunnel.start(
                reconcile.interface_config(
                    self.settings.interface, new_key, desired, self.settings.underlay_port
                )
            )
            self.keystore.put(TUNNEL_KEY, new_key.secret_text().encode("ascii"))
            # Re-read: a map may have been applied while control answered (its watermark stays).
            current = self.state if self.state is not None else state
            new_state = current.with_tunnel_key(new_key.public_key, expires)
            self.state_store.save(new_state)
            self.state = new_state
            with contextlib.suppress(KeyNotFound):
                self.keystore.delete(NEXT_TUNNEL_KEY)
            old, self._tunnel_key = self._tunnel_key, new_key
            old.wipe()
        _log.info(
            "tunnel_key.rotated", extra={"fingerprint": new_key.public_key.fingerprint().to_text()}
        )

    async def _rotate_if_due(self) -> None:
        if self.state is not None:
            due = self.state.tunnel_key_expires_at - self.settings.rotate_before
            if self.clock.now() >= due:
                await self.rotate_tunnel_key()

    # --- reconcile ------------------------------------------------------------------------------

    def _desired(
        self,
        now: datetime,
        heard: dict[TunnelKey, datetime | None],
        endpoints: Mapping[TunnelKey, UnderlayEndpoint] | None = None,
    ) -> reconcile.DesiredState:
        own = self.state.overlay_addresses if self.state is not None else ()
        peer_map = self._map
        if peer_map is None or now >= peer_map.expires_at or self._tunnel_key is None:
            return reconcile.empty_desired(own)
        keys = {p.tunnel_key for p in peer_map.peers}
        self._listed_since = {k: self._listed_since.get(k, now) for k in keys}
        heard_from = [k for k, when in heard.items() if when is not None]
        overdue = reconcile.overdue_responders(
            self._listed_since, heard_from, now, self.settings.responder_grace
        )
        return reconcile.desired_state(
            peer_map,
            self._tunnel_key.public_key,
            heard_from=heard_from,
            overdue=overdue,
            keepalive_seconds=self.settings.keepalive_seconds,
            endpoints=endpoints or {},
        )

    async def reconcile(self) -> tuple[reconcile.Action, ...]:
        """Plan against the backends' actual state and run the actions; returns them."""
        async with self._reconcile_lock:  # the ticker and the poll loop never interleave plans
            return await self._reconcile()

    async def _reconcile(self) -> tuple[Action, ...]:
        if not self._started:
            return ()
        now = self.clock.now()
        fallback = self.map_source.fallback_due(now) if self.map_source else None
        if fallback is not None and self._map is None:
            self._map = fallback
            _events.warning("peer_map.stored_applied", extra={"serial": fallback.serial})
        stats = await self.tunnel.stats()
        endpoints = await self._path_endpoints(now, stats)
        await self._restart_sessions(stats)
        desired = self._desired(now, {k: s.last_handshake for k, s in stats.items()}, endpoints)
        actual = reconcile.ActualState(
            addresses=self._addresses,
            peers=await self.tunnel.peers(),
            routes=self._routes,
            ruleset=await self.firewall.current(),
        )
        actions = reconcile.plan(desired, actual)
        diff = reconcile.peer_diff(actions)
        for action in actions:  # the plan's order: rules, addresses, peers, routes
            if isinstance(action, reconcile.SetRuleset):
                await self.firewall.apply(self.settings.interface, action.ruleset)
            elif isinstance(action, reconcile.SetAddresses):
                await self.tunnel.set_addresses(action.addresses)
                self._addresses = action.addresses
            elif isinstance(action, reconcile.SetRoutes):
                await self.tunnel.set_routes(action.routes)
                self._routes = action.routes
            elif not diff.empty:
                await self.tunnel.apply(diff)  # every peer action at once, as one diff
                diff = reconcile.peer_diff(())
        return actions

    # --- paths: direct or relay -------------------------------------------------------------------

    def _is_peer(self, node_id: str) -> bool:
        return self._map is not None and any(p.id == node_id for p in self._map.peers)

    def _identity_key(self) -> SigningKey:
        if self._identity is None:
            raise NotEnrolled("start the agent first")
        return self._identity

    def _trust_texts(self) -> tuple[str, tuple[str, ...]]:
        if self.state is None:
            raise NotEnrolled("start the agent first")
        return self.state.root_certificate, tuple(self.state.signing_certificates)

    async def _fresh_creds(self) -> NodeCredentials:
        await self._ensure_token()
        return self._creds()

    def _home_relay(self) -> RelayEndpoint | None:
        """The first relay of the current map (every node of a mesh gets the same list)."""
        if self._map is None or not self._map.relays:
            return None
        home = self._map.relays[0]
        return RelayEndpoint(home.id, home.url, home.tls_spki_sha256)

    def path_of(self, peer_id: str) -> paths.StatusPath | None:
        """The controller's path for a peer (None when it is not in the map)."""
        state = self._paths.get(peer_id)
        return None if state is None else paths.status_path(state)

    async def _path_endpoints(
        self, now: datetime, stats: Mapping[TunnelKey, PeerStats]
    ) -> dict[TunnelKey, UnderlayEndpoint]:
        """Feed each peer's path controller; the endpoints of peers that must use the relay.

        A handshake counts for the controller only if the tunnel's current endpoint for the
        peer is on the controller's path (a bridge endpoint for the relay, any other for
        direct): the tunnel roams to wherever the peer's packets come from, so a handshake
        the peer made through the relay proves nothing about the direct path. The endpoint is
        always set back to the controller's choice (never both paths at once).
        """
        bridge, peer_map = self.bridge, self._map
        if bridge is None or peer_map is None or now >= peer_map.expires_at:
            self._paths.clear()
            return {}
        relay_up = (
            self.relay_link is not None
            and self.relay_link.up
            and Capability.RELAY_ENDPOINTS in self.tunnel.capabilities()
        )
        listed = {p.id for p in peer_map.peers}
        self._paths = {k: v for k, v in self._paths.items() if k in listed}
        bridge.keep_only(listed)
        out: dict[TunnelKey, UnderlayEndpoint] = {}
        for peer in peer_map.peers:
            seen = stats.get(peer.tunnel_key)
            state = self._paths.get(peer.id) or paths.PeerPath.start(now)
            via_relay = seen is not None and bridge.is_bridge_endpoint(seen.underlay_endpoint)
            on_path = via_relay == (state.path is paths.PathKind.RELAY)
            observation = paths.Observation(
                now=max(now, state.as_of),
                last_handshake=seen.last_handshake if seen is not None and on_path else None,
                relay_available=relay_up,
            )
            self._paths[peer.id] = self._feed(peer.id, peer.name, state, observation)
            if self._paths[peer.id].path is not state.path:
                self._new_session.add(peer.tunnel_key)
            if self._paths[peer.id].path is paths.PathKind.RELAY:
                out[peer.tunnel_key] = await bridge.endpoint_for(peer.id)
        return out

    async def _restart_sessions(self, stats: Mapping[TunnelKey, PeerStats]) -> None:
        """Drop peers whose path just changed, so the plan re-adds them with a fresh session.

        The controller trusts a path only after a handshake on it, but a live tunnel session
        does not handshake again for minutes just because its endpoint moved.
        """
        restart = sorted(self._new_session & set(stats), key=reconcile.key_order)
        self._new_session = set()
        if restart:
            await self.tunnel.apply(PeerDiff(remove=tuple(restart)))

    def _feed(
        self, peer_id: str, name: str, state: paths.PeerPath, event: paths.PathInput
    ) -> paths.PeerPath:
        step = paths.step(self.settings.path_policy, state, event)
        for transition in step.transitions:
            # Probe cycles (direct-up <-> direct-probing, relay <-> relay-probing) every few
            # seconds are debug noise; a change of path is what operators need to see.
            log = _log.info if transition.changes_path else _log.debug
            log("path.changed", extra={"peer": name, **transition.log_fields()})
        for command in step.commands:
            if isinstance(command, paths.ProbeDirect):
                task = asyncio.create_task(self._probe(peer_id, command))
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)
        return step.state

    async def _probe(self, peer_id: str, command: paths.ProbeDirect) -> None:
        """Run one direct probe and feed its result (a stale result is ignored)."""
        peer = next((p for p in self._map.peers if p.id == peer_id), None) if self._map else None
        ok = False
        endpoint = reconcile.first_endpoint(peer.underlay_endpoints) if peer else None
        if self.prober is not None and endpoint is not None:
            timeout = max(0.1, (command.deadline - self.clock.now()).total_seconds())
            ok = await self.prober.probe(endpoint, timeout)
        state = self._paths.get(peer_id)
        if state is None or peer is None:
            return
        now = max(self.clock.now(), state.as_of)
        try:
            self._paths[peer_id] = self._feed(
                peer_id, peer.name, state, paths.ProbeResult(now=now, probe=command.probe, ok=ok)
            )
        except paths.PathTransitionError:
            return  # the peer moved on (relay lost, new attempt): the result is stale
        if self._paths[peer_id].path is not state.path:
            self._new_session.add(peer.tunnel_key)

    # --- the loop ---------------------------------------------------------------------------------

    async def step(self, timeout: float | None = None) -> bool:
        """One iteration: token, rotation, one long poll, reconcile. True if a map applied."""
        try:
            await self._ensure_token()
            await self._rotate_if_due()
            if self.settings.endpoints and not self._endpoints_reported:
                await self.control.put_endpoints(self._creds(), self.settings.endpoints)
                self._endpoints_reported = True
            applied = await self.poll(timeout)
        except (ControlUnreachable, ControlRejected):
            self.connected = False
            await self.reconcile()  # an expired map fails closed even while control is down
            raise
        if not applied:
            await self.reconcile()
        return applied

    async def run(self) -> None:
        """Repeat `step` until stopped or revoked; outages back off with jitter."""
        if not self._started:
            await self.start()
        tasks = [asyncio.create_task(self._reconcile_ticker())]
        if self.relay_link is not None:
            tasks.append(asyncio.create_task(self.relay_link.run(), name="relay-link"))
        try:
            await self._run_steps()
        finally:
            for task in (*tasks, *self._probes):
                task.cancel()
            for task in (*tasks, *self._probes):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _reconcile_ticker(self) -> None:
        """Re-plan every `reconcile_interval` s (responders waking up, expiries, lost peers)."""
        while not self._stopping:
            await asyncio.sleep(self.settings.reconcile_interval)
            try:
                await self.reconcile()
            except (TunnelError, FirewallError) as exc:
                _log.warning("tunnel.reconcile_failed", extra={"error": str(exc)[:200]})

    async def _run_steps(self) -> None:
        delay = self.settings.backoff_initial
        while not self._stopping:
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
                self.revoked = True
                _events.warning(
                    "node.revoked", extra={"node": self.state.node_id if self.state else "-"}
                )
                await self.teardown()
                return
            except (ControlUnreachable, ControlRejected) as exc:
                _log.info("control.unreachable", extra={"error": str(exc)[:200], "retry_in": delay})
                await self._sleep(self._jitter(delay))
                delay = min(delay * 2, self.settings.backoff_max)

    def _jitter(self, delay: float) -> float:
        """Uniform in [delay/2, delay] (full jitter would allow near-zero retries)."""
        fraction = int.from_bytes(self.entropy.token_bytes(2), "big") / 65535
        return delay * (0.5 + fraction / 2)

    # --- status ----------------------------------------------------------------------------------

    async def status(self) -> AgentStatus:
        """The CLI's status snapshot."""
        state = self.state
        if state is None:
            raise NotEnrolled("no node state")
        stats = await self.tunnel.stats() if self._started else {}
        peers, now = [], self.clock.now()
        for entry in self._map.peers if self._map is not None else ():
            s, controller = stats.get(entry.tunnel_key), self._paths.get(entry.id)
            seen = s.last_handshake if s else None  # the controller's word, not "any handshake"
            path = paths.peer_status(self.settings.path_policy, controller, seen, now)
            peers.append(
                PeerStatus(
                    name=entry.name,
                    overlay_ip=entry.overlay_addresses[0].split("/")[0]
                    if entry.overlay_addresses
                    else "",
                    path=path,
                    phase=None if controller is None else controller.phase.value,
                    last_handshake=s.last_handshake if s else None,
                    rx_bytes=s.rx_bytes if s else 0,
                    tx_bytes=s.tx_bytes if s else 0,
                )
            )
        own_ip = state.overlay_addresses[0].split("/")[0] if state.overlay_addresses else ""
        return AgentStatus(
            node_name=state.name,
            node_id=state.node_id,
            overlay_ip=own_ip,
            control_url=state.control_url,
            connected=self.connected,
            backend=self.tunnel.name,
            peermap_serial=self._acceptor.watermark if self._acceptor else state.peer_map_watermark,
            peers=tuple(peers),
            peermap_source=self.map_source.status_text() if self.map_source else "none",
        )
