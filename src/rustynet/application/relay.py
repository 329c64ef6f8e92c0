"""The relay service: sessions, authentication, forwarding and limits, without any I/O.

The one rule: a frame is forwarded only from an OPEN session, within its node's packet and byte
budget and the frame size limit, to the newest live session of the destination node whose send
queue has room; everything else is dropped and counted by reason, never buffered and never
answered. The transport adapter (`rustynet.adapters.relay.server`) drives it: it calls
`open_connection` per WebSocket, `authenticate` with the parsed `auth` message, `forward` per
binary frame, `renew`, `expired` and `end`; sessions reach their destinations through the
small `SessionHandle` protocol (a bounded queue in the adapter).

Per-node state (rate buckets, the session list) lives while the node has a session. A node over
`sessions_per_node` keeps its newest sessions: the oldest is handed back to the adapter to close.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final, Protocol

import attrs

from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.keys import b64encode
from rustynet.domain.limits import BucketPolicy
from rustynet.domain.relay import (
    FROM_RELAY,
    NONCE_BYTES,
    TO_RELAY,
    AuthenticatedNode,
    AuthRequest,
    FrameError,
    NodeRate,
    RelayAuthFailed,
    RelayLimits,
    RelayTrust,
    SessionEvent,
    SessionMachine,
    SessionPhase,
    authenticate,
    decode_header,
    frame_header,
    renew,
)
from rustynet.domain.relay_revocations import (
    FeedRejected,
    RevokedNodes,
    accept_revocation_feed,
)
from rustynet.domain.source_rates import SourceRateTable
from rustynet.ports.clock import Clock
from rustynet.ports.entropy import Entropy

DROP_REASONS: Final = (
    "oversize",
    "malformed",
    "rate_limited",
    "unknown_destination",
    "queue_full",
    "unauthenticated",
)


class SessionHandle(Protocol):
    """The adapter's side of one session."""

    def deliver(self, frame: bytes) -> bool:
        """Queue `frame` for the node without blocking; False (nothing queued) when full."""
        ...

    def close_unauthorized(self) -> None:
        """Close the session with the generic rejection (4401); idempotent, never blocks."""
        ...


@attrs.define
class RelayCounters:
    """Monotonic counters and gauges for `/metrics`."""

    frames_forwarded: int = 0
    bytes_forwarded: int = 0
    dropped: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    auth_successes: int = 0
    auth_failures: int = 0
    renewals: int = 0
    expired_sessions: int = 0
    handshake_timeouts: int = 0
    rejected_connections: int = 0
    replaced_sessions: int = 0
    open_sessions: int = 0
    pending_handshakes: int = 0
    handshakes_limited: int = 0
    revoked_sessions: int = 0
    revoked_refusals: int = 0
    feeds_applied: int = 0
    feeds_rejected: int = 0
    feed_failures: int = 0
    feed_up: int = 0  # gauge: the last poll of the revocation feed got an answer


class Session:
    """One connection, from challenge to end (the service's record of it)."""

    __slots__ = ("authenticated", "handle", "machine", "nonce", "out_header", "rate")

    def __init__(self, handle: SessionHandle, nonce: bytes) -> None:
        self.handle = handle
        self.nonce = nonce
        self.machine = SessionMachine()
        self.authenticated: AuthenticatedNode | None = None
        self.out_header = b""
        self.rate: NodeRate | None = None

    @property
    def node_id(self) -> str | None:
        """The authenticated node, if any."""
        return None if self.authenticated is None else self.authenticated.node_id

    @property
    def expires_at(self) -> datetime | None:
        """When the current token expires (None before `ok`)."""
        return None if self.authenticated is None else self.authenticated.expires_at


class _Node:
    __slots__ = ("rate", "sessions")

    def __init__(self, rate: NodeRate) -> None:
        self.rate = rate
        self.sessions: list[Session] = []


