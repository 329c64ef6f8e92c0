"""Abuse limits: per-IP and per-identity token buckets, failure backoff and lockout.

The one rule: when in doubt, deny. Every request is decided from plain, persistable state and
an explicit `now`; a limiter that cannot decide (its store raised, its state is missing or
corrupt, its tables are full) answers deny, never allow.

Theory of operation.

* Buckets use GCRA, the "virtual scheduling" form of a token bucket: each key stores one
  timestamp, its theoretical arrival time `tat`. With emission interval `T = per / refill` and
  tolerance `τ = T * (burst - 1)`, a request at `now` is allowed when `max(tat, now) - now ≤ τ`
  and then moves `tat` on by `T`; otherwise it is denied with `retry_after` = the wait until it
  would be allowed. This admits at most `burst + ⌊W / T⌋` requests in any window of length W,
  is exact in integer microseconds, and a key whose `tat ≤ now` is a full bucket that can be
  forgotten without changing any decision (that is how memory stays bounded).
* IPs are keyed by network: IPv4 by /32, IPv6 by /64 (one subscriber's allocation), and an
  IPv4-mapped IPv6 address as the IPv4 address it carries.
* Failed authentications are also counted per source network (`auth_failures_per_ip`), in
  their own bucket: successes never take from it, so a legitimate client's traffic cannot
  empty it and a flood of failures cannot empty a success bucket.
* Failures are counted per credential. From the `backoff_after_failures`-th consecutive failure
  the credential is blocked for `backoff_initial`, doubling with each further failure up to
  `backoff_max`; at `disable_after_failures` it is disabled until an admin resets it. A success
  resets the count (not the disabled flag).

`Limiter` holds the state for one process and exports/restores it as plain data; the pure
record functions (`bucket_take`, `after_failure`, `after_success`) let a shared store apply the
same rules to one row inside a transaction. `decide_or_deny` turns "could not decide" into deny.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Final

import attrs

from rustynet.domain.errors import LocalProtocolError

STATE_VERSION: Final = 1
_MAX_DOUBLINGS: Final = 32  # beyond this the delay is capped anyway; avoids huge ints


class LimiterStateError(LocalProtocolError):
    """Persisted limiter state could not be restored; every decision must deny until fixed."""


class LimiterFullError(LocalProtocolError):
    """A limiter table is at its bound with no evictable entry; callers must deny."""


def _require_aware(value: datetime, what: str = "now") -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise LocalProtocolError(f"{what} must be a timezone-aware datetime")


def _positive_int(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise LocalProtocolError(f"{attribute.name} must be a positive int")


def _positive_delta(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise LocalProtocolError(f"{attribute.name} must be a positive timedelta")


@attrs.frozen
class BucketPolicy:
    """A token bucket: `burst` requests at once, refilled by `refill` every `per`."""

    burst: int = attrs.field(validator=_positive_int)
    refill: int = attrs.field(validator=_positive_int)
    per: timedelta = attrs.field(validator=_positive_delta)

    @property
    def interval(self) -> timedelta:
        """Time for one token to come back (GCRA emission interval)."""
        return self.per / self.refill

    @property
    def tolerance(self) -> timedelta:
        """How far ahead of `now` the theoretical arrival time may run (GCRA τ)."""
        return self.interval * (self.burst - 1)


def _prefix(bits: int) -> Callable[[object, attrs.Attribute[int], int], None]:
    def check(_: object, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or not 0 < value <= bits:
            raise LocalProtocolError(f"{attribute.name} must be 1..{bits}")

    return check


@attrs.frozen
class LimitPolicy:
    """Every number of the abuse limits; the defaults: docs/threat-model/auth-controls.md."""

    per_ip: BucketPolicy = BucketPolicy(burst=20, refill=10, per=timedelta(minutes=1))
    per_identity: BucketPolicy = BucketPolicy(burst=10, refill=5, per=timedelta(minutes=15))
    # Failed authentications per source network on every authenticated route (node token,
    # renewal, enrollment, admin key): over it, 429 before anything is looked up or written.
    auth_failures_per_ip: BucketPolicy = BucketPolicy(burst=20, refill=10, per=timedelta(minutes=1))
    backoff_after_failures: int = attrs.field(default=5, validator=_positive_int)
    backoff_initial: timedelta = attrs.field(
        default=timedelta(seconds=30), validator=_positive_delta
    )
    backoff_max: timedelta = attrs.field(default=timedelta(minutes=15), validator=_positive_delta)
    disable_after_failures: int = attrs.field(default=100, validator=_positive_int)
    ipv4_prefix: int = attrs.field(default=32, validator=_prefix(32))
    ipv6_prefix: int = attrs.field(default=64, validator=_prefix(128))
    max_keys: int = attrs.field(default=100_000, validator=_positive_int)
    unavailable_retry_after: timedelta = attrs.field(
        default=timedelta(seconds=30), validator=_positive_delta
    )

    def __attrs_post_init__(self) -> None:
        if self.backoff_max < self.backoff_initial:
            raise LocalProtocolError("backoff_max must be at least backoff_initial")


class BucketTable(enum.Enum):
    """Which rate-limit table a GCRA key lives in."""

    IP = "ip"
    IDENTITY = "identity"
    AUTH_FAILURE = "auth-failure"  # failed authentications per source network
    ADMIN = "admin"  # authenticated admin calls per source network


class DenyReason(enum.Enum):
    """Why a request was denied (the edge maps these to 429 / 403)."""

    IP_RATE = "ip-rate"
    IDENTITY_RATE = "identity-rate"
    BACKOFF = "backoff"
    DISABLED = "disabled"
    UNAVAILABLE = "unavailable"


@attrs.frozen
class Decision:
    """Allow, or deny with a reason and (when waiting helps) how long to wait."""

    allowed: bool
    reason: DenyReason | None = None
    retry_after: timedelta | None = None

    @classmethod
    def allow(cls) -> Decision:
        """The request may proceed."""
        return cls(allowed=True)

    @classmethod
    def deny(cls, reason: DenyReason, retry_after: timedelta | None) -> Decision:
        """The request is refused; `retry_after` is None when waiting will not help."""
        return cls(allowed=False, reason=reason, retry_after=retry_after)

    @property
    def retry_after_seconds(self) -> int | None:
        """Whole seconds for an HTTP Retry-After header (rounded up, at least 1)."""
        if self.retry_after is None:
            return None
        return max(1, math.ceil(self.retry_after.total_seconds()))


IpAddress = str | ipaddress.IPv4Address | ipaddress.IPv6Address


def ip_key(address: IpAddress, policy: LimitPolicy) -> str:
    """The bucket key of a client address: its /32 (IPv4) or /64 (IPv6) network."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise LocalProtocolError(f"not an IP address: {address!r}") from exc
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ipaddress.IPv4Network((int(ip), policy.ipv4_prefix), strict=False))
    return str(ipaddress.IPv6Network((int(ip), policy.ipv6_prefix), strict=False))


