"""The relay's pure core: data-frame codec, session challenge, session authentication, limits.

The one rule: a relay session carries traffic only for a node that proved, against the pinned
control root, that it holds a current relay token for THIS relay issued to it and bound to the
identity key that signed this session's fresh challenge; every failure is the same opaque
`RelayAuthFailed` (the reason is for debug logs only). Payloads are never parsed.

Wire contract: docs/relay-protocol.md. Data frames are binary:

    node -> relay: 0x01 | len(dst) (1 byte) | dst node id (ASCII) | packet
    relay -> node: 0x02 | len(src) (1 byte) | src node id (ASCII) | packet

Theory of operation (one session, `SessionMachine`): a connection starts AWAITING_AUTH with a
challenge out; `AuthSucceeded` moves it to OPEN, `AuthFailed`/`HandshakeTimedOut` to CLOSED.
While OPEN, `Renewed` keeps it OPEN (new expiry) and `TokenExpired`/`Disconnected` close it.
CLOSED is final; any other pair raises and leaves the machine where it was.

Trust chain (`authenticate`): the presented root certificate must be the pinned root
(`RelayTrust.root_fingerprint`) and valid now; each presented signing certificate must chain
to it with role `signing` and be valid now; the token's key id must name one of those
certificates' keys (so relay tokens are signed by the control plane's peer-map signing key),
and `verify_token` checks kind, audience (= relay id), issuer (= control URL), lifetime and
the binding to the presented identity key; the token subject must be the claimed node id; the
identity key must have signed `nonce || relay_id` for `Purpose.RELAY_AUTH`.

Revocations reach the relay through the control plane's signed revocation feed
(`rustynet.domain.relay_revocations`); the application layer refuses and closes sessions of
the nodes it names.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.key_hierarchy import Certificate, KeyRole, verify_certificate
from rustynet.domain.keys import KeyFingerprint, Purpose, VerifyKey, b64decode
from rustynet.domain.netmap import PeerMapTrust
from rustynet.domain.tokens import TokenClaims, TokenKind, verify_token

TO_RELAY: Final = 0x01
FROM_RELAY: Final = 0x02
BATCH: Final = 0x03
_BATCH_BYTE: Final = bytes((BATCH,))
"""A message carrying several frames: `0x03 | (len16 | frame)*` (one WebSocket + TLS write for
a burst of packets instead of one per packet; each inner frame is checked and counted alone)."""
MAX_BATCH_BYTES: Final = 60 * 1024
_LENGTH16: Final = struct.Struct(">H")
NONCE_BYTES: Final = 32
MAX_NODE_ID: Final = 255  # one length byte
MAX_SIGNING_CERTIFICATES: Final = 8  # control holds at most a few during rotation overlap
MAX_CERTIFICATE_CHARS: Final = 8192
MAX_AUTH_FIELD_CHARS: Final = 4096
_RELAY_ID_RE: Final = re.compile(r"[a-z0-9-]{1,64}")
_AUTH_KEYS: Final = frozenset(
    {
        "type",
        "node_id",
        "identity_key",
        "token",
        "root_certificate",
        "signing_certificates",
        "signature",
    }
)


class RelayAuthFailed(RemoteProtocolError):  # noqa: N818 - names the outcome, like InvalidToken
    """Any session authentication failure. `str()` is always the same; `reason` is for debug."""

    MESSAGE: Final = "unauthorized"

    def __init__(self, reason: str) -> None:
        super().__init__(self.MESSAGE)
        self.reason = reason


class FrameError(DecodeError):
    """A data frame is malformed (type, length byte, node id)."""


def validate_relay_id(relay_id: object) -> str:
    """Return `relay_id` if it is 1-64 characters of `[a-z0-9-]`, else raise `DecodeError`."""
    if not isinstance(relay_id, str) or not _RELAY_ID_RE.fullmatch(relay_id):
        raise DecodeError("a relay id is 1-64 characters of [a-z0-9-]")
    return relay_id


# --- frames -----------------------------------------------------------------------------------


def _node_id_bytes(node_id: str) -> bytes:
    if not isinstance(node_id, str) or not node_id.isascii():
        raise LocalProtocolError("a node id in a frame is ASCII text")
    raw = node_id.encode("ascii")
    if not 0 < len(raw) <= MAX_NODE_ID:
        raise LocalProtocolError(f"a node id in a frame is 1-{MAX_NODE_ID} bytes")
    return raw


def frame_header(frame_type: int, node_id: str) -> bytes:
    """`type | len | id`: the header of every frame of one type naming `node_id` (cache it)."""
    if frame_type not in (TO_RELAY, FROM_RELAY):
        raise LocalProtocolError("unknown frame type")
    raw = _node_id_bytes(node_id)
    return bytes((frame_type, len(raw))) + raw


def encode_frame(frame_type: int, node_id: str, packet: bytes | bytearray | memoryview) -> bytes:
    """One data frame (one copy of `packet`)."""
    return frame_header(frame_type, node_id) + packet


def decode_header(frame: bytes | bytearray | memoryview, frame_type: int) -> tuple[str, int]:
    """(node id, offset of the packet) of a frame of `frame_type`; anything else `FrameError`.

    The packet is `frame[offset:]` (slice a memoryview to avoid a copy); it may be empty.
    """
    size = len(frame)
    if size < 3:
        raise FrameError("frame shorter than its header")
    if frame[0] != frame_type:
        raise FrameError("unexpected frame type")
    end = 2 + frame[1]
    if frame[1] == 0 or end > size:
        raise FrameError("node id length out of range")
    try:
        return str(frame[2:end], "ascii"), end
    except UnicodeDecodeError:
        raise FrameError("node id is not ASCII") from None


def encode_batch(frames: list[bytes]) -> bytes:
    """One batch message holding `frames` (each < 64 KiB; callers keep the total under
    MAX_BATCH_BYTES). A single frame is sent as itself: no batch header for one packet. A frame
    that starts with the batch byte is refused: sent alone it would be read as a batch, and a
    batch never nests (real frames start with TO_RELAY or FROM_RELAY)."""
    if any(frame[:1] == _BATCH_BYTE for frame in frames):
        raise LocalProtocolError("a frame may not start with the batch type")
    if len(frames) == 1:
        return frames[0]
    parts = [_BATCH_BYTE]
    pack = _LENGTH16.pack
    for frame in frames:
        if not 0 < len(frame) < 0x10000:
            raise LocalProtocolError("a frame in a batch is 1-65535 bytes")
        parts.append(pack(len(frame)))
        parts.append(frame)
    return b"".join(parts)


def split_batch(message: bytes | bytearray | memoryview) -> list[memoryview]:
    """The frames of a batch message (views, no copies), or `[message]` when it is a plain
    frame. A truncated or empty batch raises `FrameError` (nothing of it is used)."""
    view = memoryview(message)
    if len(view) == 0 or view[0] != BATCH:
        return [view]
    frames: list[memoryview] = []
    at, size, length_at = 1, len(view), _LENGTH16.unpack_from
    while at < size:
        if at + 2 > size:
            raise FrameError("batch entry length cut off")
        (length,) = length_at(view, at)
        at += 2
        if length == 0 or at + length > size:
            raise FrameError("batch entry length out of range")
        frames.append(view[at : at + length])
        at += length
    if not frames:
        raise FrameError("empty batch")
    return frames


def decode_frame(frame: bytes | bytearray | memoryview, frame_type: int) -> tuple[str, bytes]:
    """(node id, packet) of a frame of `frame_type` (copies the packet; tests and tools)."""
    node_id, offset = decode_header(frame, frame_type)
    return node_id, bytes(memoryview(frame)[offset:])


# --- challenge and authentication -------------------------------------------------------------


def challenge_message(nonce: bytes, relay_id: str) -> bytes:
    """What the node's identity key signs for `Purpose.RELAY_AUTH`: `nonce || relay_id`."""
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise LocalProtocolError(f"a relay challenge nonce is {NONCE_BYTES} bytes")
    return nonce + validate_relay_id(relay_id).encode("ascii")


