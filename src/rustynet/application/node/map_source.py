"""Where the node's applied peer map came from, and the stored map held back at start.

The one rule: after a (re)start no peer is configured until the control plane has spoken: it
either delivers a newer map, or confirms that the signed map saved before the restart is still
current (nothing newer than its serial). Only after `fallback_after` without any answer does
the node apply the saved map on its own, and `status` says so ("stored", with the time since
when control has been unreachable). A peer revoked while the daemon was down is therefore
never configured again, as long as control can be reached within that bound.

Sources: `none` (nothing applied yet), `control` (delivered or confirmed by control),
`stored` (the saved map, applied after the bound without control).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final, Literal

import attrs

from rustynet.domain.netmap import PeerMap

STORED_MAP_FALLBACK: Final = timedelta(seconds=30)
"""Default bound without the control plane before the saved map is applied."""

Source = Literal["none", "control", "stored"]


@attrs.define
class MapSource:
    """The held-back saved map (if any) and the source of what is applied."""

    waiting_since: datetime
    fallback_after: timedelta = STORED_MAP_FALLBACK
    held: PeerMap | None = None
    source: Source = "none"
    control_lost_since: datetime | None = None

    @classmethod
    def at_start(cls, now: datetime, saved: PeerMap | None, fallback_after: timedelta) -> MapSource:
        """A start: `saved` (already verified offline) is held back until control answers."""
        return cls(waiting_since=now, fallback_after=fallback_after, held=saved)

    @property
    def pending(self) -> bool:
        """True until control has answered once since the start (or the fallback applied)."""
        return self.source == "none"

    def control_answered(self, delivered: bool) -> PeerMap | None:
        """Control answered a poll. Returns the held map when control confirmed it current
        (nothing newer was `delivered`) before anything was applied; the caller applies it."""
        held, self.held = self.held, None
        was_pending = self.pending
        self.source, self.control_lost_since = "control", None
        return held if was_pending and not delivered else None

    def fallback_due(self, now: datetime) -> PeerMap | None:
        """The held map once `fallback_after` has passed without control (applied once)."""
        if not self.pending or now - self.waiting_since < self.fallback_after:
            return None
        held, self.held = self.held, None
        if held is None:
            return None  # nothing saved: stay empty (fail closed) until control answers
        self.source, self.control_lost_since = "stored", self.waiting_since
        return held

    def status_text(self) -> str:
        """`control`, `none (waiting for the control plane)` or `stored (... since T)`."""
        if self.source == "stored" and self.control_lost_since is not None:
            since = self.control_lost_since.isoformat()
            return f"stored (control plane unreachable since {since})"
        if self.source == "none":
            return f"none (waiting for the control plane since {self.waiting_since.isoformat()})"
        return self.source
