"""Audit chain: an append-only, hash-chained log with signed checkpoints, and its verifier.

The one rule: an entry is never changed once written, and any change to the stored log (an
edit, a deletion, a reorder, a truncation, or a complete re-chaining by someone who recomputed
every hash) is found by `verify_chain`, which reports the FIRST index it can no longer vouch for.

Theory of operation. Entry *i* records its index, time, actor, action, target and details, the
hash of entry *i-1* (`prev_hash`; 32 zero bytes for entry 0) and its own `entry_hash` =
SHA-256 over a domain tag and the canonical JSON of all those fields (`signed.canonical_json`:
sorted keys, compact separators, UTF-8, integers only; the byte format is pinned by a known-answer
test so it never changes behind the audit log's back). The hash chain alone catches edits,
deletions and reorders, but someone with write access can recompute every hash. Checkpoints stop
that: every ≤ 1000 entries and ≤ 60 s after the oldest unsigned entry, the audit key signs
(index, head hash, time) with `Purpose.AUDIT_CHECKPOINT`. A re-chained log no longer matches the
signed head at a checkpoint, and the attacker cannot sign a new one; a checkpoint saved elsewhere
(`saved_checkpoint`) catches a re-chain that also deleted the stored checkpoints. Entries after
the last checkpoint are protected by the chain only; the cadence bounds that window.

`AuditChain` is the writer. `append(...)` refuses details that look like secrets
(`SecretInAuditDetails`), returns the entry and whether a checkpoint is due; the driver then
calls `checkpoint(key, now)` (or passes `signer=` to `append` so it happens at once), and
sleeps until `deadline()` to sign the time-based checkpoint. The 1001st unsigned entry is
refused: the driver must checkpoint first.

The package:

    redaction.py  what counts as a secret (`SECRET_MARKERS`, `is_secret_name`), refused in details
    records.py    `AuditEntry` and its chained hash, the signed `Checkpoint`, their record forms
    chain.py      `AuditChain`, the writer, and its checkpoint cadence
    verify.py     `verify_chain` and the `ChainReport` naming the first bad index

This module is the package's public face: import from `rustynet.domain.audit`.
"""

from __future__ import annotations

from rustynet.domain.audit.chain import (
    MAX_CHECKPOINT_INTERVAL,
    MAX_ENTRIES_PER_CHECKPOINT,
    Appended,
    AuditChain,
    CheckpointOverdue,
)
from rustynet.domain.audit.records import (
    GENESIS_HASH,
    HASH_SIZE,
    AuditEntry,
    AuditRecordError,
    Checkpoint,
    compute_entry_hash,
)
from rustynet.domain.audit.redaction import (
    SECRET_MARKERS,
    SECRET_NAME_WORDS,
    SecretInAuditDetails,
    contains_secret_marker,
    is_secret_name,
)
from rustynet.domain.audit.verify import (
    AuditChainBroken,
    ChainReport,
    ChainVerifier,
    Problem,
    verify_chain,
)

__all__ = [
    "GENESIS_HASH",
    "HASH_SIZE",
    "MAX_CHECKPOINT_INTERVAL",
    "MAX_ENTRIES_PER_CHECKPOINT",
    "SECRET_MARKERS",
    "SECRET_NAME_WORDS",
    "Appended",
    "AuditChain",
    "AuditChainBroken",
    "AuditEntry",
    "AuditRecordError",
    "ChainReport",
    "ChainVerifier",
    "Checkpoint",
    "CheckpointOverdue",
    "Problem",
    "SecretInAuditDetails",
    "compute_entry_hash",
    "contains_secret_marker",
    "is_secret_name",
    "verify_chain",
]