@attrs.frozen
class RelayTrust:
    """What a relay authenticates sessions against (from its config)."""

    relay_id: str = attrs.field(validator=lambda _s, _a, v: validate_relay_id(v))
    issuer: str = attrs.field(validator=attrs.validators.instance_of(str))
    root_fingerprint: KeyFingerprint = attrs.field(
        validator=attrs.validators.instance_of(KeyFingerprint)
    )


@attrs.frozen
class AuthRequest:
    """The fields of an `auth` message, shape-checked but not verified."""

    node_id: str
    identity_key: str
    token: str = attrs.field(repr=False)
    root_certificate: str
    signing_certificates: tuple[str, ...]
    signature: bytes = attrs.field(repr=False)

    @classmethod
    def from_message(cls, message: Mapping[str, object]) -> AuthRequest:
        """Strictly parse a decoded `auth` JSON object; any deviation is `RelayAuthFailed`."""
        if not isinstance(message, Mapping) or set(message) != _AUTH_KEYS:
            raise RelayAuthFailed("auth message fields")
        if message["type"] != "auth":
            raise RelayAuthFailed("not an auth message")
        texts = {}
        for name in ("node_id", "identity_key", "token", "root_certificate", "signature"):
            value = message[name]
            limit = MAX_CERTIFICATE_CHARS if name == "root_certificate" else MAX_AUTH_FIELD_CHARS
            if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isascii():
                raise RelayAuthFailed(f"auth field {name}")
            texts[name] = value
        certs = message["signing_certificates"]
        if (
            not isinstance(certs, list)
            or not 0 < len(certs) <= MAX_SIGNING_CERTIFICATES
            or not all(
                isinstance(c, str) and 0 < len(c) <= MAX_CERTIFICATE_CHARS and c.isascii()
                for c in certs
            )
        ):
            raise RelayAuthFailed("auth field signing_certificates")
        if len(texts["node_id"]) > MAX_NODE_ID:
            raise RelayAuthFailed("node id too long for a frame")
        try:
            signature = b64decode(texts["signature"])
        except DecodeError:
            raise RelayAuthFailed("signature is not base64url") from None
        return cls(
            node_id=texts["node_id"],
            identity_key=texts["identity_key"],
            token=texts["token"],
            root_certificate=texts["root_certificate"],
            signing_certificates=tuple(certs),
            signature=signature,
        )


