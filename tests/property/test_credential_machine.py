"""Stateful property test of the credential lifecycle against a store that persists and restarts.

The store mirrors what the SQL adapter will do: rows are flat records (serialized to JSON, so a
restart reloads them from "disk"), and a redemption is one compare-and-set on the precondition
`Credential.redemption(now)` describes. Requests may hold stale snapshots of a row (concurrent
requests); a restart drops every in-flight snapshot.

Invariants: at most one successful redemption of a one-time credential across restarts and
races, at most `max_uses` for a reusable one, the stored use count equals the successes seen,
rejections change nothing, terminal states are terminal, and nothing is redeemed at or after
its expiry. `ForgetfulCredential` (forgets to mark a redemption) must be caught.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from rustynet.domain.credentials import (
    Credential,
    CredentialId,
    CredentialKind,
    CredentialRejected,
    CredentialTransitionError,
    Redemption,
)
from rustynet.domain.scope import Scope
from tests.property.broken import assert_machine_catches

START = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
HASH = bytes(32)


class CredentialStore:
    """A durable store of credential rows with conditional (compare-and-set) updates."""

    def __init__(self, credential_class: type[Credential], disk: str = "{}") -> None:
        self.credential_class = credential_class
        self.rows: dict[str, dict[str, object]] = json.loads(disk)

    def persist(self) -> str:
        """What survives a restart."""
        return json.dumps(self.rows, sort_keys=True)

    def insert(self, credential: Credential) -> None:
        self.rows[credential.id.to_text()] = credential.to_record()

    def load(self, key: str) -> Credential:
        return self.credential_class.from_record(self.rows[key])

    def redeem(self, plan: Redemption) -> bool:
        """UPDATE ... WHERE <precondition>; True when one row changed."""
        key = plan.credential_id.to_text()
        if not plan.precondition_holds(self.load(key)):
            return False
        self.rows[key] = plan.after.to_record()
        return True

    def replace(self, before: Credential, after: Credential) -> bool:
        """UPDATE ... WHERE state = :old_state AND uses = :old_uses (admin and sweeper steps)."""
        key = before.id.to_text()
        current = self.load(key)
        if (current.state, current.uses) != (before.state, before.uses):
            return False
        self.rows[key] = after.to_record()
        return True


class CredentialMachine(RuleBasedStateMachine):
    """Drives credentials through redemptions, races, revocations, expiry and restarts."""

    credential_class: type[Credential] = Credential
    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.store = CredentialStore(self.credential_class)
        self.snapshots: list[Credential] = []
        self.successes: dict[str, int] = {}
        self.limits: dict[str, int] = {}
        self.terminal: dict[str, dict[str, object]] = {}
        self.counter = 0

    @initialize(target=ids)
    def first_credential(self) -> str:
        return self._create(reusable=False, max_uses=1, minutes=30)

    @rule(
        target=ids,
        reusable=st.booleans(),
        max_uses=st.integers(1, 4),
        minutes=st.integers(1, 180),
    )
    def create(self, reusable: bool, max_uses: int, minutes: int) -> str:
        return self._create(reusable=reusable, max_uses=max_uses, minutes=minutes)

    def _create(self, *, reusable: bool, max_uses: int, minutes: int) -> str:
        self.counter += 1
        cred = self.credential_class.create(
            id=CredentialId(self.counter.to_bytes(16, "big")),
            secret_hash=HASH,
            scope=Scope.of(["tag:ci"]) if reusable else Scope(),
            now=self.now,
            ttl=timedelta(minutes=minutes),
            reusable=reusable,
            max_uses=max_uses if reusable else None,
        )
        key = cred.id.to_text()
        self.store.insert(cred)
        self.successes[key] = 0
        self.limits[key] = cred.max_uses
        return key

    @rule(seconds=st.integers(0, 900))
    def advance_clock(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(key=ids)
    def take_snapshot(self, key: str) -> None:
        """A request reads the row and will act on it later (a concurrent redemption)."""
        self.snapshots.append(self.store.load(key))

    @rule(key=ids)
    def redeem_fresh(self, key: str) -> None:
        self._redeem(self.store.load(key))

    @rule(index=st.integers(0, 50))
    def redeem_stale(self, index: int) -> None:
        if self.snapshots:
            self._redeem(self.snapshots.pop(index % len(self.snapshots)))

    def _redeem(self, view: Credential) -> None:
        key = view.id.to_text()
        before = self.store.persist()
        try:
            plan = view.redemption(self.now)
        except CredentialRejected as exc:
            event(f"redeem rejected: {type(exc).__name__}")
            assert self.store.persist() == before, "a rejected redemption changed the store"
            return
        if self.store.redeem(plan):
            event(f"redeem succeeded: {view.kind.value}, {plan.after.state.value}")
            assert self.now < view.expires_at, "redeemed at or after expiry"
            self.successes[key] += 1
        else:
            event("redeem lost the compare-and-set")
            assert self.store.persist() == before, "a failed compare-and-set changed the store"

    @rule(key=ids)
    def revoke(self, key: str) -> None:
        self._admin_step(key, Credential.revoke)

    @rule(key=ids)
    def expire(self, key: str) -> None:
        self._admin_step(key, Credential.expire)

    def _admin_step(self, key: str, step: Callable[[Credential, datetime], Credential]) -> None:
        current = self.store.load(key)
        before = self.store.persist()
        try:
            after = step(current, self.now)
        except CredentialTransitionError:
            assert self.store.persist() == before, "an illegal step changed the store"
            return
        assert self.store.replace(current, after)

    @rule()
    def restart(self) -> None:
        """The process dies: in-flight requests vanish, the store reloads from disk."""
        self.store = CredentialStore(self.credential_class, self.store.persist())
        self.snapshots.clear()

    @invariant()
    def redemptions_within_limits(self) -> None:
        for key, count in self.successes.items():
            assert count <= self.limits[key], f"{key} redeemed {count} > {self.limits[key]} times"
            cred = self.store.load(key)
            if cred.kind is CredentialKind.ONE_TIME:
                assert count <= 1, "a one-time credential was redeemed twice"
            assert cred.uses == count, "stored use count differs from successful redemptions"

    @invariant()
    def terminal_states_are_terminal(self) -> None:
        for key in self.successes:
            record = self.store.rows[key]
            if key in self.terminal:
                assert record == self.terminal[key], f"{key} left a terminal state"
            elif self.store.load(key).state.terminal:
                self.terminal[key] = record


class ForgetfulCredential(Credential):
    """BROKEN on purpose: a one-time redemption succeeds but is never recorded."""

    def redeem(self, now: datetime) -> Credential:
        if self.kind is CredentialKind.ONE_TIME:
            self.check_redeemable(now)
            return self
        return super().redeem(now)


class ForgetfulMachine(CredentialMachine):
    credential_class = ForgetfulCredential


class BlindRedemption(Redemption):
    """BROKEN on purpose: the conditional UPDATE forgets its WHERE clause on state and uses."""

    def precondition_holds(self, current: Credential) -> bool:
        return current.id == self.credential_id and self.now < current.expires_at


class RacyCredential(Credential):
    """Plans redemptions whose store-side precondition is blind to concurrent winners."""

    def redemption(self, now: datetime) -> Redemption:
        plan = super().redemption(now)
        return BlindRedemption(
            credential_id=plan.credential_id,
            expected_state=plan.expected_state,
            expected_uses=plan.expected_uses,
            now=plan.now,
            after=plan.after,
        )


class RacyMachine(CredentialMachine):
    credential_class = RacyCredential


CredentialMachine.TestCase.settings = settings(
    settings(), stateful_step_count=40, suppress_health_check=[HealthCheck.too_slow]
)
TestCredentialMachine = CredentialMachine.TestCase


def test_machine_catches_a_credential_that_forgets_redemptions() -> None:
    """Negative control: a redemption that is never recorded lets a one-time credential reuse."""
    assert_machine_catches(ForgetfulMachine, match=r"redeemed twice|use count")


def test_machine_catches_a_redemption_race() -> None:
    """Negative control: without the state/uses precondition, two racing requests both win."""
    assert_machine_catches(RacyMachine, match=r"redeemed twice|use count|redeemed \d+ >")
