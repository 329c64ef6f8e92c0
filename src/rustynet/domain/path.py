"""The per-peer path controller: which one path (direct or relay) carries a peer's tunnel.

The one rule: a peer has exactly one active path at any time, and the controller moves it only
along the edges of `EDGES`, each move returning exactly one `Transition` (from, to, reason) for
the daemon's log and `rustynet status`. Any input the tables do not list raises and changes
nothing (fail closed).

Theory of operation. The controller is pure: `step(policy, state, event)` takes a frozen
`PeerPath`, one input carrying an explicit UTC `now`, and returns the next state, the
transition (if the phase changed) and the commands the daemon must run. The daemon feeds an
`Observation` every reconcile tick (now, the latest handshake the tunnel reports for the peer,
whether a relay session is available for it) and a `ProbeResult` whenever a direct probe it was
asked for ends (direct probes run both while direct is up and while relayed). A handshake
counts for the current path only if it happened strictly after the path was entered (`since`):
an older one belongs to the previous path.

    phase           path    leaves on (reason -> phase)
    direct-trying   direct  handshake-seen -> direct-up
                            direct-timeout -> relay        (no handshake for direct_timeout,
                            no-relay -> direct-unreachable   relay available / not)
    direct-up       direct  direct-stale -> direct-trying  (no fresh handshake for session_timeout)
                            probe-due -> direct-probing    (every direct_probe_interval)
    direct-probing  direct  direct-stale -> direct-trying
                            probe-failed | probe-timed-out | probe-succeeded -> direct-up
                            direct-lost -> direct-trying   (direct_lost_after failures in a row)
    direct-unreach. direct  handshake-seen -> direct-up
                            relay-available -> relay
    relay           relay   relay-lost | relay-silent -> direct-trying
                            probe-due -> relay-probing     (every probe_interval)
    relay-probing   relay   relay-lost | relay-silent -> direct-trying
                            probe-failed | probe-timed-out | probe-succeeded -> relay
                            direct-healthy -> direct-trying (failback_successes in a row)

* Direct first. A peer starts in `direct-trying`. If no handshake completes within
  `direct_timeout` (measured from `since`, the start of this direct attempt) it switches to the
  relay when one is available, else it stays on the direct path with status `none` and
  switches as soon as a relay appears. The tunnel keeps retrying the direct path meanwhile, so a
  late direct handshake still brings it to `direct-up`.
* A live session makes a fresh handshake every few minutes; one whose latest handshake is
  `session_timeout` old is dead. On direct the peer then starts a new direct attempt (and falls
  over to the relay `direct_timeout` later); on the relay it goes back to `direct-trying`, as it
  does when the relay session is lost or no handshake completes through the relay within
  `relay_timeout` of switching. The controller is never stuck: every relayed phase has a timed
  exit and every direct phase either succeeds or falls over.
* While direct-up, the controller asks for a direct probe every `direct_probe_interval` (from
  entering direct-up or sending the previous probe), so a direct path that dies while the
  session is idle between re-keys is noticed in seconds, not at `session_timeout`. A failed or
  unanswered probe counts one failure; a successful probe or a fresh handshake is proof of life
  and resets the count; `direct_lost_after` failures in a row leave with `direct-lost` for a new
  direct attempt, which `direct-timeout` later falls over to the relay (or stays direct with
  status `none` when there is no relay). The fall-over bound after the direct path dies is
  `PathPolicy.fallover_bound()` (`FALLOVER_BOUND` for the defaults).
* While relayed, the controller asks for a direct probe (`ProbeDirect`) `probe_interval` after
  entering the relay or after the previous probe was sent; a probe without a result by its
  deadline (`probe_timeout`) counts as failed. After a success the next probe comes
  `confirm_interval` later, and only `failback_successes` successes in a row fail the peer back
  to direct (`UsePath(DIRECT)`); any failure resets the count. The fail-back bound after the
  direct path heals is `PathPolicy.failback_bound()` (`FAILBACK_BOUND` for the defaults).
* Each step makes at most one transition; commands follow from the state change alone:
  `UsePath` exactly when the active path changes, `ProbeDirect` exactly when a probe starts.
  Time never goes backwards: an input older than the state's `as_of` raises. A `ProbeResult`
  that does not answer the outstanding probe (it timed out, or the peer left the relay) raises
  `StaleProbeResult`: the daemon drops it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Final, Literal, NamedTuple, TypeAlias

import attrs

from rustynet.domain.errors import LocalProtocolError

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


class PathPolicyError(LocalProtocolError):
    """A path policy with values the rules forbid."""


class PathTransitionError(LocalProtocolError):
    """An input the tables do not allow in this state (nothing changed)."""


class StaleProbeResult(PathTransitionError):  # noqa: N818 - named for the fact, like InvalidSignature
    """A probe result that does not answer the outstanding probe: drop it (nothing changed)."""


class PathKind(enum.Enum):
    """The one path a peer's tunnel uses."""

    DIRECT = "direct"
    RELAY = "relay"


