"""Typed application keys: what the app carries for its handlers and middleware."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from aiohttp import web
from rustynet.adapters.http_api.metrics import ApiMetrics
from rustynet.adapters.http_api.settings import ApiSettings

from rustynet.application.admission import RequestAdmission
from rustynet.application.control import ControlService

SERVICE_KEY = web.AppKey("service", ControlService)
SETTINGS_KEY = web.AppKey("settings", ApiSettings)
METRICS_KEY = web.AppKey("metrics", ApiMetrics)
ADMISSION_KEY = web.AppKey("admission", RequestAdmission)
# More Prometheus text for /metrics from outside the app (the connection guard's counters).
EXTRA_METRICS_KEY: Final[web.AppKey[tuple[Callable[[], str], ...]]] = web.AppKey("extra_metrics")
# The query parameters each route takes, by (method, route template); absent: none.
QUERY_KEY: Final[web.AppKey[Mapping[tuple[str, str], frozenset[str]]]] = web.AppKey("query")
