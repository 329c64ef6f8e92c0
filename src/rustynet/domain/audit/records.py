"""The stored forms: `AuditEntry` with its chained SHA-256 (`compute_entry_hash`) and the signed
`Checkpoint`, each with its strict record parser.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError
from rustynet.domain.keys import (
    Purpose,
    SigningKey,
    VerifyKey,
    b64decode,
    b64encode,
)
from rustynet.domain.signed import INT_MAX, JsonObject, canonical_json

HASH_SIZE: Final = 32
GENESIS_HASH: Final = bytes(HASH_SIZE)
_ENTRY_TAG: Final = b"rustynet:audit-entry:v1\x00"
_CHECKPOINT_TAG: Final = b"rustynet:audit-checkpoint:v1\x00"


class AuditRecordError(DecodeError):
    """A stored entry or checkpoint record is malformed."""


def as_utc(now: object) -> datetime:
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
        when = as_utc(now)
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
