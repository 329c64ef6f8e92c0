"""Key hierarchy: root pinning, certificate nesting/scope/lifetime, keyring, revocation, binding."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from rustynet.domain.errors import (
    DecodeError,
    InvalidSignature,
    LocalProtocolError,
    RemoteProtocolError,
)
from rustynet.domain.key_hierarchy import (
    BINDING_CLOCK_LEEWAY,
    ROLE_SCOPE_CEILING,
    BindingRejectedError,
    Certificate,
    CertificateRejectedError,
    ExpiredError,
    IssuePolicyError,
    KeyRevoked,
    KeyRole,
    NoSigningKeyError,
    NotYetValidError,
    RevocationRecord,
    RevocationState,
    SigningKeyring,
    StaleRevocationError,
    TrustedRoot,
    TunnelKeyBinding,
    Validity,
    issue_certificate,
    issue_revocation,
    issue_root_certificate,
    issue_tunnel_key_binding,
    verify_certificate,
    verify_tunnel_key_binding,
)
from rustynet.domain.keys import (
    KeyFingerprint,
    Purpose,
    SigningKey,
    TunnelKeyScheme,
    TunnelPrivateKey,
)
from rustynet.domain.signed import JsonValue, SignedEnvelope, UnknownSigner
from tests.tamper import flipped_texts

T0 = datetime(2030, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)
SIGNING_SCOPE = frozenset({Purpose.PEER_MAP})


def key(n: int) -> SigningKey:
    """A fresh deterministic key (fresh object: keyrings wipe what they retire)."""
    return SigningKey.from_seed(bytes([n]) * 32)


ROOT_KEY_SEED = 1


def root_key() -> SigningKey:
    return key(ROOT_KEY_SEED)


def make_root(
    lifetime: timedelta = timedelta(days=730),
    scope: frozenset[Purpose] = ROLE_SCOPE_CEILING[KeyRole.ROOT],
) -> TrustedRoot:
    cert = issue_root_certificate(root_key(), T0, T0 + lifetime, scope)
    return TrustedRoot.pinned(cert, root_key().public_key.fingerprint(), T0)


ROOT = make_root()


def certify(
    subject: SigningKey,
    *,
    role: KeyRole = KeyRole.SIGNING,
    not_before: datetime = T0,
    lifetime: timedelta = timedelta(days=90),
    scope: frozenset[Purpose] = SIGNING_SCOPE,
    root: TrustedRoot = ROOT,
) -> Certificate:
    return issue_certificate(
        root_key(),
        root,
        subject=subject.public_key,
        role=role,
        not_before=not_before,
        not_after=not_before + lifetime,
        scope=scope,
    )


def forged_certificate(signer: SigningKey, **overrides: JsonValue) -> Certificate:
    """A certificate sealed by hand, bypassing every check `issue_certificate` makes."""
    payload: dict[str, JsonValue] = {
        "v": 1,
        "subject": key(50).public_key.to_text(),
        "role": "signing",
        "scope": ["peer-map"],
        "not_before": int(T0.timestamp()),
        "not_after": int((T0 + 90 * DAY).timestamp()),
        "issuer": signer.public_key.fingerprint().to_text(),
    }
    payload.update(overrides)
    return Certificate(SignedEnvelope.seal(signer, Purpose.CERTIFICATE, payload))


def assert_every_flip_rejected(text: str, accept: Callable[[str], object]) -> None:
    accept(text)  # the untouched text is accepted: only the flip changes
    count = 0
    for label, corrupted in flipped_texts(text):
        try:
            accept(corrupted)
        except RemoteProtocolError:
            pass
        else:
            pytest.fail(f"accepted corruption {label}")
        count += 1
    assert count >= 2 * len(text)


# --- validity ---------------------------------------------------------------------------------


def test_validity_is_half_open_and_whole_seconds() -> None:
    """not_before is inside, not_after is outside; sub-second inputs are floored by `of`."""
    validity = Validity.of(T0 + timedelta(microseconds=999), T0 + DAY)
    assert validity.not_before == T0
    assert validity.covers(T0)
    assert not validity.covers(T0 + DAY)
    with pytest.raises(ExpiredError):
        validity.check(T0 + DAY, "x")
    with pytest.raises(NotYetValidError):
        validity.check(T0 - SECOND, "x")


def test_validity_refuses_naive_or_reversed_times() -> None:
    """Naive datetimes, non-UTC offsets and empty ranges are our bugs."""
    with pytest.raises(LocalProtocolError):
        Validity.of(datetime(2030, 1, 1), datetime(2030, 1, 2))  # noqa: DTZ001 - the point
    with pytest.raises(LocalProtocolError):
        Validity.of(T0, T0)
    with pytest.raises(LocalProtocolError):
        Validity(T0 + timedelta(microseconds=1), T0 + DAY)


# --- root ---------------------------------------------------------------------------------------


def test_root_pins_by_fingerprint() -> None:
    """A self-signed root is trusted only when its key matches the pinned fingerprint."""
    cert = issue_root_certificate(root_key(), T0, T0 + 730 * DAY)
    assert TrustedRoot.pinned(cert, root_key().public_key.fingerprint(), T0).key == cert.subject
    with pytest.raises(UnknownSigner):
        TrustedRoot.pinned(cert, key(99).public_key.fingerprint(), T0)


def test_trusted_root_cannot_be_built_without_pinning() -> None:
    """Constructing TrustedRoot directly (skipping the pin check) is refused."""
    with pytest.raises(LocalProtocolError):
        TrustedRoot(ROOT.certificate)


def test_attacker_root_with_its_own_pin_is_not_our_root() -> None:
    """A well-formed root from another key fails against our pin."""
    attacker = issue_root_certificate(key(66), T0, T0 + 730 * DAY)
    with pytest.raises(UnknownSigner):
        TrustedRoot.pinned(attacker, root_key().public_key.fingerprint(), T0)


def test_root_lifetime_is_at_most_two_years() -> None:
    """730 days is allowed; one second more is refused at issue and at pinning."""
    make_root(timedelta(days=730))
    with pytest.raises(IssuePolicyError):
        issue_root_certificate(root_key(), T0, T0 + 730 * DAY + SECOND)
    forged = forged_certificate(
        root_key(),
        subject=root_key().public_key.to_text(),
        role="root",
        scope=["certificate"],
        not_after=int((T0 + 731 * DAY).timestamp()),
    )
    with pytest.raises(CertificateRejectedError):
        TrustedRoot.pinned(forged, root_key().public_key.fingerprint(), T0)


def test_root_is_checked_for_time_when_pinned() -> None:
    """A root outside its validity cannot be pinned."""
    cert = issue_root_certificate(root_key(), T0, T0 + 30 * DAY)
    pin = root_key().public_key.fingerprint()
    with pytest.raises(NotYetValidError):
        TrustedRoot.pinned(cert, pin, T0 - SECOND)
    with pytest.raises(ExpiredError):
        TrustedRoot.pinned(cert, pin, T0 + 30 * DAY)


def test_an_online_certificate_cannot_pose_as_a_root() -> None:
    """A self-signed certificate with role signing is not a root certificate."""
    forged = forged_certificate(root_key(), subject=root_key().public_key.to_text())
    with pytest.raises(CertificateRejectedError):
        TrustedRoot.pinned(forged, root_key().public_key.fingerprint(), T0)


def test_root_scope_is_limited_to_the_root_ceiling() -> None:
    """A root cannot claim node purposes such as enrollment proofs."""
    with pytest.raises(IssuePolicyError):
        issue_root_certificate(
            root_key(), T0, T0 + DAY, frozenset({Purpose.CERTIFICATE, Purpose.ENROLLMENT_PROOF})
        )


# --- certificates -------------------------------------------------------------------------------


def test_issued_certificates_verify_for_signing_and_audit_keys() -> None:
    """A root-issued signing (90 d) and audit (365 d) certificate verify inside their validity."""
    signing = certify(key(10))
    audit = certify(
        key(11),
        role=KeyRole.AUDIT,
        lifetime=timedelta(days=365),
        scope=frozenset({Purpose.AUDIT_CHECKPOINT}),
    )
    for cert in (signing, audit):
        verify_certificate(cert, ROOT, T0)
        verify_certificate(Certificate.from_text(cert.to_text()), ROOT, T0 + 89 * DAY)
    assert signing.key_id == key(10).public_key.fingerprint()
    assert signing.issuer == ROOT.key_id


@pytest.mark.parametrize(
    ("role", "longest", "scope"),
    [
        (KeyRole.SIGNING, timedelta(days=90), SIGNING_SCOPE),
        (KeyRole.AUDIT, timedelta(days=365), frozenset({Purpose.AUDIT_CHECKPOINT})),
    ],
)
def test_role_lifetime_maximum_is_enforced(
    role: KeyRole, longest: timedelta, scope: frozenset[Purpose]
) -> None:
    """The role's maximum lifetime is allowed; one second more is refused at issue."""
    certify(key(12), role=role, lifetime=longest, scope=scope)
    with pytest.raises(IssuePolicyError):
        certify(key(12), role=role, lifetime=longest + SECOND, scope=scope)


