"""Enrollment handshake, both sides, sans-IO: a join token buys a challenge, a proof buys a node.

The one rule: an authorization is issued only for a live, unused challenge answered by a
signature of the presented identity key (purpose `ENROLLMENT_PROOF`) over exactly what was
presented, and its scope is a subset of the token's; any rejection leaves all state unchanged.

Theory of operation.

1. The node (`EnrollmentClient.start`) sends an `EnrollmentRequest`: the token id it holds,
   its identity key, its tunnel key, its hostname and optionally the scope it asks for.
2. The application layer looks the join credential up (`domain/credentials.py` decides whether
   it is redeemable; enrollment only receives its id and scope as facts) and feeds
   `TokenPresented` to `EnrollmentServer.handle`. The server checks the requested scope
   against the token's, draws a 256-bit single-use challenge from `Entropy` and answers
   `IssueChallenge` (live for ≤ 60 s).
3. The node signs `proof_message(...)` — challenge, token id, identity key, tunnel key,
   hostname, requested scope — and sends `ProofPresented(challenge_id, signature)`.
4. The server verifies the proof against what step 2 recorded and answers `Authorize` (the
   application then redeems the credential atomically and registers the node) or `Reject`.

Per challenge the server runs a small machine (`ATTEMPT_TRANSITIONS`): NEW → CHALLENGED on
`TokenPresented`, CHALLENGED → AUTHORIZED on a valid `ProofPresented`, CHALLENGED | AUTHORIZED
→ EXPIRED on `Tick` at or after the challenge's expiry (an authorized challenge is kept until
then so a replay is named as such). Every other pair is refused. The number of live challenges
is capped; at the cap new tokens are refused. `deadline()` tells the driver when to `Tick`.
"""

from __future__ import annotations

import enum
import re
import types
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import attrs

from rustynet.domain.errors import (
    DecodeError,
    InvalidSignature,
    LocalProtocolError,
    RemoteProtocolError,
)
from rustynet.domain.keys import ED25519_SIGNATURE_SIZE, Purpose, SigningKey, TunnelKey, VerifyKey
from rustynet.domain.scope import Scope

if TYPE_CHECKING:
    from rustynet.domain.entropy import Entropy

CHALLENGE_BYTES: Final = 32  # 256 bits, above the 128-bit floor
MAX_CHALLENGE_TTL: Final = timedelta(seconds=60)
DEFAULT_MAX_PENDING: Final = 10_000

_HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_TOKEN_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces


class RejectReason(enum.Enum):
    """Why the server refused an input (logged; the edge may collapse them on the wire)."""

    TOO_MANY_PENDING = "too-many-pending"
    SCOPE_NOT_GRANTED = "scope-not-granted"
    UNKNOWN_CHALLENGE = "unknown-challenge"
    CHALLENGE_USED = "challenge-used"
    CHALLENGE_EXPIRED = "challenge-expired"
    INVALID_PROOF = "invalid-proof"


class EnrollmentError(RemoteProtocolError):
    """The enrollment peer sent something the handshake refuses."""

    def __init__(self, reason: RejectReason, message: str = "") -> None:
        super().__init__(message or reason.value)
        self.reason = reason


class UnexpectedMessageError(RemoteProtocolError):
    """The client received a server message its state does not allow (it is now FAILED)."""


def _of_type(kind: type | tuple[type, ...]) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, kind):
            raise DecodeError(f"{attribute.name} has the wrong type")

    return check


