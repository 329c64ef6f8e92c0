"""The relay's Prometheus metrics: its service counters and refusals, collected at scrape time.

The data path only bumps the integers of `RelayCounters` (and `Rejections.count`);
`RelayCollector` turns them into metric families when /metrics is scraped, in the app's own
registry with the process metrics (`rustynet.adapters.support.prometheus`). Labels are fixed:
the drop reasons of `DROP_REASONS`, nothing from a request or a node.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from rustynet.adapters.relay.rejections import Rejections
from rustynet.adapters.support.prometheus import counter, gauge, labelled_counter

from rustynet.application.relay import DROP_REASONS, RelayService


class RelayCollector(Collector):
    """The relay's families, from `service.counters` and the app's `rejections`."""

    def __init__(self, service: RelayService, rejections: Rejections) -> None:
        self._service = service
        self._rejections = rejections

    def collect(self) -> Iterator[Metric]:
        """One family per counter and gauge, values read now."""
        c = self._service.counters
        yield counter(
            "rustynet_relay_frames_forwarded_total",
            "Frames forwarded to a session.",
            c.frames_forwarded,
        )
        yield counter(
            "rustynet_relay_bytes_forwarded_total", "Payload bytes forwarded.", c.bytes_forwarded
        )
        yield labelled_counter(
            "rustynet_relay_frames_dropped_total",
            "Frames dropped, by reason.",
            "reason",
            [(reason, c.dropped[reason]) for reason in DROP_REASONS],
        )
        for name, help_text, value in (
            ("auth_successes_total", "Sessions authenticated.", c.auth_successes),
            ("auth_failures_total", "Failed auth or renewal.", c.auth_failures),
            ("renewals_total", "Tokens renewed in session.", c.renewals),
            ("expired_sessions_total", "Sessions closed at expiry.", c.expired_sessions),
            ("handshake_timeouts_total", "No auth in time.", c.handshake_timeouts),
            ("rejected_connections_total", "Refused: relay full.", c.rejected_connections),
            ("replaced_sessions_total", "Closed: node over its limit.", c.replaced_sessions),
            (
                "handshakes_limited_total",
                "Refused 429: source over its budget.",
                c.handshakes_limited,
            ),
            ("revoked_sessions_total", "Closed: node revoked (feed).", c.revoked_sessions),
            ("revoked_refusals_total", "Auth or renewal of a revoked node.", c.revoked_refusals),
            ("revocation_feeds_applied_total", "Feeds verified and applied.", c.feeds_applied),
            ("revocation_feeds_rejected_total", "Feeds refused (forged, stale).", c.feeds_rejected),
            ("revocation_feed_failures_total", "Feed polls that failed.", c.feed_failures),
            (
                "rejected_requests_total",
                "Requests refused outside the app (HTTP parser; an Expect other than "
                "100-continue).",
                self._rejections.count,
            ),
        ):
            yield counter(f"rustynet_relay_{name}", help_text, value)
        yield gauge("rustynet_relay_open_sessions", "Authenticated sessions now.", c.open_sessions)
        yield gauge(
            "rustynet_relay_pending_handshakes",
            "Connections not yet authenticated.",
            c.pending_handshakes,
        )
        yield gauge(
            "rustynet_relay_revocation_feed_up", "The last feed poll got an answer.", c.feed_up
        )
        yield gauge("rustynet_relay_nodes", "Nodes with an open session.", self._service.node_count)