@attrs.frozen
class AuthenticatedNode:
    """A verified session: who, with which identity, until when, and what renewals check."""

    node_id: str
    identity: VerifyKey
    expires_at: datetime
    token_id: str
    trust: PeerMapTrust = attrs.field(repr=False)


def _token_claims(
    token: str,
    *,
    node_id: str,
    identity: VerifyKey,
    trust: PeerMapTrust,
    relay: RelayTrust,
    now: datetime,
) -> TokenClaims:
    keys: dict[KeyFingerprint, VerifyKey] = {}
    for cert in trust.signing_certificates:
        _check_signing_certificate(cert, trust, now)
        keys[cert.key_id] = cert.subject
    claims = verify_token(
        token,
        keys=keys,
        audience=relay.relay_id,
        issuer=relay.issuer,
        bound_identity=identity,
        now=now,
        kind=TokenKind.RELAY,
    )
    if claims.subject != node_id:
        raise RelayAuthFailed("token subject is another node")
    return claims


def _check_signing_certificate(cert: Certificate, trust: PeerMapTrust, now: datetime) -> None:
    verify_certificate(cert, trust.root, now)
    if cert.role is not KeyRole.SIGNING:
        raise RelayAuthFailed("certificate is not a signing key's")


def authenticate(
    request: AuthRequest, relay: RelayTrust, nonce: bytes, now: datetime
) -> AuthenticatedNode:
    """Verify one `auth` message against the challenge `nonce`; else raise `RelayAuthFailed`."""
    try:
        trust = PeerMapTrust.from_texts(
            request.root_certificate,
            relay.root_fingerprint,
            request.signing_certificates,
            now,
        )
        identity = VerifyKey.from_text(request.identity_key)
        claims = _token_claims(
            request.token,
            node_id=request.node_id,
            identity=identity,
            trust=trust,
            relay=relay,
            now=now,
        )
        identity.verify(
            Purpose.RELAY_AUTH, challenge_message(nonce, relay.relay_id), request.signature
        )
    except RelayAuthFailed:
        raise
    except RemoteProtocolError as exc:
        raise RelayAuthFailed(f"{type(exc).__name__}: {exc}") from None
    return AuthenticatedNode(request.node_id, identity, claims.expires_at, claims.token_id, trust)


