"""Validity windows in whole UTC seconds and the strict payload readers the hierarchy's signed
records share (exact field sets, strings, sorted string lists, timestamps, fingerprint lists)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError
from rustynet.domain.key_hierarchy.roles import (
    FORMAT_VERSION,
    ExpiredError,
    NotYetValidError,
)
from rustynet.domain.keys import KeyFingerprint
from rustynet.domain.signed import (
    JsonValue,
)

_MAX_TIMESTAMP: Final = 253_402_300_799  # 9999-12-31T23:59:59Z


# --- time -------------------------------------------------------------------------------------


def require_utc(value: object, what: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() != timedelta(0):
        raise LocalProtocolError(f"{what} must be a timezone-aware UTC datetime")
    return value


def floor_seconds(value: datetime, what: str) -> datetime:
    return require_utc(value, what).replace(microsecond=0)


def to_timestamp(value: datetime) -> int:
    return int(value.timestamp())


def from_timestamp(value: object, what: str) -> datetime:
    if type(value) is not int or not 0 <= value <= _MAX_TIMESTAMP:
        raise DecodeError(f"{what} must be an integer UNIX time")
    return datetime.fromtimestamp(value, UTC)


@attrs.frozen
class Validity:
    """A half-open time range `[not_before, not_after)` in whole UTC seconds."""

    not_before: datetime
    not_after: datetime

    def __attrs_post_init__(self) -> None:
        for name in ("not_before", "not_after"):
            value = require_utc(getattr(self, name), name)
            if value.microsecond:
                raise LocalProtocolError(f"{name} must be whole seconds (use Validity.of)")
        if self.not_before >= self.not_after:
            raise LocalProtocolError("not_before must come before not_after")

    @classmethod
    def of(cls, not_before: datetime, not_after: datetime) -> Validity:
        """Build from any UTC datetimes, rounded down to whole seconds."""
        return cls(floor_seconds(not_before, "not_before"), floor_seconds(not_after, "not_after"))

    @classmethod
    def starting(cls, now: datetime, lifetime: timedelta) -> Validity:
        """`[now, now + lifetime)` in whole seconds."""
        start = floor_seconds(now, "now")
        return cls(start, start + lifetime)

    @property
    def lifetime(self) -> timedelta:
        """Length of the range."""
        return self.not_after - self.not_before

    def contains(self, other: Validity) -> bool:
        """True when `other` lies entirely inside this range."""
        return self.not_before <= other.not_before and other.not_after <= self.not_after

    def covers(self, now: datetime) -> bool:
        """True when `now` is inside the range."""
        return self.not_before <= require_utc(now, "now") < self.not_after

    def check(self, now: datetime, what: str, *, leeway: timedelta = timedelta(0)) -> None:
        """Raise `NotYetValidError` / `ExpiredError` unless `now` is inside the range.

        `leeway` tolerates a verifier clock running behind the issuer's.
        """
        now = require_utc(now, "now")
        if now < self.not_before - leeway:
            raise NotYetValidError(f"{what} is valid from {self.not_before.isoformat()}")
        if now >= self.not_after:
            raise ExpiredError(f"{what} expired at {self.not_after.isoformat()}")

    def to_json(self) -> dict[str, JsonValue]:
        """The two timestamps as payload fields."""
        return {
            "not_before": to_timestamp(self.not_before),
            "not_after": to_timestamp(self.not_after),
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, object]) -> Validity:
        """Parse the payload fields; a reversed or empty range raises `DecodeError`."""
        start = from_timestamp(payload.get("not_before"), "not_before")
        end = from_timestamp(payload.get("not_after"), "not_after")
        if start >= end:
            raise DecodeError("not_before must come before not_after")
        return cls(start, end)


# --- payload helpers --------------------------------------------------------------------------


def exact_fields(payload: Mapping[str, object], fields: frozenset[str], what: str) -> None:
    if set(payload) != fields:
        raise DecodeError(f"{what} fields must be exactly {sorted(fields)}")
    if payload.get("v") != FORMAT_VERSION or type(payload.get("v")) is not int:
        raise DecodeError(f"unsupported {what} version")


def str_field(payload: Mapping[str, object], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str):
        raise DecodeError(f"{name} must be a string")
    return value


def sorted_unique_strings(value: object, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DecodeError(f"{name} must be a list of strings")
    if value != sorted(set(value)):
        raise DecodeError(f"{name} must be sorted and without duplicates")
    return value


def fingerprints_from(value: object) -> frozenset[KeyFingerprint]:
    return frozenset(
        KeyFingerprint.from_text(t) for t in sorted_unique_strings(value, "revoked keys")
    )


def fingerprints_to(keys: frozenset[KeyFingerprint]) -> list[str]:
    return sorted(k.to_text() for k in keys)
