"""Join credentials (the server's record of a join key) and their lifecycle machine.

The one rule: a credential admits at most `max_uses` nodes (one, by default) before it expires
or is revoked, and any step the table does not list raises and changes nothing.

Theory of operation. An admin creates a credential; the node holds the matching join token
(`join_tokens.py`) and the server keeps only the secret's hash. Inputs are facts about the
credential: a redemption (the last one allowed, or one of several), a revocation, an expiry.

    one-time (default)           reusable (needs tags, a use limit and TTL <= 24 h)
    created --redeem-last--> used        created --redeem--> created (uses + 1)
    created --revoke-------> revoked     created --redeem-last--> exhausted
    created --expire-------> expired     created --revoke--> revoked
                                         created --expire--> expired

`used`, `exhausted`, `expired` and `revoked` are terminal. A one-time credential has
`max_uses == 1`, so its only redemption is always the last. Expiry is timed: at
`now >= expires_at` a credential is no longer redeemable even before anyone records `expire`.
Defaults: TTL 30 min; one-time TTL at most 7 days, reusable at most 24 h; a reusable use
limit between 1 and 10,000.

Storage does a redemption as ONE atomic conditional UPDATE whose row count decides:
`redemption(now)` returns the precondition and the row to write as data, so the SQL mirrors
this rule instead of re-implementing it:

    UPDATE credentials SET state = :state, uses = :uses, last_used_at = :now, ended_at = :ended
     WHERE id = :id AND state = 'created' AND uses = :expected_uses AND expires_at > :now
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.keys import b64decode, b64encode, decode_prefixed
from rustynet.domain.scope import Scope

if TYPE_CHECKING:
    from rustynet.domain.entropy import Entropy

CREDENTIAL_ID_BYTES: Final = 16
SECRET_HASH_BYTES: Final = 32
DEFAULT_TTL: Final = timedelta(minutes=30)
MAX_ONE_TIME_TTL: Final = timedelta(days=7)
MAX_REUSABLE_TTL: Final = timedelta(hours=24)
MAX_REUSABLE_USES: Final = 10_000


class CredentialParameterError(LocalProtocolError):
    """A credential was asked for (or loaded) with values the rules forbid."""


class CredentialTransitionError(LocalProtocolError):
    """An admin or sweeper step the lifecycle table does not allow (nothing changed)."""


class CredentialRejected(RemoteProtocolError):  # noqa: N818 - named for the outcome, like InvalidSignature
    """A presented credential cannot be redeemed (nothing changed)."""


class CredentialExpired(CredentialRejected):
    """The credential's TTL has passed."""


class CredentialUsed(CredentialRejected):
    """The one-time credential was already redeemed."""


class CredentialExhausted(CredentialRejected):
    """The reusable credential reached its use limit."""


class CredentialRevoked(CredentialRejected):
    """An admin revoked the credential."""


class CredentialKind(enum.Enum):
    """One-time (default) or reusable."""

    ONE_TIME = "one-time"
    REUSABLE = "reusable"


class CredentialState(enum.Enum):
    """Lifecycle state; every state but `created` is terminal."""

    CREATED = "created"
    USED = "used"
    EXHAUSTED = "exhausted"
    EXPIRED = "expired"
    REVOKED = "revoked"

    @property
    def terminal(self) -> bool:
        """True for states nothing leaves."""
        return self is not CredentialState.CREATED


class CredentialInput(enum.Enum):
    """The facts that drive the machine."""

    REDEEM = "redeem"  # a redemption that leaves uses to spare
    REDEEM_LAST = "redeem-last"  # the redemption that reaches max_uses
    REVOKE = "revoke"
    EXPIRE = "expire"


