"""Credential lifecycle: one-time by default, reusable only with tags, a limit and TTL <= 24 h."""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from rustynet.domain.credentials import (
    DEFAULT_TTL,
    TRANSITIONS,
    Credential,
    CredentialExhausted,
    CredentialExpired,
    CredentialId,
    CredentialInput,
    CredentialKind,
    CredentialParameterError,
    CredentialRejected,
    CredentialRevoked,
    CredentialState,
    CredentialTransitionError,
    CredentialUsed,
)
from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.scope import Scope

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TAGS = Scope.of(["tag:server"])
HASH = hashlib.sha256(b"secret").digest()
SECOND = timedelta(seconds=1)


def _one_time(**over: Any) -> Credential:
    args: dict[str, Any] = {
        "id": CredentialId(bytes(16)),
        "secret_hash": HASH,
        "scope": Scope(),
        "now": NOW,
    }
    args.update(over)
    return Credential.create(**args)


def _reusable(max_uses: int = 3, **over: Any) -> Credential:
    args: dict[str, Any] = {"scope": TAGS, "reusable": True, "max_uses": max_uses}
    args.update(over)
    return _one_time(**args)


# --- creation rules -------------------------------------------------------------------------


def test_credential_is_one_time_with_a_30_minute_ttl_by_default() -> None:
    """Defaults: one-time, one use, live for 30 minutes."""
    cred = _one_time()
    assert cred.kind is CredentialKind.ONE_TIME
    assert cred.max_uses == 1
    assert cred.uses == 0
    assert cred.state is CredentialState.CREATED
    assert cred.expires_at - cred.created_at == DEFAULT_TTL == timedelta(minutes=30)


def test_reusable_credential_needs_tags() -> None:
    """A reusable credential without tags is refused."""
    with pytest.raises(CredentialParameterError):
        _reusable(scope=Scope())


def test_reusable_credential_needs_a_use_limit() -> None:
    """reusable=True without max_uses, or with a limit below 1, is refused."""
    with pytest.raises(CredentialParameterError):
        _one_time(scope=TAGS, reusable=True)
    for bad in (0, -1, 10_001):
        with pytest.raises(CredentialParameterError):
            _reusable(max_uses=bad)


def test_reusable_ttl_is_at_most_24_hours() -> None:
    """24 h is the ceiling for reusable credentials."""
    assert _reusable(ttl=timedelta(hours=24)).expires_at == NOW + timedelta(hours=24)
    with pytest.raises(CredentialParameterError):
        _reusable(ttl=timedelta(hours=24) + SECOND)


def test_one_time_ttl_is_bounded() -> None:
    """One-time credentials live at most 7 days, and a TTL must be positive."""
    assert _one_time(ttl=timedelta(days=7)).kind is CredentialKind.ONE_TIME
    for bad in (timedelta(days=7) + SECOND, timedelta(0), -SECOND):
        with pytest.raises(CredentialParameterError):
            _one_time(ttl=bad)


def test_one_time_credential_cannot_have_more_uses() -> None:
    """A use limit other than 1 needs reusable=True."""
    with pytest.raises(CredentialParameterError):
        _one_time(max_uses=2)
    assert _one_time(max_uses=1).max_uses == 1


@pytest.mark.parametrize(
    "over",
    [
        {"now": datetime(2026, 5, 1, 12, 0)},  # noqa: DTZ001 - naive on purpose
        {"now": datetime(2026, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))},
        {"now": "2026-05-01"},
        {"secret_hash": b"short"},
        {"reusable": "yes"},
        {"ttl": 1800},
    ],
)
def test_bad_parameters_are_local_errors(over: dict[str, Any]) -> None:
    """Naive or non-UTC times, short hashes and untyped flags are our bugs."""
    with pytest.raises(LocalProtocolError):
        _one_time(**over)


def test_secret_hash_is_not_in_repr() -> None:
    """The stored hash is not shown in logs of the credential."""
    assert HASH.hex() not in repr(_one_time())
    assert repr(HASH) not in repr(_one_time())


# --- one-time lifecycle ---------------------------------------------------------------------


def test_join_token_is_single_use() -> None:
    """A one-time credential is redeemed once, then refuses as used."""
    used = _one_time().redeem(NOW + SECOND)
    assert used.state is CredentialState.USED
    assert used.uses == 1
    assert used.last_used_at == used.ended_at == NOW + SECOND
    with pytest.raises(CredentialUsed):
        used.redeem(NOW + 2 * SECOND)


