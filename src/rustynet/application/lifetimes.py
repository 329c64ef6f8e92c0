"""Requested lifetimes (`ttl_seconds`) of join keys and API keys: bounded before any arithmetic.

The one rule: a requested lifetime is an integer number of seconds in 1..maximum, checked
BEFORE it becomes a `timedelta` (`timedelta(seconds=10**17)` raises OverflowError, which was a
500). The maxima are the domain's: a one-time join key lives at most 7 days (a reusable one at
most 24 hours, which `Credential.create` enforces), an API key at most 365 days. The OpenAPI
document (rustynet.adapters.http_api/openapi.json) states the same bounds.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from rustynet.application.errors import ValidationError
from rustynet.domain import api_keys
from rustynet.domain.credentials import MAX_ONE_TIME_TTL

JOIN_KEY_MAX_TTL_SECONDS: Final = int(MAX_ONE_TIME_TTL.total_seconds())  # 604,800 (7 days)
API_KEY_MAX_TTL_SECONDS: Final = int(api_keys.MAX_TTL.total_seconds())  # 31,536,000 (365 days)


def requested_ttl(value: object, maximum_seconds: int, pointer: str = "/ttl_seconds") -> timedelta:
    """`value` seconds as a timedelta; 400 (`ValidationError`) unless an int in 1..maximum."""
    if type(value) is not int or not 1 <= value <= maximum_seconds:
        raise ValidationError.at(pointer, f"an integer number of seconds, 1..{maximum_seconds}")
    return timedelta(seconds=value)