_K, _S, _I = CredentialKind, CredentialState, CredentialInput
TRANSITIONS: Final[
    Mapping[tuple[CredentialKind, CredentialState, CredentialInput], CredentialState]
] = {
    (_K.ONE_TIME, _S.CREATED, _I.REDEEM_LAST): _S.USED,
    (_K.ONE_TIME, _S.CREATED, _I.REVOKE): _S.REVOKED,
    (_K.ONE_TIME, _S.CREATED, _I.EXPIRE): _S.EXPIRED,
    (_K.REUSABLE, _S.CREATED, _I.REDEEM): _S.CREATED,
    (_K.REUSABLE, _S.CREATED, _I.REDEEM_LAST): _S.EXHAUSTED,
    (_K.REUSABLE, _S.CREATED, _I.REVOKE): _S.REVOKED,
    (_K.REUSABLE, _S.CREATED, _I.EXPIRE): _S.EXPIRED,
}
"""Every legal step; anything else raises and leaves the credential as it was."""

_REJECTION: Final[Mapping[CredentialState, type[CredentialRejected]]] = {
    _S.USED: CredentialUsed,
    _S.EXHAUSTED: CredentialExhausted,
    _S.EXPIRED: CredentialExpired,
    _S.REVOKED: CredentialRevoked,
}


@attrs.frozen(order=True)
class CredentialId:
    """128-bit random identifier of a credential; text form `rncred_<base64url>`."""

    raw: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))

    def __attrs_post_init__(self) -> None:
        if len(self.raw) != CREDENTIAL_ID_BYTES:
            raise DecodeError(f"a credential id is {CREDENTIAL_ID_BYTES} bytes")

    @classmethod
    def generate(cls, entropy: Entropy) -> CredentialId:
        """A fresh random id."""
        return cls(bytes(entropy.token_bytes(CREDENTIAL_ID_BYTES)))

    @classmethod
    def from_text(cls, text: str) -> CredentialId:
        """Parse `rncred_...`."""
        return cls(decode_prefixed(text, "rncred_", CREDENTIAL_ID_BYTES))

    def to_text(self) -> str:
        """Typed text form."""
        return "rncred_" + b64encode(self.raw)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"CredentialId({self.to_text()!r})"


