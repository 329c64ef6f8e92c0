"""Request admission: a per-IP token is spent BEFORE a request body is read or parsed.

The one rule: an unauthenticated client pays for every request it makes, valid or not. The use
cases take their per-IP tokens only after the adapter has read and parsed the body, so a stream
of malformed bodies (30 in a row) was answered 400 (or 500) forever and never 429. The HTTP
adapter therefore asks `RequestAdmission.admit` first, for every request of a route that reads
a body, and only then reads it; a denied request is `RateLimited` (429 with `Retry-After`) and
its body is never read.

Three gates, each its own GCRA bucket table (the domain `Limiter`, keyed by /32 or /64):

* `PUBLIC` — enrollment and token routes (no credential yet): the deployment's `limits.per_ip`;
* `ADMIN` — admin routes that take a body: `admin_per_ip`;
* `NODE` — node routes that take a body (token not yet verified): `DEFAULT_NODE_PER_IP`;
* `RELAY_FEED` — the relays' revocation feed (no credential, no body): `DEFAULT_RELAY_FEED_PER_IP`.

These buckets are separate from the use cases' own per-IP buckets (same policy), so a valid
request passes both and its allowance is unchanged, while a request refused before the use case
ran still spent its token here. State is in process memory (bounded by `limits.max_keys` per
gate, fail closed when full) and per instance: this is the cheap pre-parse guard, the store-
backed use-case limits remain the shared ones. When the limiter cannot decide, it denies.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import timedelta
from typing import Final

import attrs

from rustynet.application.errors import RateLimited
from rustynet.domain.limits import BucketPolicy, Limiter, LimitPolicy, decide_or_deny
from rustynet.ports.clock import Clock

DEFAULT_NODE_PER_IP: Final = BucketPolicy(burst=120, refill=60, per=timedelta(minutes=1))
# A relay polls about once a minute, and once per revocation (a burst when many are revoked).
DEFAULT_RELAY_FEED_PER_IP: Final = BucketPolicy(burst=60, refill=120, per=timedelta(minutes=1))


class Gate(enum.Enum):
    """Which per-IP budget a request spends before its body is read."""

    PUBLIC = "public"
    ADMIN = "admin"
    NODE = "node"
    RELAY_FEED = "relay-feed"


class RequestAdmission:
    """The per-IP request budgets of one API process (spent before any body is read)."""

    def __init__(
        self, clock: Clock, limits: LimitPolicy, buckets: Mapping[Gate, BucketPolicy]
    ) -> None:
        self._clock = clock
        self._limits = limits
        self._limiters = {
            gate: Limiter(attrs.evolve(limits, per_ip=buckets[gate])) for gate in Gate
        }

    @classmethod
    def for_limits(
        cls,
        clock: Clock,
        limits: LimitPolicy,
        admin_per_ip: BucketPolicy,
        node_per_ip: BucketPolicy = DEFAULT_NODE_PER_IP,
    ) -> RequestAdmission:
        """Budgets from the deployment's limits (the same numbers the use cases apply)."""
        buckets = {
            Gate.PUBLIC: limits.per_ip,
            Gate.ADMIN: admin_per_ip,
            Gate.NODE: node_per_ip,
            Gate.RELAY_FEED: DEFAULT_RELAY_FEED_PER_IP,
        }
        return cls(clock, limits, buckets)

    def admit(self, gate: Gate, client_ip: str) -> None:
        """Spend one token of `client_ip`'s `gate` budget; `RateLimited` when there is none.

        An address the limiter cannot key (not an IP) or a full table is denied (fail closed).
        """
        limiter = self._limiters[gate]
        now = self._clock.now()
        decision = decide_or_deny(lambda: limiter.check(now, ip=client_ip), self._limits)
        if not decision.allowed:
            retry = decision.retry_after_seconds
            raise RateLimited(retry if retry is not None else 1)

    def prune(self) -> int:
        """Forget full buckets (they decide like absent ones); how many were dropped."""
        now = self._clock.now()
        return sum(limiter.prune(now) for limiter in self._limiters.values())