@attrs.frozen
class BucketOutcome:
    """Result of one bucket take: allowed or the wait, and the bucket's next `tat`."""

    allowed: bool
    retry_after: timedelta | None
    tat: datetime


def bucket_take(tat: datetime | None, now: datetime, bucket: BucketPolicy) -> BucketOutcome:
    """GCRA step for one key; a denied take leaves `tat` unchanged."""
    _require_aware(now)
    current = now if tat is None or tat < now else tat
    ahead = current - now
    if ahead > bucket.tolerance:
        return BucketOutcome(False, ahead - bucket.tolerance, current)
    return BucketOutcome(True, None, current + bucket.interval)


@attrs.frozen
class FailureRecord:
    """Consecutive failures of one credential, its backoff and whether it is disabled."""

    consecutive: int = 0
    blocked_until: datetime | None = None
    disabled: bool = False

    @property
    def is_clear(self) -> bool:
        """True when the record says nothing (it can be forgotten)."""
        return self.consecutive == 0 and not self.disabled


def backoff_delay(consecutive: int, policy: LimitPolicy) -> timedelta | None:
    """Block time after `consecutive` failures, or None below the backoff threshold."""
    if consecutive < policy.backoff_after_failures:
        return None
    doublings = min(consecutive - policy.backoff_after_failures, _MAX_DOUBLINGS)
    return min(policy.backoff_initial * (1 << doublings), policy.backoff_max)