class PathPhase(enum.Enum):
    """Where the controller stands for one peer."""

    DIRECT_TRYING = "direct-trying"
    DIRECT_UP = "direct-up"
    DIRECT_PROBING = "direct-probing"
    DIRECT_UNREACHABLE = "direct-unreachable"
    RELAY = "relay"
    RELAY_PROBING = "relay-probing"

    @property
    def path(self) -> PathKind:
        """The active path in this phase (always exactly one)."""
        return PathKind.RELAY if self in _RELAYED else PathKind.DIRECT


_RELAYED: Final = frozenset({PathPhase.RELAY, PathPhase.RELAY_PROBING})
_DIRECT_LIVE: Final = frozenset({PathPhase.DIRECT_UP, PathPhase.DIRECT_PROBING})
"""Direct phases with a working session, probed to notice when it dies."""
_PROBED: Final = _RELAYED | _DIRECT_LIVE
"""Phases with a probe schedule (`next_probe_at`)."""
_AWAITING: Final = frozenset({PathPhase.RELAY_PROBING, PathPhase.DIRECT_PROBING})
"""Phases with one probe outstanding (`probe_deadline`)."""


class Reason(enum.Enum):
    """Why a transition happened (logged and shown by status)."""

    HANDSHAKE_SEEN = "handshake-seen"
    DIRECT_TIMEOUT = "direct-timeout"
    NO_RELAY = "no-relay"
    RELAY_AVAILABLE = "relay-available"
    DIRECT_STALE = "direct-stale"
    DIRECT_LOST = "direct-lost"
    RELAY_LOST = "relay-lost"
    RELAY_SILENT = "relay-silent"
    PROBE_DUE = "probe-due"
    PROBE_FAILED = "probe-failed"
    PROBE_TIMED_OUT = "probe-timed-out"
    PROBE_SUCCEEDED = "probe-succeeded"
    DIRECT_HEALTHY = "direct-healthy"


