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
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs

from rustynet.domain.errors import DecodeError, InvalidSignature, LocalProtocolError
from rustynet.domain.keys import (
    Purpose,
    SigningKey,
    VerifyKey,
    b64decode,
    b64encode,
    constant_time_equal,
)
from rustynet.domain.signed import INT_MAX, JsonObject, JsonValue, canonical_json

HASH_SIZE: Final = 32
GENESIS_HASH: Final = bytes(HASH_SIZE)
MAX_ENTRIES_PER_CHECKPOINT: Final = 1000
MAX_CHECKPOINT_INTERVAL: Final = timedelta(seconds=60)
_ENTRY_TAG: Final = b"rustynet:audit-entry:v1\x00"
_CHECKPOINT_TAG: Final = b"rustynet:audit-checkpoint:v1\x00"

# Text that marks a Rustynet secret wherever it appears: signing and tunnel private keys, join
# tokens, PASETO tokens, admin API keys, OS-keyring entries. The logging redactor uses this list.
SECRET_MARKERS: Final = (
    "rnsk_",
    "rntsk_",
    "rnjoin1_",
    "v4.public.",
    "v4.local.",
    "rnk_",
    "rnks1:",
)
# Field names (lower-cased, without "_" and "-", matched as substrings) that hold secrets.
SECRET_NAME_WORDS: Final = (
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "authorization",
    "apikey",
    "privatekey",
    "keymaterial",
    "seed",
    "cookie",
)
# Identifiers of secrets are not secrets: `token_id`, `key_fingerprint` may be audited.
_IDENTIFIER: Final = re.compile(r".*[_-](id|ids|fingerprint)")


def is_secret_name(name: str) -> bool:
    """True when a field called `name` would hold a secret (case-insensitive substring)."""
    folded = re.sub(r"[-_\s]", "", name.casefold())
    return any(word in folded for word in SECRET_NAME_WORDS)


def contains_secret_marker(text: str) -> bool:
    """True when `text` contains one of our secret markers anywhere."""
    return any(marker in text for marker in SECRET_MARKERS)


class SecretInAuditDetails(LocalProtocolError):  # noqa: N818 - names the refusal
    """Details handed to the audit log carry (or are named like) a secret."""


class CheckpointOverdue(LocalProtocolError):  # noqa: N818 - names the refusal
    """1000 entries are unsigned: the driver must sign a checkpoint before appending more."""


class AuditRecordError(DecodeError):
    """A stored entry or checkpoint record is malformed."""


