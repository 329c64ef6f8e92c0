"""Stateful property test of the abuse limiter, with broken limiters it must catch.

Invariants: no bucket key ever allows more than `burst + floor(W / T)` requests in any window W;
a full bucket always allows; backoff blocks exactly as the policy says and a disabled
credential stays disabled until an admin reset; persisted-and-restored state decides the same;
a limiter that cannot decide denies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
)

from rustynet.domain.limits import (
    BucketOutcome,
    BucketPolicy,
    Decision,
    DenyReason,
    Limiter,
    LimitPolicy,
    decide_or_deny,
    ip_key,
)
from tests.property.broken import assert_machine_catches

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
# Small numbers so a few dozen steps reach bursts, backoff and the disable threshold.
POLICY = LimitPolicy(
    per_ip=BucketPolicy(burst=3, refill=1, per=timedelta(seconds=10)),
    per_identity=BucketPolicy(burst=2, refill=1, per=timedelta(seconds=30)),
    backoff_after_failures=2,
    backoff_initial=timedelta(seconds=5),
    backoff_max=timedelta(seconds=10),
    disable_after_failures=5,
    max_keys=64,
)
IPS = ["198.51.100.1", "198.51.100.2", "2001:db8::1", "2001:db8::2", "2001:db8:0:1::1"]
IDENTITIES = ["node-a", "node-b"]
CREDENTIALS = ["cred-a", "cred-b"]


def expected_block(consecutive: int) -> timedelta | None:
    """Backoff computed independently of the code under test."""
    if consecutive < POLICY.backoff_after_failures:
        return None
    delay = POLICY.backoff_initial * (1 << (consecutive - POLICY.backoff_after_failures))
    return min(delay, POLICY.backoff_max)


class LimiterMachine(RuleBasedStateMachine):
    """Drives a limiter with requests, outcomes, time, admin resets, restarts and outages."""

    limiter_class: type[Limiter] = Limiter
    fail_closed: Callable[[Callable[[], object], LimitPolicy], Decision] = staticmethod(
        decide_or_deny
    )

    def __init__(self) -> None:
        super().__init__()
        self.limiter = self.limiter_class(POLICY)
        self.now = T0
        self.allowed: dict[tuple[str, str], list[datetime]] = {}  # (table, key) -> times
        self.failures = dict.fromkeys(CREDENTIALS, 0)
        self.blocked_until: dict[str, datetime] = {}
        self.disabled: set[str] = set()

    def _bucket_keys(self, ip: str | None, identity: str | None) -> list[tuple[str, str]]:
        keys = []
        if ip is not None:
            keys.append(("ip", ip_key(ip, POLICY)))
        if identity is not None:
            keys.append(("identity", identity))
        return keys

    def _bucket_is_full(self, table: str, key: str) -> bool:
        bucket = POLICY.per_ip if table == "ip" else POLICY.per_identity
        times = self.allowed.get((table, key), [])
        return not times or self.now - times[-1] >= bucket.interval * bucket.burst

    @rule(
        ip=st.none() | st.sampled_from(IPS),
        identity=st.none() | st.sampled_from(IDENTITIES),
        credential=st.none() | st.sampled_from(CREDENTIALS),
        outcome=st.sampled_from(["success", "failure", "none"]),
    )
    def request(
        self, ip: str | None, identity: str | None, credential: str | None, outcome: str
    ) -> None:
        """A request is decided, then (if allowed) succeeds or fails against its credential."""
        decision = self.limiter.check(self.now, ip=ip, identity=identity, credential=credential)
        keys = self._bucket_keys(ip, identity)
        if credential in self.disabled:
            assert decision.reason is DenyReason.DISABLED, "a disabled credential was let through"
            return
        if credential is not None and self.now < self.blocked_until.get(credential, self.now):
            assert decision.reason is DenyReason.BACKOFF, "backoff was not enforced"
            return
        if all(self._bucket_is_full(t, k) for t, k in keys):
            assert decision.allowed, f"a fresh request was denied: {decision}"
        if not decision.allowed:
            assert decision.retry_after is not None
            assert decision.retry_after > timedelta(0)
            return
        for table_key in keys:
            self.allowed.setdefault(table_key, []).append(self.now)
        if credential is None or outcome == "none":
            return
        if outcome == "success":
            self.limiter.record_success(credential)
            self.failures[credential] = 0
            self.blocked_until.pop(credential, None)
            return
        self.limiter.record_failure(credential, self.now)
        self.failures[credential] += 1
        block = expected_block(self.failures[credential])
        if block is not None:
            self.blocked_until[credential] = self.now + block
        if self.failures[credential] >= POLICY.disable_after_failures:
            self.disabled.add(credential)

    @rule(credential=st.sampled_from(CREDENTIALS), rounds=st.integers(1, 6))
    def attacker_waits_out_backoff_and_fails(self, credential: str, rounds: int) -> None:
        """Credential stuffing: wait until each backoff ends, then fail again."""
        for _ in range(rounds):
            self.now = max(self.now, self.blocked_until.get(credential, self.now))
            self.request(None, None, credential, "failure")

    @rule(milliseconds=st.integers(0, 40_000))
    def advance(self, milliseconds: int) -> None:
        """Time passes."""
        self.now += timedelta(milliseconds=milliseconds)

    @rule(credential=st.sampled_from(CREDENTIALS))
    def admin_reset(self, credential: str) -> None:
        """An admin re-enables a credential."""
        self.limiter.reset(credential)
        self.disabled.discard(credential)
        self.failures[credential] = 0
        self.blocked_until.pop(credential, None)

    @rule()
    def restart(self) -> None:
        """Persist as JSON and restore (the control plane restarted or another instance reads)."""
        plain = json.loads(json.dumps(self.limiter.export_state()))
        self.limiter = self.limiter_class.restore(plain, POLICY)

    @rule()
    def prune(self) -> None:
        """Memory housekeeping never changes a decision (checked by the request rule)."""
        self.limiter.prune(self.now)

    @rule(ip=st.sampled_from(IPS), how=st.sampled_from(["raises", "corrupt", "nonsense"]))
    def store_unavailable(self, ip: str, how: str) -> None:
        """When the state store fails, the decision is deny."""

        def decide() -> object:
            if how == "raises":
                raise OSError("state store unreachable")
            if how == "corrupt":
                return Limiter.restore({"version": 1, "ip": "garbage"}, POLICY).check(
                    self.now, ip=ip
                )
            return None

        decision = type(self).fail_closed(decide, POLICY)
        assert not decision.allowed, "an undecidable request was allowed"

    @invariant()
    def buckets_never_exceed_burst_plus_refill(self) -> None:
        """For every key and every window [a, b]: allowed ≤ burst + floor((b - a) / T)."""
        for (table, _), times in self.allowed.items():
            bucket = POLICY.per_ip if table == "ip" else POLICY.per_identity
            for i, start in enumerate(times):
                for j in range(i, len(times)):
                    window = times[j] - start
                    assert j - i + 1 <= bucket.burst + window // bucket.interval, (
                        "bucket allowed more than burst + refill"
                    )


TestLimiterMachine = LimiterMachine.TestCase


# --- broken limiters: each must make the machine above fail --------------------------------


class BottomlessBucketLimiter(Limiter):
    """Buckets never run dry."""

    def _take(self, tat: datetime | None, now: datetime, bucket: BucketPolicy) -> BucketOutcome:
        return BucketOutcome(True, None, now)


class ForgivingLimiter(Limiter):
    """Ignores backoff and disables."""

    def _credential_denial(self, credential: str, now: datetime) -> Decision | None:
        return None


class UndisablingLimiter(Limiter):
    """Keeps the backoff but forgets that a credential was disabled."""

    def _credential_denial(self, credential: str, now: datetime) -> Decision | None:
        record = self.failures(credential)
        if record.blocked_until is not None and now < record.blocked_until:
            return Decision.deny(DenyReason.BACKOFF, record.blocked_until - now)
        return None


def allow_on_failure(decide: Callable[[], object], policy: LimitPolicy) -> Decision:
    """Fail open: what decide_or_deny must never do."""
    try:
        result = decide()
    except Exception:  # noqa: BLE001 - deliberately broken
        return Decision.allow()
    return result if isinstance(result, Decision) else Decision.allow()


class FailOpenMachine(LimiterMachine):
    """The fail-closed wrapper replaced by one that allows on error."""

    fail_closed = staticmethod(allow_on_failure)


def _machine(limiter_class: type[Limiter]) -> type[LimiterMachine]:
    return type(
        f"{limiter_class.__name__}Machine", (LimiterMachine,), {"limiter_class": limiter_class}
    )


@pytest.mark.parametrize(
    "machine",
    [
        _machine(BottomlessBucketLimiter),
        _machine(ForgivingLimiter),
        _machine(UndisablingLimiter),
        FailOpenMachine,
    ],
    ids=["bottomless-bucket", "ignores-backoff", "forgets-disable", "fails-open"],
)
def test_property_test_catches_a_broken_limiter(machine: type[LimiterMachine]) -> None:
    """With a check removed, the state machine finds a counterexample."""
    assert_machine_catches(machine)