def test_credential_expires_at_its_ttl() -> None:
    """Redeemable one second before expiry, refused at expiry, recorded as expired after."""
    cred = _one_time()
    assert cred.redeem(cred.expires_at - SECOND).state is CredentialState.USED
    with pytest.raises(CredentialExpired):
        cred.redeem(cred.expires_at)
    assert cred.state_at(cred.expires_at) is CredentialState.EXPIRED
    expired = cred.expire(cred.expires_at)
    assert expired.state is CredentialState.EXPIRED
    with pytest.raises(CredentialExpired):
        expired.redeem(cred.expires_at)


def test_credential_cannot_be_marked_expired_early() -> None:
    """The sweeper cannot expire a credential before its TTL."""
    cred = _one_time()
    with pytest.raises(CredentialTransitionError):
        cred.expire(cred.expires_at - SECOND)


def test_revoked_credential_is_refused() -> None:
    """After revocation, redemption raises CredentialRevoked."""
    revoked = _one_time().revoke(NOW + SECOND)
    assert revoked.state is CredentialState.REVOKED
    assert revoked.ended_at == NOW + SECOND
    with pytest.raises(CredentialRevoked):
        revoked.redeem(NOW + 2 * SECOND)


# --- reusable lifecycle ---------------------------------------------------------------------


def test_reusable_credential_counts_uses_until_exhausted() -> None:
    """Each redemption counts; the last allowed one exhausts the credential."""
    cred = _reusable(max_uses=3)
    for expected in (1, 2):
        cred = cred.redeem(NOW + expected * SECOND)
        assert (cred.uses, cred.state) == (expected, CredentialState.CREATED)
    cred = cred.redeem(NOW + 3 * SECOND)
    assert (cred.uses, cred.state) == (3, CredentialState.EXHAUSTED)
    with pytest.raises(CredentialExhausted):
        cred.redeem(NOW + 4 * SECOND)


def test_reusable_credential_can_be_revoked_midway() -> None:
    """Revoking a partly used reusable credential stops further use."""
    cred = _reusable().redeem(NOW).revoke(NOW + SECOND)
    assert (cred.uses, cred.state) == (1, CredentialState.REVOKED)
    with pytest.raises(CredentialRevoked):
        cred.redeem(NOW + 2 * SECOND)


# --- the table ------------------------------------------------------------------------------


def _in_state(kind: CredentialKind, state: CredentialState) -> Credential:
    """A valid credential of `kind` sitting in `state`."""
    cred = _reusable(max_uses=2) if kind is CredentialKind.REUSABLE else _one_time()
    if state is CredentialState.CREATED:
        return cred
    if state in (CredentialState.USED, CredentialState.EXHAUSTED):
        for _ in range(cred.max_uses):
            cred = cred.redeem(NOW)
        return cred
    return attrs.evolve(cred, state=state, ended_at=NOW)


def test_table_has_only_the_documented_steps() -> None:
    """Every transition starts from created; terminal states have no way out."""
    assert {state for (_, state, _) in TRANSITIONS} == {CredentialState.CREATED}
    assert (
        CredentialKind.ONE_TIME,
        CredentialState.CREATED,
        CredentialInput.REDEEM,
    ) not in TRANSITIONS
    one_time_targets = {
        target for (kind, _, _), target in TRANSITIONS.items() if kind is CredentialKind.ONE_TIME
    }
    assert one_time_targets == {
        CredentialState.USED,
        CredentialState.EXPIRED,
        CredentialState.REVOKED,
    }


@pytest.mark.parametrize(
    ("kind", "state"),
    [
        (k, s)
        for k, s in itertools.product(CredentialKind, CredentialState)
        if s.terminal
        and not (k is CredentialKind.ONE_TIME and s is CredentialState.EXHAUSTED)
        and not (k is CredentialKind.REUSABLE and s is CredentialState.USED)
    ],
)
def test_terminal_states_are_terminal(kind: CredentialKind, state: CredentialState) -> None:
    """From a terminal state, redeem raises a rejection and revoke/expire raise; nothing changes."""
    cred = _in_state(kind, state)
    before = cred.to_record()
    late = cred.expires_at + SECOND
    with pytest.raises(CredentialRejected):
        cred.redeem(NOW)
    with pytest.raises(CredentialRejected):
        cred.redemption(NOW)
    with pytest.raises(CredentialTransitionError):
        cred.revoke(NOW)
    with pytest.raises(CredentialTransitionError):
        cred.expire(late)
    assert cred.to_record() == before