def test_forged_overlong_certificate_is_rejected_on_verify() -> None:
    """A root-signed certificate over the role maximum (made by hand) fails verification."""
    forged = forged_certificate(root_key(), not_after=int((T0 + 90 * DAY + SECOND).timestamp()))
    with pytest.raises(CertificateRejectedError):
        verify_certificate(forged, ROOT, T0)


def test_certificate_must_nest_inside_the_root_validity() -> None:
    """Starting before the root or ending after it is refused at issue and on verify."""
    root = make_root(timedelta(days=100))
    with pytest.raises(IssuePolicyError):
        certify(key(13), root=root, not_before=T0 - SECOND)
    with pytest.raises(IssuePolicyError):
        certify(key(13), root=root, not_before=T0 + 11 * DAY)
    certify(key(13), root=root, not_before=T0 + 10 * DAY)
    forged = forged_certificate(
        root_key(),
        not_before=int((T0 + 11 * DAY).timestamp()),
        not_after=int((T0 + 101 * DAY).timestamp()),
    )
    with pytest.raises(CertificateRejectedError):
        verify_certificate(forged, root, T0 + 50 * DAY)


def test_scope_must_fit_the_role_ceiling() -> None:
    """A signing key cannot be certified for audit checkpoints or for issuing certificates."""
    for purpose in (Purpose.AUDIT_CHECKPOINT, Purpose.CERTIFICATE, Purpose.ENROLLMENT_PROOF):
        with pytest.raises(IssuePolicyError):
            certify(key(14), scope=frozenset({Purpose.PEER_MAP, purpose}))
    with pytest.raises(IssuePolicyError):
        certify(key(14), scope=frozenset())


