"""Replay guard for signed requests: a timestamp window plus a bounded memory of nonces.

The one rule: a signed request is accepted only if its timestamp lies within ±`window` of
`now` and its nonce has not been seen while it could still pass that window; when the nonce
memory is full, new requests are rejected (fail closed) — an unexpired nonce is never evicted
to make room, because forgetting it would reopen the replay window.

Theory of operation. A nonce accepted at `now` is remembered until `now + retention`.
A request's timestamp can be at most `window` in the future when accepted and at most
`window` in the past when replayed, so it can pass the timestamp check for at most
`2 * window` after acceptance; `retention ≥ 2 * window` (enforced by `ReplayPolicy`) therefore
covers every moment a replay could otherwise succeed. An entry is live while
`now <= expires_at`, so the boundary instant is still covered.

Two ways to drive it, both fail closed:

* In-process: `ReplayGuard.accept(nonce, timestamp, now)` = `check` (decide, no mutation)
  then `record` (insert). The driver persists each returned `NonceRecord` before it answers
  the request, and `export_state()`/`ReplayGuard.restore(...)` carry the memory across a
  restart so a restart does not reopen the window.
* Shared store (several control instances): `admit(nonce, timestamp, now, policy)` is the
  pure stateless part (length + window) and returns the `NonceRecord`; the store then inserts
  it with one atomic "insert if absent and fewer than capacity live rows" whose row count
  decides (`ReplayedNonceError` / `ReplayCacheFullError` otherwise).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final

import attrs

from rustynet.domain.errors import LocalProtocolError, RemoteProtocolError

REPLAY_WINDOW: Final = timedelta(seconds=90)
NONCE_RETENTION: Final = timedelta(seconds=180)
MIN_NONCE_BYTES: Final = 16  # 128 bits
MAX_NONCE_BYTES: Final = 64  # bounds the memory one entry can cost
DEFAULT_CAPACITY: Final = 100_000
STATE_VERSION: Final = 1


class ReplayError(RemoteProtocolError):
    """Base of every replay-guard rejection: the request must not be processed."""


class NonceMalformedError(ReplayError):
    """The nonce is not bytes, shorter than 128 bits or absurdly long."""


class StaleTimestampError(ReplayError):
    """The request's timestamp is more than `window` away from now (past or future)."""


class ReplayedNonceError(ReplayError):
    """The nonce was already accepted and is still remembered."""


class ReplayCacheFullError(ReplayError):
    """The nonce memory is full of unexpired entries; new requests are refused (fail closed)."""


class ReplayStateError(LocalProtocolError):
    """Persisted replay state could not be restored; the driver must refuse signed requests."""


def _require_aware(value: datetime, what: str) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise LocalProtocolError(f"{what} must be a timezone-aware datetime")