def after_failure(record: FailureRecord, now: datetime, policy: LimitPolicy) -> FailureRecord:
    """The record after one more failure: count, backoff, disable at the threshold."""
    _require_aware(now)
    consecutive = record.consecutive + 1
    delay = backoff_delay(consecutive, policy)
    return FailureRecord(
        consecutive=consecutive,
        blocked_until=None if delay is None else now + delay,
        disabled=record.disabled or consecutive >= policy.disable_after_failures,
    )


def after_success(record: FailureRecord) -> FailureRecord:
    """A success resets the failure count and backoff; a disabled credential stays disabled."""
    return FailureRecord(disabled=record.disabled)


class Limiter:
    """One process's limiter state: two bucket tables and the failure records."""

    def __init__(self, policy: LimitPolicy | None = None) -> None:
        self.policy = policy if policy is not None else LimitPolicy()
        self._ip: dict[str, datetime] = {}
        self._identity: dict[str, datetime] = {}
        self._failures: dict[str, FailureRecord] = {}
        self._prune_not_before: datetime | None = None

    def check(
        self,
        now: datetime,
        *,
        ip: IpAddress | None = None,
        identity: str | None = None,
        credential: str | None = None,
    ) -> Decision:
        """Decide one request; an allowed request takes a token from each bucket it names."""
        _require_aware(now)
        if credential is not None:
            denied = self._credential_denial(credential, now)
            if denied is not None:
                return denied
            if credential not in self._failures and len(self._failures) >= self.policy.max_keys:
                return self._unavailable()  # could not record its failures: fail closed
        takes: list[tuple[dict[str, datetime], str, datetime]] = []
        for table, key, bucket, reason in self._buckets(ip, identity):
            if key not in table and not self._room(table, now):
                return self._unavailable()
            outcome = self._take(table.get(key), now, bucket)
            if not outcome.allowed:
                return Decision.deny(reason, outcome.retry_after)
            takes.append((table, key, outcome.tat))
        for table, key, tat in takes:  # commit only once every bucket agreed
            if key not in table:
                self._prune_not_before = None  # a new entry may expire before the old bound
            table[key] = tat
        return Decision.allow()

    def record_failure(self, credential: str, now: datetime) -> FailureRecord:
        """Count a failed attempt (bad secret, bad proof) against `credential`."""
        _require_aware(now)
        record = self._failures.get(credential)
        if record is None and len(self._failures) >= self.policy.max_keys:
            raise LimiterFullError("failure table is full")
        updated = after_failure(record or FailureRecord(), now, self.policy)
        self._failures[credential] = updated
        return updated

    def record_success(self, credential: str) -> None:
        """A successful attempt resets the credential's failure count."""
        record = self._failures.get(credential)
        if record is None:
            return
        updated = after_success(record)
        if updated.is_clear:
            del self._failures[credential]
        else:
            self._failures[credential] = updated

    def reset(self, credential: str) -> None:
        """Admin action: re-enable a disabled credential and clear its failures."""
        self._failures.pop(credential, None)

    def failures(self, credential: str) -> FailureRecord:
        """The failure record of `credential` (clear when none is stored)."""
        return self._failures.get(credential, FailureRecord())

    def prune(self, now: datetime) -> int:
        """Forget full buckets (they decide exactly like absent ones); return how many."""
        _require_aware(now)
        dropped = 0
        earliest: datetime | None = None
        for table in (self._ip, self._identity):
            for key in [k for k, tat in table.items() if tat <= now]:
                del table[key]
                dropped += 1
            for tat in table.values():
                earliest = tat if earliest is None or tat < earliest else earliest
        self._prune_not_before = earliest
        return dropped

    def export_state(self) -> dict[str, object]:
        """Plain data (JSON-ready) for persisting or sharing the limiter state."""
        return {
            "version": STATE_VERSION,
            "ip": {k: v.isoformat() for k, v in sorted(self._ip.items())},
            "identity": {k: v.isoformat() for k, v in sorted(self._identity.items())},
            "failures": {
                k: {
                    "consecutive": r.consecutive,
                    "blocked_until": None
                    if r.blocked_until is None
                    else r.blocked_until.isoformat(),
                    "disabled": r.disabled,
                }
                for k, r in sorted(self._failures.items())
            },
        }

    @classmethod
    def restore(cls, state: Mapping[str, object], policy: LimitPolicy | None = None) -> Limiter:
        """Rebuild from `export_state()`; anything malformed raises `LimiterStateError`."""
        limiter = cls(policy)
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise LimiterStateError("unknown limiter state version")
        limiter._ip = _parse_tats(state.get("ip"))
        limiter._identity = _parse_tats(state.get("identity"))
        failures = state.get("failures")
        if not isinstance(failures, Mapping):
            raise LimiterStateError("limiter state has no failure table")
        limiter._failures = {_key(k): _parse_failure(v) for k, v in failures.items()}
        return limiter

    # Overridable steps (tests subclass these to prove the property tests have teeth).

    def _credential_denial(self, credential: str, now: datetime) -> Decision | None:
        record = self._failures.get(credential)
        if record is None:
            return None
        if record.disabled:
            return Decision.deny(DenyReason.DISABLED, None)
        if record.blocked_until is not None and now < record.blocked_until:
            return Decision.deny(DenyReason.BACKOFF, record.blocked_until - now)
        return None

    def _take(self, tat: datetime | None, now: datetime, bucket: BucketPolicy) -> BucketOutcome:
        return bucket_take(tat, now, bucket)

    def _buckets(
        self, ip: IpAddress | None, identity: str | None
    ) -> list[tuple[dict[str, datetime], str, BucketPolicy, DenyReason]]:
        found: list[tuple[dict[str, datetime], str, BucketPolicy, DenyReason]] = []
        if ip is not None:
            found.append(
                (self._ip, ip_key(ip, self.policy), self.policy.per_ip, DenyReason.IP_RATE)
            )
        if identity is not None:
            if not isinstance(identity, str) or not identity:
                raise LocalProtocolError("an identity key is a non-empty string")
            found.append(
                (self._identity, identity, self.policy.per_identity, DenyReason.IDENTITY_RATE)
            )
        return found

    def _room(self, table: dict[str, datetime], now: datetime) -> bool:
        if len(table) < self.policy.max_keys:
            return True
        if self._prune_not_before is None or self._prune_not_before <= now:
            self.prune(now)  # forgetting full buckets changes no decision
        return len(table) < self.policy.max_keys

    def _unavailable(self) -> Decision:
        return Decision.deny(DenyReason.UNAVAILABLE, self.policy.unavailable_retry_after)


