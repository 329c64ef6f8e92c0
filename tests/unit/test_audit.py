"""Audit chain: hash links, signed checkpoints, cadence, and tamper detection."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

from rustynet.domain.audit import (
    GENESIS_HASH,
    MAX_ENTRIES_PER_CHECKPOINT,
    AuditChain,
    AuditChainBroken,
    AuditEntry,
    AuditRecordError,
    Checkpoint,
    CheckpointOverdue,
    Problem,
    SecretInAuditDetails,
    compute_entry_hash,
    verify_chain,
)
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.keys import SigningKey

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
AUDIT_KEY = SigningKey.from_seed(bytes(range(32)))
OTHER_KEY = SigningKey.from_seed(bytes(range(1, 33)))
VERIFY = AUDIT_KEY.public_key


def build(n: int, every: int = 5) -> tuple[list[AuditEntry], list[Checkpoint]]:
    """A chain of `n` entries, one second apart, checkpointed every `every` and at the end."""
    chain = AuditChain()
    entries: list[AuditEntry] = []
    checkpoints: list[Checkpoint] = []
    for i in range(n):
        now = T0 + timedelta(seconds=i)
        entries.append(
            chain.append(
                now=now,
                actor="admin:alice",
                action="node.revoked",
                target=f"node:{i}",
                details={"reason": "lost laptop", "n": i, "tags": ["tag:server"]},
            ).entry
        )
        if (i + 1) % every == 0 or i == n - 1:
            checkpoints.append(chain.checkpoint(AUDIT_KEY, now))
    return entries, checkpoints


def rehash(entry: AuditEntry, prev: bytes | None = None) -> AuditEntry:
    """What an attacker with write access does: recompute the entry's own hash."""
    e = entry if prev is None else attrs.evolve(entry, prev_hash=prev)
    return attrs.evolve(e, entry_hash=e.computed_hash())