class RelayService:
    """All sessions of one relay process."""

    def __init__(
        self, trust: RelayTrust, limits: RelayLimits, clock: Clock, entropy: Entropy
    ) -> None:
        self.trust = trust
        self.limits = limits
        self.counters = RelayCounters()
        self._clock = clock
        self._entropy = entropy
        self._nodes: dict[str, _Node] = {}
        self._connections = 0
        self.revoked = RevokedNodes()
        per_source = BucketPolicy(
            burst=limits.handshakes_burst,
            refill=limits.handshakes_per_second,
            per=timedelta(seconds=1),
        )
        self._handshake_rates = SourceRateTable(per_source, limits.handshake_sources)

    # --- lifecycle ---------------------------------------------------------------------------

    def admit_handshake(self, source: str) -> bool:
        """Spend one token of `source`'s handshake budget (per IPv4 address / IPv6 /64), before
        the upgrade and any signature check; False (counted) when over it."""
        if self._handshake_rates.take(source, self._clock.now()):
            return True
        self.counters.handshakes_limited += 1
        return False

    def open_connection(self, handle: SessionHandle) -> Session | None:
        """A new connection and its challenge nonce, or None when the relay is full."""
        if self._connections >= self.limits.max_sessions:
            self.counters.rejected_connections += 1
            return None
        nonce = self._entropy.token_bytes(NONCE_BYTES)
        if len(nonce) != NONCE_BYTES:
            raise LocalProtocolError("entropy returned the wrong number of bytes")
        self._connections += 1
        self.counters.pending_handshakes += 1
        return Session(handle, nonce)

    def challenge(self, session: Session) -> dict[str, str]:
        """The `challenge` message for `session`."""
        return {
            "type": "challenge",
            "relay_id": self.trust.relay_id,
            "nonce": b64encode(session.nonce),
        }

    def authenticate(self, session: Session, message: Mapping[str, object]) -> datetime:
        """Verify an `auth` message and register the session; returns the token expiry.

        Raises `RelayAuthFailed` (the session is then over: the adapter closes it with 4401).
        """
        if session.machine.phase is not SessionPhase.AWAITING_AUTH:
            raise LocalProtocolError("authenticate runs once, before anything else")
        try:
            now = self._clock.now()
            verified = authenticate(
                AuthRequest.from_message(message), self.trust, session.nonce, now
            )
            if self.revoked.is_revoked(verified.node_id, now):
                self.counters.revoked_refusals += 1
                raise RelayAuthFailed("the node is revoked")  # noqa: TRY301 - counted below
        except RelayAuthFailed:
            self.counters.auth_failures += 1
            self.counters.pending_handshakes -= 1
            session.machine.handle(SessionEvent.AUTH_FAILED)
            raise
        session.machine.handle(SessionEvent.AUTH_SUCCEEDED)
        self.counters.pending_handshakes -= 1
        self.counters.auth_successes += 1
        self.counters.open_sessions += 1
        session.authenticated = verified
        session.out_header = frame_header(FROM_RELAY, verified.node_id)
        node = self._nodes.get(verified.node_id)
        if node is None:
            node = _Node(NodeRate(self.limits, self._clock.now().timestamp()))
            self._nodes[verified.node_id] = node
        session.rate = node.rate
        node.sessions.append(session)
        while len(node.sessions) > self.limits.sessions_per_node:
            oldest = node.sessions.pop(0)
            oldest.rate = None  # sends nothing more while the adapter closes it
            self.counters.replaced_sessions += 1
            oldest.handle.close_unauthorized()
        return verified.expires_at

    def renew(self, session: Session, token: object) -> datetime:
        """Extend an OPEN session with a fresh token; `RelayAuthFailed` ends it (4401)."""
        current = session.authenticated
        if current is None or not session.machine.is_open:
            raise RelayAuthFailed("renew before ok")
        try:
            now = self._clock.now()
            renewed = renew(current, token, self.trust, now)
            if self.revoked.is_revoked(renewed.node_id, now):
                self.counters.revoked_refusals += 1
                raise RelayAuthFailed("the node is revoked")  # noqa: TRY301 - counted below
        except RelayAuthFailed:
            self.counters.auth_failures += 1
            self._close_open(session, SessionEvent.AUTH_FAILED)
            raise
        session.machine.handle(SessionEvent.RENEWED)
        session.authenticated = renewed
        self.counters.renewals += 1
        return renewed.expires_at

    def expired(self, session: Session) -> bool:
        """If the session's token has expired, end it and return True (adapter closes 4401)."""
        expires_at = session.expires_at
        if expires_at is None or not session.machine.is_open:
            return False
        if self._clock.now() < expires_at:
            return False
        self.counters.expired_sessions += 1
        self._close_open(session, SessionEvent.TOKEN_EXPIRED)
        return True

    def apply_revocations(
        self, envelope: str, root_certificate: str, signing_certificates: Sequence[str]
    ) -> int:
        """Verify a delivered revocation feed (`FeedRejected` when it must not be applied:
        forged, another control plane's, replayed or rolled back) and close every open
        session of the nodes it names; how many sessions were closed."""
        now = self._clock.now()
        try:
            feed = accept_revocation_feed(
                envelope,
                root_certificate,
                signing_certificates,
                root_fingerprint=self.trust.root_fingerprint,
                issuer=self.trust.issuer,
                watermark=self.revoked.watermark,
                now=now,
            )
        except FeedRejected:
            self.counters.feeds_rejected += 1
            raise
        self.counters.feeds_applied += 1
        closed = 0
        for node_id in self.revoked.apply(feed, now):
            node = self._nodes.get(node_id)
            for session in list(node.sessions) if node is not None else ():
                self._close_open(session, SessionEvent.REVOKED)
                session.rate = None  # sends nothing more while the adapter closes it
                session.handle.close_unauthorized()
                closed += 1
        self.counters.revoked_sessions += closed
        return closed

    def seconds_left(self, session: Session) -> float | None:
        """Seconds until the session's token expires (None before `ok`)."""
        expires_at = session.expires_at
        if expires_at is None:
            return None
        return (expires_at - self._clock.now()).total_seconds()

    def handshake_timed_out(self, session: Session) -> None:
        """The node did not authenticate in time."""
        if session.machine.phase is SessionPhase.AWAITING_AUTH:
            session.machine.handle(SessionEvent.HANDSHAKE_TIMED_OUT)
            self.counters.pending_handshakes -= 1
            self.counters.handshake_timeouts += 1

    def end(self, session: Session) -> None:
        """The connection is gone (whatever the reason); forget the session. Idempotent."""
        phase = session.machine.phase
        if phase is SessionPhase.AWAITING_AUTH:
            self.counters.pending_handshakes -= 1
            session.machine.handle(SessionEvent.DISCONNECTED)
        elif phase is SessionPhase.OPEN:
            self._close_open(session, SessionEvent.DISCONNECTED)
        if session.nonce:
            self._connections -= 1
            session.nonce = b""

    def _close_open(self, session: Session, event: SessionEvent) -> None:
        session.machine.handle(event)
        self.counters.open_sessions -= 1
        node_id = session.node_id
        node = self._nodes.get(node_id) if node_id is not None else None
        if node is not None and session in node.sessions:
            node.sessions.remove(session)
            if not node.sessions:
                del self._nodes[node_id]  # type: ignore[arg-type]

    # --- data path ---------------------------------------------------------------------------

    def forward_all(self, session: Session, frames: Iterable[bytes | memoryview]) -> None:
        """Forward every frame of one message (a batch), each checked, limited and counted as
        if sent alone; the clock is read once per message, not once per frame."""
        now, forward = self._clock.now().timestamp(), self.forward
        for frame in frames:
            forward(session, frame, now)

    def forward(  # noqa: PLR0911 - one exit per drop reason
        self, session: Session, frame: bytes | memoryview, now: float | None = None
    ) -> bool:
        """Forward one node→relay frame (at `now`, POSIX seconds: the clock when None); False
        when it was dropped (and counted)."""
        counters = self.counters
        rate = session.rate
        if rate is None or not session.machine.is_open:
            counters.dropped["unauthenticated"] += 1
            return False
        size = len(frame)
        if size > self.limits.max_frame_bytes:
            counters.dropped["oversize"] += 1
            return False
        if now is None:
            now = self._clock.now().timestamp()
        if not rate.admit(now, size):
            counters.dropped["rate_limited"] += 1
            return False
        try:
            destination, offset = decode_header(frame, TO_RELAY)
        except FrameError:
            counters.dropped["malformed"] += 1
            return False
        node = self._nodes.get(destination)
        if node is None:
            counters.dropped["unknown_destination"] += 1
            return False
        out = session.out_header + memoryview(frame)[offset:]
        if not node.sessions[-1].handle.deliver(out):
            counters.dropped["queue_full"] += 1
            return False
        counters.frames_forwarded += 1
        counters.bytes_forwarded += size - offset
        return True

    def drop_unauthenticated(self) -> None:
        """Count a frame that arrived before `ok` (or a text message we ignore)."""
        self.counters.dropped["unauthenticated"] += 1

    def drop_malformed(self) -> None:
        """Count a message of an unknown type or shape in an open session."""
        self.counters.dropped["malformed"] += 1

    def has_session(self, node_id: str) -> bool:
        """Whether `node_id` has an open session (its UDP allocations live while it does)."""
        return node_id in self._nodes

    @property
    def node_count(self) -> int:
        """Nodes with at least one open session."""
        return len(self._nodes)
