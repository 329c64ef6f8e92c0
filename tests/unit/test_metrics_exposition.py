"""/metrics through `prometheus_client`: one registry per app (two apps in one process keep
their own counts), the process metrics an operator expects, the names and labels of before."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from rustynet.adapters.http_api.metrics import ApiMetrics
from rustynet.adapters.support.prometheus import app_registry, render

from rustynet.application.control_types import ControlStats

STATS = ControlStats(policy_version=3, active_waiters=1, enrollments=2, pending_enrollments=0)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_two_apps_in_one_process_count_separately() -> None:
    """Each ApiMetrics has its own registry: nothing global is shared or double-registered."""
    first, second = ApiMetrics(), ApiMetrics()
    first.observe_request("GET", "/healthz", 200, 0.001)
    first.observe_request("GET", "/healthz", 200, 0.002)
    second.observe_request("GET", "/healthz", 200, 0.001)
    key = (
        "rustynet_http_requests_total",
        (("method", "GET"), ("route", "/healthz"), ("status", "200")),
    )
    assert _samples(first.render(STATS))[key] == 2
    assert _samples(second.render(STATS))[key] == 1


def test_exposition_keeps_the_names_and_adds_process_metrics() -> None:
    """The control API's series keep their names and labels; RSS, CPU and fds are there."""
    metrics = ApiMetrics()
    metrics.observe_request("POST", "/v1/enroll/complete", 200, 0.02)
    metrics.count_refusal("/v1/enroll/start", 429)
    metrics.count_refusal("/v1/admin/nodes", 401)
    samples = _samples(metrics.render(STATS))
    names = {name for name, _ in samples}
    assert {
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    } <= names
    route = (("method", "POST"), ("route", "/v1/enroll/complete"))
    assert samples[("rustynet_http_request_duration_seconds_count", route)] == 1
    assert (
        samples[("rustynet_http_request_duration_seconds_bucket", (("le", "0.025"), *route))] == 1
    )
    assert samples[("rustynet_http_rate_limited_total", (("route", "/v1/enroll/start"),))] == 1
    assert samples[("rustynet_rate_limit_rejections_total", ())] == 1
    assert samples[("rustynet_auth_failures_total", ())] == 1
    assert samples[("rustynet_enrollments_total", ())] == 2
    assert samples[("rustynet_policy_version", ())] == 3
    assert samples[("rustynet_peer_map_waiters", ())] == 1
    assert not any(name.endswith("_created") for name in names)


def test_an_empty_registry_has_only_process_metrics() -> None:
    """app_registry without collectors: the process families alone, no python_info."""
    text = render(app_registry())
    assert "process_resident_memory_bytes" in text
    assert "python_info" not in text
    assert "Python" not in text