def test_scope_cannot_exceed_the_issuer_scope() -> None:
    """A root that may not delegate peer maps cannot certify a key for them (escalation)."""
    narrow = make_root(scope=frozenset({Purpose.CERTIFICATE, Purpose.REVOCATION}))
    with pytest.raises(IssuePolicyError):
        certify(key(15), root=narrow)
    certify(key(15), root=narrow, scope=frozenset({Purpose.REVOCATION}))
    forged = forged_certificate(root_key())  # scope peer-map, signed by the same root key
    with pytest.raises(CertificateRejectedError):
        verify_certificate(forged, narrow, T0)


def test_root_without_certificate_scope_cannot_certify() -> None:
    """A root whose scope lacks CERTIFICATE issues nothing."""
    no_certs = make_root(scope=frozenset({Purpose.REVOCATION, Purpose.PEER_MAP}))
    with pytest.raises(IssuePolicyError):
        certify(key(16), root=no_certs)


def test_issue_refuses_root_role_root_subject_and_foreign_signing_key() -> None:
    """No second root below the root, no root key as online key, only the root's key signs."""
    with pytest.raises(IssuePolicyError):
        certify(key(17), role=KeyRole.ROOT, scope=frozenset({Purpose.CERTIFICATE}))
    with pytest.raises(IssuePolicyError):
        certify(root_key())
    with pytest.raises(IssuePolicyError):
        issue_certificate(
            key(18),
            ROOT,
            subject=key(17).public_key,
            role=KeyRole.SIGNING,
            not_before=T0,
            not_after=T0 + DAY,
            scope=SIGNING_SCOPE,
        )


def test_certificate_is_rejected_outside_its_validity() -> None:
    """Before not_before: NotYetValid; at or after not_after: Expired."""
    cert = certify(key(19), not_before=T0 + DAY, lifetime=10 * DAY)
    with pytest.raises(NotYetValidError):
        verify_certificate(cert, ROOT, T0 + DAY - SECOND)
    verify_certificate(cert, ROOT, T0 + DAY)
    verify_certificate(cert, ROOT, T0 + 11 * DAY - SECOND)
    with pytest.raises(ExpiredError):
        verify_certificate(cert, ROOT, T0 + 11 * DAY)


def test_certificate_signed_by_another_key_is_rejected() -> None:
    """A certificate from a different issuer, or signed by one key claiming another, fails."""
    other_root = key(70)
    with pytest.raises(UnknownSigner):
        verify_certificate(forged_certificate(other_root), ROOT, T0)
    with pytest.raises(DecodeError):
        forged_certificate(other_root, issuer=ROOT.key_id.to_text())


