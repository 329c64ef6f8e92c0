"""Single use of a signed answer: the nonce record the store remembers, and its refusals.

The one rule: a nonce (today: the id of a token-renewal challenge the node signed) is accepted
at most once while it is remembered, and when the memory is full new nonces are refused (fail
closed) — an unexpired nonce is never evicted to make room.

The decision is the store's, in one atomic step: `NonceRepository.insert` ("insert if absent
and fewer than `capacity` live rows", `adapters/storage/sql/guards.py::SqlNonces.insert`; the memory
store's `insert` for tests), so it holds across restarts and across several control instances
on one database. This module only names the record and the refusals. There is no signed
request with a client timestamp in API v1, so there is no timestamp window here: a renewal
challenge carries its own expiry, checked by the use case.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

import attrs

from rustynet.domain.errors import RemoteProtocolError

NONCE_RETENTION: Final = timedelta(seconds=180)
DEFAULT_CAPACITY: Final = 100_000


class ReplayError(RemoteProtocolError):
    """Base of every nonce-store refusal: the request must not be processed."""


class ReplayedNonceError(ReplayError):
    """The nonce was already accepted and is still remembered."""


class ReplayCacheFullError(ReplayError):
    """The nonce memory is full of unexpired entries; new requests are refused (fail closed)."""


@attrs.frozen
class NonceRecord:
    """Effect: remember `nonce` until `expires_at` (persisted before the request is answered)."""

    nonce: bytes
    expires_at: datetime
