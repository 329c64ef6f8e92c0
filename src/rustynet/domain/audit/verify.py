"""The verifier: `verify_chain` walks the stored log and its checkpoints and reports the first
index it can no longer vouch for (`ChainReport`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

from rustynet.domain.audit.chain import (
    MAX_ENTRIES_PER_CHECKPOINT,
)
from rustynet.domain.audit.records import (
    GENESIS_HASH,
    AuditEntry,
    Checkpoint,
)
from rustynet.domain.errors import InvalidSignature, LocalProtocolError
from rustynet.domain.keys import (
    VerifyKey,
    constant_time_equal,
)


class Problem(enum.Enum):
    """What `verify_chain` found first."""

    EDITED = "edited"  # an entry's content no longer matches its own hash
    LINK_BROKEN = "link-broken"  # an entry does not match the hash its successor recorded
    DELETED = "deleted"  # an index is missing
    REORDERED = "reordered"  # an entry is out of place or duplicated
    TRUNCATED = "truncated"  # a checkpoint covers entries that are gone
    RECHAINED = "rechained"  # hashes are consistent but a signed head differs
    CHECKPOINT_FORGED = "checkpoint-forged"  # a checkpoint signature does not verify
    CHECKPOINT_MISSING = "checkpoint-missing"  # more than 1000 entries without a checkpoint


@attrs.frozen
class ChainReport:
    """Outcome of `verify_chain`. `first_bad_index` is the first entry it cannot vouch for."""

    entries_checked: int
    checkpoints_verified: int
    problem: Problem | None = None
    first_bad_index: int | None = None
    message: str = "audit chain verified"

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return self.problem is None

    def raise_if_broken(self) -> None:
        """Raise `AuditChainBroken` carrying this report unless the chain verified."""
        if self.problem is not None:
            raise AuditChainBroken(self)


class AuditChainBroken(InvalidSignature):
    """The stored audit log was tampered with; `report` says where."""

    def __init__(self, report: ChainReport) -> None:
        self.report = report
        super().__init__(report.message)


class ChainVerifier:
    """One verification pass, walking the entries in order (subclassed only by tests)."""

    def __init__(
        self,
        entries: Sequence[AuditEntry],
        checkpoints: Sequence[Checkpoint],
        key: VerifyKey,
        saved_checkpoint: Checkpoint | None,
    ) -> None:
        self.entries = list(entries)
        all_checkpoints = list(checkpoints)
        if saved_checkpoint is not None:
            all_checkpoints.append(saved_checkpoint)
        self.checkpoints = sorted(all_checkpoints, key=lambda c: c.index)
        self.key = key
        self.verified = 0
        self.vouched_up_to = -1  # highest index a matching, verified checkpoint vouches for

    def fail(self, problem: Problem, index: int, message: str) -> ChainReport:
        return ChainReport(len(self.entries), self.verified, problem, index, message)

    def link_ok(self, entry: AuditEntry, expected_prev: bytes) -> bool:
        return constant_time_equal(entry.prev_hash, expected_prev)

    def hash_ok(self, entry: AuditEntry) -> bool:
        return constant_time_equal(entry.computed_hash(), entry.entry_hash)

    def checkpoint_failure(self, cp: Checkpoint) -> ChainReport | None:
        start = self.vouched_up_to + 1
        try:
            cp.verify(self.key)
        except InvalidSignature:
            return self.fail(
                Problem.CHECKPOINT_FORGED,
                start,
                f"checkpoint at index {cp.index} has an invalid signature: entries from "
                f"{start} on cannot be vouched for",
            )
        self.verified += 1
        if cp.index >= len(self.entries):
            return self.fail(
                Problem.TRUNCATED,
                len(self.entries),
                f"a signed checkpoint covers index {cp.index} but the log ends at "
                f"{len(self.entries) - 1}: entries from {len(self.entries)} were removed",
            )
        if not constant_time_equal(cp.head_hash, self.entries[cp.index].entry_hash):
            return self.fail(
                Problem.RECHAINED,
                start,
                f"entry {cp.index} does not match the signed checkpoint: entries "
                f"{start}..{cp.index} were rewritten and re-chained",
            )
        self.vouched_up_to = cp.index
        return None

    def position_failure(
        self, i: int, entry: AuditEntry, expected_prev: bytes
    ) -> ChainReport | None:
        if entry.index != i:
            later = any(e.index == i for e in self.entries[i + 1 :])
            if entry.index > i and not later:
                return self.fail(
                    Problem.DELETED, i, f"entry {i} is missing (found {entry.index} in its place)"
                )
            return self.fail(Problem.REORDERED, i, f"entry {entry.index} is stored at position {i}")
        if not self.hash_ok(entry):
            return self.fail(Problem.EDITED, i, f"entry {i} does not match its hash: edited")
        if not self.link_ok(entry, expected_prev):
            # The entry before was changed and re-hashed, unless a checkpoint vouches for it.
            bad = i if self.vouched_up_to >= i - 1 else i - 1
            return self.fail(
                Problem.LINK_BROKEN,
                bad,
                f"entry {i} does not link to entry {i - 1}: entry {bad} was changed",
            )
        return None

    def run(self) -> ChainReport:
        pending = iter(self.checkpoints)
        cp = next(pending, None)
        expected_prev = GENESIS_HASH
        last_cp_index = -1
        for i, entry in enumerate(self.entries):
            failure = self.position_failure(i, entry, expected_prev)
            if failure is not None:
                return failure
            while cp is not None and cp.index == i:
                failure = self.checkpoint_failure(cp)
                if failure is not None:
                    return failure
                last_cp_index = i
                cp = next(pending, None)
            if i - last_cp_index > MAX_ENTRIES_PER_CHECKPOINT:
                start = self.vouched_up_to + 1
                return self.fail(
                    Problem.CHECKPOINT_MISSING,
                    start,
                    f"more than {MAX_ENTRIES_PER_CHECKPOINT} entries after index "
                    f"{last_cp_index} without a checkpoint: checkpoints were deleted",
                )
            expected_prev = entry.entry_hash
        while cp is not None:
            failure = self.checkpoint_failure(cp)
            if failure is not None:  # pragma: no branch - a checkpoint past the end always fails
                return failure
            cp = next(pending, None)
        return ChainReport(len(self.entries), self.verified)


def verify_chain(
    entries: Sequence[AuditEntry],
    checkpoints: Sequence[Checkpoint],
    audit_verify_key: VerifyKey,
    saved_checkpoint: Checkpoint | None = None,
) -> ChainReport:
    """Verify the stored log; the report names the first index that cannot be vouched for.

    Checks, in entry order: each entry sits at its own index, matches its own hash and links to
    its predecessor; each checkpoint (and the `saved_checkpoint` kept elsewhere) verifies under
    the audit key and matches the entry at its index; no checkpoint points past the end; no run
    of more than 1000 entries lacks a checkpoint. Call `raise_if_broken()` to turn a finding
    into `AuditChainBroken`.
    """
    if not isinstance(audit_verify_key, VerifyKey):
        raise LocalProtocolError("verify_chain needs the audit VerifyKey")
    return ChainVerifier(entries, checkpoints, audit_verify_key, saved_checkpoint).run()