def test_revoked_certificate_subject_is_rejected() -> None:
    """verify_certificate consults the revocation state when given one."""
    cert = certify(key(20))
    state = RevocationState()
    state.apply(issue_revocation(root_key(), ROOT, 1, [cert.key_id], T0), ROOT, T0)
    verify_certificate(cert, ROOT, T0)
    with pytest.raises(KeyRevoked):
        verify_certificate(cert, ROOT, T0, state)


@pytest.mark.parametrize(
    "overrides",
    [
        {"v": 2},
        {"v": True},
        {"role": "admin"},
        {"scope": ["peer-map", "peer-map"]},
        {"scope": ["revocation", "peer-map"]},
        {"scope": ["nonsense"]},
        {"scope": "peer-map"},
        {"not_before": -1},
        {"not_before": True},
        {"not_after": int(T0.timestamp())},
        {"subject": "rntk_x25519_" + "A" * 43},
        {"extra": 1},
    ],
)
def test_malformed_certificate_claims_raise_decode_error(overrides: dict[str, JsonValue]) -> None:
    """Unknown versions, roles, purposes, unsorted scopes, bad times and extra fields raise."""
    with pytest.raises(DecodeError):
        forged_certificate(root_key(), **overrides)


def test_certificate_envelope_for_another_purpose_is_not_a_certificate() -> None:
    """A peer-map envelope never parses as a certificate."""
    envelope = SignedEnvelope.seal(root_key(), Purpose.PEER_MAP, {"v": 1})
    with pytest.raises(DecodeError):
        Certificate(envelope)


def test_every_flipped_byte_of_a_certificate_is_rejected() -> None:
    """Any single-byte corruption of a certificate text fails parsing or verification."""
    text = certify(key(21)).to_text()
    assert_every_flip_rejected(
        text, lambda t: verify_certificate(Certificate.from_text(t), ROOT, T0)
    )


def test_every_flipped_byte_of_a_root_certificate_is_rejected() -> None:
    """Any single-byte corruption of the root certificate fails pinning."""
    text = ROOT.certificate.to_text()
    pin = ROOT.key_id
    assert_every_flip_rejected(
        text, lambda t: TrustedRoot.pinned(Certificate.from_text(t), pin, T0)
    )


# --- keyring ----------------------------------------------------------------------------------


def keyring_with(*seeds: int, revocations: RevocationState | None = None) -> SigningKeyring:
    keyring = SigningKeyring(ROOT, KeyRole.SIGNING, revocations)
    for seed in seeds:
        keyring.add(certify(key(seed)), T0, key(seed))
    return keyring


def test_keyring_signs_with_the_newest_key_and_verifies_older_ones() -> None:
    """After rotation the newest key signs; envelopes from the older key still open."""
    keyring = keyring_with(30)
    old = keyring.seal(Purpose.PEER_MAP, {"n": 1}, T0)
    assert old.key_id == key(30).public_key.fingerprint()
    keyring.add(certify(key(31)), T0, key(31))
    new = keyring.seal(Purpose.PEER_MAP, {"n": 2}, T0)
    assert new.key_id == key(31).public_key.fingerprint()
    assert keyring.open(old, Purpose.PEER_MAP, T0) == {"n": 1}
    assert keyring.open(new, Purpose.PEER_MAP, T0) == {"n": 2}
    assert keyring.newest(Purpose.PEER_MAP, T0).key_id == new.key_id


def test_keyring_raw_sign_verifies_by_key_id() -> None:
    """sign() returns the key id and a signature that verify_signature accepts."""
    keyring = keyring_with(32)
    key_id, signature = keyring.sign(Purpose.PEER_MAP, b"bytes", T0)
    keyring.verify_signature(key_id, Purpose.PEER_MAP, b"bytes", signature, T0)
    with pytest.raises(InvalidSignature):
        keyring.verify_signature(key_id, Purpose.PEER_MAP, b"other", signature, T0)


def test_key_added_ahead_of_time_signs_only_once_valid() -> None:
    """A pre-published next key is not used (or accepted) before its not_before."""
    keyring = keyring_with(33)
    later = certify(key(34), not_before=T0 + 10 * DAY)
    keyring.add(later, T0, key(34))
    assert keyring.newest(Purpose.PEER_MAP, T0).key_id == key(33).public_key.fingerprint()
    early = SignedEnvelope.seal(key(34), Purpose.PEER_MAP, {"n": 1})
    with pytest.raises(UnknownSigner):
        keyring.open(early, Purpose.PEER_MAP, T0)
    assert keyring.newest(Purpose.PEER_MAP, T0 + 10 * DAY).key_id == later.key_id
    assert keyring.open(early, Purpose.PEER_MAP, T0 + 10 * DAY) == {"n": 1}