_P, _R = PathPhase, Reason
EDGES: Final[Mapping[tuple[PathPhase, Reason], PathPhase]] = {
    (_P.DIRECT_TRYING, _R.HANDSHAKE_SEEN): _P.DIRECT_UP,
    (_P.DIRECT_TRYING, _R.DIRECT_TIMEOUT): _P.RELAY,
    (_P.DIRECT_TRYING, _R.NO_RELAY): _P.DIRECT_UNREACHABLE,
    (_P.DIRECT_UP, _R.DIRECT_STALE): _P.DIRECT_TRYING,
    (_P.DIRECT_UP, _R.PROBE_DUE): _P.DIRECT_PROBING,
    (_P.DIRECT_PROBING, _R.DIRECT_STALE): _P.DIRECT_TRYING,
    (_P.DIRECT_PROBING, _R.PROBE_FAILED): _P.DIRECT_UP,
    (_P.DIRECT_PROBING, _R.PROBE_TIMED_OUT): _P.DIRECT_UP,
    (_P.DIRECT_PROBING, _R.PROBE_SUCCEEDED): _P.DIRECT_UP,
    (_P.DIRECT_PROBING, _R.DIRECT_LOST): _P.DIRECT_TRYING,
    (_P.DIRECT_UNREACHABLE, _R.HANDSHAKE_SEEN): _P.DIRECT_UP,
    (_P.DIRECT_UNREACHABLE, _R.RELAY_AVAILABLE): _P.RELAY,
    (_P.RELAY, _R.RELAY_LOST): _P.DIRECT_TRYING,
    (_P.RELAY, _R.RELAY_SILENT): _P.DIRECT_TRYING,
    (_P.RELAY, _R.PROBE_DUE): _P.RELAY_PROBING,
    (_P.RELAY_PROBING, _R.RELAY_LOST): _P.DIRECT_TRYING,
    (_P.RELAY_PROBING, _R.RELAY_SILENT): _P.DIRECT_TRYING,
    (_P.RELAY_PROBING, _R.PROBE_FAILED): _P.RELAY,
    (_P.RELAY_PROBING, _R.PROBE_TIMED_OUT): _P.RELAY,
    (_P.RELAY_PROBING, _R.PROBE_SUCCEEDED): _P.RELAY,
    (_P.RELAY_PROBING, _R.DIRECT_HEALTHY): _P.DIRECT_TRYING,
}
"""Every legal transition: (from phase, reason) -> to phase. Handlers name the reason only."""


