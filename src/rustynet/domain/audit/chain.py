"""The writer: `AuditChain` appends entries (refusing secrets), tracks the unsigned tail and
signs checkpoints on the count and time cadence.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

import attrs

from rustynet.domain.audit.records import (
    GENESIS_HASH,
    AuditEntry,
    Checkpoint,
    as_utc,
    compute_entry_hash,
)
from rustynet.domain.audit.redaction import (
    refuse_secrets,
)
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.keys import (
    SigningKey,
)
from rustynet.domain.signed import JsonValue, canonical_json

MAX_ENTRIES_PER_CHECKPOINT: Final = 1000
MAX_CHECKPOINT_INTERVAL: Final = timedelta(seconds=60)


class CheckpointOverdue(LocalProtocolError):  # noqa: N818 - names the refusal
    """1000 entries are unsigned: the driver must sign a checkpoint before appending more."""


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
        now = as_utc(now)
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
        when = as_utc(now)
        if self._unsigned >= MAX_ENTRIES_PER_CHECKPOINT:
            raise CheckpointOverdue("sign a checkpoint before appending entry 1001")
        for name, value in (("actor", actor), ("action", action), ("target", target)):
            if not isinstance(value, str) or not value:
                raise LocalProtocolError(f"audit {name} must be a non-empty string")
            refuse_secrets(value, name)
        body = {} if details is None else details
        if not isinstance(body, Mapping):
            raise LocalProtocolError("audit details must be a mapping")
        details_json = canonical_json(body).decode("utf-8")
        refuse_secrets(body, "details")
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
