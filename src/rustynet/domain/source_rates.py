"""A bounded per-source rate table: one GCRA bucket per source network, pure (now comes in).

The one rule: a source is admitted only within its bucket (`bucket_take`), keyed by network
(`ip_key`: IPv4 /32, IPv6 /64), and the table never holds more than `max_sources` entries: full
buckets (which decide like absent ones) are forgotten first and, when it is still full, a new
source is denied (deny when in doubt). An address that is not an IP is denied. The STUN service
and the relay's unauthenticated handshakes use it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.limits import BucketPolicy, LimitPolicy, bucket_take, ip_key

_KEYS: Final = LimitPolicy()  # only its prefixes: IPv4 /32, IPv6 /64


class SourceRateTable:
    """GCRA timestamps per source network, never more than `max_sources` of them."""

    def __init__(self, per_source: BucketPolicy, max_sources: int) -> None:
        if max_sources < 1:
            raise LocalProtocolError("max_sources must be positive")
        self.per_source = per_source
        self.max_sources = max_sources
        self._tats: dict[str, datetime] = {}

    def __len__(self) -> int:
        return len(self._tats)

    def take(self, host: str, now: datetime) -> bool:
        """Spend one token of `host`'s bucket; False when over its budget or the table is full."""
        try:
            key = ip_key(host, _KEYS)
        except ValueError:
            return False
        tat = self._tats.get(key)
        if tat is None and len(self._tats) >= self.max_sources:
            self._prune(now)
            if len(self._tats) >= self.max_sources:
                return False
        outcome = bucket_take(tat, now, self.per_source)
        if outcome.allowed:
            self._tats[key] = outcome.tat
        return outcome.allowed

    def _prune(self, now: datetime) -> None:
        for key in [key for key, tat in self._tats.items() if tat <= now]:
            del self._tats[key]
