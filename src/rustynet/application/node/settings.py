"""How the node agent runs: the settings bootstrap fills from rustynetd's config.

The one rule: every tunable of the agent (timers, back-off, the path policy, the stored-map
bound) is here, frozen; the use-case modules read them and never keep copies of their own.
"""

from __future__ import annotations

from datetime import timedelta

import attrs

from rustynet.application.node.map_source import STORED_MAP_FALLBACK
from rustynet.domain import path as paths
from rustynet.domain import reconcile
from rustynet.domain.key_hierarchy import TUNNEL_KEY_DEFAULT_LIFETIME
from rustynet.domain.path.trial import TrialPolicy
from rustynet.domain.tunnel import IPNetwork


@attrs.frozen
class AgentSettings:
    """How the agent runs (filled from rustynetd's config by bootstrap)."""

    interface: str
    underlay_port: int | None = None
    long_poll_seconds: float = 60.0
    renew_before: timedelta = timedelta(seconds=60)
    rotate_before: timedelta = timedelta(days=7)
    tunnel_key_lifetime: timedelta = TUNNEL_KEY_DEFAULT_LIFETIME
    keepalive_seconds: int = reconcile.DEFAULT_KEEPALIVE_SECONDS
    responder_grace: timedelta = reconcile.DEFAULT_RESPONDER_GRACE
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    endpoints: tuple[str, ...] = ()  # configured candidates (`underlay_endpoints`)
    candidate_exclude: tuple[IPNetwork, ...] = ()  # interface prefixes never reported
    candidate_interval: float = 30.0  # re-gather candidates this often (report on change)
    change_debounce: float = 0.5  # quiet seconds after an address/route change before re-gather
    # Re-plan this often while a long poll is parked: the responder side of a pair must start
    # talking within the handshake-retry window (docs/lab.md pitfall 1), not after the next map.
    reconcile_interval: float = 1.0
    path_policy: paths.PathPolicy = attrs.field(factory=paths.PathPolicy)
    trial_policy: TrialPolicy = attrs.field(factory=TrialPolicy)
    # After a start, how long without the control plane before the saved map applies.
    stored_map_fallback: timedelta = STORED_MAP_FALLBACK


__all__ = ["AgentSettings"]
