"""Replay guard: the ±90 s window, nonce size, single use, bounded memory, restart safety."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from rustynet.domain.errors import LocalProtocolError, RemoteProtocolError
from rustynet.domain.replay import (
    NONCE_RETENTION,
    REPLAY_WINDOW,
    NonceMalformedError,
    ReplayCacheFullError,
    ReplayedNonceError,
    ReplayError,
    ReplayGuard,
    ReplayPolicy,
    ReplayStateError,
    StaleTimestampError,
    admit,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def nonce(i: int, size: int = 16) -> bytes:
    """A distinct nonce of `size` bytes."""
    return i.to_bytes(size, "big")


def test_defaults_match_the_security_baseline() -> None:
    """Window ±90 s, nonces remembered 180 s, 128-bit minimum."""
    policy = ReplayPolicy()
    assert (timedelta(seconds=90), timedelta(seconds=180)) == (REPLAY_WINDOW, NONCE_RETENTION)
    assert (policy.window, policy.retention, policy.min_nonce_bytes) == (
        REPLAY_WINDOW,
        NONCE_RETENTION,
        16,
    )


@pytest.mark.parametrize("seconds", [-90, -89, 0, 89, 90])
def test_timestamp_within_90_seconds_is_accepted(seconds: int) -> None:
    """Timestamps up to 90 s in the past or future pass the window."""
    record = ReplayGuard().accept(nonce(1), T0 + timedelta(seconds=seconds), T0)
    assert record.nonce == nonce(1)


@pytest.mark.parametrize(
    "offset",
    [
        timedelta(seconds=91),
        timedelta(seconds=-91),
        timedelta(seconds=90, microseconds=1),
        timedelta(seconds=-90, microseconds=-1),
    ],
)
def test_timestamp_beyond_90_seconds_is_rejected(offset: timedelta) -> None:
    """A request signed more than 90 s from now (either way) is stale and changes nothing."""
    guard = ReplayGuard()
    with pytest.raises(StaleTimestampError):
        guard.accept(nonce(1), T0 + offset, T0)
    assert len(guard) == 0


def test_nonce_of_15_bytes_is_rejected() -> None:
    """A nonce under 128 bits is refused; 16 bytes passes."""
    guard = ReplayGuard()
    with pytest.raises(NonceMalformedError):
        guard.accept(b"\x01" * 15, T0, T0)
    assert len(guard) == 0
    guard.accept(b"\x01" * 16, T0, T0)
    assert len(guard) == 1


@pytest.mark.parametrize("bad", [b"", b"\x00" * 65, bytearray(16), "0" * 32])
def test_malformed_nonces_are_rejected(bad: object) -> None:
    """Empty, oversize or non-bytes nonces are refused before anything is stored."""
    with pytest.raises(NonceMalformedError):
        ReplayGuard().accept(bad, T0, T0)  # type: ignore[arg-type]  # wrong type on purpose


def test_a_nonce_is_accepted_only_once() -> None:
    """Replaying the same signed request is rejected."""
    guard = ReplayGuard()
    guard.accept(nonce(7), T0, T0)
    with pytest.raises(ReplayedNonceError):
        guard.accept(nonce(7), T0, T0 + timedelta(seconds=1))


def test_replay_is_rejected_until_the_timestamp_itself_goes_stale() -> None:
    """A nonce accepted with a +90 s timestamp cannot be replayed at any later instant."""
    guard = ReplayGuard()
    ts = T0 + timedelta(seconds=90)
    guard.accept(nonce(7), ts, T0)
    with pytest.raises(ReplayedNonceError):
        guard.accept(nonce(7), ts, T0 + timedelta(seconds=180))  # boundary: still remembered
    with pytest.raises(StaleTimestampError):
        guard.accept(nonce(7), ts, T0 + timedelta(seconds=180, microseconds=1))


def test_nonce_is_forgotten_after_180_seconds() -> None:
    """Memory is bounded in time: after retention a nonce may be reused with a fresh timestamp."""
    guard = ReplayGuard()
    guard.accept(nonce(7), T0, T0)
    later = T0 + timedelta(seconds=181)
    assert guard.expire(later) == 1
    guard.accept(nonce(7), later, later)
    assert len(guard) == 1


def test_check_alone_remembers_nothing() -> None:
    """`check` decides without storing; `record` stores (so a store can make both atomic)."""
    guard = ReplayGuard()
    record = guard.check(nonce(1), T0, T0)
    assert len(guard) == 0
    guard.record(record, T0)
    with pytest.raises(ReplayedNonceError):
        guard.record(record, T0)


def test_full_cache_rejects_and_never_evicts_unexpired_nonces() -> None:
    """At capacity new requests are refused (fail closed) and old nonces stay remembered."""
    guard = ReplayGuard(ReplayPolicy(capacity=3))
    for i in range(3):
        guard.accept(nonce(i), T0, T0)
    with pytest.raises(ReplayCacheFullError):
        guard.accept(nonce(99), T0, T0 + timedelta(seconds=1))
    assert len(guard) == 3
    with pytest.raises(ReplayedNonceError):
        guard.accept(nonce(0), T0, T0 + timedelta(seconds=2))


def test_full_cache_frees_room_once_entries_expire() -> None:
    """Capacity counts live nonces only."""
    guard = ReplayGuard(ReplayPolicy(capacity=1))
    guard.accept(nonce(1), T0, T0)
    later = T0 + timedelta(seconds=181)
    guard.accept(nonce(2), later, later)
    assert len(guard) == 1


def test_errors_are_remote_protocol_errors() -> None:
    """Every rejection is a RemoteProtocolError the edge can map, and each has its own type."""
    kinds = {NonceMalformedError, StaleTimestampError, ReplayedNonceError, ReplayCacheFullError}
    assert len(kinds) == 4
    assert all(issubclass(k, ReplayError) and issubclass(k, RemoteProtocolError) for k in kinds)


def test_restart_through_plain_data_keeps_nonces() -> None:
    """Export → JSON → restore: a nonce accepted before a restart is still rejected after it."""
    guard = ReplayGuard()
    guard.accept(nonce(5), T0, T0)
    plain = json.loads(json.dumps(guard.export_state()))
    restored = ReplayGuard.restore(plain, T0 + timedelta(seconds=10))
    with pytest.raises(ReplayedNonceError):
        restored.accept(nonce(5), T0, T0 + timedelta(seconds=10))


def test_restore_drops_expired_nonces() -> None:
    """Restoring after the retention period forgets what has expired."""
    guard = ReplayGuard()
    guard.accept(nonce(5), T0, T0)
    restored = ReplayGuard.restore(guard.export_state(), T0 + timedelta(seconds=200))
    assert len(restored) == 0


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"version": 2, "nonces": []},
        {"version": 1},
        {"version": 1, "nonces": [["zz", "2025-01-01T12:00:00+00:00"]]},
        {"version": 1, "nonces": [["00" * 15, "2025-01-01T12:00:00+00:00"]]},
        {"version": 1, "nonces": [["00" * 16, "2025-01-01T12:00:00"]]},
        {"version": 1, "nonces": [["00" * 16, "yesterday"]]},
        {"version": 1, "nonces": [["00 " * 16, "2025-01-01T12:00:00+00:00"]]},
        {"version": 1, "nonces": [["00" * 16]]},
        {"version": 1, "nonces": [["00" * 16, "2025-01-01T12:03:00+00:00"]] * 2},
    ],
)
def test_corrupt_state_refuses_to_restore(state: dict[str, object]) -> None:
    """A corrupt or unknown persisted state raises instead of starting with an empty memory."""
    with pytest.raises(ReplayStateError):
        ReplayGuard.restore(state, T0)


def test_deadline_is_the_earliest_expiry() -> None:
    """The driver wakes when the first nonce can be forgotten."""
    guard = ReplayGuard()
    assert guard.deadline() is None
    guard.accept(nonce(1), T0, T0)
    guard.accept(nonce(2), T0, T0 + timedelta(seconds=5))
    assert guard.deadline() == T0 + NONCE_RETENTION


def test_admit_is_stateless_and_returns_the_record_to_store() -> None:
    """The shared-store path: admit checks size and window and names the expiry."""
    record = admit(nonce(1), T0, T0, ReplayPolicy())
    assert record.expires_at == T0 + NONCE_RETENTION
    with pytest.raises(StaleTimestampError):
        admit(nonce(1), T0 - timedelta(seconds=91), T0, ReplayPolicy())


def test_naive_times_are_a_local_error() -> None:
    """Naive datetimes are a bug in the caller, never silently interpreted."""
    with pytest.raises(LocalProtocolError):
        ReplayGuard().accept(nonce(1), T0, datetime(2025, 1, 1))  # noqa: DTZ001 - the point


def test_policy_retention_must_cover_twice_the_window() -> None:
    """A retention shorter than 2 x window would reopen replays; it is refused."""
    with pytest.raises(LocalProtocolError):
        ReplayPolicy(retention=timedelta(seconds=179))
    with pytest.raises(LocalProtocolError):
        ReplayPolicy(min_nonce_bytes=8)
