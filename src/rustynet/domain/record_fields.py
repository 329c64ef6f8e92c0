"""Field rules the stored entity records share (attrs validators).

Times are timezone-aware UTC `datetime`s; ids are short printable text. A record that breaks a
rule raises `LocalProtocolError` when it is built, so a store never holds one.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs

from rustynet.domain.errors import LocalProtocolError


def aware_utc(_: object, attribute: attrs.Attribute[datetime], value: object) -> None:
    """Validator: `value` is a timezone-aware UTC datetime."""
    if not isinstance(value, datetime) or value.utcoffset() != timedelta(0):
        raise LocalProtocolError(f"{attribute.name} must be a timezone-aware UTC datetime")


def optional_aware_utc(
    _: object, attribute: attrs.Attribute[datetime | None], value: object
) -> None:
    """Validator: None or a timezone-aware UTC datetime."""
    if value is not None:
        aware_utc(_, attribute, value)  # type: ignore[arg-type]  # same check, optional value


def text_id(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    """Validator: an id of 1..128 printable characters."""
    if not isinstance(value, str) or not 0 < len(value) <= 128 or not value.isprintable():
        raise LocalProtocolError(f"{attribute.name} must be 1..128 printable characters")
