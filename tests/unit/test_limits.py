"""Abuse limits: per-IP and per-identity buckets, backoff, lockout, fail-closed decisions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.limits import (
    BucketPolicy,
    Decision,
    DenyReason,
    FailureRecord,
    Limiter,
    LimiterFullError,
    LimiterStateError,
    LimitPolicy,
    backoff_delay,
    bucket_take,
    decide_or_deny,
    ip_key,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
IP = "203.0.113.7"


def at(seconds: float) -> datetime:
    """T0 plus `seconds`."""
    return T0 + timedelta(seconds=seconds)


def fail(limiter: Limiter, credential: str, times: int, now: datetime) -> FailureRecord:
    """Record `times` consecutive failures at `now`."""
    record = limiter.failures(credential)
    for _ in range(times):
        record = limiter.record_failure(credential, now)
    return record


def test_default_policy_is_the_security_baseline() -> None:
    """Burst 20 / 10 per min per IP, burst 10 / 5 per 15 min per identity, 5 → 30 s..15 min, 100."""
    policy = LimitPolicy()
    assert policy.per_ip == BucketPolicy(burst=20, refill=10, per=timedelta(minutes=1))
    assert policy.per_identity == BucketPolicy(burst=10, refill=5, per=timedelta(minutes=15))
    assert (policy.backoff_after_failures, policy.disable_after_failures) == (5, 100)
    assert (policy.backoff_initial, policy.backoff_max) == (
        timedelta(seconds=30),
        timedelta(minutes=15),
    )
    assert (policy.ipv4_prefix, policy.ipv6_prefix) == (32, 64)


def test_ip_bucket_allows_a_burst_of_exactly_20_then_denies_with_retry_after_6s() -> None:
    """20 requests at one instant pass; the 21st gets 429 with Retry-After 6 (one token = 6 s)."""
    limiter = Limiter()
    assert all(limiter.check(T0, ip=IP).allowed for _ in range(20))
    denied = limiter.check(T0, ip=IP)
    assert denied == Decision.deny(DenyReason.IP_RATE, timedelta(seconds=6))
    assert denied.retry_after_seconds == 6


def test_ip_bucket_refills_one_token_every_6_seconds() -> None:
    """10 per minute: after the burst, one more request every 6 s, not before."""
    limiter = Limiter()
    for _ in range(20):
        limiter.check(T0, ip=IP)
    early = limiter.check(at(5.999), ip=IP)
    assert not early.allowed
    assert early.retry_after == timedelta(microseconds=1000)
    assert early.retry_after_seconds == 1
    assert limiter.check(at(6), ip=IP).allowed
    assert not limiter.check(at(6), ip=IP).allowed
    assert limiter.check(at(12), ip=IP).allowed


def test_ip_bucket_is_full_again_after_two_minutes() -> None:
    """20 tokens at 10/min refill completely in 120 s."""
    limiter = Limiter()
    for _ in range(20):
        limiter.check(T0, ip=IP)
    assert all(limiter.check(at(120), ip=IP).allowed for _ in range(20))
    assert not limiter.check(at(120), ip=IP).allowed


def test_two_ipv6_addresses_in_one_64_share_a_bucket() -> None:
    """Rotating the low 64 bits of an IPv6 address does not buy a fresh bucket."""
    limiter = Limiter()
    for i in range(20):
        assert limiter.check(T0, ip=f"2001:db8:1:2::{i + 1:x}").allowed
    assert not limiter.check(T0, ip="2001:db8:1:2:ffff:ffff:ffff:ffff").allowed


def test_ipv6_addresses_in_different_64s_have_separate_buckets() -> None:
    """Another /64 is another subscriber."""
    limiter = Limiter()
    for _ in range(20):
        limiter.check(T0, ip="2001:db8:1:2::1")
    assert not limiter.check(T0, ip="2001:db8:1:2::2").allowed
    assert limiter.check(T0, ip="2001:db8:1:3::1").allowed


def test_ipv4_is_keyed_per_address() -> None:
    """IPv4 uses /32: a neighbour address has its own bucket."""
    limiter = Limiter()
    for _ in range(20):
        limiter.check(T0, ip="198.51.100.1")
    assert not limiter.check(T0, ip="198.51.100.1").allowed
    assert limiter.check(T0, ip="198.51.100.2").allowed


def test_ip_keys_normalize_networks_and_mapped_addresses() -> None:
    """/64 and /32 keys; an IPv4-mapped IPv6 address counts as the IPv4 client it is."""
    policy = LimitPolicy()
    assert ip_key("2001:db8:1:2:3:4:5:6", policy) == "2001:db8:1:2::/64"
    assert ip_key("198.51.100.1", policy) == "198.51.100.1/32"
    assert ip_key("::ffff:198.51.100.1", policy) == ip_key("198.51.100.1", policy)


def test_unparsable_ip_is_a_local_error_and_decide_or_deny_denies() -> None:
    """A garbage address never allows: it raises, and the fail-closed wrapper turns that to deny."""
    limiter = Limiter()
    with pytest.raises(LocalProtocolError):
        limiter.check(T0, ip="not-an-ip")
    decision = decide_or_deny(lambda: limiter.check(T0, ip="not-an-ip"))
    assert decision.reason is DenyReason.UNAVAILABLE


def test_identity_bucket_allows_10_then_one_per_3_minutes() -> None:
    """Burst 10, refill 5 per 15 min (one every 180 s)."""
    limiter = Limiter()
    assert all(limiter.check(T0, identity="node-a").allowed for _ in range(10))
    denied = limiter.check(T0, identity="node-a")
    assert denied == Decision.deny(DenyReason.IDENTITY_RATE, timedelta(seconds=180))
    assert not limiter.check(at(179), identity="node-a").allowed
    assert limiter.check(at(180), identity="node-a").allowed
    assert limiter.check(T0, identity="node-b").allowed


def test_a_denied_request_takes_no_token_from_the_other_bucket() -> None:
    """Buckets commit together: an identity denial does not drain the IP bucket."""
    limiter = Limiter()
    for _ in range(10):
        limiter.check(T0, ip=IP, identity="node-a")
    for _ in range(5):
        assert limiter.check(T0, ip=IP, identity="node-a").reason is DenyReason.IDENTITY_RATE
    assert sum(limiter.check(T0, ip=IP).allowed for _ in range(20)) == 10


def test_fifth_consecutive_failure_starts_a_30_second_backoff() -> None:
    """Four failures cost nothing; the fifth blocks for 30 s."""
    limiter = Limiter()
    fail(limiter, "cred", 4, T0)
    assert limiter.check(T0, credential="cred").allowed
    fail(limiter, "cred", 1, T0)
    denied = limiter.check(at(1), credential="cred")
    assert denied == Decision.deny(DenyReason.BACKOFF, timedelta(seconds=29))
    assert not limiter.check(at(29.999), credential="cred").allowed
    assert limiter.check(at(30), credential="cred").allowed


def test_backoff_doubles_and_caps_at_900_seconds() -> None:
    """30, 60, 120, 240, 480, then 900 (not 960), and 900 after that."""
    policy = LimitPolicy()
    delays = [backoff_delay(n, policy) for n in range(4, 13)]
    assert delays == [None] + [timedelta(seconds=s) for s in (30, 60, 120, 240, 480, 900, 900, 900)]
    assert backoff_delay(10_000, policy) == timedelta(seconds=900)
    limiter = Limiter()
    record = fail(limiter, "cred", 10, T0)
    assert record.blocked_until == at(900)


def test_hundredth_consecutive_failure_disables_the_credential() -> None:
    """99 failures leave it enabled; the 100th disables it, with no Retry-After."""
    limiter = Limiter()
    assert not fail(limiter, "cred", 99, T0).disabled
    assert fail(limiter, "cred", 1, T0).disabled
    decision = limiter.check(at(10**6), credential="cred")
    assert decision == Decision.deny(DenyReason.DISABLED, None)
    assert decision.retry_after_seconds is None


def test_success_resets_the_failure_count_but_not_a_disable() -> None:
    """After a success the count starts over; a disabled credential stays disabled."""
    limiter = Limiter()
    fail(limiter, "cred", 4, T0)
    limiter.record_success("cred")
    assert limiter.failures("cred") == FailureRecord()
    fail(limiter, "cred", 4, T0)
    assert limiter.check(T0, credential="cred").allowed
    fail(limiter, "locked", 100, T0)
    limiter.record_success("locked")
    assert limiter.check(at(10**6), credential="locked").reason is DenyReason.DISABLED


def test_only_an_admin_reset_re_enables() -> None:
    """`reset` clears the disable and the count."""
    limiter = Limiter()
    fail(limiter, "cred", 100, T0)
    limiter.reset("cred")
    assert limiter.check(T0, credential="cred").allowed


def test_decide_or_deny_denies_when_the_store_raises() -> None:
    """A limiter that cannot decide (its store raised) answers deny with Retry-After."""

    def broken_store() -> Decision:
        raise OSError("database is locked")

    decision = decide_or_deny(broken_store)
    assert decision == Decision.deny(DenyReason.UNAVAILABLE, timedelta(seconds=30))
    assert decision.retry_after_seconds == 30


def test_decide_or_deny_denies_when_state_is_corrupt() -> None:
    """Missing or corrupt persisted state cannot be turned into an allow."""
    decision = decide_or_deny(lambda: Limiter.restore({"version": 1}).check(T0, ip=IP))
    assert decision.reason is DenyReason.UNAVAILABLE


def test_decide_or_deny_denies_on_a_non_decision() -> None:
    """A store returning something other than a Decision (e.g. None, True) is treated as failure."""
    assert not decide_or_deny(lambda: None).allowed
    assert not decide_or_deny(lambda: True).allowed
    assert decide_or_deny(Decision.allow).allowed


@pytest.mark.parametrize(
    "state",
    [
        None,
        {},
        {"version": 2, "ip": {}, "identity": {}, "failures": {}},
        {"version": 1, "ip": [], "identity": {}, "failures": {}},
        {"version": 1, "ip": {"k": "soon"}, "identity": {}, "failures": {}},
        {"version": 1, "ip": {"k": "2025-01-01T12:00:00"}, "identity": {}, "failures": {}},
        {"version": 1, "ip": {}, "identity": {}, "failures": {"c": {"consecutive": -1}}},
        {
            "version": 1,
            "ip": {},
            "identity": {},
            "failures": {"c": {"consecutive": True, "blocked_until": None, "disabled": False}},
        },
        {
            "version": 1,
            "ip": {},
            "identity": {},
            "failures": {"c": {"consecutive": 1, "blocked_until": None, "disabled": "false"}},
        },
    ],
)
def test_corrupt_state_refuses_to_restore(state: object) -> None:
    """Each malformed persisted state raises LimiterStateError (never a fresh, permissive state)."""
    with pytest.raises(LimiterStateError):
        Limiter.restore(state)  # type: ignore[arg-type]  # wrong type on purpose


def test_state_round_trips_through_json() -> None:
    """Export → JSON → restore keeps buckets, backoff and disables (a restart opens nothing)."""
    limiter = Limiter()
    for _ in range(20):
        limiter.check(T0, ip=IP)
    for _ in range(10):
        limiter.check(T0, identity="node-a")
    fail(limiter, "cred", 100, T0)
    restored = Limiter.restore(json.loads(json.dumps(limiter.export_state())))
    assert restored.export_state() == limiter.export_state()
    assert not restored.check(T0, ip=IP).allowed
    assert not restored.check(T0, identity="node-a").allowed
    assert restored.check(at(10**6), credential="cred").reason is DenyReason.DISABLED


def test_full_buckets_are_evicted_to_bound_memory() -> None:
    """A table at its bound forgets full buckets; nothing that still limits is forgotten."""
    limiter = Limiter(LimitPolicy(max_keys=2))
    limiter.check(T0, ip="198.51.100.1")
    limiter.check(T0, ip="198.51.100.1")  # this bucket is below full until T0 + 12 s
    limiter.check(T0, ip="198.51.100.2")  # this one is full again at T0 + 6 s
    assert limiter.check(T0, ip="198.51.100.3") == Decision.deny(
        DenyReason.UNAVAILABLE, timedelta(seconds=30)
    )
    assert limiter.check(at(6), ip="198.51.100.3").allowed
    # export_state() is plain data typed as object, hence the ignore below.
    assert set(limiter.export_state()["ip"]) == {  # type: ignore[call-overload]
        "198.51.100.1/32",
        "198.51.100.3/32",
    }


def test_a_full_failure_table_fails_closed() -> None:
    """When failures cannot be recorded, attempts for unknown credentials are denied."""
    limiter = Limiter(LimitPolicy(max_keys=1))
    fail(limiter, "a", 1, T0)
    with pytest.raises(LimiterFullError):
        limiter.record_failure("b", T0)
    assert limiter.check(T0, credential="b").reason is DenyReason.UNAVAILABLE
    assert limiter.check(T0, credential="a").allowed


def test_bucket_take_is_pure_and_a_denial_keeps_tat() -> None:
    """The per-row function a shared store uses: deny leaves the stored time as it was."""
    bucket = BucketPolicy(burst=1, refill=1, per=timedelta(seconds=10))
    first = bucket_take(None, T0, bucket)
    assert first.allowed
    second = bucket_take(first.tat, T0, bucket)
    assert (second.allowed, second.retry_after, second.tat) == (
        False,
        timedelta(seconds=10),
        first.tat,
    )


def test_naive_now_is_a_local_error() -> None:
    """The limiter refuses naive datetimes."""
    with pytest.raises(LocalProtocolError):
        Limiter().check(datetime(2025, 1, 1), ip=IP)  # noqa: DTZ001 - the point


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backoff_after_failures": 0},
        {"disable_after_failures": 0},
        {"backoff_max": timedelta(seconds=10)},
        {"ipv6_prefix": 129},
        {"max_keys": 0},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, object]) -> None:
    """Nonsense policy numbers raise at construction."""
    with pytest.raises(LocalProtocolError):
        LimitPolicy(**kwargs)  # type: ignore[arg-type]  # bad values on purpose