def renew(
    session: AuthenticatedNode, token: object, relay: RelayTrust, now: datetime
) -> AuthenticatedNode:
    """The session with the expiry of a fresh token for the same node and identity key.

    The token is checked against the certificates presented at `auth` (re-checked at `now`);
    after a signing-key rotation the node reconnects instead.
    """
    if not isinstance(token, str):
        raise RelayAuthFailed("renew token is not a string")
    try:
        claims = _token_claims(
            token,
            node_id=session.node_id,
            identity=session.identity,
            trust=session.trust,
            relay=relay,
            now=now,
        )
    except RelayAuthFailed:
        raise
    except RemoteProtocolError as exc:
        raise RelayAuthFailed(f"{type(exc).__name__}: {exc}") from None
    return attrs.evolve(session, expires_at=claims.expires_at, token_id=claims.token_id)


# --- session machine --------------------------------------------------------------------------


class SessionPhase(enum.Enum):
    """Where a relay session is."""

    AWAITING_AUTH = "awaiting-auth"
    OPEN = "open"
    CLOSED = "closed"


class SessionEvent(enum.Enum):
    """Facts the driver feeds the machine."""

    AUTH_SUCCEEDED = "auth-succeeded"
    AUTH_FAILED = "auth-failed"
    HANDSHAKE_TIMED_OUT = "handshake-timed-out"
    RENEWED = "renewed"
    TOKEN_EXPIRED = "token-expired"  # noqa: S105 - an event name, not a password
    DISCONNECTED = "disconnected"
    REVOKED = "revoked"  # the control plane's revocation feed names the node


_A, _O, _C = SessionPhase.AWAITING_AUTH, SessionPhase.OPEN, SessionPhase.CLOSED
_E = SessionEvent
SESSION_TRANSITIONS: Final[Mapping[tuple[SessionPhase, SessionEvent], SessionPhase]] = {
    (_A, _E.AUTH_SUCCEEDED): _O,
    (_A, _E.AUTH_FAILED): _C,
    (_A, _E.HANDSHAKE_TIMED_OUT): _C,
    (_A, _E.DISCONNECTED): _C,
    (_O, _E.RENEWED): _O,
    (_O, _E.AUTH_FAILED): _C,  # a failed renewal closes the session
    (_O, _E.TOKEN_EXPIRED): _C,
    (_O, _E.REVOKED): _C,
    (_O, _E.DISCONNECTED): _C,
    (_C, _E.DISCONNECTED): _C,  # the transport may report the end after we closed
}


class SessionMachine:
    """One session's phase; illegal `(phase, event)` pairs raise and change nothing."""

    def __init__(self) -> None:
        self.phase = SessionPhase.AWAITING_AUTH

    def handle(self, event: SessionEvent) -> SessionPhase:
        """Apply `event`; returns the new phase."""
        nxt = SESSION_TRANSITIONS.get((self.phase, event))
        if nxt is None:
            raise LocalProtocolError(f"{event.value} is not allowed in {self.phase.value}")
        self.phase = nxt
        return nxt

    @property
    def is_open(self) -> bool:
        """True when data may flow."""
        return self.phase is SessionPhase.OPEN


