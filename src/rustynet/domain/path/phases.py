"""The path controller's vocabulary: the two paths, the phases, the transition reasons, the
errors and the `path` word each phase shows (`status_path_of`). Adding a phase starts here, then
its edges (`table.py`) and its handler (`controller.py`).
"""

from __future__ import annotations

import enum
from typing import Final, Literal, TypeAlias

from rustynet.domain.errors import LocalProtocolError


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
        return PathKind.RELAY if self in RELAYED else PathKind.DIRECT


RELAYED: Final = frozenset({PathPhase.RELAY, PathPhase.RELAY_PROBING})
DIRECT_LIVE: Final = frozenset({PathPhase.DIRECT_UP, PathPhase.DIRECT_PROBING})
"""Direct phases with a working session, probed to notice when it dies."""
PROBED: Final = RELAYED | DIRECT_LIVE
"""Phases with a probe schedule (`next_probe_at`)."""
AWAITING: Final = frozenset({PathPhase.RELAY_PROBING, PathPhase.DIRECT_PROBING})
"""Phases with one probe outstanding (`probe_deadline`)."""


class Reason(enum.Enum):
    """Why a transition happened (logged and shown by status)."""

    HANDSHAKE_SEEN = "handshake-seen"
    DIRECT_TIMEOUT = "direct-timeout"
    DIRECT_UNLIKELY = "direct-unlikely"
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
    DIRECT_SEEN = "direct-seen"


StatusPath: TypeAlias = Literal["direct", "relay", "trying", "none"]


def status_path_of(phase: PathPhase) -> StatusPath:
    """The path word of a phase (log fields): `none` when the direct path failed and no relay."""
    if phase is PathPhase.DIRECT_UNREACHABLE:
        return "none"
    return "relay" if phase in RELAYED else "direct"
