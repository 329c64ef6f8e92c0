"""A single-use server challenge as the control plane stores it: `ChallengeRecord`.

The one rule: a stored challenge holds public values only and is consumed at most once (the
store decides with one conditional write); its id is 16..64 random bytes.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Final

import attrs

from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.record_fields import aware_utc, text_id


class ChallengeKind(enum.Enum):
    """Which handshake a stored challenge belongs to. Only enrollment stores its challenges:
    token-renewal challenges are stateless (`domain.renewal_challenge`); rows of the former
    kind `renewal` left by older versions are never read (every read names its kind) and are
    purged when they expire."""

    ENROLLMENT = "enrollment"


MIN_CHALLENGE_ID: Final = 16  # bytes (128 bits)
MAX_CHALLENGE_ID: Final = 64
MAX_CHALLENGE_PAYLOAD: Final = 4096  # characters


def _challenge_id(_: object, attribute: attrs.Attribute[bytes], value: object) -> None:
    if not isinstance(value, bytes) or not MIN_CHALLENGE_ID <= len(value) <= MAX_CHALLENGE_ID:
        raise LocalProtocolError(
            f"{attribute.name} must be {MIN_CHALLENGE_ID}..{MAX_CHALLENGE_ID} bytes"
        )


def _payload(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or len(value) > MAX_CHALLENGE_PAYLOAD:
        raise LocalProtocolError(f"{attribute.name} must be at most {MAX_CHALLENGE_PAYLOAD} chars")


@attrs.frozen
class ChallengeRecord:
    """A single-use server challenge as stored, so any control instance can check the answer.

    `subject` is what the challenge was issued for (a join key id); `payload` is
    opaque text the use case needs to verify the answer (public values only, never a secret).
    """

    id: bytes = attrs.field(validator=_challenge_id)
    kind: ChallengeKind = attrs.field(validator=attrs.validators.instance_of(ChallengeKind))
    subject: str = attrs.field(validator=text_id)
    payload: str = attrs.field(validator=_payload)
    expires_at: datetime = attrs.field(validator=aware_utc)
    used: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
