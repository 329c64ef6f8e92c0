"""Key lifecycle and revocation epochs as a Hypothesis state machine, with broken variants.

The machine drives a real `SigningKeyring` + `RevocationState` under a pinned root through
add, rotate, retire, revoke (records of lower, equal and higher epochs, forged records), clock
advances and restarts (persist to text and reload), and compares every answer with a small
model. Invariants: epochs never decrease, a revoked or retired key is never accepted again,
rejected records change nothing, the newest live key signs.

Each deliberately broken variant below removes one control; `test_*_is_caught` proves the
machine fails on it, so the property test has teeth.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from rustynet.domain.errors import InvalidSignature, RemoteProtocolError
from rustynet.domain.key_hierarchy import (
    Certificate,
    KeyRole,
    NoSigningKeyError,
    RevocationRecord,
    RevocationState,
    SigningKeyring,
    TrustedRoot,
    issue_certificate,
    issue_revocation,
    issue_root_certificate,
)
from rustynet.domain.keys import KeyFingerprint, Purpose, SigningKey
from rustynet.domain.signed import (
    JsonValue,
    SignedEnvelope,
    canonical_json,
    parse_canonical_json,
)
from tests.property.broken import assert_machine_catches

T0 = datetime(2030, 1, 1, tzinfo=UTC)
ROOT_SEED = bytes([1]) * 32
ROOT_LIFETIME = timedelta(days=730)
LATEST_START = T0 + timedelta(days=600)  # keeps every certificate inside the root's validity
SCOPE = frozenset({Purpose.PEER_MAP})


def _root_key() -> SigningKey:
    return SigningKey.from_seed(ROOT_SEED)


def _pinned_root(now: datetime) -> TrustedRoot:
    cert = issue_root_certificate(_root_key(), T0, T0 + ROOT_LIFETIME)
    return TrustedRoot.pinned(
        Certificate.from_text(cert.to_text()), _root_key().public_key.fingerprint(), now
    )


class KeyLifecycleMachine(RuleBasedStateMachine):
    """Real keyring and revocation state checked step by step against a model."""

    revocation_state_cls: ClassVar[type[RevocationState]] = RevocationState
    keyring_cls: ClassVar[type[SigningKeyring]] = SigningKeyring

    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.root = _pinned_root(self.now)
        self.revocations = self.revocation_state_cls()
        self.keyring = self.keyring_cls(self.root, KeyRole.SIGNING, self.revocations)
        # The model.
        self.seeds: dict[KeyFingerprint, bytes] = {}
        self.windows: dict[KeyFingerprint, tuple[datetime, datetime]] = {}
        self.order: list[KeyFingerprint] = []  # unretired, oldest first
        self.retired: set[KeyFingerprint] = set()
        self.revoked: set[KeyFingerprint] = set()
        self.epoch = 0
        self.highest_epoch_seen = 0
        self.next_seed = 10

    # --- model -------------------------------------------------------------------------------

    def live(self, key_id: KeyFingerprint) -> bool:
        not_before, not_after = self.windows[key_id]
        return (
            key_id in self.order
            and key_id not in self.revoked
            and not_before <= self.now < not_after
        )

    def expected_signer(self) -> KeyFingerprint | None:
        return next((k for k in reversed(self.order) if self.live(k)), None)

    def accepts(self, key_id: KeyFingerprint) -> bool:
        envelope = SignedEnvelope.seal(
            SigningKey.from_seed(self.seeds[key_id]), Purpose.PEER_MAP, {"probe": 1}
        )
        try:
            self.keyring.open(envelope, Purpose.PEER_MAP, self.now)
        except InvalidSignature:
            return False
        return True

    def _add(self, delay_hours: int, lifetime_days: int) -> KeyFingerprint:
        seed = bytes([self.next_seed]) * 32
        self.next_seed += 1
        private = SigningKey.from_seed(seed)
        not_before = self.now + timedelta(hours=delay_hours)
        not_after = not_before + timedelta(days=lifetime_days)
        cert = issue_certificate(
            _root_key(),
            self.root,
            subject=private.public_key,
            role=KeyRole.SIGNING,
            not_before=not_before,
            not_after=not_after,
            scope=SCOPE,
        )
        self.keyring.add(cert, self.now, private)
        key_id = cert.key_id
        self.seeds[key_id] = seed
        self.windows[key_id] = (cert.validity.not_before, cert.validity.not_after)
        self.order.append(key_id)
        return key_id

    # --- rules -------------------------------------------------------------------------------

    @precondition(lambda self: self.next_seed < 20)
    @rule(target=keys, delay_hours=st.integers(0, 72), lifetime_days=st.integers(1, 90))
    def add_key(self, delay_hours: int, lifetime_days: int) -> KeyFingerprint:
        return self._add(delay_hours, lifetime_days)

    @precondition(lambda self: self.next_seed < 20 and bool(self.order))
    @rule(target=keys, lifetime_days=st.integers(1, 90))
    def rotate(self, lifetime_days: int) -> KeyFingerprint:
        oldest = self.order[0]
        new = self._add(0, lifetime_days)
        self.keyring.retire(oldest)
        self.order.remove(oldest)
        self.retired.add(oldest)
        return new

    @rule(key_id=keys)
    def retire(self, key_id: KeyFingerprint) -> None:
        self.keyring.retire(key_id)
        if key_id in self.order:
            self.order.remove(key_id)
        self.retired.add(key_id)

    def _offer(self, record: RevocationRecord, valid: bool) -> None:
        before = (self.revocations.epoch, self.revocations.revoked)
        try:
            self.revocations.apply(record, self.root, self.now)
        except RemoteProtocolError:
            accepted = False
        else:
            accepted = True
        should_accept = valid and record.epoch > self.epoch
        assert accepted == should_accept, f"epoch {record.epoch} vs watermark {self.epoch}"
        if accepted:
            self.epoch = record.epoch
            self.revoked |= record.revoked
        else:
            assert (self.revocations.epoch, self.revocations.revoked) == before

    @rule(key_id=keys, epoch_delta=st.integers(-3, 3))
    def revoke(self, key_id: KeyFingerprint, epoch_delta: int) -> None:
        epoch = max(1, self.epoch + epoch_delta)
        # Records list every revoked key (cumulative) plus the new one.
        revoked = self.revoked | {key_id}
        self._offer(issue_revocation(_root_key(), self.root, epoch, revoked, self.now), True)

    @rule(epoch_delta=st.integers(-3, 3))
    def bump_epoch_without_revoking(self, epoch_delta: int) -> None:
        epoch = max(1, self.epoch + epoch_delta)
        self._offer(issue_revocation(_root_key(), self.root, epoch, (), self.now), True)

    @rule(key_id=keys, epoch_delta=st.integers(1, 3))
    def forged_revocation_by_an_online_key(self, key_id: KeyFingerprint, epoch_delta: int) -> None:
        payload: dict[str, JsonValue] = {
            "v": 1,
            "epoch": self.epoch + epoch_delta,
            "revoked": [key_id.to_text()],
            "issued_at": int(self.now.timestamp()),
        }
        signer = SigningKey.from_seed(self.seeds[key_id])
        record = RevocationRecord(SignedEnvelope.seal(signer, Purpose.REVOCATION, payload))
        self._offer(record, False)

    @rule()
    def restart(self) -> None:
        state_text = self.revocations.to_text()
        snapshot = parse_canonical_json(canonical_json(self.keyring.snapshot()))
        self.root = _pinned_root(self.now)
        self.revocations = self.revocation_state_cls.from_text(state_text)
        # The key store still returns every key it ever held, retired ones included.
        private = [SigningKey.from_seed(seed) for seed in self.seeds.values()]
        self.keyring = self.keyring_cls.restore(self.root, snapshot, self.revocations, private)

    @precondition(lambda self: self.now < LATEST_START)
    @rule(hours=st.integers(1, 24 * 20))
    def advance_clock(self, hours: int) -> None:
        self.now = min(self.now + timedelta(hours=hours), LATEST_START)

    @rule()
    def newest_live_key_signs(self) -> None:
        expected = self.expected_signer()
        try:
            envelope = self.keyring.seal(Purpose.PEER_MAP, {"n": 1}, self.now)
        except NoSigningKeyError:
            assert expected is None
            return
        assert envelope.key_id == expected
        assert self.keyring.open(envelope, Purpose.PEER_MAP, self.now) == {"n": 1}

    @rule(key_id=keys)
    def verify_a_signature_by(self, key_id: KeyFingerprint) -> None:
        assert self.accepts(key_id) == self.live(key_id)

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def epochs_never_decrease(self) -> None:
        assert self.revocations.epoch >= self.highest_epoch_seen
        assert self.revocations.epoch == self.epoch
        self.highest_epoch_seen = self.revocations.epoch

    @invariant()
    def revoked_set_matches_and_only_grows(self) -> None:
        assert self.revocations.revoked == self.revoked

    @invariant()
    def revoked_or_retired_keys_are_never_accepted(self) -> None:
        for key_id in self.revoked | self.retired:
            assert not self.accepts(key_id), f"{key_id} accepted after revocation/retirement"


# --- broken variants: each removes one control --------------------------------------------------


class AcceptsStaleEpochs(RevocationState):
    """Broken: applies any root-signed record, even one whose epoch is not above the watermark."""

    def apply(self, record: RevocationRecord, root: TrustedRoot, now: datetime) -> None:
        record.envelope.open(root.key, Purpose.REVOCATION)
        self._epoch = record.epoch
        self._revoked = self._revoked | record.revoked


class ForgetsEpochOnRestart(RevocationState):
    """Broken: the watermark is not persisted, so a restart reopens old epochs."""

    @classmethod
    def from_text(cls, text: str) -> RevocationState:
        loaded = RevocationState.from_text(text)
        return cls(0, loaded.revoked)


class VerifiesRetiredKeys(SigningKeyring):
    """Broken: retired keys keep verifying (MultiFernet without removal)."""

    def __init__(
        self,
        root: TrustedRoot,
        role: KeyRole = KeyRole.SIGNING,
        revocations: RevocationState | None = None,
    ) -> None:
        super().__init__(root, role, revocations)
        self._graveyard: dict[KeyFingerprint, Certificate] = {}

    def retire(self, key_id: KeyFingerprint) -> None:
        if key_id in self.key_ids:
            self._graveyard[key_id] = self.certificate(key_id)
        super().retire(key_id)

    def verify_signature(
        self,
        key_id: KeyFingerprint,
        purpose: Purpose,
        message: bytes,
        signature: bytes,
        now: datetime,
    ) -> None:
        if key_id in self._graveyard:
            self._graveyard[key_id].subject.verify(purpose, message, signature)
            return
        super().verify_signature(key_id, purpose, message, signature, now)


class SignsWithOldestKey(SigningKeyring):
    """Broken: signs with the oldest live key instead of the newest."""

    def __init__(
        self,
        root: TrustedRoot,
        role: KeyRole = KeyRole.SIGNING,
        revocations: RevocationState | None = None,
    ) -> None:
        super().__init__(root, role, revocations)
        self._copies: dict[KeyFingerprint, SigningKey] = {}

    def add(
        self, certificate: Certificate, now: datetime, signing_key: SigningKey | None = None
    ) -> None:
        if signing_key is not None:
            seed = signing_key.export_seed()
            self._copies[certificate.key_id] = SigningKey.from_seed(seed)
            seed[:] = bytes(len(seed))
        super().add(certificate, now, signing_key)

    def seal(
        self, purpose: Purpose, payload: Mapping[str, JsonValue], now: datetime
    ) -> SignedEnvelope:
        for key_id in self.key_ids:  # oldest first: the bug
            copy = self._copies.get(key_id)
            if copy is None:
                continue
            envelope = SignedEnvelope.seal(copy, purpose, payload)
            try:
                self.open(envelope, purpose, now)
            except InvalidSignature:
                continue
            return envelope
        return super().seal(purpose, payload, now)


class StaleEpochMachine(KeyLifecycleMachine):
    revocation_state_cls = AcceptsStaleEpochs


class ForgetfulRestartMachine(KeyLifecycleMachine):
    revocation_state_cls = ForgetsEpochOnRestart


class RetiredKeysVerifyMachine(KeyLifecycleMachine):
    keyring_cls = VerifiesRetiredKeys


class OldestKeySignsMachine(KeyLifecycleMachine):
    keyring_cls = SignsWithOldestKey


TestKeyLifecycle = KeyLifecycleMachine.TestCase
TestKeyLifecycle.settings = settings(settings.default, stateful_step_count=30, deadline=None)


@pytest.mark.parametrize(
    "broken",
    [StaleEpochMachine, ForgetfulRestartMachine, RetiredKeysVerifyMachine, OldestKeySignsMachine],
    ids=[
        "accepts-stale-epochs",
        "forgets-epoch-on-restart",
        "verifies-retired-keys",
        "oldest-key-signs",
    ],
)
def test_broken_key_lifecycle_variant_is_caught(broken: type[KeyLifecycleMachine]) -> None:
    """Each variant missing one control fails the machine (the property test has teeth)."""
    assert_machine_catches(broken, stateful_step_count=30)