def test_retired_key_no_longer_verifies_or_signs_and_is_wiped() -> None:
    """Retiring rejects the key's envelopes, wipes its private key, and is permanent."""
    private = key(35)
    keyring = SigningKeyring(ROOT)
    cert = certify(private)
    keyring.add(cert, T0, private)
    envelope = keyring.seal(Purpose.PEER_MAP, {"n": 1}, T0)
    keyring.retire(cert.key_id)
    assert private.wiped
    with pytest.raises(UnknownSigner):
        keyring.open(envelope, Purpose.PEER_MAP, T0)
    with pytest.raises(NoSigningKeyError):
        keyring.seal(Purpose.PEER_MAP, {"n": 2}, T0)
    with pytest.raises(LocalProtocolError):
        keyring.add(cert, T0)
    keyring.retire(cert.key_id)  # idempotent
    assert cert.key_id in keyring.retired
    with pytest.raises(UnknownSigner):
        keyring.retire(key(36).public_key.fingerprint())


def test_revoked_key_is_rejected_and_skipped_for_signing() -> None:
    """A root-revoked key never verifies again and the keyring falls back to an older key."""
    state = RevocationState()
    keyring = keyring_with(37, 38, revocations=state)
    newest = keyring.seal(Purpose.PEER_MAP, {"n": 1}, T0)
    assert newest.key_id == key(38).public_key.fingerprint()
    state.apply(issue_revocation(root_key(), ROOT, 1, [newest.key_id], T0), ROOT, T0)
    with pytest.raises(KeyRevoked):
        keyring.open(newest, Purpose.PEER_MAP, T0)
    assert keyring.seal(Purpose.PEER_MAP, {"n": 2}, T0).key_id == key(37).public_key.fingerprint()
    with pytest.raises(KeyRevoked):
        SigningKeyring(ROOT, revocations=state).add(certify(key(38)), T0)


def test_keyring_enforces_the_certificate_scope_on_verify() -> None:
    """A key certified for peer maps cannot vouch for a revocation, even with a valid signature."""
    keyring = keyring_with(39)
    with pytest.raises(NoSigningKeyError):
        keyring.seal(Purpose.REVOCATION, {"n": 1}, T0)
    outside_scope = SignedEnvelope.seal(key(39), Purpose.REVOCATION, {"n": 1})
    with pytest.raises(UnknownSigner):
        keyring.open(outside_scope, Purpose.REVOCATION, T0)


def test_expired_key_neither_signs_nor_verifies() -> None:
    """At the certificate's not_after the key drops out for both directions."""
    keyring = keyring_with(40)
    envelope = keyring.seal(Purpose.PEER_MAP, {"n": 1}, T0)
    with pytest.raises(UnknownSigner):
        keyring.open(envelope, Purpose.PEER_MAP, T0 + 90 * DAY)
    with pytest.raises(NoSigningKeyError):
        keyring.seal(Purpose.PEER_MAP, {"n": 1}, T0 + 90 * DAY)


def test_keyring_add_refuses_bad_certificates() -> None:
    """Wrong role, another root, expired, mismatched private key or a duplicate are refused."""
    keyring = keyring_with(41)
    audit = certify(
        key(42), role=KeyRole.AUDIT, scope=frozenset({Purpose.AUDIT_CHECKPOINT}), lifetime=DAY
    )
    with pytest.raises(CertificateRejectedError):
        keyring.add(audit, T0)
    with pytest.raises(UnknownSigner):
        keyring.add(forged_certificate(key(71)), T0)
    with pytest.raises(ExpiredError):
        keyring.add(certify(key(43), lifetime=DAY), T0 + DAY)
    with pytest.raises(LocalProtocolError):
        keyring.add(certify(key(44)), T0, key(45))
    with pytest.raises(LocalProtocolError):
        keyring.add(certify(key(41)), T0)
    assert keyring.key_ids == (key(41).public_key.fingerprint(),)


def test_keyring_unknown_key_id_is_rejected() -> None:
    """An envelope from a key the keyring never held is refused."""
    keyring = keyring_with(46)
    with pytest.raises(UnknownSigner):
        keyring.open(SignedEnvelope.seal(key(47), Purpose.PEER_MAP, {}), Purpose.PEER_MAP, T0)


