"""The controller's values: the frozen per-peer state `PeerPath`, its inputs (`Observation`,
`ProbeResult`), its effects (`UsePath`, `ProbeDirect`) and the `Transition` record it logs."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypeAlias

import attrs

from rustynet.domain.path.phases import (
    AWAITING,
    DIRECT_LIVE,
    PROBED,
    RELAYED,
    PathKind,
    PathPhase,
    PathTransitionError,
    Reason,
    status_path_of,
)


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


def _count(_: object, attribute: attrs.Attribute[int], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise PathTransitionError(f"{attribute.name} must be a non-negative int")


# --- inputs, outputs -------------------------------------------------------------------------


@attrs.frozen
class Observation:
    """What the daemon sees for the peer at a reconcile tick."""

    now: datetime = attrs.field(validator=_required_utc)
    last_handshake: datetime | None = attrs.field(validator=_optional_utc)
    relay_available: bool = attrs.field(validator=_bool)
    direct_evidence: datetime | None = attrs.field(default=None, validator=_optional_utc)
    """While relayed: when the tunnel last took authenticated packets from the peer on a
    direct endpoint (it moves there only for packets that decrypt), None if it did not."""
    direct_unlikely: bool = attrs.field(default=False, validator=_bool)
    """The NAT classes of both ends say no direct path can open (`domain.nat.direct_unlikely`):
    a direct attempt goes to the relay as soon as it is up instead of after `direct_timeout`,
    until the direct path was seen working (`PeerPath.direct_worked`); relay probes still try
    it, and an attempt after they succeeded takes its full time."""


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
    direct_worked: bool = attrs.field(default=False, validator=_bool)
    """The direct path was seen working for this peer (direct-up, or relay probes that
    succeeded): from then on its NAT classes no longer cut a direct attempt short."""

    def __attrs_post_init__(self) -> None:
        if not self.since <= self.as_of:
            raise PathTransitionError("since must not be after as_of")
        if self.last_seen is not None and not self.since < self.last_seen <= self.as_of:
            raise PathTransitionError("last_seen must be after since and not after as_of")
        if self.phase in DIRECT_LIVE and self.last_seen is None:
            raise PathTransitionError("a direct-up session has a handshake")
        if (self.next_probe_at is not None) != (self.phase in PROBED):
            raise PathTransitionError("next_probe_at is set exactly while relayed or direct-up")
        if (self.probe_deadline is not None) != (self.phase in AWAITING):
            raise PathTransitionError("probe_deadline is set exactly while probing")
        if self.successes and self.phase not in RELAYED:
            raise PathTransitionError("probe successes count only while relayed")
        if self.failures and self.phase not in DIRECT_LIVE:
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
        return self.phase in AWAITING