def test_entries_are_linked_by_hash_from_genesis() -> None:
    """Entry 0 links to the genesis hash; each later entry to its predecessor's hash."""
    entries, checkpoints = build(4)
    assert entries[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.entry_hash
        assert after.index == before.index + 1
    report = verify_chain(entries, checkpoints, VERIFY)
    assert report.ok
    assert report.entries_checked == 4
    assert report.checkpoints_verified == 1
    report.raise_if_broken()


def test_entry_hash_covers_every_field_including_prev_hash() -> None:
    """Changing any one field changes the hash."""
    entry = build(2)[0][1]
    base = entry.computed_hash()
    changes: dict[str, Any] = {
        "index": 7,
        "time": entry.time + timedelta(microseconds=1),
        "actor": "admin:mallory",
        "action": "node.created",
        "target": "node:x",
        "details_json": '{"n":2}',
        "prev_hash": bytes(32),
    }
    for field, value in changes.items():
        assert attrs.evolve(entry, **{field: value}).computed_hash() != base, field


def test_edited_entry_is_reported_at_its_index() -> None:
    """Changing details without fixing the hash is found at that entry."""
    entries, checkpoints = build(12)
    entries[7] = attrs.evolve(entries[7], details_json='{"reason":"none"}')
    report = verify_chain(entries, checkpoints, VERIFY)
    assert (report.problem, report.first_bad_index) == (Problem.EDITED, 7)
    with pytest.raises(AuditChainBroken, match="entry 7"):
        report.raise_if_broken()


def test_edited_and_rehashed_entry_is_reported_at_its_index() -> None:
    """Re-hashing only the edited entry breaks its successor's link: still index 7."""
    entries, checkpoints = build(12)
    entries[7] = rehash(attrs.evolve(entries[7], actor="admin:mallory"))
    report = verify_chain(entries, checkpoints, VERIFY)
    assert (report.problem, report.first_bad_index) == (Problem.LINK_BROKEN, 7)


def test_deleted_entry_is_reported_at_its_index() -> None:
    """Removing entry 6 is found at index 6."""
    entries, checkpoints = build(12)
    del entries[6]
    report = verify_chain(entries, checkpoints, VERIFY)
    assert (report.problem, report.first_bad_index) == (Problem.DELETED, 6)


def test_reordered_entries_are_reported_at_the_first_moved_index() -> None:
    """Swapping entries 3 and 8 is found at index 3."""
    entries, checkpoints = build(12)
    entries[3], entries[8] = entries[8], entries[3]
    report = verify_chain(entries, checkpoints, VERIFY)
    assert (report.problem, report.first_bad_index) == (Problem.REORDERED, 3)


def test_duplicated_entry_is_reported_as_reordered() -> None:
    """Replaying entry 2 after itself is found at index 3."""
    entries, checkpoints = build(12)
    entries.insert(3, entries[2])
    report = verify_chain(entries, checkpoints, VERIFY)
    assert (report.problem, report.first_bad_index) == (Problem.REORDERED, 3)


def test_truncation_is_reported_against_the_latest_checkpoint() -> None:
    """Dropping the last 4 entries is found at the first missing index."""
    entries, checkpoints = build(12)
    report = verify_chain(entries[:8], checkpoints, VERIFY)
    assert (report.problem, report.first_bad_index) == (Problem.TRUNCATED, 8)


def test_truncation_with_checkpoints_dropped_is_caught_by_the_saved_checkpoint() -> None:
    """An attacker who also drops the newer checkpoints is caught by a copy kept elsewhere."""
    entries, checkpoints = build(12)
    kept = [c for c in checkpoints if c.index < 8]
    assert verify_chain(entries[:8], kept, VERIFY).ok  # the inherent limit without a copy
    report = verify_chain(entries[:8], kept, VERIFY, saved_checkpoint=checkpoints[-1])
    assert (report.problem, report.first_bad_index) == (Problem.TRUNCATED, 8)


def _rechain_from(entries: list[AuditEntry], k: int) -> list[AuditEntry]:
    """Edit entry k and recompute every hash from there on (a full re-chain)."""
    out = entries[:k]
    prev = entries[k - 1].entry_hash if k else GENESIS_HASH
    for i, entry in enumerate(entries[k:], start=k):
        changed = attrs.evolve(entry, target="node:forged") if i == k else entry
        out.append(rehash(changed, prev))
        prev = out[-1].entry_hash
    return out


def test_full_rechain_is_detected_against_the_stored_checkpoints() -> None:
    """Hashes are consistent again, but the signed head at the next checkpoint differs."""
    entries, checkpoints = build(12)
    forged = _rechain_from(entries, 7)
    report = verify_chain(forged, checkpoints, VERIFY)
    assert (report.problem, report.first_bad_index) == (Problem.RECHAINED, 5)
    assert "entries 5..9 were rewritten" in report.message


def test_full_rechain_with_checkpoints_deleted_is_detected_against_a_saved_checkpoint() -> None:
    """Re-chaining the whole log and deleting every checkpoint still fails the saved one."""
    entries, checkpoints = build(12)
    forged = _rechain_from(entries, 0)
    assert verify_chain(forged, [], VERIFY).ok  # nothing to compare against: the saved copy
    report = verify_chain(forged, [], VERIFY, saved_checkpoint=checkpoints[1])
    assert (report.problem, report.first_bad_index) == (Problem.RECHAINED, 0)


def test_forged_checkpoint_signature_is_detected() -> None:
    """A checkpoint signed by another key, or with a moved head, fails its signature."""
    entries, checkpoints = build(12)
    forged = _rechain_from(entries, 7)
    by_other = [
        Checkpoint.sign(OTHER_KEY, c.index, forged[c.index].entry_hash, c.time)
        if c.index >= 7
        else c
        for c in checkpoints
    ]
    report = verify_chain(forged, by_other, VERIFY)
    assert (report.problem, report.first_bad_index) == (Problem.CHECKPOINT_FORGED, 5)
    moved = [attrs.evolve(c, head_hash=forged[c.index].entry_hash) for c in checkpoints]
    report = verify_chain(forged, moved, VERIFY)
    assert report.problem is Problem.CHECKPOINT_FORGED


def test_missing_checkpoints_over_1000_entries_are_detected() -> None:
    """A legitimate writer never leaves 1000+ entries unsigned, so that gap is tampering."""
    entries, checkpoints = build(1003, every=MAX_ENTRIES_PER_CHECKPOINT)
    assert verify_chain(entries, checkpoints, VERIFY).ok
    report = verify_chain(entries, checkpoints[1:], VERIFY)
    assert (report.problem, report.first_bad_index) == (Problem.CHECKPOINT_MISSING, 0)


def test_checkpoint_falls_due_at_1000_entries_and_entry_1001_waits_for_it() -> None:
    """The 1000th unsigned entry makes a checkpoint due; the 1001st is refused until signed."""
    chain = AuditChain()
    for i in range(MAX_ENTRIES_PER_CHECKPOINT):
        result = chain.append(now=T0, actor="a", action="x.done", target=f"t{i}")
        assert result.checkpoint_due is (i == MAX_ENTRIES_PER_CHECKPOINT - 1)
    with pytest.raises(CheckpointOverdue):
        chain.append(now=T0, actor="a", action="x.done", target="t")
    assert chain.next_index == MAX_ENTRIES_PER_CHECKPOINT
    cp = chain.checkpoint(AUDIT_KEY, T0)
    assert (cp.index, cp.head_hash) == (999, chain.head_hash)
    assert chain.append(now=T0, actor="a", action="x.done", target="t").entry.index == 1000


def test_checkpoint_falls_due_60_seconds_after_the_oldest_unsigned_entry() -> None:
    """deadline() is 60 s after the first unsigned entry; due at it, not a microsecond before."""
    chain = AuditChain()
    assert chain.deadline() is None
    chain.append(now=T0, actor="a", action="x.done", target="t")
    chain.append(now=T0 + timedelta(seconds=30), actor="a", action="x.done", target="t")
    assert chain.deadline() == T0 + timedelta(seconds=60)
    assert not chain.checkpoint_due(T0 + timedelta(seconds=60) - timedelta(microseconds=1))
    assert chain.checkpoint_due(T0 + timedelta(seconds=60))
    chain.checkpoint(AUDIT_KEY, T0 + timedelta(seconds=60))
    assert chain.deadline() is None
    assert not chain.checkpoint_due(T0 + timedelta(hours=1))


def test_append_with_a_signer_checkpoints_when_due() -> None:
    """Passing the audit key makes append sign the checkpoint itself."""
    chain = AuditChain()
    first = chain.append(now=T0, actor="a", action="x.done", target="t", signer=AUDIT_KEY)
    assert first.checkpoint is None
    late = chain.append(
        now=T0 + timedelta(seconds=61), actor="a", action="x.done", target="t", signer=AUDIT_KEY
    )
    assert late.checkpoint is not None
    assert late.checkpoint.index == 1
    late.checkpoint.verify(VERIFY)
    assert chain.unsigned_entries == 0


def test_resumed_chain_continues_and_checkpoints_an_unsigned_tail_at_once() -> None:
    """After a restart the next entry links to the stored head; an unsigned tail is due."""
    entries, checkpoints = build(7, every=5)
    chain = AuditChain.resume(entries[-1], checkpoints[0])
    assert chain.checkpoint_due(T0)
    entries.append(chain.append(now=T0, actor="a", action="x.done", target="t").entry)
    checkpoints.append(chain.checkpoint(AUDIT_KEY, T0))
    assert verify_chain(entries, checkpoints, VERIFY).ok
    with pytest.raises(LocalProtocolError):
        AuditChain.resume(entries[2], checkpoints[0])


@pytest.mark.parametrize(
    "details",
    [
        {"password": "hunter2"},
        {"Join-Token": "abc"},
        {"node": {"private_key": "x"}},
        {"headers": [{"Authorization": "Bearer x"}]},
        {"passphrase_file_content": "x"},
        {"note": "rnsk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
        {"list": ["ok", "rnjoin1_secret"]},
        {"claims": "v4.public.eyJleHAiOiIy"},
        {"key": "rnk_0123456789abcdef"},
    ],
)
def test_secrets_are_refused_in_details(details: dict[str, object]) -> None:
    """Fields named like secrets, and values carrying secret markers, are refused."""
    chain = AuditChain()
    with pytest.raises(SecretInAuditDetails):
        # Wrong type on purpose, hence the ignore below.
        chain.append(now=T0, actor="a", action="x.done", target="t", details=details)  # type: ignore[arg-type]
    assert chain.next_index == 0


def test_secret_identifiers_may_be_audited_but_not_secrets_in_other_fields() -> None:
    """`token_id` and `key_fingerprint` are identifiers; a marker in the target is refused."""
    chain = AuditChain()
    entry = chain.append(
        now=T0,
        actor="admin:alice",
        action="join_token.revoked",
        target="token:123",
        details={"token_id": "jt_123", "key_fingerprint": "rnfp_x", "token_ids": ["a"]},
    ).entry
    assert entry.details["token_id"] == "jt_123"
    with pytest.raises(SecretInAuditDetails):
        chain.append(now=T0, actor="a", action="x.done", target="rntsk_x25519_AAAA")


@pytest.mark.parametrize("bad", [{"ratio": 0.5}, {"n": 2**64}, {"b": b"x"}, {1: "x"}])
def test_non_canonical_details_are_refused(bad: dict[object, object]) -> None:
    """Floats, huge ints, bytes and non-string keys have no single canonical encoding."""
    with pytest.raises(LocalProtocolError):
        # Wrong type on purpose, hence the ignore below.
        AuditChain().append(now=T0, actor="a", action="x.done", target="t", details=bad)  # type: ignore[arg-type]


def test_naive_time_is_refused() -> None:
    """Audit times are timezone-aware."""
    with pytest.raises(LocalProtocolError):
        # A naive time on purpose, hence the ignore below.
        AuditChain().append(now=datetime(2025, 1, 1), actor="a", action="b", target="c")  # noqa: DTZ001


def test_records_round_trip_through_json_and_still_verify() -> None:
    """Storage form: to_record → JSON → from_record gives equal values that verify."""
    entries, checkpoints = build(6)
    stored_e = json.loads(json.dumps([e.to_record() for e in entries]))
    stored_c = json.loads(json.dumps([c.to_record() for c in checkpoints]))
    loaded_e = [AuditEntry.from_record(r) for r in stored_e]
    loaded_c = [Checkpoint.from_record(r) for r in stored_c]
    assert loaded_e == entries
    assert loaded_c == checkpoints
    assert verify_chain(loaded_e, loaded_c, VERIFY).ok
    bad = dict(stored_e[0], extra=1)
    with pytest.raises(AuditRecordError):
        AuditEntry.from_record(bad)
    with pytest.raises(AuditRecordError):
        AuditEntry.from_record(dict(stored_e[0], prev_hash="zz" * 32))


def test_compute_entry_hash_matches_the_chain_writer() -> None:
    """The public hash function is the one the writer uses."""
    entry = build(1)[0][0]
    assert entry.entry_hash == compute_entry_hash(
        index=0,
        time=entry.time,
        actor=entry.actor,
        action=entry.action,
        target=entry.target,
        details_json=entry.details_json,
        prev_hash=GENESIS_HASH,
    )


def test_entry_and_checkpoint_byte_formats_are_pinned() -> None:
    """The hashed and signed bytes never change: stored logs from older builds still verify."""
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    entry_hash = compute_entry_hash(
        index=7,
        time=when,
        actor="node:é",
        action="key.rotated",
        target="n1",
        details_json='{"a":[1,true,null],"z":"ü"}',
        prev_hash=bytes(range(32)),
    )
    assert entry_hash.hex() == "5df284410e1531d5cd8450c68638fffe93fa1b69a802f6c744ac72c5d97597c7"
    assert Checkpoint.message(7, bytes(range(32)), when) == (
        b'rustynet:audit-checkpoint:v1\x00{"head":"000102030405060708090a0b0c0d0e0f101112131415'
        b'161718191a1b1c1d1e1f","index":7,"time":"2026-01-02T03:04:05.678901+00:00","v":1}'
    )
    entry = (
        AuditChain()
        .append(
            now=when,
            actor="a",
            action="x.done",
            target="t",
            details={"z": "ü", "a": [1, (2, 3), {"k": None}], "n": -(2**63)},
        )
        .entry
    )
    assert entry.details_json == '{"a":[1,[2,3],{"k":null}],"n":-9223372036854775808,"z":"ü"}'
    assert entry.entry_hash.hex() == (
        "f07f2867c4c0e4451502f13b22c07adc08c9e94bbc8c8321b14f9faf0ff7a927"
    )
