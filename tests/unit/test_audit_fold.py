"""Audit folding: first failure at once, repeats counted into one summary, nothing lost."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from rustynet.domain.audit import AuditChain, AuditEntry, Problem, verify_chain
from rustynet.domain.audit_fold import OVERFLOW_REASON, AuditFolder, FoldKey
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.keys import SigningKey

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=60)
AUDIT_KEY = SigningKey.from_seed(bytes(range(32)))
KEY = FoldKey.of("node.auth_failed", "ip:198.51.100.7", "unknown-node", {"reason": "unknown"})


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_first_failure_is_written_at_once_and_repeats_are_folded() -> None:
    folder = AuditFolder(WINDOW)
    assert folder.observe(KEY, at(0)) == (KEY, [])
    for i in range(1, 50):
        assert folder.observe(KEY, at(i)) == (None, [])
    assert folder.pending() == 49
    assert len(folder) == 1


def test_summary_count_covers_the_whole_window_with_first_and_last_seen() -> None:
    folder = AuditFolder(WINDOW)
    for i in range(7):
        folder.observe(KEY, at(i * 5))
    assert folder.due(at(59)) == []  # still open
    (summary,) = folder.due(at(60))
    assert (summary.count, summary.first_seen, summary.last_seen) == (7, at(0), at(30))
    assert summary.details() == {
        "reason": "unknown",
        "count": 7,
        "first_seen": "2025-05-01T12:00:00.000000+00:00",
        "last_seen": "2025-05-01T12:00:30.000000+00:00",
        "window_seconds": 60,
    }
    assert len(folder) == 0


def test_a_failure_after_the_window_flushes_it_and_is_written_at_once() -> None:
    folder = AuditFolder(WINDOW)
    folder.observe(KEY, at(0))
    folder.observe(KEY, at(1))
    first, flushed = folder.observe(KEY, at(61))
    assert first == KEY
    assert [s.count for s in flushed] == [2]


def test_a_window_with_one_failure_adds_no_summary() -> None:
    folder = AuditFolder(WINDOW)
    folder.observe(KEY, at(0))
    assert folder.due(at(120)) == []
    assert folder.drain() == []


def test_drain_writes_every_open_window_so_no_count_is_lost() -> None:
    folder = AuditFolder(WINDOW)
    other = attrs.evolve(KEY, actor="ip:203.0.113.9")
    for i in range(5):
        folder.observe(KEY, at(i))
    for i in range(3):
        folder.observe(other, at(i))
    assert sorted(s.count for s in folder.drain()) == [3, 5]
    assert len(folder) == 0


def test_different_sources_reasons_or_targets_are_different_keys() -> None:
    folder = AuditFolder(WINDOW)
    keys = [
        KEY,
        attrs.evolve(KEY, actor="ip:203.0.113.9"),
        attrs.evolve(KEY, target="node_abc"),
        FoldKey.of("node.auth_failed", "ip:198.51.100.7", "unknown-node", {"reason": "expired"}),
    ]
    assert [folder.observe(k, at(0))[0] for k in keys] == keys


def test_a_full_table_folds_new_keys_into_the_overflow_key_and_still_counts_them() -> None:
    folder = AuditFolder(WINDOW, max_keys=2)
    folder.observe(attrs.evolve(KEY, actor="ip:a"), at(0))
    folder.observe(attrs.evolve(KEY, actor="ip:b"), at(0))
    written = [folder.observe(attrs.evolve(KEY, actor=f"ip:{i}"), at(1))[0] for i in range(100)]
    overflow = KEY.overflow()
    assert written[0] == overflow
    assert written[1:] == [None] * 99
    assert len(folder) == 3  # bounded: max_keys + one overflow slot per action
    summaries = {s.key: s for s in folder.drain()}
    assert summaries[overflow].count == 100
    assert summaries[overflow].details()["reason"] == OVERFLOW_REASON


def test_a_full_table_makes_room_from_closed_windows_first() -> None:
    folder = AuditFolder(WINDOW, max_keys=1)
    folder.observe(KEY, at(0))
    folder.observe(KEY, at(1))
    other = attrs.evolve(KEY, actor="ip:203.0.113.9")
    first, flushed = folder.observe(other, at(60))
    assert first == other
    assert [s.count for s in flushed] == [2]


def test_restored_summaries_are_written_by_a_later_flush() -> None:
    folder = AuditFolder(WINDOW)
    for i in range(4):
        folder.observe(KEY, at(i))
    lost = folder.drain()
    folder.restore(lost)  # the unit of work that was to write them rolled back
    assert [s.count for s in folder.drain()] == [4]


def test_details_may_not_use_the_summary_field_names() -> None:
    with pytest.raises(LocalProtocolError):
        FoldKey.of("a", "b", "c", {"count": 3})


def test_bad_window_and_naive_times_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        AuditFolder(timedelta(0))
    with pytest.raises(LocalProtocolError):
        AuditFolder(max_keys=0)
    with pytest.raises(LocalProtocolError):
        AuditFolder().observe(KEY, datetime(2025, 5, 1))  # noqa: DTZ001 - the refused case


def _append(chain: AuditChain, when: datetime, key: FoldKey, details: object) -> AuditEntry:
    assert isinstance(details, dict)
    return chain.append(
        now=when, actor=key.actor, action=key.action, target=key.target, details=details
    ).entry


def _chain_with_summary() -> tuple[list[AuditEntry], AuditChain]:
    """30 identical failures through a folder into a chain: the first entry and one summary."""
    folder = AuditFolder(WINDOW)
    chain = AuditChain()
    entries: list[AuditEntry] = []
    for i in range(30):
        first, flushed = folder.observe(KEY, at(i))
        assert flushed == []
        if first is not None:
            entries.append(_append(chain, at(i), first, json.loads(first.details_json)))
    entries.extend(_append(chain, at(31), s.key, s.details()) for s in folder.drain())
    return entries, chain


def test_a_chain_with_folded_entries_verifies_and_a_changed_count_is_caught() -> None:
    entries, chain = _chain_with_summary()
    assert len(entries) == 2
    assert entries[1].details["count"] == 30
    checkpoint = chain.checkpoint(AUDIT_KEY, at(32))
    assert verify_chain(entries, [checkpoint], AUDIT_KEY.public_key).ok
    forged = dict(entries[1].details, count=3)
    edited = attrs.evolve(
        entries[1], details_json=json.dumps(forged, sort_keys=True, separators=(",", ":"))
    )
    report = verify_chain([entries[0], edited], [checkpoint], AUDIT_KEY.public_key)
    assert (report.problem, report.first_bad_index) == (Problem.EDITED, 1)
