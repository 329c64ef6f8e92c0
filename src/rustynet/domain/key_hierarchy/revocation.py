"""Revocation: root-signed `RevocationRecord`s with a strictly increasing epoch, and the
persisted `RevocationState` (epoch watermark + every revoked fingerprint), and
`verify_certificate`: the full check of a certificate at `now` (chain, validity, not revoked).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Final

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError
from rustynet.domain.key_hierarchy.certificates import (
    Certificate,
    TrustedRoot,
    verify_certificate_chain,
)
from rustynet.domain.key_hierarchy.roles import (
    FORMAT_VERSION,
    IssuePolicyError,
    KeyRevoked,
    StaleRevocationError,
)
from rustynet.domain.key_hierarchy.validity import (
    exact_fields,
    fingerprints_from,
    fingerprints_to,
    floor_seconds,
    from_timestamp,
    to_timestamp,
)
from rustynet.domain.keys import KeyFingerprint, Purpose, SigningKey
from rustynet.domain.signed import (
    INT_MAX,
    JsonObject,
    JsonValue,
    SignedEnvelope,
    UnknownSigner,
    canonical_json,
    parse_canonical_json,
)

# --- revocation -------------------------------------------------------------------------------

_REVOCATION_FIELDS: Final = frozenset({"v", "epoch", "revoked", "issued_at"})


def _epoch_value(value: object) -> int:
    if type(value) is not int or not 1 <= value <= INT_MAX:
        raise DecodeError("a revocation epoch is a positive 64-bit integer")
    return value


@attrs.frozen
class RevocationRecord:
    """Root-signed: as of `epoch`, these key fingerprints are revoked (cumulative list)."""

    envelope: SignedEnvelope = attrs.field(validator=attrs.validators.instance_of(SignedEnvelope))
    epoch: int = attrs.field(init=False)
    revoked: frozenset[KeyFingerprint] = attrs.field(init=False)
    issued_at: datetime = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.envelope.purpose is not Purpose.REVOCATION:
            raise DecodeError("not a revocation envelope")
        payload = self.envelope.unverified_payload()
        exact_fields(payload, _REVOCATION_FIELDS, "revocation record")
        object.__setattr__(self, "epoch", _epoch_value(payload.get("epoch")))
        object.__setattr__(self, "revoked", fingerprints_from(payload.get("revoked")))
        object.__setattr__(self, "issued_at", from_timestamp(payload.get("issued_at"), "issued_at"))

    @property
    def issuer(self) -> KeyFingerprint:
        """The key that signed the record (must be the root to be applied)."""
        return self.envelope.key_id

    @classmethod
    def from_text(cls, text: str) -> RevocationRecord:
        """Parse the envelope text form; malformed input raises `DecodeError`."""
        return cls(SignedEnvelope.from_text(text))

    def to_text(self) -> str:
        """The envelope text form."""
        return self.envelope.to_text()


def issue_revocation(
    root_key: SigningKey,
    root: TrustedRoot,
    epoch: int,
    revoked: Iterable[KeyFingerprint],
    issued_at: datetime,
) -> RevocationRecord:
    """Sign a revocation record with the root key. List every revoked key, not just new ones."""
    if root_key.public_key != root.key:
        raise IssuePolicyError("the signing key is not the trusted root's key")
    if Purpose.REVOCATION not in root.scope:
        raise IssuePolicyError("the root's scope does not include revocations")
    if type(epoch) is not int or not 1 <= epoch <= INT_MAX:
        raise IssuePolicyError("a revocation epoch is a positive 64-bit integer")
    keys = frozenset(revoked)
    if not all(isinstance(k, KeyFingerprint) for k in keys):
        raise LocalProtocolError("revoked keys are KeyFingerprints")
    payload: dict[str, JsonValue] = {
        "v": FORMAT_VERSION,
        "epoch": epoch,
        "revoked": fingerprints_to(keys),
        "issued_at": to_timestamp(floor_seconds(issued_at, "issued_at")),
    }
    return RevocationRecord(SignedEnvelope.seal(root_key, Purpose.REVOCATION, payload))


class RevocationState:
    """The revocation watermark: current epoch and every fingerprint ever revoked.

    `apply` is all-or-nothing: it verifies the record (root signature, root valid now, epoch
    strictly above the watermark) before it changes anything. The revoked set only grows.
    """

    def __init__(self, epoch: int = 0, revoked: Iterable[KeyFingerprint] = ()) -> None:
        if type(epoch) is not int or not 0 <= epoch <= INT_MAX:
            raise LocalProtocolError("epoch is a non-negative 64-bit integer")
        self._epoch = epoch
        self._revoked = frozenset(revoked)
        if not all(isinstance(k, KeyFingerprint) for k in self._revoked):
            raise LocalProtocolError("revoked keys are KeyFingerprints")

    @property
    def epoch(self) -> int:
        """The highest epoch applied (0 before any record)."""
        return self._epoch

    @property
    def revoked(self) -> frozenset[KeyFingerprint]:
        """Every fingerprint revoked so far."""
        return self._revoked

    def is_revoked(self, key_id: KeyFingerprint) -> bool:
        """True once any applied record listed `key_id`."""
        return key_id in self._revoked

    def apply(self, record: RevocationRecord, root: TrustedRoot, now: datetime) -> None:
        """Verify `record` against `root` and raise the watermark; a rejection changes nothing."""
        root.validity.check(now, "root certificate")
        if Purpose.REVOCATION not in root.scope:
            raise UnknownSigner("the root's scope does not include revocations")
        record.envelope.open(root.key, Purpose.REVOCATION)
        if record.epoch <= self._epoch:
            raise StaleRevocationError(
                f"revocation epoch {record.epoch} is not above the current {self._epoch}"
            )
        self._epoch = record.epoch
        self._revoked = self._revoked | record.revoked

    def to_dict(self) -> JsonObject:
        """Plain data for persistence."""
        return {
            "v": FORMAT_VERSION,
            "epoch": self._epoch,
            "revoked": fingerprints_to(self._revoked),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> RevocationState:
        """Inverse of `to_dict`; anything malformed raises `DecodeError`."""
        if not isinstance(data, Mapping):
            raise DecodeError("revocation state is an object")
        exact_fields(data, frozenset({"v", "epoch", "revoked"}), "revocation state")
        epoch = data.get("epoch")
        if type(epoch) is not int or not 0 <= epoch <= INT_MAX:
            raise DecodeError("revocation state epoch is a non-negative 64-bit integer")
        return cls(epoch, fingerprints_from(data.get("revoked")))

    def to_text(self) -> str:
        """Canonical JSON text for a state file."""
        return canonical_json(self.to_dict()).decode("utf-8")

    @classmethod
    def from_text(cls, text: str) -> RevocationState:
        """Inverse of `to_text`."""
        if not isinstance(text, str):
            raise DecodeError("revocation state text is a string")
        return cls.from_dict(parse_canonical_json(text.encode("utf-8")))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epoch={self._epoch}, revoked={len(self._revoked)} keys)"


def verify_certificate(
    cert: Certificate,
    root: TrustedRoot,
    now: datetime,
    revocations: RevocationState | None = None,
) -> None:
    """Raise unless `cert` is a valid, current, unrevoked certificate from `root`."""
    root.validity.check(now, "root certificate")
    verify_certificate_chain(cert, root)
    cert.validity.check(now, f"{cert.role.value} key certificate")
    if revocations is not None:
        for key_id in (root.key_id, cert.key_id):
            if revocations.is_revoked(key_id):
                raise KeyRevoked(f"key {key_id} is revoked")