def test_keyring_refuses_a_certificate_another_root_issued() -> None:
    """A certificate another root issued never enters the keyring, so nothing its key signs
    can be opened; the keyring is unchanged."""
    keyring = keyring_with(46)
    with pytest.raises(RemoteProtocolError):
        keyring.add(forged_certificate(key(71)), T0)
    assert keyring.key_ids == (key(46).public_key.fingerprint(),)
    with pytest.raises(UnknownSigner):
        keyring.open(SignedEnvelope.seal(key(50), Purpose.PEER_MAP, {}), Purpose.PEER_MAP, T0)


def test_keyring_snapshot_restores_order_retirement_and_private_keys() -> None:
    """A restart rebuilds the same keyring: newest still signs, retired still rejected."""
    state = RevocationState()
    keyring = keyring_with(48, 49, 50, revocations=state)
    retired_envelope = SignedEnvelope.seal(key(48), Purpose.PEER_MAP, {})
    keyring.retire(key(48).public_key.fingerprint())
    restored = SigningKeyring.restore(ROOT, keyring.snapshot(), state, [key(48), key(49), key(50)])
    assert restored.key_ids == keyring.key_ids
    assert restored.retired == keyring.retired
    assert restored.seal(Purpose.PEER_MAP, {}, T0).key_id == key(50).public_key.fingerprint()
    with pytest.raises(UnknownSigner):
        restored.open(retired_envelope, Purpose.PEER_MAP, T0)
    with pytest.raises(LocalProtocolError):
        restored.add(certify(key(48)), T0)


def test_keyring_restore_rechecks_certificates() -> None:
    """A snapshot carrying a certificate from another root is refused."""
    snapshot = keyring_with(51).snapshot()
    foreign = forged_certificate(key(72))
    certificates = snapshot["certificates"]
    assert isinstance(certificates, list)
    snapshot["certificates"] = [*certificates, foreign.to_text()]
    with pytest.raises(UnknownSigner):
        SigningKeyring.restore(ROOT, snapshot)


def test_keyring_repr_shows_no_key_material() -> None:
    """The keyring's repr is a summary."""
    shown = repr(keyring_with(52))
    assert "keys=1" in shown
    assert "rnsk_" not in shown


# --- revocation -------------------------------------------------------------------------------


def fp(n: int) -> KeyFingerprint:
    return key(n).public_key.fingerprint()


def test_revocation_epochs_must_strictly_increase() -> None:
    """Epoch 1 then 3 apply; 3 again or 2 are stale and change nothing."""
    state = RevocationState()
    state.apply(issue_revocation(root_key(), ROOT, 1, [fp(60)], T0), ROOT, T0)
    state.apply(issue_revocation(root_key(), ROOT, 3, [fp(60), fp(61)], T0), ROOT, T0)
    before = (state.epoch, state.revoked)
    for epoch in (3, 2, 1):
        with pytest.raises(StaleRevocationError):
            state.apply(issue_revocation(root_key(), ROOT, epoch, [fp(62)], T0), ROOT, T0)
        assert (state.epoch, state.revoked) == before
    assert state.epoch == 3
    assert not state.is_revoked(fp(62))


def test_revocations_only_accumulate() -> None:
    """A later record that omits a revoked key does not un-revoke it."""
    state = RevocationState()
    state.apply(issue_revocation(root_key(), ROOT, 1, [fp(60)], T0), ROOT, T0)
    state.apply(issue_revocation(root_key(), ROOT, 2, [fp(61)], T0), ROOT, T0)
    assert state.revoked == {fp(60), fp(61)}


def test_revocation_signed_by_a_non_root_key_changes_nothing() -> None:
    """A record signed by an online key (or any other key) is refused."""
    state = RevocationState()
    forged = RevocationRecord(
        SignedEnvelope.seal(
            key(63),
            Purpose.REVOCATION,
            {"v": 1, "epoch": 9, "revoked": [], "issued_at": int(T0.timestamp())},
        )
    )
    with pytest.raises(UnknownSigner):
        state.apply(forged, ROOT, T0)
    assert state.epoch == 0


def test_revocation_needs_a_valid_root() -> None:
    """An expired root applies nothing."""
    root = make_root(timedelta(days=10))
    record = issue_revocation(root_key(), root, 1, [fp(60)], T0)
    state = RevocationState()
    with pytest.raises(ExpiredError):
        state.apply(record, root, T0 + 10 * DAY)
    assert state.epoch == 0