def decide_or_deny(decide: Callable[[], object], policy: LimitPolicy | None = None) -> Decision:
    """Run a limiter decision; if it raises or returns nonsense, deny (fail closed)."""
    retry = (policy or LimitPolicy()).unavailable_retry_after
    try:
        decision = decide()
    except Exception:  # noqa: BLE001 - any failure to decide must deny, whatever its type
        return Decision.deny(DenyReason.UNAVAILABLE, retry)
    if not isinstance(decision, Decision):
        return Decision.deny(DenyReason.UNAVAILABLE, retry)
    return decision


def _key(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise LimiterStateError("limiter keys are non-empty strings")
    return value


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise LimiterStateError("limiter times are ISO 8601 strings")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise LimiterStateError("unparsable limiter time") from exc
    if parsed.utcoffset() is None:
        raise LimiterStateError("limiter times carry a UTC offset")
    return parsed


def _parse_tats(table: object) -> dict[str, datetime]:
    if not isinstance(table, Mapping):
        raise LimiterStateError("limiter state has no bucket table")
    return {_key(k): _parse_time(v) for k, v in table.items()}


def _parse_failure(value: object) -> FailureRecord:
    if not isinstance(value, Mapping) or set(value) != {"consecutive", "blocked_until", "disabled"}:
        raise LimiterStateError("malformed failure record")
    consecutive, blocked, disabled = (
        value["consecutive"],
        value["blocked_until"],
        value["disabled"],
    )
    if (
        not isinstance(consecutive, int)
        or isinstance(consecutive, bool)
        or consecutive < 0
        or not isinstance(disabled, bool)
    ):
        raise LimiterStateError("malformed failure record")
    return FailureRecord(
        consecutive=consecutive,
        blocked_until=None if blocked is None else _parse_time(blocked),
        disabled=disabled,
    )
