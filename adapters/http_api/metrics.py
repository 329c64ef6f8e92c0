"""Prometheus metrics of the control API: counted in process, exposed by `prometheus_client`.

The one rule: labels are bounded and never carry request data. A route label is the route
TEMPLATE (`/v1/admin/nodes/{id}`), never the path, so a scanner cannot blow up the series
count and no id or query string reaches a scrape; unmatched requests share one `unmatched`
label.

The request path only bumps integers (`observe_request`, `count_refusal`); `ApiMetrics` is
also the collector that turns them into metric families when /metrics is scraped, in the app's
own registry with the process metrics (`rustynet.adapters.support.prometheus`).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator
from typing import Final

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from rustynet.adapters.support.prometheus import (
    CONTENT_TYPE,
    app_registry,
    counter,
    gauge,
    labelled_counter,
    render,
)

from rustynet.application.control_types import ControlStats

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "UNMATCHED_ROUTE", "ApiMetrics"]

UNMATCHED_ROUTE: Final = "unmatched"
# Seconds; a long-poll that waits ~60 s lands in the last finite bucket or +Inf.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BUCKET_LABELS: Final = (*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf")  # as the library


@attrs.define
class _Histogram:
    counts: list[int] = attrs.field(factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for label, count in zip(_BUCKET_LABELS, self.counts, strict=True):
            running += count
            out.append((label, running))
        return out


@attrs.define(eq=False)  # hashable by identity: the registry keys its collectors
class ApiMetrics(Collector):
    """In-process counters; one instance per app (stored under an AppKey), collected into the
    app's own `registry`."""

    requests: defaultdict[tuple[str, str, str], int] = attrs.field(factory=lambda: defaultdict(int))
    latency: defaultdict[tuple[str, str], _Histogram] = attrs.field(
        factory=lambda: defaultdict(_Histogram)
    )
    rate_limited: defaultdict[str, int] = attrs.field(factory=lambda: defaultdict(int))
    auth_failures: int = 0
    registry: CollectorRegistry = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.registry = app_registry(self)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one finished request and its latency under its route template."""
        self.requests[(method, route, str(status))] += 1
        self.latency[(method, route)].observe(seconds)

    def count_refusal(self, route: str, status: int) -> None:
        """An error answer left the app: a 429 is a rate-limit refusal, a 401 a failed
        authentication (the only answers of those statuses; counted here, where the status is
        final, they count exactly what the clients were told)."""
        if status == 429:
            self.rate_limited[route] += 1
        elif status == 401:
            self.auth_failures += 1

    def collect(self) -> Iterator[Metric]:
        """The HTTP families, made from the counters at scrape time."""
        requests = CounterMetricFamily(
            "rustynet_http_requests_total",
            "HTTP requests by method, route and status.",
            labels=["method", "route", "status"],
        )
        for labels, count in sorted(self.requests.items()):
            requests.add_metric(labels, count)
        yield requests
        latency = HistogramMetricFamily(
            "rustynet_http_request_duration_seconds",
            "HTTP request latency by route.",
            labels=["method", "route"],
        )
        for route_labels, hist in sorted(self.latency.items()):
            latency.add_metric(route_labels, hist.cumulative(), hist.total)
        yield latency
        yield labelled_counter(
            "rustynet_http_rate_limited_total",
            "Responses with status 429, by route.",
            "route",
            sorted(self.rate_limited.items()),
        )
        yield counter(
            "rustynet_rate_limit_rejections_total",
            "Requests answered 429 by any rate limit (admission, use case, failure budget).",
            sum(self.rate_limited.values()),
        )
        yield counter(
            "rustynet_auth_failures_total",
            "Requests answered 401: failed authentications.",
            self.auth_failures,
        )

    def render(self, stats: ControlStats) -> str:
        """The exposition text: process and HTTP families plus the use cases' `stats`."""
        return render(
            self.registry,
            (
                counter(
                    "rustynet_enrollments_total",
                    "Nodes that completed enrollment.",
                    stats.enrollments,
                ),
                gauge(
                    "rustynet_peer_map_waiters",
                    "Long-poll peer-map requests waiting now.",
                    stats.active_waiters,
                ),
                gauge(
                    "rustynet_pending_enrollments",
                    "Enrollment challenges not yet answered.",
                    stats.pending_enrollments,
                ),
                gauge(
                    "rustynet_policy_version",
                    "Version of the active policy (0: none, deny all).",
                    stats.policy_version,
                ),
            ),
        )
