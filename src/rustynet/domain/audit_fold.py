"""Folding of repeated, identical audit events (authentication failures) into one entry.

The one rule: no failure is lost and none is written twice. The first failure of a key is
written at once (an operator sees an attack start without delay); the repeats of that key
within the window are only counted, and when the window closes (or on `drain`, at a graceful
shutdown) one summary entry carries the count of the whole window, the one already written
included, with the first and last time seen.

Theory of operation. A key is (action, actor, target, canonical details): the same source
failing in the same way against the same target. A window opens at the first failure of a key
and lasts `window`; a failure at or after its end flushes it and opens the next one, so a key
costs at most two audit entries per window, however fast it repeats. `due(now)` hands back the
closed windows (the driver calls it from its periodic tick), `drain()` every open one. A window
that saw one failure has nothing to add to the entry already written and yields no summary.

Memory is bounded by `max_keys`. When the table is full a new key is folded into its action's
overflow key (actor, target `*`, reason `fold-table-full`): still counted, never dropped, and
at most one extra slot per action. The driver bounds how many distinct keys a source can open
(the per-IP failure bucket, `limits.LimitPolicy.auth_failures_per_ip`). A crash (no `drain`)
loses at most the uncounted repeats of the open windows; their first entries are on disk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

import attrs

from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.signed import JsonObject, JsonValue, canonical_json

DEFAULT_FOLD_WINDOW: Final = timedelta(seconds=60)
DEFAULT_MAX_FOLD_KEYS: Final = 10_000
OVERFLOW_REASON: Final = "fold-table-full"
# Detail fields a summary adds; the event's own details may not use them.
SUMMARY_FIELDS: Final = frozenset({"count", "first_seen", "last_seen", "window_seconds"})


def _time_text(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def _aware(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise LocalProtocolError("fold times must be timezone-aware datetimes")
    return now


@attrs.frozen
class FoldKey:
    """What makes two failures identical: action, actor (source), target and details."""

    action: str
    actor: str
    target: str
    details_json: str

    @classmethod
    def of(
        cls, action: str, actor: str, target: str, details: Mapping[str, JsonValue] | None
    ) -> FoldKey:
        """The key of one event; its details must not use the summary's field names."""
        body = dict(details or {})
        if SUMMARY_FIELDS & body.keys():
            raise LocalProtocolError(f"details may not use {sorted(SUMMARY_FIELDS)}")
        return cls(action, actor, target, canonical_json(body).decode("utf-8"))

    def overflow(self) -> FoldKey:
        """The catch-all key of this action when the table is full."""
        return FoldKey.of(self.action, "*", "*", {"reason": OVERFLOW_REASON})


@attrs.frozen
class Summary:
    """One closed window of a key that repeated: the audit entry to append."""

    key: FoldKey
    count: int
    first_seen: datetime
    last_seen: datetime
    window: timedelta

    def details(self) -> JsonObject:
        """The event's own details plus count, first/last seen and window length (seconds)."""
        body: JsonObject = {
            "count": self.count,
            "first_seen": _time_text(self.first_seen),
            "last_seen": _time_text(self.last_seen),
            "window_seconds": max(1, int(self.window.total_seconds())),
        }
        own = json.loads(self.key.details_json)
        if not isinstance(own, dict):
            raise LocalProtocolError("fold key details are a JSON object")
        return {**own, **body}


@attrs.define
class _Window:
    first_seen: datetime
    last_seen: datetime
    count: int


class AuditFolder:
    """The open windows of one process; every method takes an explicit `now`."""

    def __init__(
        self, window: timedelta = DEFAULT_FOLD_WINDOW, max_keys: int = DEFAULT_MAX_FOLD_KEYS
    ) -> None:
        if not isinstance(window, timedelta) or window <= timedelta(0):
            raise LocalProtocolError("the fold window must be a positive timedelta")
        if not isinstance(max_keys, int) or max_keys < 1:
            raise LocalProtocolError("max_keys must be a positive int")
        self.window = window
        self.max_keys = max_keys
        self._open: dict[FoldKey, _Window] = {}

    def __len__(self) -> int:
        return len(self._open)

    def observe(self, key: FoldKey, now: datetime) -> tuple[FoldKey | None, list[Summary]]:
        """Count one failure. Returns the key to write at once (None: folded into an open
        window) and the summaries that must be appended first (this key's closed window)."""
        _aware(now)
        flushed: list[Summary] = []
        if key not in self._open and len(self._open) >= self.max_keys:
            flushed = self.due(now)  # make room from closed windows first
            if len(self._open) >= self.max_keys:
                key = key.overflow()
        current = self._open.get(key)
        if current is not None and now >= current.first_seen + self.window:
            flushed.extend(self._close(key))
            current = None
        if current is None:
            self._open[key] = _Window(now, now, 1)
            return key, flushed
        current.count += 1
        current.last_seen = max(current.last_seen, now)
        return None, flushed

    def due(self, now: datetime) -> list[Summary]:
        """Close every window that has ended by `now`; the summaries of those that repeated."""
        _aware(now)
        ended = [k for k, w in self._open.items() if now >= w.first_seen + self.window]
        return [s for k in ended for s in self._close(k)]

    def drain(self) -> list[Summary]:
        """Close every window (graceful shutdown): nothing counted is left behind."""
        return [s for k in list(self._open) for s in self._close(k)]

    def pending(self) -> int:
        """Failures counted but not yet in any entry (the repeats of the open windows)."""
        return sum(w.count - 1 for w in self._open.values())

    def restore(self, summaries: list[Summary]) -> None:
        """Put back summaries whose write failed, so a later flush writes them."""
        for s in summaries:
            current = self._open.get(s.key)
            if current is None:
                self._open[s.key] = _Window(s.first_seen, s.last_seen, s.count)
            else:  # a window reopened meanwhile: merge (first entry of it already written)
                current.count += s.count
                current.first_seen = min(current.first_seen, s.first_seen)
                current.last_seen = max(current.last_seen, s.last_seen)

    def _close(self, key: FoldKey) -> list[Summary]:
        closed = self._open.pop(key)
        if closed.count < 2:
            return []
        return [Summary(key, closed.count, closed.first_seen, closed.last_seen, self.window)]
