"""Property: for any chain and any single tampering, verify_chain names the first bad index.

Chains have random length and random checkpoint positions (always one at the end, as the
writer's cadence guarantees in steady state). Each tampering operation has a known answer:

- edit an entry without fixing its hash → EDITED at that entry;
- edit and re-hash one entry → LINK_BROKEN at that entry (its successor disagrees), or, when a
  checkpoint sits on it, RECHAINED from the first index no earlier checkpoint vouches for;
- delete, swap, duplicate → DELETED / REORDERED at the first displaced position;
- truncate → TRUNCATED at the first missing index;
- re-chain everything from an entry on → RECHAINED from the first unvouched index.

A verifier that skips the prev-hash link (BrokenLinkVerifier) must fail this property.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import attrs
from hypothesis import given
from hypothesis import strategies as st

from rustynet.domain.audit import (
    GENESIS_HASH,
    AuditChain,
    AuditEntry,
    ChainReport,
    ChainVerifier,
    Checkpoint,
    Problem,
    verify_chain,
)
from rustynet.domain.keys import SigningKey, VerifyKey
from tests.property.broken import assert_property_catches, broken_settings

T0 = datetime(2025, 5, 1, tzinfo=UTC)
KEY = SigningKey.from_seed(bytes(range(32)))

Case = tuple[list[AuditEntry], list[Checkpoint], Problem, int]


def _chain(n: int, checkpoint_at: set[int]) -> tuple[list[AuditEntry], list[Checkpoint]]:
    chain = AuditChain()
    entries: list[AuditEntry] = []
    checkpoints: list[Checkpoint] = []
    for i in range(n):
        now = T0 + timedelta(seconds=i)
        entries.append(
            chain.append(
                now=now, actor=f"admin:{i % 3}", action="acl.changed", target=f"node:{i}"
            ).entry
        )
        if i in checkpoint_at:
            checkpoints.append(chain.checkpoint(KEY, now))
    return entries, checkpoints


def _rehash(entry: AuditEntry, prev: bytes) -> AuditEntry:
    moved = attrs.evolve(entry, prev_hash=prev)
    return attrs.evolve(moved, entry_hash=moved.computed_hash())


def _first_unvouched(checkpoint_at: set[int], k: int) -> int:
    return max((c for c in checkpoint_at if c < k), default=-1) + 1


@st.composite
def tampered_chains(draw: st.DrawFn) -> Case:
    n = draw(st.integers(min_value=2, max_value=24))
    checkpoint_at = draw(st.sets(st.integers(0, n - 1))) | {n - 1}
    entries, checkpoints = _chain(n, checkpoint_at)
    op = draw(
        st.sampled_from(["edit", "edit_rehash", "delete", "swap", "dup", "truncate", "rechain"])
    )
    k = draw(st.integers(0, n - 1))
    forged_target = "node:forged"
    if op == "edit":
        entries[k] = attrs.evolve(entries[k], target=forged_target)
        return entries, checkpoints, Problem.EDITED, k
    if op == "edit_rehash":
        entries[k] = _rehash(attrs.evolve(entries[k], target=forged_target), entries[k].prev_hash)
        if k in checkpoint_at:
            return entries, checkpoints, Problem.RECHAINED, _first_unvouched(checkpoint_at, k)
        return entries, checkpoints, Problem.LINK_BROKEN, k
    if op == "delete":
        k = min(k, n - 2)  # deleting the last entry is a truncation
        del entries[k]
        return entries, checkpoints, Problem.DELETED, k
    if op == "swap":
        j = draw(st.integers(0, n - 1).filter(lambda j: j != k))
        lo, hi = sorted((j, k))
        entries[lo], entries[hi] = entries[hi], entries[lo]
        return entries, checkpoints, Problem.REORDERED, lo
    if op == "dup":
        entries.insert(k + 1, entries[k])
        return entries, checkpoints, Problem.REORDERED, k + 1
    if op == "truncate":
        return entries[:k], checkpoints, Problem.TRUNCATED, k
    # rechain: edit entry k and recompute every later hash, as an attacker with write access can
    prev = entries[k - 1].entry_hash if k else GENESIS_HASH
    for i in range(k, n):
        entry = attrs.evolve(entries[i], target=forged_target) if i == k else entries[i]
        entries[i] = _rehash(entry, prev)
        prev = entries[i].entry_hash
    return entries, checkpoints, Problem.RECHAINED, _first_unvouched(checkpoint_at, k)


Verify = Callable[[list[AuditEntry], list[Checkpoint], VerifyKey], ChainReport]


def _real(entries: list[AuditEntry], checkpoints: list[Checkpoint], key: VerifyKey) -> ChainReport:
    return verify_chain(entries, checkpoints, key)


class BrokenLinkVerifier(ChainVerifier):
    """Deliberately broken: trusts every prev-hash link."""

    def link_ok(self, entry: AuditEntry, expected_prev: bytes) -> bool:
        return True


def _broken(
    entries: list[AuditEntry], checkpoints: list[Checkpoint], key: VerifyKey
) -> ChainReport:
    return BrokenLinkVerifier(entries, checkpoints, key, None).run()


def _check(verify: Verify, case: Case) -> None:
    entries, checkpoints, problem, index = case
    report = verify(entries, checkpoints, KEY.public_key)
    assert (report.problem, report.first_bad_index) == (problem, index), report.message


@given(tampered_chains())
def test_verifier_reports_exactly_the_first_tampered_index(case: Case) -> None:
    """Every single tampering is found, with the right kind and the right first index."""
    _check(_real, case)


@given(st.integers(1, 30), st.sets(st.integers(0, 29)))
def test_untampered_chains_always_verify(n: int, extra: set[int]) -> None:
    """No false alarms: any chain the writer produced verifies."""
    entries, checkpoints = _chain(n, {c for c in extra if c < n} | {n - 1})
    report = verify_chain(entries, checkpoints, KEY.public_key)
    assert report.ok, report.message
    assert report.checkpoints_verified == len(checkpoints)


def test_property_catches_a_verifier_that_skips_the_prev_hash_link() -> None:
    """Negative control: the same property fails for BrokenLinkVerifier."""

    @broken_settings(max_examples=200)
    @given(tampered_chains())
    def run(case: Case) -> None:
        _check(_broken, case)

    assert_property_catches(run)