def test_rejections_are_remote_and_transition_errors_are_local() -> None:
    """A bad presented credential is the peer's fault; a bad admin step is ours."""
    for error in (CredentialUsed, CredentialExpired, CredentialRevoked, CredentialExhausted):
        assert issubclass(error, CredentialRejected)
        assert issubclass(error, RemoteProtocolError)
    assert issubclass(CredentialTransitionError, LocalProtocolError)
    assert issubclass(CredentialParameterError, LocalProtocolError)


@pytest.mark.parametrize(
    "fields",
    [
        {"state": CredentialState.USED},  # used without a use
        {"uses": 1},  # spent one-time credential still created
        {"state": CredentialState.EXHAUSTED, "ended_at": NOW},  # exhausted is reusable-only
        {"ended_at": NOW},  # live credential with an end time
        {"state": CredentialState.REVOKED},  # terminal without an end time
        {"uses": True},  # bool is not a count
    ],
)
def test_inconsistent_credentials_cannot_exist(fields: dict[str, Any]) -> None:
    """The constructor refuses field combinations the machine can never produce."""
    with pytest.raises(CredentialParameterError):
        attrs.evolve(_one_time(), **fields)


# --- redemption as data for one conditional UPDATE ------------------------------------------


def test_redemption_carries_the_precondition_and_the_new_row() -> None:
    """The plan names the expected state and use count, and the row redeem() would produce."""
    cred = _reusable(max_uses=2)
    plan = cred.redemption(NOW)
    assert plan.credential_id == cred.id
    assert (plan.expected_state, plan.expected_uses) == (CredentialState.CREATED, 0)
    assert plan.after == cred.redeem(NOW)
    assert plan.precondition_holds(cred)


def test_stale_redemption_loses_the_race() -> None:
    """Two redemptions planned from the same row: only the first precondition holds, for a
    one-time token (its state changed) and a reusable one (only its use count changed)."""
    for cred in (_one_time(), _reusable()):
        first, second = cred.redemption(NOW), cred.redemption(NOW)
        assert first.precondition_holds(cred)
        stored = first.after
        assert not second.precondition_holds(stored)


def test_redemption_precondition_fails_after_revocation_or_expiry() -> None:
    """The WHERE clause also refuses a row revoked meanwhile and a redemption at expiry."""
    cred = _reusable()
    plan = cred.redemption(NOW)
    assert not plan.precondition_holds(cred.revoke(NOW))
    late = attrs.evolve(plan, now=cred.expires_at)
    assert not late.precondition_holds(cred)
    other = attrs.evolve(cred, id=CredentialId(b"\x01" * 16))
    assert not plan.precondition_holds(other)


# --- records (what storage writes) ----------------------------------------------------------


@pytest.mark.parametrize(
    "cred",
    [
        _one_time(),
        _one_time().redeem(NOW),
        _one_time().revoke(NOW),
        _one_time().expire(NOW + DEFAULT_TTL),
        _reusable().redeem(NOW),
        _reusable(max_uses=1).redeem(NOW),
    ],
)
def test_record_round_trips(cred: Credential) -> None:
    """from_record(to_record(c)) == c for every state."""
    assert Credential.from_record(cred.to_record()) == cred


@pytest.mark.parametrize(
    "change",
    [
        {"uses": "1"},
        {"uses": True},
        {"state": "used"},  # inconsistent with zero uses
        {"state": "gone"},
        {"kind": "forever"},
        {"scope": "tag:server"},
        {"created_at": "2026-05-01T12:00:00"},  # naive
        {"expires_at": "yesterday"},
        {"secret_hash": "AAAA"},
        {"id": "rnpk_AAAA"},
        {"extra": 1},
    ],
)
def test_malformed_record_is_refused(change: dict[str, object]) -> None:
    """Storage rows that are not exactly what to_record writes raise DecodeError."""
    record = _one_time().to_record()
    record.update(change)
    with pytest.raises(DecodeError):
        Credential.from_record(record)


def test_record_missing_a_field_is_refused() -> None:
    """Every field is required."""
    record = _one_time().to_record()
    del record["uses"]
    with pytest.raises(DecodeError):
        Credential.from_record(record)


def test_credential_id_text_form_is_typed() -> None:
    """Credential ids round-trip through rncred_ text and refuse other prefixes."""
    cid = CredentialId(bytes(range(16)))
    assert CredentialId.from_text(cid.to_text()) == cid
    assert cid.to_text().startswith("rncred_")
    with pytest.raises(DecodeError):
        CredentialId.from_text("rnfp_" + cid.to_text()[len("rncred_") :])