def test_issue_revocation_refuses_bad_epochs_and_foreign_keys() -> None:
    """Epoch 0, negative, bool or > 2^63-1, or a non-root signer, are refused at issue."""
    for epoch in (0, -1, True, 2**63):
        with pytest.raises(IssuePolicyError):
            issue_revocation(root_key(), ROOT, epoch, [], T0)
    with pytest.raises(IssuePolicyError):
        issue_revocation(key(64), ROOT, 1, [], T0)


def test_revocation_state_survives_a_restart_as_text() -> None:
    """to_text/from_text keeps the epoch watermark and the revoked set."""
    state = RevocationState()
    state.apply(issue_revocation(root_key(), ROOT, 5, [fp(60), fp(61)], T0), ROOT, T0)
    reloaded = RevocationState.from_text(state.to_text())
    assert (reloaded.epoch, reloaded.revoked) == (5, state.revoked)
    assert RevocationState.from_dict(state.to_dict()).revoked == state.revoked
    with pytest.raises(StaleRevocationError):
        reloaded.apply(issue_revocation(root_key(), ROOT, 5, [], T0), ROOT, T0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{}",
        '{"epoch":-1,"revoked":[],"v":1}',
        '{"epoch":1.5,"revoked":[],"v":1}',
        '{"epoch":true,"revoked":[],"v":1}',
        '{"epoch":1,"revoked":["x"],"v":1}',
        '{"epoch":1,"revoked":[],"v":2}',
        '{"epoch":1,"revoked":[],"v":1,"x":0}',
        '{"epoch": 1,"revoked":[],"v":1}',
    ],
)
def test_malformed_revocation_state_raises_decode_error(text: str) -> None:
    """A damaged state file is refused, never read as epoch 0."""
    with pytest.raises(DecodeError):
        RevocationState.from_text(text)


def test_revocation_record_round_trips_as_text() -> None:
    """from_text(to_text()) keeps epoch, keys, time and issuer."""
    record = issue_revocation(root_key(), ROOT, 4, [fp(60)], T0 + SECOND / 2)
    again = RevocationRecord.from_text(record.to_text())
    assert (again.epoch, again.revoked, again.issued_at, again.issuer) == (
        4,
        frozenset({fp(60)}),
        T0,
        ROOT.key_id,
    )


def test_every_flipped_byte_of_a_revocation_record_is_rejected_and_changes_nothing() -> None:
    """Any single-byte corruption fails and leaves the watermark where it was."""
    text = issue_revocation(root_key(), ROOT, 7, [fp(60)], T0).to_text()
    state = RevocationState(epoch=3)

    def accept(candidate: str) -> None:
        fresh = RevocationState(epoch=3)
        try:
            fresh.apply(RevocationRecord.from_text(candidate), ROOT, T0)
        finally:
            if candidate != text:
                assert fresh.epoch == 3
                assert not fresh.revoked

    assert_every_flip_rejected(text, accept)
    assert state.epoch == 3


# --- tunnel-key bindings ----------------------------------------------------------------------

IDENTITY_SEED = 80
TUNNEL = TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, bytes(range(32))).public_key


def test_binding_defaults_to_180_days_and_verifies() -> None:
    """A fresh binding lives 180 days and returns its tunnel key on verification."""
    binding = issue_tunnel_key_binding(key(IDENTITY_SEED), TUNNEL, T0)
    assert binding.validity.lifetime == timedelta(days=180)
    assert binding.identity == fp(IDENTITY_SEED)
    assert verify_tunnel_key_binding(binding, key(IDENTITY_SEED).public_key, T0) == TUNNEL
    again = TunnelKeyBinding.from_text(binding.to_text())
    assert verify_tunnel_key_binding(again, key(IDENTITY_SEED).public_key, T0 + 179 * DAY) == TUNNEL


@pytest.mark.parametrize("lifetime", [DAY, 180 * DAY, 30 * DAY])
def test_binding_lifetimes_from_1_to_180_days_are_allowed(lifetime: timedelta) -> None:
    """The bounds themselves are allowed."""
    binding = issue_tunnel_key_binding(key(IDENTITY_SEED), TUNNEL, T0, lifetime)
    verify_tunnel_key_binding(binding, key(IDENTITY_SEED).public_key, T0)


@pytest.mark.parametrize("lifetime", [DAY - SECOND, 180 * DAY + SECOND, timedelta(0), -DAY])
def test_binding_lifetime_outside_1_to_180_days_is_refused(lifetime: timedelta) -> None:
    """Creating a binding shorter than a day or longer than 180 days is a local error."""
    with pytest.raises(LocalProtocolError):
        issue_tunnel_key_binding(key(IDENTITY_SEED), TUNNEL, T0, lifetime)