def _hostname(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _HOSTNAME.fullmatch(value):
        raise DecodeError("a hostname is one lowercase DNS label (a-z, 0-9, '-', ≤ 63)")


def _token_id(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _TOKEN_ID.fullmatch(value):
        raise DecodeError("a token id is 1..128 printable ASCII characters")


def _challenge_id(_: object, __: attrs.Attribute[bytes], value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != CHALLENGE_BYTES:
        raise DecodeError(f"a challenge id is {CHALLENGE_BYTES} bytes")


def _signature(_: object, __: attrs.Attribute[bytes], value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != ED25519_SIGNATURE_SIZE:
        raise DecodeError(f"a proof signature is {ED25519_SIGNATURE_SIZE} bytes")


def _aware(_: object, attribute: attrs.Attribute[datetime], value: datetime) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise DecodeError(f"{attribute.name} must be a timezone-aware datetime")


def _require_now(now: datetime) -> None:
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise LocalProtocolError("now must be a timezone-aware datetime")


# --- messages ------------------------------------------------------------------------------


@attrs.frozen
class EnrollmentRequest:
    """What a node sends first (next to its join secret, which the application redeems)."""

    token_id: str = attrs.field(validator=_token_id)
    identity_key: VerifyKey = attrs.field(validator=_of_type(VerifyKey))
    tunnel_key: TunnelKey = attrs.field(validator=_of_type(TunnelKey))
    hostname: str = attrs.field(validator=_hostname)
    requested_scope: Scope | None = attrs.field(
        default=None, validator=_of_type((Scope, type(None)))
    )

    def presented(self, token_scope: Scope) -> TokenPresented:
        """The server input, once the application knows the token's scope."""
        return TokenPresented(
            token_id=self.token_id,
            token_scope=token_scope,
            identity_key=self.identity_key,
            tunnel_key=self.tunnel_key,
            hostname=self.hostname,
            requested_scope=self.requested_scope,
        )


@attrs.frozen
class TokenPresented:
    """Input: a redeemable join token was presented with these keys (scope None = all)."""

    token_id: str = attrs.field(validator=_token_id)
    token_scope: Scope = attrs.field(validator=_of_type(Scope))
    identity_key: VerifyKey = attrs.field(validator=_of_type(VerifyKey))
    tunnel_key: TunnelKey = attrs.field(validator=_of_type(TunnelKey))
    hostname: str = attrs.field(validator=_hostname)
    requested_scope: Scope | None = attrs.field(
        default=None, validator=_of_type((Scope, type(None)))
    )


@attrs.frozen
class ProofPresented:
    """Input: the node's signature over the challenge it was given."""

    challenge_id: bytes = attrs.field(validator=_challenge_id)
    signature: bytes = attrs.field(validator=_signature, repr=False)


@attrs.frozen
class Tick:
    """Input: time passed; expire challenges whose deadline is reached."""


@attrs.frozen
class IssueChallenge:
    """Effect: send this challenge to the node; it must be answered before `expires_at`."""

    challenge_id: bytes = attrs.field(validator=_challenge_id)
    expires_at: datetime = attrs.field(validator=_aware)


@attrs.frozen
class Authorize:
    """Effect: redeem the token and register this node with `scope` (⊆ the token's scope)."""

    challenge_id: bytes
    token_id: str
    identity_key: VerifyKey
    tunnel_key: TunnelKey
    hostname: str
    scope: Scope


@attrs.frozen
class Reject:
    """Effect: refuse the input; nothing changed."""

    reason: RejectReason


@attrs.frozen
class ForgetChallenges:
    """Effect of `Tick`: these challenges expired and were dropped (for logs and metrics)."""

    challenge_ids: tuple[bytes, ...]


ServerInput = TokenPresented | ProofPresented | Tick
ServerEffect = IssueChallenge | Authorize | Reject | ForgetChallenges


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _scope_bytes(scope: Scope | None) -> bytes:
    if scope is None:
        return b"\x00"
    return b"\x01" + ",".join(scope.as_strings()).encode("ascii")


def proof_message(challenge_id: bytes, request: EnrollmentRequest | TokenPresented) -> bytes:
    """The exact bytes a node signs (length-prefixed fields, so no two inputs collide)."""
    return b"".join(
        _field(part)
        for part in (
            challenge_id,
            request.token_id.encode("ascii"),
            request.identity_key.to_text().encode("ascii"),
            request.tunnel_key.to_text().encode("ascii"),
            request.hostname.encode("ascii"),
            _scope_bytes(request.requested_scope),
        )
    )


# --- server --------------------------------------------------------------------------------


class AttemptState(enum.Enum):
    """Where one challenge stands."""

    NEW = "new"
    CHALLENGED = "challenged"
    AUTHORIZED = "authorized"
    EXPIRED = "expired"


ATTEMPT_TRANSITIONS: Final[Mapping[tuple[AttemptState, type], AttemptState]] = (
    types.MappingProxyType(
        {
            (AttemptState.NEW, TokenPresented): AttemptState.CHALLENGED,
            (AttemptState.CHALLENGED, ProofPresented): AttemptState.AUTHORIZED,
            (AttemptState.CHALLENGED, Tick): AttemptState.EXPIRED,
            (AttemptState.AUTHORIZED, Tick): AttemptState.EXPIRED,
        }
    )
)


def _next_state(state: AttemptState, event: ServerInput) -> AttemptState:
    try:
        return ATTEMPT_TRANSITIONS[(state, type(event))]
    except KeyError:
        if state is AttemptState.AUTHORIZED and isinstance(event, ProofPresented):
            raise EnrollmentError(RejectReason.CHALLENGE_USED) from None
        raise LocalProtocolError(
            f"{type(event).__name__} is not legal for a {state.value} challenge"
        ) from None


@attrs.frozen
class EnrollmentPolicy:
    """Challenge lifetime (≤ 60 s) and the bound on live challenges."""

    challenge_ttl: timedelta = MAX_CHALLENGE_TTL
    max_pending: int = DEFAULT_MAX_PENDING

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.challenge_ttl, timedelta) or not (
            timedelta(0) < self.challenge_ttl <= MAX_CHALLENGE_TTL
        ):
            raise LocalProtocolError("challenge_ttl must be in (0, 60 s]")
        if not isinstance(self.max_pending, int) or self.max_pending < 1:
            raise LocalProtocolError("max_pending must be a positive int")


@attrs.frozen
class Attempt:
    """One issued challenge and everything the proof must match."""

    request: TokenPresented
    expires_at: datetime
    state: AttemptState


class EnrollmentServer:
    """Server side of the handshake: `handle(event, now)` returns one effect."""

    def __init__(self, entropy: Entropy, policy: EnrollmentPolicy | None = None) -> None:
        self._entropy = entropy
        self.policy = policy if policy is not None else EnrollmentPolicy()
        self._attempts: dict[bytes, Attempt] = {}

    @classmethod
    def resume(
        cls,
        entropy: Entropy,
        attempts: Mapping[bytes, Attempt],
        policy: EnrollmentPolicy | None = None,
    ) -> EnrollmentServer:
        """A server holding `attempts` as a shared store kept them, so a proof can be checked
        by another control instance than the one that issued the challenge (the store, not
        this object, then decides single use)."""
        server = cls(entropy, policy)
        for challenge_id, attempt in attempts.items():
            if not isinstance(challenge_id, bytes) or len(challenge_id) != CHALLENGE_BYTES:
                raise LocalProtocolError(f"a challenge id is {CHALLENGE_BYTES} bytes")
            if not isinstance(attempt, Attempt) or attempt.state is AttemptState.NEW:
                raise LocalProtocolError("resume takes issued attempts only")
        server._attempts = dict(attempts)
        return server

    def handle(self, event: ServerInput, now: datetime) -> ServerEffect:
        """Feed one input; the returned effect says what to do. Rejections change nothing."""
        _require_now(now)
        try:
            if isinstance(event, TokenPresented):
                return self._on_token(event, now)
            if isinstance(event, ProofPresented):
                return self._on_proof(event, now)
            if isinstance(event, Tick):
                return self._on_tick(event, now)
        except EnrollmentError as exc:
            return Reject(exc.reason)
        raise LocalProtocolError(f"not an enrollment input: {type(event).__name__}")

    def deadline(self) -> datetime | None:
        """When the next challenge expires (feed `Tick` then), or None when none is held."""
        return min((a.expires_at for a in self._attempts.values()), default=None)

    def snapshot(self) -> Mapping[bytes, Attempt]:
        """A read-only copy of the whole state (values are frozen), for checks and tests."""
        return types.MappingProxyType(dict(self._attempts))

    def pending(self) -> int:
        """How many challenges (live or authorized, not yet ticked away) are held."""
        return len(self._attempts)

    def _on_token(self, event: TokenPresented, now: datetime) -> ServerEffect:
        next_state = _next_state(AttemptState.NEW, event)
        self._check_scope(event)
        live = {cid: a for cid, a in self._attempts.items() if now < a.expires_at}
        if not self._has_room(len(live)):
            raise EnrollmentError(RejectReason.TOO_MANY_PENDING)
        challenge_id = self._entropy.token_bytes(CHALLENGE_BYTES)
        if not isinstance(challenge_id, bytes) or len(challenge_id) != CHALLENGE_BYTES:
            raise LocalProtocolError("entropy returned the wrong number of bytes")
        if challenge_id in self._attempts:
            raise LocalProtocolError("entropy repeated a challenge")
        expires_at = now + self.policy.challenge_ttl
        live[challenge_id] = Attempt(event, expires_at, next_state)
        self._attempts = live  # commit: expired leftovers go with the success
        return IssueChallenge(challenge_id, expires_at)

    def _on_proof(self, event: ProofPresented, now: datetime) -> ServerEffect:
        attempt = self._attempts.get(event.challenge_id)
        if attempt is None:
            raise EnrollmentError(RejectReason.UNKNOWN_CHALLENGE)
        next_state = self._consume(attempt, event)
        self._check_fresh(attempt, now)
        self._verify_proof(event, attempt.request)
        granted = self._granted_scope(attempt.request)
        self._attempts[event.challenge_id] = attrs.evolve(attempt, state=next_state)
        request = attempt.request
        return Authorize(
            challenge_id=event.challenge_id,
            token_id=request.token_id,
            identity_key=request.identity_key,
            tunnel_key=request.tunnel_key,
            hostname=request.hostname,
            scope=granted,
        )

    def _on_tick(self, event: Tick, now: datetime) -> ServerEffect:
        expired = []
        for cid, attempt in self._attempts.items():
            if attempt.expires_at <= now:
                _next_state(attempt.state, event)
                expired.append(cid)
        for cid in expired:
            del self._attempts[cid]
        return ForgetChallenges(tuple(sorted(expired)))

    # Overridable checks (tests subclass these to prove the property tests have teeth).

    def _check_scope(self, request: TokenPresented) -> None:
        if not self._granted_scope(request).issubset(request.token_scope):
            raise EnrollmentError(RejectReason.SCOPE_NOT_GRANTED)

    def _granted_scope(self, request: TokenPresented) -> Scope:
        if request.requested_scope is None:
            return request.token_scope
        return request.requested_scope

    def _has_room(self, live: int) -> bool:
        return live < self.policy.max_pending

    def _consume(self, attempt: Attempt, event: ProofPresented) -> AttemptState:
        return _next_state(attempt.state, event)

    def _check_fresh(self, attempt: Attempt, now: datetime) -> None:
        if not now < attempt.expires_at:
            raise EnrollmentError(RejectReason.CHALLENGE_EXPIRED)

    def _verify_proof(self, event: ProofPresented, request: TokenPresented) -> None:
        message = proof_message(event.challenge_id, request)
        try:
            request.identity_key.verify(Purpose.ENROLLMENT_PROOF, message, event.signature)
        except InvalidSignature as exc:
            raise EnrollmentError(RejectReason.INVALID_PROOF) from exc


# --- client --------------------------------------------------------------------------------


class ClientState(enum.Enum):
    """Where the node's side of the handshake stands."""

    IDLE = "idle"
    REQUESTED = "requested"
    PROVED = "proved"
    ENROLLED = "enrolled"
    FAILED = "failed"


class _Start:
    """Marker input for `EnrollmentClient.start` in the transition table."""


CLIENT_TRANSITIONS: Final[Mapping[tuple[ClientState, type], ClientState]] = types.MappingProxyType(
    {
        (ClientState.IDLE, _Start): ClientState.REQUESTED,
        (ClientState.REQUESTED, IssueChallenge): ClientState.PROVED,
        (ClientState.REQUESTED, Reject): ClientState.FAILED,
        (ClientState.PROVED, Authorize): ClientState.ENROLLED,
        (ClientState.PROVED, Reject): ClientState.FAILED,
    }
)


class EnrollmentClient:
    """Node side: builds the request, signs the proof, checks the authorization."""

    def __init__(
        self,
        identity: SigningKey,
        tunnel_key: TunnelKey,
        hostname: str,
        requested_scope: Scope | None = None,
    ) -> None:
        self._identity = identity
        self._tunnel_key = tunnel_key
        self._hostname = hostname.lower() if isinstance(hostname, str) else hostname
        self._requested_scope = requested_scope
        self._request: EnrollmentRequest | None = None
        self._challenge_id: bytes | None = None
        self.state = ClientState.IDLE
        self.authorization: Authorize | None = None
        self.rejection: Reject | None = None

    def start(self, token_id: str) -> EnrollmentRequest:
        """Build the first message for the join token with id `token_id`."""
        if (self.state, _Start) not in CLIENT_TRANSITIONS:
            raise LocalProtocolError(f"cannot start an enrollment that is {self.state.value}")
        request = EnrollmentRequest(
            token_id=token_id,
            identity_key=self._identity.public_key,
            tunnel_key=self._tunnel_key,
            hostname=self._hostname,
            requested_scope=self._requested_scope,
        )
        self._request = request
        self.state = CLIENT_TRANSITIONS[(self.state, _Start)]
        return request

    def receive(self, message: IssueChallenge | Authorize | Reject) -> ProofPresented | None:
        """Feed a server message; a challenge returns the proof to send back."""
        next_state = CLIENT_TRANSITIONS.get((self.state, type(message)))
        if next_state is None or self._request is None:
            was, self.state = self.state, ClientState.FAILED
            raise UnexpectedMessageError(f"{type(message).__name__} while {was.value}")
        if isinstance(message, IssueChallenge):
            proof = self._prove(message, self._request)
            self.state = next_state
            return proof
        if isinstance(message, Authorize):
            self._check_authorization(message, self._request)
            self.authorization = message
        else:
            self.rejection = message
        self.state = next_state
        return None

    def _prove(self, challenge: IssueChallenge, request: EnrollmentRequest) -> ProofPresented:
        message = proof_message(challenge.challenge_id, request)
        signature = self._identity.sign(Purpose.ENROLLMENT_PROOF, message)
        self._challenge_id = challenge.challenge_id
        return ProofPresented(challenge.challenge_id, signature)

    def _check_authorization(self, auth: Authorize, request: EnrollmentRequest) -> None:
        matches = (
            auth.challenge_id == self._challenge_id
            and auth.token_id == request.token_id
            and auth.identity_key == request.identity_key
            and auth.tunnel_key == request.tunnel_key
            and auth.hostname == request.hostname
            and (request.requested_scope is None or auth.scope.issubset(request.requested_scope))
        )
        if not matches:
            self.state = ClientState.FAILED
            raise UnexpectedMessageError(
                "the authorization does not match what this node asked for"
            )
