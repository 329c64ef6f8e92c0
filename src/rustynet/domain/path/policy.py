"""The path controller's bounds: `PathPolicy`, its justified defaults and the worst-case fail-back
and fall-over times they imply."""

from __future__ import annotations

from datetime import timedelta
from typing import Final

import attrs

from rustynet.domain.path.phases import PathPolicyError

DEFAULT_DIRECT_TIMEOUT: Final = timedelta(seconds=6)
"""The tunnel retries a handshake every 5 s; 6 s covers the first attempt, one retry and its
round trip within a 1 s reconcile tick, so one lost handshake packet does not force a relay."""

DEFAULT_RELAY_TIMEOUT: Final = timedelta(seconds=11)
"""Switching needs a relay session (TLS + WebSocket + token, about 1 s) and the next handshake
retry through it: two 5 s retry intervals plus the connect."""

DEFAULT_SESSION_TIMEOUT: Final = timedelta(seconds=190)
"""A live session re-keys (a fresh handshake) about every 2 minutes while keepalives flow and
its keys are unusable 180 s after its last handshake; 10 s slack for retries and ticks."""

DEFAULT_PROBE_INTERVAL: Final = timedelta(seconds=10)
"""One small probe per relayed peer every 10 s is cheap, and relay capacity is the scarce
resource: a healed direct path should take peers off the relay within seconds, not minutes."""

DEFAULT_CONFIRM_INTERVAL: Final = timedelta(seconds=2)
"""After a successful probe the confirming one follows quickly: anti-flapping costs 2 s."""

DEFAULT_PROBE_TIMEOUT: Final = timedelta(seconds=2)
"""A probe is one round trip on the underlay; 2 s is far above any sane RTT."""

DEFAULT_DIRECT_PROBE_INTERVAL: Final = timedelta(seconds=5)
"""A live direct session only re-keys every ~2 minutes, so probes are what notice a dead direct
path. Every 5 s costs one 41-byte datagram each way per direct peer (less than a keepalive
stream) and, with `DEFAULT_DIRECT_LOST_AFTER`, bounds detection near 20 s; shorter intervals
would put the failures of one burst of loss (a firewall reload, a Wi-Fi roam) into the same
streak."""

DEFAULT_DIRECT_LOST_AFTER: Final = 3
"""Three failed probes in a row, `direct_probe_interval` apart: one or two lost UDP datagrams
never move a working session (at 1 % independent loss a false alarm needs three losses in a
row, about once in two months per peer), while a real outage is still noticed in ~15-20 s."""

DEFAULT_FAILBACK_SUCCESSES: Final = 2
"""Two successes in a row, `confirm_interval` apart: a half-open NAT mapping, a lossy link or a
firewall reload that lets one probe through does not pull a working session off the relay."""

DEFAULT_TICK: Final = timedelta(seconds=1)
"""The daemon's reconcile tick: a due probe may be issued up to one tick late."""


def _positive_delta(_: object, attribute: attrs.Attribute[timedelta], value: object) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise PathPolicyError(f"{attribute.name} must be a positive timedelta")


@attrs.frozen
class PathPolicy:
    """Every bound of the path controller; the defaults are justified at their constants."""

    direct_timeout: timedelta = attrs.field(
        default=DEFAULT_DIRECT_TIMEOUT, validator=_positive_delta
    )
    relay_timeout: timedelta = attrs.field(default=DEFAULT_RELAY_TIMEOUT, validator=_positive_delta)
    session_timeout: timedelta = attrs.field(
        default=DEFAULT_SESSION_TIMEOUT, validator=_positive_delta
    )
    probe_interval: timedelta = attrs.field(
        default=DEFAULT_PROBE_INTERVAL, validator=_positive_delta
    )
    confirm_interval: timedelta = attrs.field(
        default=DEFAULT_CONFIRM_INTERVAL, validator=_positive_delta
    )
    probe_timeout: timedelta = attrs.field(default=DEFAULT_PROBE_TIMEOUT, validator=_positive_delta)
    failback_successes: int = attrs.field(default=DEFAULT_FAILBACK_SUCCESSES)
    direct_probe_interval: timedelta = attrs.field(
        default=DEFAULT_DIRECT_PROBE_INTERVAL, validator=_positive_delta
    )
    direct_lost_after: int = attrs.field(default=DEFAULT_DIRECT_LOST_AFTER)

    def __attrs_post_init__(self) -> None:
        for name in ("failback_successes", "direct_lost_after"):
            n = getattr(self, name)
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise PathPolicyError(f"{name} must be a positive int")
        if self.probe_timeout >= min(self.probe_interval, self.direct_probe_interval):
            raise PathPolicyError("probe_timeout must be shorter than both probe intervals")

    def failback_bound(self, tick: timedelta = DEFAULT_TICK) -> timedelta:
        """Worst case from the direct path healing to the fail-back decision.

        The first probe sent after healing goes out at most `probe_interval` (+ a tick) later,
        each of the `failback_successes` probes takes at most `probe_timeout`, and each
        confirming probe follows `confirm_interval` (+ a tick) after the previous success.
        """
        n = self.failback_successes
        return (
            self.probe_interval + (n - 1) * self.confirm_interval + n * (self.probe_timeout + tick)
        )

    def fallover_bound(self, tick: timedelta = DEFAULT_TICK) -> timedelta:
        """Worst case from a working direct path dying to the switch to the relay.

        The last probe before the death succeeded; each of the next `direct_lost_after` probes
        goes out at most `direct_probe_interval` (+ a tick) after the previous one, the last
        fails by its `probe_timeout` (+ a tick), and the new direct attempt falls over after
        `direct_timeout` (+ a tick).
        """
        n = self.direct_lost_after
        return (
            n * (self.direct_probe_interval + tick)
            + self.probe_timeout
            + tick
            + self.direct_timeout
            + tick
        )


FAILBACK_BOUND: Final = PathPolicy().failback_bound()
"""Default fail-back bound (18 s): e2e tests wait this long for `path` to read `direct` again."""

FALLOVER_BOUND: Final = PathPolicy().fallover_bound()
"""Default fall-over bound of the controller, from the first failed direct probe's due time
(28 s, against 196 s before probing: `session_timeout` + `direct_timeout`). A direct probe is
the tunnel's own receive evidence (`application/node/punching.py`): it first fails one
evidence window (two keepalive intervals and two ticks, 12 s by default) after the last packet,
so end to end a dying direct path reaches `relay` within about FALLOVER_BOUND + 12 s (~33 s
measured in the e2e relay test, which waits 45 s)."""