def _refuse_secrets(value: object, path: str) -> None:
    if isinstance(value, str):
        if contains_secret_marker(value):
            raise SecretInAuditDetails(f"{path}: looks like a secret; audit identifiers only")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            name = str(key)
            if is_secret_name(name) and not _IDENTIFIER.fullmatch(name.casefold()):
                raise SecretInAuditDetails(
                    f"{path}.{key}: a field named like a secret may not be audited"
                )
            _refuse_secrets(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _refuse_secrets(item, f"{path}[{i}]")


def _utc(now: object) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise LocalProtocolError("audit times must be timezone-aware datetimes")
    return now.astimezone(UTC)


def _time_text(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_time(text: object, what: str) -> datetime:
    if not isinstance(text, str):
        raise AuditRecordError(f"{what}: time must be a string")
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise AuditRecordError(f"{what}: not an ISO 8601 time") from exc
    if when.utcoffset() is None:
        raise AuditRecordError(f"{what}: time without offset")
    return when.astimezone(UTC)


def _hash_bytes(_instance: object, attribute: attrs.Attribute[bytes], value: object) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise AuditRecordError(f"{attribute.name} must be {HASH_SIZE} bytes")


def _index(_instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or not 0 <= value <= INT_MAX:
        raise AuditRecordError(f"{attribute.name} must be a non-negative integer")


def _text(_instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise AuditRecordError(f"{attribute.name} must be a string")


def _aware(_instance: object, attribute: attrs.Attribute[datetime], value: object) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise AuditRecordError(f"{attribute.name} must be a timezone-aware datetime")


def _hex32(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * HASH_SIZE:
        raise AuditRecordError(f"{what}: expected 64 hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise AuditRecordError(f"{what}: expected 64 hex digits") from exc


def _strict_record(record: object, fields: set[str], what: str) -> Mapping[str, Any]:
    if not isinstance(record, Mapping) or set(record) != fields:
        raise AuditRecordError(f"{what}: expected exactly the fields {sorted(fields)}")
    return record


@attrs.frozen
class AuditEntry:
    """One audit record. `details_json` is the canonical JSON of the details (immutable)."""

    index: int = attrs.field(validator=_index)
    time: datetime = attrs.field(validator=_aware)
    actor: str = attrs.field(validator=_text)
    action: str = attrs.field(validator=_text)
    target: str = attrs.field(validator=_text)
    details_json: str = attrs.field(validator=_text)
    prev_hash: bytes = attrs.field(validator=_hash_bytes)
    entry_hash: bytes = attrs.field(validator=_hash_bytes)

    @property
    def details(self) -> dict[str, Any]:
        """A fresh copy of the details."""
        value = json.loads(self.details_json)
        if not isinstance(value, dict):
            raise AuditRecordError("details must be a JSON object")
        return value

    def computed_hash(self) -> bytes:
        """SHA-256 over the canonical encoding of every field except `entry_hash`."""
        return compute_entry_hash(
            index=self.index,
            time=self.time,
            actor=self.actor,
            action=self.action,
            target=self.target,
            details_json=self.details_json,
            prev_hash=self.prev_hash,
        )

    def to_record(self) -> dict[str, Any]:
        """Plain JSON-ready form for storage."""
        return {
            "index": self.index,
            "time": _time_text(self.time),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "details": self.details_json,
            "prev_hash": self.prev_hash.hex(),
            "entry_hash": self.entry_hash.hex(),
        }

    @classmethod
    def from_record(cls, record: object) -> AuditEntry:
        """Parse a stored record (shape only: integrity is `verify_chain`'s job)."""
        fields = {"index", "time", "actor", "action", "target", "details"}
        r = _strict_record(record, fields | {"prev_hash", "entry_hash"}, "audit entry")
        return cls(
            index=r["index"],
            time=_parse_time(r["time"], "audit entry"),
            actor=r["actor"],
            action=r["action"],
            target=r["target"],
            details_json=r["details"],
            prev_hash=_hex32(r["prev_hash"], "audit entry prev_hash"),
            entry_hash=_hex32(r["entry_hash"], "audit entry entry_hash"),
        )


def compute_entry_hash(
    *,
    index: int,
    time: datetime,
    actor: str,
    action: str,
    target: str,
    details_json: str,
    prev_hash: bytes,
) -> bytes:
    """The hash an entry with these fields must carry (chained through `prev_hash`)."""
    body: JsonObject = {
        "v": 1,
        "index": index,
        "time": _time_text(time),
        "actor": actor,
        "action": action,
        "target": target,
        "details": details_json,
        "prev": prev_hash.hex(),
    }
    return hashlib.sha256(_ENTRY_TAG + canonical_json(body)).digest()


@attrs.frozen
class Checkpoint:
    """The audit key's signature over (index of the last covered entry, its hash, time)."""

    index: int = attrs.field(validator=_index)
    head_hash: bytes = attrs.field(validator=_hash_bytes)
    time: datetime = attrs.field(validator=_aware)
    signature: bytes = attrs.field(validator=attrs.validators.instance_of(bytes), repr=False)

    @staticmethod
    def message(index: int, head_hash: bytes, time: datetime) -> bytes:
        """The signed bytes (the purpose context is added by `keys.py`)."""
        body: JsonObject = {
            "v": 1,
            "index": index,
            "head": head_hash.hex(),
            "time": _time_text(time),
        }
        return _CHECKPOINT_TAG + canonical_json(body)

    @classmethod
    def sign(cls, key: SigningKey, index: int, head_hash: bytes, now: datetime) -> Checkpoint:
        """Sign a checkpoint for entry `index` whose hash is `head_hash`."""
        when = _utc(now)
        signature = key.sign(Purpose.AUDIT_CHECKPOINT, cls.message(index, head_hash, when))
        return cls(index, head_hash, when, signature)

    def verify(self, key: VerifyKey) -> None:
        """Raise `InvalidSignature` unless the audit key signed exactly these fields."""
        key.verify(
            Purpose.AUDIT_CHECKPOINT,
            self.message(self.index, self.head_hash, self.time),
            self.signature,
        )

    def to_record(self) -> dict[str, Any]:
        """Plain JSON-ready form for storage."""
        return {
            "index": self.index,
            "head_hash": self.head_hash.hex(),
            "time": _time_text(self.time),
            "signature": b64encode(self.signature),
        }

    @classmethod
    def from_record(cls, record: object) -> Checkpoint:
        """Parse a stored record (shape only: the signature is checked by `verify`)."""
        r = _strict_record(record, {"index", "head_hash", "time", "signature"}, "checkpoint")
        signature = r["signature"]
        if not isinstance(signature, str):
            raise AuditRecordError("checkpoint signature must be base64url text")
        return cls(
            index=r["index"],
            head_hash=_hex32(r["head_hash"], "checkpoint head_hash"),
            time=_parse_time(r["time"], "checkpoint"),
            signature=b64decode(signature),
        )


@attrs.frozen
class Appended:
    """Result of `AuditChain.append`: the entry, and the checkpoint state after it."""

    entry: AuditEntry
    checkpoint_due: bool
    checkpoint: Checkpoint | None = None


class AuditChain:
    """The append-only writer. Holds the head and the checkpoint cadence; no I/O.

    Resume after a restart with `AuditChain.resume(last_entry, last_checkpoint)`; a stored
    tail that no checkpoint covers is reported as due at once.
    """

    def __init__(self) -> None:
        self._next_index = 0
        self._head_hash = GENESIS_HASH
        self._unsigned = 0
        self._oldest_unsigned: datetime | None = None
        self._last_checkpoint: Checkpoint | None = None

    @classmethod
    def resume(
        cls, last_entry: AuditEntry | None, last_checkpoint: Checkpoint | None
    ) -> AuditChain:
        """Continue a stored chain (verify it first with `verify_chain`)."""
        chain = cls()
        if last_entry is None:
            if last_checkpoint is not None:
                raise LocalProtocolError("a checkpoint without entries")
            return chain
        chain._next_index = last_entry.index + 1
        chain._head_hash = last_entry.entry_hash
        chain._last_checkpoint = last_checkpoint
        covered = -1 if last_checkpoint is None else last_checkpoint.index
        if covered > last_entry.index:
            raise LocalProtocolError("the checkpoint covers entries that are not there")
        chain._unsigned = last_entry.index - covered
        if chain._unsigned:
            # The stored tail's age is unknown here: make the checkpoint due now.
            chain._oldest_unsigned = datetime.min.replace(tzinfo=UTC)
        return chain

    @property
    def next_index(self) -> int:
        """Index the next entry will get."""
        return self._next_index

    @property
    def head_hash(self) -> bytes:
        """Hash of the last entry (the genesis hash when empty)."""
        return self._head_hash

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint this chain signed or resumed from."""
        return self._last_checkpoint

    @property
    def unsigned_entries(self) -> int:
        """Entries written since the last checkpoint."""
        return self._unsigned

    def deadline(self) -> datetime | None:
        """When the time-based checkpoint falls due (None when every entry is covered)."""
        if self._oldest_unsigned is None:
            return None
        return self._oldest_unsigned + MAX_CHECKPOINT_INTERVAL

    def checkpoint_due(self, now: datetime) -> bool:
        """True when 1000 entries are unsigned or the oldest unsigned one is ≥ 60 s old."""
        now = _utc(now)
        if self._unsigned >= MAX_ENTRIES_PER_CHECKPOINT:
            return True
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def append(
        self,
        *,
        now: datetime,
        actor: str,
        action: str,
        target: str,
        details: Mapping[str, JsonValue] | None = None,
        signer: SigningKey | None = None,
    ) -> Appended:
        """Append one entry; with `signer`, also sign the checkpoint if one is now due."""
        when = _utc(now)
        if self._unsigned >= MAX_ENTRIES_PER_CHECKPOINT:
            raise CheckpointOverdue("sign a checkpoint before appending entry 1001")
        for name, value in (("actor", actor), ("action", action), ("target", target)):
            if not isinstance(value, str) or not value:
                raise LocalProtocolError(f"audit {name} must be a non-empty string")
            _refuse_secrets(value, name)
        body = {} if details is None else details
        if not isinstance(body, Mapping):
            raise LocalProtocolError("audit details must be a mapping")
        details_json = canonical_json(body).decode("utf-8")
        _refuse_secrets(body, "details")
        entry_hash = compute_entry_hash(
            index=self._next_index,
            time=when,
            actor=actor,
            action=action,
            target=target,
            details_json=details_json,
            prev_hash=self._head_hash,
        )
        entry = AuditEntry(
            self._next_index, when, actor, action, target, details_json, self._head_hash, entry_hash
        )
        self._next_index += 1
        self._head_hash = entry_hash
        self._unsigned += 1
        if self._oldest_unsigned is None:
            self._oldest_unsigned = when
        due = self.checkpoint_due(when)
        if due and signer is not None:
            return Appended(entry, checkpoint_due=False, checkpoint=self.checkpoint(signer, when))
        return Appended(entry, checkpoint_due=due)

    def checkpoint(self, key: SigningKey, now: datetime) -> Checkpoint:
        """Sign the current head; resets the cadence. Refused on an empty chain."""
        if self._next_index == 0:
            raise LocalProtocolError("nothing to checkpoint: the chain is empty")
        cp = Checkpoint.sign(key, self._next_index - 1, self._head_hash, now)
        self._last_checkpoint = cp
        self._unsigned = 0
        self._oldest_unsigned = None
        return cp


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