# --- limits -----------------------------------------------------------------------------------


def _positive(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise LocalProtocolError(f"{attribute.name} must be a positive number")


@attrs.frozen
class RelayLimits:
    """Every limit of a relay (config `[limits]`); defaults suit one relay for a small mesh."""

    packets_per_second: int = attrs.field(default=50_000, validator=_positive)
    packets_burst: int = attrs.field(default=10_000, validator=_positive)
    bytes_per_second: int = attrs.field(default=125_000_000, validator=_positive)  # 1 Gbit/s
    bytes_burst: int = attrs.field(default=8 * 1024 * 1024, validator=_positive)
    sessions_per_node: int = attrs.field(default=2, validator=_positive)
    max_sessions: int = attrs.field(default=10_000, validator=_positive)
    max_frame_bytes: int = attrs.field(default=4096, validator=_positive)
    handshake_timeout: float = attrs.field(default=5.0, validator=_positive)
    send_queue_frames: int = attrs.field(default=512, validator=_positive)
    # unauthenticated WebSocket handshakes per source (IPv4 address / IPv6 /64), before any
    # signature check; the table of sources is bounded by `handshake_sources`
    handshakes_per_second: int = attrs.field(default=10, validator=_positive)
    handshakes_burst: int = attrs.field(default=20, validator=_positive)
    handshake_sources: int = attrs.field(default=16_384, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.max_frame_bytes > 65_535 + 2 + MAX_NODE_ID:
            raise LocalProtocolError("max_frame_bytes above a UDP datagram plus header")
        if self.bytes_burst < self.max_frame_bytes:
            raise LocalProtocolError("bytes_burst must admit at least one maximal frame")


class TokenBucket:
    """A token bucket over float seconds: `rate` per second, at most `burst` stored.

    Mutable per-node state on the data path, so a plain slotted class, not an attrs value.
    `take` at a time before the last one counts as no elapsed time (clock steps backwards).
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not rate > 0 or not burst > 0:
            raise LocalProtocolError("a token bucket needs a positive rate and burst")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Take `amount` tokens if there are that many now; a refusal takes nothing."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False


class NodeRate:
    """A node's two buckets (packets and bytes), shared by all its sessions."""

    __slots__ = ("bytes", "packets")

    def __init__(self, limits: RelayLimits, now: float) -> None:
        self.packets = TokenBucket(limits.packets_per_second, limits.packets_burst, now)
        self.bytes = TokenBucket(limits.bytes_per_second, limits.bytes_burst, now)

    def admit(self, now: float, size: int) -> bool:
        """Charge one frame of `size` bytes; a refusal charges neither bucket."""
        packets, byte_bucket = self.packets, self.bytes
        if not packets.take(now):
            return False
        if byte_bucket.take(now, size):
            return True
        packets.tokens += 1.0  # refund: the frame is dropped, it used nothing
        return False


def remaining(expires_at: datetime, now: datetime) -> timedelta:
    """Time left before `expires_at` (never negative)."""
    return max(expires_at - now, timedelta(0))


__all__: Sequence[str] = (
    "FROM_RELAY",
    "NONCE_BYTES",
    "TO_RELAY",
    "AuthRequest",
    "AuthenticatedNode",
    "FrameError",
    "NodeRate",
    "RelayAuthFailed",
    "RelayLimits",
    "RelayTrust",
    "SessionEvent",
    "SessionMachine",
    "SessionPhase",
    "TokenBucket",
    "authenticate",
    "challenge_message",
    "decode_frame",
    "decode_header",
    "encode_frame",
    "frame_header",
    "renew",
    "validate_relay_id",
)