def _utc(value: object, name: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() != timedelta(0):
        raise PathTransitionError(f"{name} must be a timezone-aware UTC datetime")
    return value


def _optional_utc(_: object, attribute: attrs.Attribute[datetime | None], value: object) -> None:
    if value is not None:
        _utc(value, attribute.name)


def _required_utc(_: object, attribute: attrs.Attribute[datetime], value: object) -> None:
    _utc(value, attribute.name)


def _bool(_: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise PathTransitionError(f"{attribute.name} must be a bool")


def _positive_delta(_: object, attribute: attrs.Attribute[timedelta], value: object) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise PathPolicyError(f"{attribute.name} must be a positive timedelta")


def _count(_: object, attribute: attrs.Attribute[int], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise PathTransitionError(f"{attribute.name} must be a non-negative int")


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
"""Default fall-over bound for a direct path that dies while up (28 s, against 196 s before
probing: `session_timeout` + `direct_timeout`): e2e tests wait this long for `relay`."""


# --- inputs, outputs -------------------------------------------------------------------------


@attrs.frozen
class Observation:
    """What the daemon sees for the peer at a reconcile tick."""

    now: datetime = attrs.field(validator=_required_utc)
    last_handshake: datetime | None = attrs.field(validator=_optional_utc)
    relay_available: bool = attrs.field(validator=_bool)


@attrs.frozen
class ProbeResult:
    """The outcome of the direct probe numbered `probe`."""

    now: datetime = attrs.field(validator=_required_utc)
    probe: int = attrs.field(validator=_count)
    ok: bool = attrs.field(validator=_bool)


PathInput: TypeAlias = Observation | ProbeResult


@attrs.frozen
class UsePath:
    """Point the peer's tunnel at this path (and only this one)."""

    path: PathKind


@attrs.frozen
class ProbeDirect:
    """Probe the peer's direct path; report `ProbeResult(probe=probe)` by `deadline`."""

    probe: int
    deadline: datetime


Command: TypeAlias = UsePath | ProbeDirect


@attrs.frozen
class Transition:
    """One phase change, for the daemon's log and status."""

    at: datetime
    from_phase: PathPhase
    to_phase: PathPhase
    reason: Reason

    @property
    def changes_path(self) -> bool:
        """True when the active path moved (direct <-> relay)."""
        return self.from_phase.path is not self.to_phase.path

    def log_fields(self) -> dict[str, str]:
        """Context keys for `log.info("path.changed", peer=..., **fields)`."""
        return {
            "from_phase": self.from_phase.value,
            "to_phase": self.to_phase.value,
            "from_path": status_path_of(self.from_phase),
            "to_path": status_path_of(self.to_phase),
            "reason": self.reason.value,
            "at": self.at.isoformat(),
        }


# --- state -----------------------------------------------------------------------------------


@attrs.frozen
class PeerPath:
    """The controller's frozen state for one peer."""

    phase: PathPhase = attrs.field(validator=attrs.validators.instance_of(PathPhase))
    as_of: datetime = attrs.field(validator=_required_utc)
    """The latest `now` fed in; inputs may not be older."""
    since: datetime = attrs.field(validator=_required_utc)
    """When the current path was entered (for direct: when this direct attempt began)."""
    last_seen: datetime | None = attrs.field(default=None, validator=_optional_utc)
    """The latest handshake seen on the current path (after `since`)."""
    successes: int = attrs.field(default=0, validator=_count)
    """Successful direct probes in a row during this relay stint."""
    failures: int = attrs.field(default=0, validator=_count)
    """Failed direct probes in a row while direct-up (reset by any proof of life)."""
    probe_seq: int = attrs.field(default=0, validator=_count)
    """Number of the latest probe asked for (never reused for this peer)."""
    next_probe_at: datetime | None = attrs.field(default=None, validator=_optional_utc)
    probe_deadline: datetime | None = attrs.field(default=None, validator=_optional_utc)

    def __attrs_post_init__(self) -> None:
        if not self.since <= self.as_of:
            raise PathTransitionError("since must not be after as_of")
        if self.last_seen is not None and not self.since < self.last_seen <= self.as_of:
            raise PathTransitionError("last_seen must be after since and not after as_of")
        if self.phase in _DIRECT_LIVE and self.last_seen is None:
            raise PathTransitionError("a direct-up session has a handshake")
        if (self.next_probe_at is not None) != (self.phase in _PROBED):
            raise PathTransitionError("next_probe_at is set exactly while relayed or direct-up")
        if (self.probe_deadline is not None) != (self.phase in _AWAITING):
            raise PathTransitionError("probe_deadline is set exactly while probing")
        if self.successes and self.phase not in _RELAYED:
            raise PathTransitionError("probe successes count only while relayed")
        if self.failures and self.phase not in _DIRECT_LIVE:
            raise PathTransitionError("probe failures count only while direct-up")

    @classmethod
    def start(cls, now: datetime) -> PeerPath:
        """A newly configured peer: direct first."""
        when = _utc(now, "now")
        return cls(phase=PathPhase.DIRECT_TRYING, as_of=when, since=when)

    @property
    def path(self) -> PathKind:
        """The one active path."""
        return self.phase.path

    @property
    def awaiting_probe(self) -> bool:
        """True while a `ProbeResult` for `probe_seq` is expected."""
        return self.phase in _AWAITING


StatusPath: TypeAlias = Literal["direct", "relay", "trying", "none"]


def status_path_of(phase: PathPhase) -> StatusPath:
    """The path word of a phase (log fields): `none` when the direct path failed and no relay."""
    if phase is PathPhase.DIRECT_UNREACHABLE:
        return "none"
    return "relay" if phase in _RELAYED else "direct"


def status_path(state: PeerPath) -> StatusPath:
    """The `path` field `rustynet status` shows for this peer: the controller's word, and
    `trying` until a handshake on the current path (after `since`) confirms it. A handshake
    from before the attempt, or one the peer made on the other path, never shows `direct`."""
    if state.phase is not PathPhase.DIRECT_UNREACHABLE and state.last_seen is None:
        return "trying"
    return status_path_of(state.phase)


def peer_status(
    policy: PathPolicy, state: PeerPath | None, last_handshake: datetime | None, now: datetime
) -> StatusPath:
    """The `path` word for a peer: its controller's (`status_path`) when one runs; without one
    (no relay bridge configured) `direct` only while the tunnel's latest handshake is live
    (younger than `session_timeout`), else `trying`."""
    if state is not None:
        return status_path(state)
    if last_handshake is not None and now - last_handshake < policy.session_timeout:
        return "direct"
    return "trying"


def wake_at(policy: PathPolicy, state: PeerPath) -> datetime | None:
    """When a timed transition falls due if nothing is observed (None: only inputs move it)."""
    phase = state.phase
    if phase is PathPhase.DIRECT_TRYING:
        return state.since + policy.direct_timeout
    if phase is PathPhase.DIRECT_UNREACHABLE:
        return None
    due = state.probe_deadline if state.awaiting_probe else state.next_probe_at
    end = _session_end(policy, state)
    return end if due is None else min(due, end)


# --- the machine -----------------------------------------------------------------------------


class Step(NamedTuple):
    """The result of one input: next state, at most one transition, commands to run in order."""

    state: PeerPath
    transitions: tuple[Transition, ...]
    commands: tuple[Command, ...]


class _Move(NamedTuple):
    reason: Reason | None  # None: the phase stays
    state: PeerPath  # the next state (phase already set by `_enter`, or the same phase)


def _fresh(state: PeerPath, last_handshake: datetime | None, now: datetime) -> datetime | None:
    """A handshake newer than anything seen on this path (clamped to `now` for clock skew)."""
    if last_handshake is None:
        return None
    seen = min(last_handshake, now)
    newest = state.last_seen if state.last_seen is not None else state.since
    return seen if seen > newest else None


def _session_end(policy: PathPolicy, state: PeerPath) -> datetime:
    """When the current path counts as dead without a fresh handshake."""
    if state.last_seen is None:
        first = policy.relay_timeout if state.phase in _RELAYED else policy.direct_timeout
        return state.since + first
    return state.last_seen + policy.session_timeout


def _enter(policy: PathPolicy, state: PeerPath, phase: PathPhase, now: datetime) -> PeerPath:
    """The fresh state on entering a new path (phases that keep the path use `evolve`)."""
    if phase is PathPhase.DIRECT_TRYING:
        return PeerPath(phase=phase, as_of=now, since=now, probe_seq=state.probe_seq)
    if phase is PathPhase.RELAY:
        return PeerPath(
            phase=phase,
            as_of=now,
            since=now,
            probe_seq=state.probe_seq,
            next_probe_at=now + policy.probe_interval,
        )
    raise PathTransitionError(f"{phase.value} is not entered from another path")


def _up(policy: PathPolicy, state: PeerPath, seen: datetime, now: datetime) -> PeerPath:
    """Direct-up on a first handshake: the probe schedule starts now."""
    return attrs.evolve(
        state,
        phase=PathPhase.DIRECT_UP,
        last_seen=seen,
        next_probe_at=now + policy.direct_probe_interval,
    )


def _on_direct_trying(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    seen = _fresh(state, obs.last_handshake, obs.now)
    if seen is not None:
        return _Move(Reason.HANDSHAKE_SEEN, _up(policy, state, seen, obs.now))
    if obs.now - state.since < policy.direct_timeout:
        return _Move(None, state)
    if obs.relay_available:
        return _Move(Reason.DIRECT_TIMEOUT, _enter(policy, state, PathPhase.RELAY, obs.now))
    return _Move(Reason.NO_RELAY, state)


def _direct_alive(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    """Shared by both direct-up phases: a fresh handshake is proof of life; a stale one ends."""
    seen = _fresh(state, obs.last_handshake, obs.now)
    if seen is not None:
        state = attrs.evolve(state, last_seen=seen, failures=0)
    if obs.now >= _session_end(policy, state):
        return _Move(Reason.DIRECT_STALE, _enter(policy, state, PathPhase.DIRECT_TRYING, obs.now))
    return _Move(None, state)


def _on_direct_up(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    move = _direct_alive(policy, state, obs)
    due = move.state.next_probe_at
    if move.reason is not None or due is None or obs.now < due:
        return move
    return _Move(Reason.PROBE_DUE, _probe_now(policy, move.state, PathPhase.DIRECT_PROBING, obs))


def _direct_probe_failed(
    policy: PathPolicy, state: PeerPath, reason: Reason, now: datetime
) -> _Move:
    """One more failure in a row: back to direct-up, or lost after `direct_lost_after`."""
    failures = state.failures + 1
    if failures >= policy.direct_lost_after:
        lost = _enter(policy, state, PathPhase.DIRECT_TRYING, now)
        return _Move(Reason.DIRECT_LOST, lost)
    up = attrs.evolve(state, phase=PathPhase.DIRECT_UP, probe_deadline=None, failures=failures)
    return _Move(reason, up)


def _on_direct_probing(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    move = _direct_alive(policy, state, obs)
    deadline = move.state.probe_deadline
    if move.reason is not None or deadline is None or obs.now < deadline:
        return move
    return _direct_probe_failed(policy, move.state, Reason.PROBE_TIMED_OUT, obs.now)


def _on_direct_probe_result(policy: PathPolicy, state: PeerPath, result: ProbeResult) -> _Move:
    if result.probe != state.probe_seq:
        raise StaleProbeResult(f"probe {result.probe} is not the outstanding {state.probe_seq}")
    if not result.ok:
        return _direct_probe_failed(policy, state, Reason.PROBE_FAILED, result.now)
    up = attrs.evolve(state, phase=PathPhase.DIRECT_UP, probe_deadline=None, failures=0)
    return _Move(Reason.PROBE_SUCCEEDED, up)


def _on_direct_unreachable(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    seen = _fresh(state, obs.last_handshake, obs.now)
    if seen is not None:
        return _Move(Reason.HANDSHAKE_SEEN, _up(policy, state, seen, obs.now))
    if obs.relay_available:
        return _Move(Reason.RELAY_AVAILABLE, _enter(policy, state, PathPhase.RELAY, obs.now))
    return _Move(None, state)


def _relay_exit(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    """Shared by both relayed phases: leave a lost or silent relay, else note handshakes."""
    if not obs.relay_available:
        return _Move(Reason.RELAY_LOST, _enter(policy, state, PathPhase.DIRECT_TRYING, obs.now))
    seen = _fresh(state, obs.last_handshake, obs.now)
    if seen is not None:
        state = attrs.evolve(state, last_seen=seen)
    if obs.now >= _session_end(policy, state):
        return _Move(Reason.RELAY_SILENT, _enter(policy, state, PathPhase.DIRECT_TRYING, obs.now))
    return _Move(None, state)


def _probe_now(policy: PathPolicy, state: PeerPath, phase: PathPhase, obs: Observation) -> PeerPath:
    """Start the next probe (a new number); the one after it is due one interval from now."""
    relayed = phase is PathPhase.RELAY_PROBING
    interval = policy.probe_interval if relayed else policy.direct_probe_interval
    return attrs.evolve(
        state,
        phase=phase,
        probe_seq=state.probe_seq + 1,
        next_probe_at=obs.now + interval,
        probe_deadline=obs.now + policy.probe_timeout,
    )


def _on_relay(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    move = _relay_exit(policy, state, obs)
    due = move.state.next_probe_at
    if move.reason is not None or due is None or obs.now < due:
        return move
    return _Move(Reason.PROBE_DUE, _probe_now(policy, move.state, PathPhase.RELAY_PROBING, obs))


def _probe_over(
    state: PeerPath, reason: Reason, successes: int, next_probe_at: datetime | None = None
) -> _Move:
    """Back to `relay` after a probe ends (the next regular probe time is kept on failure)."""
    after = attrs.evolve(
        state,
        phase=PathPhase.RELAY,
        probe_deadline=None,
        successes=successes,
        next_probe_at=state.next_probe_at if next_probe_at is None else next_probe_at,
    )
    return _Move(reason, after)


def _on_relay_probing(policy: PathPolicy, state: PeerPath, obs: Observation) -> _Move:
    move = _relay_exit(policy, state, obs)
    deadline = move.state.probe_deadline
    if move.reason is not None or deadline is None or obs.now < deadline:
        return move
    return _probe_over(move.state, Reason.PROBE_TIMED_OUT, successes=0)


def _on_probe_result(policy: PathPolicy, state: PeerPath, result: ProbeResult) -> _Move:
    if result.probe != state.probe_seq:
        raise StaleProbeResult(f"probe {result.probe} is not the outstanding {state.probe_seq}")
    if not result.ok:
        return _probe_over(state, Reason.PROBE_FAILED, successes=0)
    successes = state.successes + 1
    if successes >= policy.failback_successes:
        fresh = _enter(policy, state, PathPhase.DIRECT_TRYING, result.now)
        return _Move(Reason.DIRECT_HEALTHY, fresh)
    return _probe_over(
        state,
        Reason.PROBE_SUCCEEDED,
        successes=successes,
        next_probe_at=result.now + policy.confirm_interval,
    )


HANDLERS: Final[Mapping[tuple[PathPhase, type[PathInput]], Callable[..., _Move]]] = {
    (_P.DIRECT_TRYING, Observation): _on_direct_trying,
    (_P.DIRECT_UP, Observation): _on_direct_up,
    (_P.DIRECT_PROBING, Observation): _on_direct_probing,
    (_P.DIRECT_PROBING, ProbeResult): _on_direct_probe_result,
    (_P.DIRECT_UNREACHABLE, Observation): _on_direct_unreachable,
    (_P.RELAY, Observation): _on_relay,
    (_P.RELAY_PROBING, Observation): _on_relay_probing,
    (_P.RELAY_PROBING, ProbeResult): _on_probe_result,
}
"""Every legal (phase, input type); anything else raises and leaves the state as it was."""


def step(policy: PathPolicy, state: PeerPath, event: PathInput) -> Step:
    """Feed one input: the next state, at most one transition, and the commands to run."""
    handler = HANDLERS.get((state.phase, type(event)))
    if handler is None:
        error = StaleProbeResult if isinstance(event, ProbeResult) else PathTransitionError
        raise error(f"{type(event).__name__} is not accepted in phase {state.phase.value}")
    now = event.now
    if now < state.as_of:
        raise PathTransitionError(f"time went backwards: {now} < {state.as_of}")
    reason, moved = handler(policy, attrs.evolve(state, as_of=now), event)
    if reason is None:
        if moved.phase is not state.phase:
            raise PathTransitionError("a handler changed phase without a reason")
        return Step(moved, (), ())
    to_phase = EDGES.get((state.phase, reason))
    if to_phase is None or moved.phase not in (state.phase, to_phase):
        raise PathTransitionError(f"no edge from {state.phase.value} on {reason.value}")
    next_state = attrs.evolve(moved, phase=to_phase)
    transition = Transition(at=now, from_phase=state.phase, to_phase=to_phase, reason=reason)
    return Step(next_state, (transition,), _commands(state, next_state))


def _commands(before: PeerPath, after: PeerPath) -> tuple[Command, ...]:
    """Effects follow from the state change alone, so they cannot disagree with it."""
    commands: list[Command] = []
    if before.path is not after.path:
        commands.append(UsePath(after.path))
    if after.probe_deadline is not None and not before.awaiting_probe:
        commands.append(ProbeDirect(probe=after.probe_seq, deadline=after.probe_deadline))
    return tuple(commands)