def _utc(value: object, name: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() != timedelta(0):
        raise CredentialParameterError(f"{name} must be a timezone-aware UTC datetime")
    return value


@attrs.frozen
class Redemption:
    """One redemption as data: the precondition storage checks atomically, and the new row.

    Storage applies `after` only if the stored row still has `expected_state` and
    `expected_uses` and `now < expires_at`; a row count of 0 means someone else won (or the
    credential changed) and the redemption failed.
    """

    credential_id: CredentialId
    expected_state: CredentialState
    expected_uses: int
    now: datetime
    after: Credential

    def precondition_holds(self, current: Credential) -> bool:
        """The WHERE clause of the conditional UPDATE, for stores without SQL."""
        return (
            current.id == self.credential_id
            and current.state is self.expected_state
            and current.uses == self.expected_uses
            and self.now < current.expires_at
        )


@attrs.frozen
class Credential:
    """The stored form of a join key: the secret's hash, never the secret, plus its lifecycle."""

    id: CredentialId = attrs.field(validator=attrs.validators.instance_of(CredentialId))
    secret_hash: bytes = attrs.field(repr=False, validator=attrs.validators.instance_of(bytes))
    scope: Scope = attrs.field(validator=attrs.validators.instance_of(Scope))
    kind: CredentialKind = attrs.field(validator=attrs.validators.instance_of(CredentialKind))
    created_at: datetime
    expires_at: datetime
    max_uses: int
    uses: int = 0
    state: CredentialState = attrs.field(
        default=CredentialState.CREATED,
        validator=attrs.validators.instance_of(CredentialState),
    )
    last_used_at: datetime | None = None
    ended_at: datetime | None = None

    def __attrs_post_init__(self) -> None:
        if len(self.secret_hash) != SECRET_HASH_BYTES:
            raise CredentialParameterError(f"secret hash must be {SECRET_HASH_BYTES} bytes")
        created = _utc(self.created_at, "created_at")
        ttl = _utc(self.expires_at, "expires_at") - created
        for name in ("last_used_at", "ended_at"):
            if getattr(self, name) is not None:
                _utc(getattr(self, name), name)
        for name in ("max_uses", "uses"):
            if type(getattr(self, name)) is not int:
                raise CredentialParameterError(f"{name} must be an int")
        if self.kind is CredentialKind.ONE_TIME:
            self._check_one_time(ttl)
        else:
            self._check_reusable(ttl)
        self._check_state()

    def _check_one_time(self, ttl: timedelta) -> None:
        if self.max_uses != 1:
            raise CredentialParameterError("a one-time credential has exactly one use")
        if not timedelta(0) < ttl <= MAX_ONE_TIME_TTL:
            raise CredentialParameterError("a one-time credential lives at most 7 days")

    def _check_reusable(self, ttl: timedelta) -> None:
        if not self.scope.tags:
            raise CredentialParameterError("a reusable credential needs at least one tag")
        if not 1 <= self.max_uses <= MAX_REUSABLE_USES:
            raise CredentialParameterError(
                f"a reusable credential needs a use limit of 1..{MAX_REUSABLE_USES}"
            )
        if not timedelta(0) < ttl <= MAX_REUSABLE_TTL:
            raise CredentialParameterError("a reusable credential lives at most 24 hours")

    def _check_state(self) -> None:
        if not 0 <= self.uses <= self.max_uses:
            raise CredentialParameterError("uses must be between 0 and max_uses")
        spent = self.uses == self.max_uses
        consistent = {
            CredentialState.CREATED: not spent,
            CredentialState.USED: spent and self.kind is CredentialKind.ONE_TIME,
            CredentialState.EXHAUSTED: spent and self.kind is CredentialKind.REUSABLE,
            CredentialState.EXPIRED: not spent,
            CredentialState.REVOKED: not spent,
        }[self.state]
        if not consistent:
            raise CredentialParameterError(
                f"state {self.state.value} with {self.uses}/{self.max_uses} uses"
            )
        if self.state.terminal != (self.ended_at is not None):
            raise CredentialParameterError("ended_at is set exactly for terminal states")
        if (self.uses > 0) != (self.last_used_at is not None):
            raise CredentialParameterError("last_used_at is set exactly once used")

    @classmethod
    def create(
        cls,
        *,
        id: CredentialId,
        secret_hash: bytes,
        scope: Scope,
        now: datetime,
        ttl: timedelta = DEFAULT_TTL,
        reusable: bool = False,
        max_uses: int | None = None,
    ) -> Credential:
        """A new credential; one-time unless `reusable` (which needs tags and `max_uses`)."""
        if not isinstance(ttl, timedelta):
            raise CredentialParameterError("ttl must be a timedelta")
        if reusable is True:
            if max_uses is None:
                raise CredentialParameterError("a reusable credential needs a use limit")
            kind, limit = CredentialKind.REUSABLE, max_uses
        elif reusable is False:
            if max_uses not in (None, 1):
                raise CredentialParameterError("a use limit needs a reusable credential")
            kind, limit = CredentialKind.ONE_TIME, 1
        else:
            raise CredentialParameterError("reusable must be a bool")
        created = _utc(now, "now")
        return cls(
            id=id,
            secret_hash=secret_hash,
            scope=scope,
            kind=kind,
            created_at=created,
            expires_at=created + ttl,
            max_uses=limit,
        )

    def state_at(self, now: datetime) -> CredentialState:
        """The state an observer at `now` sees (a lapsed credential reads as expired)."""
        if self.state is CredentialState.CREATED and _utc(now, "now") >= self.expires_at:
            return CredentialState.EXPIRED
        return self.state

    def check_redeemable(self, now: datetime) -> None:
        """Raise the specific `CredentialRejected` unless a redemption at `now` is allowed."""
        state = self.state_at(now)
        if state is not CredentialState.CREATED:
            raise _REJECTION[state](f"credential is {state.value}")

    def redeem(self, now: datetime) -> Credential:
        """The credential after one successful redemption at `now`, or raise."""
        self.check_redeemable(now)
        last = self.uses + 1 == self.max_uses
        state = self._next(CredentialInput.REDEEM_LAST if last else CredentialInput.REDEEM)
        return attrs.evolve(
            self,
            uses=self.uses + 1,
            state=state,
            last_used_at=now,
            ended_at=now if state.terminal else None,
        )

    def redemption(self, now: datetime) -> Redemption:
        """The redemption at `now` as data for one atomic conditional UPDATE, or raise."""
        after = self.redeem(now)
        return Redemption(
            credential_id=self.id,
            expected_state=self.state,
            expected_uses=self.uses,
            now=now,
            after=after,
        )

    def revoke(self, now: datetime) -> Credential:
        """The credential revoked at `now`; only a live credential can be revoked."""
        state = self._next(CredentialInput.REVOKE)
        return attrs.evolve(self, state=state, ended_at=_utc(now, "now"))

    def expire(self, now: datetime) -> Credential:
        """The credential recorded as expired; only once its TTL has passed."""
        if _utc(now, "now") < self.expires_at:
            raise CredentialTransitionError("credential has not reached its expiry")
        return attrs.evolve(self, state=self._next(CredentialInput.EXPIRE), ended_at=now)

    def _next(self, event: CredentialInput) -> CredentialState:
        try:
            return TRANSITIONS[self.kind, self.state, event]
        except KeyError:
            raise CredentialTransitionError(
                f"{self.kind.value} credential in state {self.state.value} cannot {event.value}"
            ) from None

    def to_record(self) -> dict[str, object]:
        """A flat row of primitives (what storage writes); `from_record` is its strict inverse."""
        return {
            "id": self.id.to_text(),
            "secret_hash": b64encode(self.secret_hash),
            "scope": self.scope.as_strings(),
            "kind": self.kind.value,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "max_uses": self.max_uses,
            "uses": self.uses,
            "state": self.state.value,
            "last_used_at": None if self.last_used_at is None else self.last_used_at.isoformat(),
            "ended_at": None if self.ended_at is None else self.ended_at.isoformat(),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> Credential:
        """Rebuild a credential from `to_record` output; any malformation raises `DecodeError`."""
        if set(record) != _RECORD_FIELDS:
            raise DecodeError("credential record has the wrong fields")
        try:
            return cls(
                id=CredentialId.from_text(_text(record["id"])),
                secret_hash=b64decode(_text(record["secret_hash"])),
                scope=Scope.of(_strings(record["scope"])),
                kind=CredentialKind(record["kind"]),
                created_at=_time(record["created_at"]),
                expires_at=_time(record["expires_at"]),
                max_uses=record["max_uses"],  # type: ignore[arg-type]  # validated in init
                uses=record["uses"],  # type: ignore[arg-type]  # validated in init
                state=CredentialState(record["state"]),
                last_used_at=_optional_time(record["last_used_at"]),
                ended_at=_optional_time(record["ended_at"]),
            )
        except (ValueError, TypeError, CredentialParameterError) as exc:
            raise DecodeError(f"bad credential record: {exc}") from exc


_RECORD_FIELDS: Final = frozenset(attrs.fields_dict(Credential))


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise DecodeError("expected a string")
    return value


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DecodeError("expected a list of strings")
    return value


def _time(value: object) -> datetime:
    parsed = datetime.fromisoformat(_text(value))
    if parsed.tzinfo is None or parsed.utcoffset() != timedelta(0):
        raise DecodeError("expected a UTC timestamp")
    return parsed.astimezone(UTC)


def _optional_time(value: object) -> datetime | None:
    return None if value is None else _time(value)
