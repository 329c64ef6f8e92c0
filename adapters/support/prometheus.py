"""Prometheus exposition for the control plane and the relay, through `prometheus_client`.

Each app owns one `CollectorRegistry` (never the library's global one, so several apps in one
process, as in the tests, do not collide) holding the process metrics an operator expects
(`process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`, ...: the
library's `ProcessCollector`; not its `python_info`, which would name the Python version,
as no response of ours does) and the app's own collector. The app's
counters stay plain integers bumped on the request path; a collector turns them into metric
families only when /metrics is scraped, so counting costs a request nothing more than before.
The text is the library's exposition format 0.0.4 (`generate_latest`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4


def app_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of its own for one app: process metrics plus `collectors`."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


class _Families(Collector):
    """Families made for one scrape, as a collector `generate_latest` can read."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def render_families(families: Iterable[Metric]) -> str:
    """The exposition text of `families`."""
    return generate_latest(_Families(families)).decode("utf-8")


def render(registry: CollectorRegistry, extra: Iterable[Metric] = ()) -> str:
    """The exposition text of `registry` (and of `extra`, families known only now)."""
    return render_families(itertools.chain(registry.collect(), extra))


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """An unlabelled counter family (`name` ends in `_total`)."""
    return CounterMetricFamily(name, documentation, value=value)


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    """An unlabelled gauge family."""
    return GaugeMetricFamily(name, documentation, value=value)


def labelled_counter(
    name: str, documentation: str, label: str, values: Iterable[tuple[str, float]]
) -> CounterMetricFamily:
    """A counter family with one label, one sample per (label value, count)."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for label_value, count in values:
        family.add_metric([label_value], count)
    return family