def _positive(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise LocalProtocolError(f"{attribute.name} must be a positive timedelta")


@attrs.frozen
class ReplayPolicy:
    """Window, retention, nonce size and memory bound of a replay guard."""

    window: timedelta = attrs.field(default=REPLAY_WINDOW, validator=_positive)
    retention: timedelta = attrs.field(default=NONCE_RETENTION, validator=_positive)
    min_nonce_bytes: int = MIN_NONCE_BYTES
    capacity: int = DEFAULT_CAPACITY

    def __attrs_post_init__(self) -> None:
        if self.retention < 2 * self.window:
            raise LocalProtocolError("retention must be at least twice the window")
        if not isinstance(self.min_nonce_bytes, int) or self.min_nonce_bytes < MIN_NONCE_BYTES:
            raise LocalProtocolError(f"nonces must be at least {MIN_NONCE_BYTES} bytes")
        if not isinstance(self.capacity, int) or self.capacity < 1:
            raise LocalProtocolError("capacity must be a positive int")


@attrs.frozen
class NonceRecord:
    """Effect: remember `nonce` until `expires_at` (persist it before answering the request)."""

    nonce: bytes
    expires_at: datetime


def admit(nonce: bytes, timestamp: datetime, now: datetime, policy: ReplayPolicy) -> NonceRecord:
    """Stateless checks (nonce size, timestamp window); return the record to insert atomically."""
    _require_aware(now, "now")
    _require_aware(timestamp, "timestamp")
    if not isinstance(nonce, bytes) or not (
        policy.min_nonce_bytes <= len(nonce) <= MAX_NONCE_BYTES
    ):
        raise NonceMalformedError(f"a nonce is {policy.min_nonce_bytes}..{MAX_NONCE_BYTES} bytes")
    if abs(timestamp - now) > policy.window:
        raise StaleTimestampError("request timestamp is outside the accepted window")
    return NonceRecord(nonce, now + policy.retention)


class ReplayGuard:
    """In-memory nonce memory with a hard capacity; see the module docstring."""

    def __init__(self, policy: ReplayPolicy | None = None) -> None:
        self.policy = policy if policy is not None else ReplayPolicy()
        self._expiry: dict[bytes, datetime] = {}
        self._heap: list[tuple[datetime, bytes]] = []  # lazy: may hold superseded entries

    def __len__(self) -> int:
        return len(self._expiry)

    def check(self, nonce: bytes, timestamp: datetime, now: datetime) -> NonceRecord:
        """Decide without remembering anything; raise a `ReplayError` subclass to refuse."""
        record = admit(nonce, timestamp, now, self.policy)
        self.expire(now)
        if self._seen(nonce, now):
            raise ReplayedNonceError("nonce already used")
        if self._full():
            raise ReplayCacheFullError("replay cache is full; refusing new signed requests")
        return record

    def record(self, record: NonceRecord, now: datetime) -> None:
        """Remember an accepted nonce (re-checks, so check + record cannot double-accept)."""
        _require_aware(now, "now")
        self.expire(now)
        if self._seen(record.nonce, now):
            raise ReplayedNonceError("nonce already used")
        if self._full():
            raise ReplayCacheFullError("replay cache is full; refusing new signed requests")
        self._insert(record.nonce, record.expires_at)

    def accept(self, nonce: bytes, timestamp: datetime, now: datetime) -> NonceRecord:
        """Check and remember in one step; the returned record is what the driver persists."""
        record = self.check(nonce, timestamp, now)
        self.record(record, now)
        return record

    def expire(self, now: datetime) -> int:
        """Forget nonces whose retention has passed; return how many were forgotten."""
        _require_aware(now, "now")
        dropped = 0
        while self._heap and self._heap[0][0] < now:
            expires_at, nonce = heapq.heappop(self._heap)
            if self._expiry.get(nonce) == expires_at:
                del self._expiry[nonce]
                dropped += 1
        return dropped

    def deadline(self) -> datetime | None:
        """When the next remembered nonce may be forgotten (for the driver's timer)."""
        return min(self._expiry.values(), default=None)

    def export_state(self) -> dict[str, object]:
        """Plain data (JSON-ready) holding every remembered nonce and its expiry."""
        return {
            "version": STATE_VERSION,
            "nonces": sorted(
                [nonce.hex(), expires_at.isoformat()] for nonce, expires_at in self._expiry.items()
            ),
        }

    @classmethod
    def restore(
        cls, state: Mapping[str, object], now: datetime, policy: ReplayPolicy | None = None
    ) -> ReplayGuard:
        """Rebuild from `export_state()` output; anything malformed raises `ReplayStateError`."""
        _require_aware(now, "now")
        guard = cls(policy)
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ReplayStateError("unknown replay state version")
        entries = state.get("nonces")
        if not isinstance(entries, list):
            raise ReplayStateError("replay state has no nonce list")
        for entry in entries:
            nonce, expires_at = _parse_entry(entry, guard.policy)
            if nonce in guard._expiry:
                raise ReplayStateError("duplicate nonce in replay state")
            guard._insert(nonce, expires_at)
        # Entries beyond capacity are kept: new requests are refused until they expire.
        guard.expire(now)
        return guard

    # Overridable checks (tests subclass these to prove the property tests have teeth).

    def _seen(self, nonce: bytes, now: datetime) -> bool:
        expires_at = self._expiry.get(nonce)
        return expires_at is not None and now <= expires_at

    def _full(self) -> bool:
        return len(self._expiry) >= self.policy.capacity

    def _insert(self, nonce: bytes, expires_at: datetime) -> None:
        self._expiry[nonce] = expires_at
        heapq.heappush(self._heap, (expires_at, nonce))


def _parse_entry(entry: object, policy: ReplayPolicy) -> tuple[bytes, datetime]:
    if not (isinstance(entry, list | tuple) and len(entry) == 2):
        raise ReplayStateError("a replay entry is [nonce_hex, expires_at]")
    nonce_hex, expires_text = entry
    if not isinstance(nonce_hex, str) or not isinstance(expires_text, str):
        raise ReplayStateError("a replay entry is [nonce_hex, expires_at]")
    try:
        nonce = bytes.fromhex(nonce_hex)
        expires_at = datetime.fromisoformat(expires_text)
    except ValueError as exc:
        raise ReplayStateError("unparsable replay entry") from exc
    if nonce.hex() != nonce_hex or not (policy.min_nonce_bytes <= len(nonce) <= MAX_NONCE_BYTES):
        raise ReplayStateError("replay entry with a malformed nonce")
    if expires_at.utcoffset() is None:
        raise ReplayStateError("replay entry with a naive expiry")
    return nonce, expires_at
