"""Prometheus metrics of the control API, rendered by hand in the text exposition format 0.0.4.

The one rule: labels are bounded and never carry request data. A route label is the route
TEMPLATE (`/v1/admin/nodes/{id}`), never the path, so a scanner cannot blow up the series
count and no id or query string reaches a scrape; unmatched requests share one `unmatched`
label.

Why not `prometheus_client`: the API needs a handful of counters, one histogram and three
gauges in one process; the exposition format is a few lines of text (tested by parsing it
back), and the library would add a global registry we would have to reset between test apps.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from typing import Final

import attrs

from rustynet.application.control_types import ControlStats

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED_ROUTE: Final = "unmatched"
# Seconds; a long-poll that waits ~60 s lands in the last finite bucket or +Inf.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@attrs.define
class _Histogram:
    counts: list[int] = attrs.field(factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds


@attrs.define
class ApiMetrics:
    """In-process counters; one instance per app (stored under an AppKey)."""

    requests: defaultdict[tuple[str, str, str], int] = attrs.field(factory=lambda: defaultdict(int))
    latency: defaultdict[tuple[str, str], _Histogram] = attrs.field(
        factory=lambda: defaultdict(_Histogram)
    )
    rate_limited: defaultdict[str, int] = attrs.field(factory=lambda: defaultdict(int))
    auth_failures: int = 0

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

    def render(self, stats: ControlStats) -> str:
        """The exposition text (format 0.0.4): HTTP series plus the use cases' `stats`."""
        out: list[str] = []
        out += [
            "# HELP rustynet_http_requests_total HTTP requests by method, route and status.",
            "# TYPE rustynet_http_requests_total counter",
        ]
        for (method, route, status), count in sorted(self.requests.items()):
            labels = _labels([("method", method), ("route", route), ("status", status)])
            out.append(f"rustynet_http_requests_total{labels} {count}")
        out += [
            "# HELP rustynet_http_request_duration_seconds HTTP request latency by route.",
            "# TYPE rustynet_http_request_duration_seconds histogram",
        ]
        for (method, route), hist in sorted(self.latency.items()):
            base = [("method", method), ("route", route)]
            cumulative = 0
            for bound, count in zip(LATENCY_BUCKETS, hist.counts, strict=False):
                cumulative += count
                labels = _labels([*base, ("le", _number(bound))])
                out.append(f"rustynet_http_request_duration_seconds_bucket{labels} {cumulative}")
            cumulative += hist.counts[-1]
            labels = _labels([*base, ("le", "+Inf")])
            out.append(f"rustynet_http_request_duration_seconds_bucket{labels} {cumulative}")
            out.append(f"rustynet_http_request_duration_seconds_sum{_labels(base)} {hist.total!r}")
            out.append(f"rustynet_http_request_duration_seconds_count{_labels(base)} {cumulative}")
        out += [
            "# HELP rustynet_http_rate_limited_total Responses with status 429, by route.",
            "# TYPE rustynet_http_rate_limited_total counter",
        ]
        for route, count in sorted(self.rate_limited.items()):
            out.append(f"rustynet_http_rate_limited_total{_labels([('route', route)])} {count}")
        for name, kind, help_text, value in (
            ("enrollments_total", "counter", "Nodes that completed enrollment.", stats.enrollments),
            (
                "rate_limit_rejections_total",
                "counter",
                "Requests answered 429 by any rate limit (admission, use case, failure budget).",
                sum(self.rate_limited.values()),
            ),
            (
                "auth_failures_total",
                "counter",
                "Requests answered 401: failed authentications.",
                self.auth_failures,
            ),
            (
                "peer_map_waiters",
                "gauge",
                "Long-poll peer-map requests waiting now.",
                stats.active_waiters,
            ),
            (
                "pending_enrollments",
                "gauge",
                "Enrollment challenges not yet answered.",
                stats.pending_enrollments,
            ),
            (
                "policy_version",
                "gauge",
                "Version of the active policy (0: none, deny all).",
                stats.policy_version,
            ),
        ):
            out += [
                f"# HELP rustynet_{name} {help_text}",
                f"# TYPE rustynet_{name} {kind}",
                f"rustynet_{name} {value}",
            ]
        return "\n".join(out) + "\n"