def forged_binding(lifetime: timedelta) -> TunnelKeyBinding:
    payload: dict[str, JsonValue] = {
        "v": 1,
        "tunnel_key": TUNNEL.to_text(),
        "identity": fp(IDENTITY_SEED).to_text(),
        "not_before": int(T0.timestamp()),
        "not_after": int((T0 + lifetime).timestamp()),
    }
    return TunnelKeyBinding(
        SignedEnvelope.seal(key(IDENTITY_SEED), Purpose.TUNNEL_KEY_BINDING, payload)
    )


@pytest.mark.parametrize("lifetime", [DAY - SECOND, 181 * DAY])
def test_signed_binding_with_bad_lifetime_is_rejected_on_verify(lifetime: timedelta) -> None:
    """A genuinely signed binding outside 1-180 d is a remote protocol error."""
    with pytest.raises(BindingRejectedError):
        verify_tunnel_key_binding(forged_binding(lifetime), key(IDENTITY_SEED).public_key, T0)


def test_binding_expires() -> None:
    """At not_after the binding is refused."""
    binding = issue_tunnel_key_binding(key(IDENTITY_SEED), TUNNEL, T0, 2 * DAY)
    verify_tunnel_key_binding(binding, key(IDENTITY_SEED).public_key, T0 + 2 * DAY - SECOND)
    with pytest.raises(ExpiredError):
        verify_tunnel_key_binding(binding, key(IDENTITY_SEED).public_key, T0 + 2 * DAY)


def test_binding_tolerates_only_bounded_clock_lag() -> None:
    """A verifier up to 90 s behind accepts a fresh binding; further behind is refused."""
    binding = issue_tunnel_key_binding(key(IDENTITY_SEED), TUNNEL, T0)
    verify_tunnel_key_binding(binding, key(IDENTITY_SEED).public_key, T0 - BINDING_CLOCK_LEEWAY)
    with pytest.raises(NotYetValidError):
        verify_tunnel_key_binding(
            binding, key(IDENTITY_SEED).public_key, T0 - BINDING_CLOCK_LEEWAY - SECOND
        )


def test_binding_by_another_identity_is_rejected() -> None:
    """Only the node's own identity key vouches for its tunnel key."""
    binding = issue_tunnel_key_binding(key(81), TUNNEL, T0)
    with pytest.raises(UnknownSigner):
        verify_tunnel_key_binding(binding, key(IDENTITY_SEED).public_key, T0)


def test_binding_claiming_another_identity_is_malformed() -> None:
    """The identity inside the payload must be the signer."""
    payload: dict[str, JsonValue] = {
        "v": 1,
        "tunnel_key": TUNNEL.to_text(),
        "identity": fp(IDENTITY_SEED).to_text(),
        "not_before": int(T0.timestamp()),
        "not_after": int((T0 + DAY).timestamp()),
    }
    with pytest.raises(DecodeError):
        TunnelKeyBinding(SignedEnvelope.seal(key(81), Purpose.TUNNEL_KEY_BINDING, payload))


def test_enrollment_proof_signature_is_not_a_binding() -> None:
    """The same payload signed for another purpose never parses or verifies as a binding."""
    binding = issue_tunnel_key_binding(key(IDENTITY_SEED), TUNNEL, T0)
    other = SignedEnvelope.seal(
        key(IDENTITY_SEED), Purpose.ENROLLMENT_PROOF, binding.envelope.unverified_payload()
    )
    with pytest.raises(DecodeError):
        TunnelKeyBinding(other)
    relabelled = SignedEnvelope(
        Purpose.TUNNEL_KEY_BINDING, other.key_id, other.payload, other.signature
    )
    with pytest.raises(InvalidSignature):
        verify_tunnel_key_binding(TunnelKeyBinding(relabelled), key(IDENTITY_SEED).public_key, T0)


def test_every_flipped_byte_of_a_binding_is_rejected() -> None:
    """Any single-byte corruption of a binding text fails parsing or verification."""
    text = issue_tunnel_key_binding(key(IDENTITY_SEED), TUNNEL, T0).to_text()
    identity = key(IDENTITY_SEED).public_key
    assert_every_flip_rejected(
        text, lambda t: verify_tunnel_key_binding(TunnelKeyBinding.from_text(t), identity, T0)
    )
