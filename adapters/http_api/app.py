"""App factory of the control API: typed keys, middleware order, routes, upkeep lifecycle.

The one rule: the app is built from what bootstrap passes in (`ControlService`, `ApiSettings`)
and owns no other state than its metrics and its admission budgets (admission.py); serve it
with `make_runner(app)` so the access log is `RouteAccessLogger` (route templates, never request
lines) and requests the HTTP parser rejects get the JSON 400 of rejections.py.

Lifecycle (`cleanup_ctx`): while the app runs, a task calls `ControlService.tick()` every
`settings.tick_interval` seconds (nonce, limiter and join-key upkeep, folded audit summaries)
and prunes the admission budgets; on shutdown every peer-map waiter is woken so long-polls end
promptly, the task is cancelled and the folded audit summaries still open are written
(`ControlService.flush_audit`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final

import structlog
from aiohttp import hdrs, web
from rustynet.adapters.http_api.admission import admission_gate
from rustynet.adapters.http_api.errors import SERVER_NAME
from rustynet.adapters.http_api.keys import (
    ADMISSION_KEY,
    EXTRA_METRICS_KEY,
    METRICS_KEY,
    SERVICE_KEY,
    SETTINGS_KEY,
)
from rustynet.adapters.http_api.metrics import UNMATCHED_ROUTE, ApiMetrics
from rustynet.adapters.http_api.middleware import (
    ACCESS_LOG_SINK,
    RouteAccessLogger,
    error_middleware,
    json_content_type,
    metrics_middleware,
    query_guard,
)
from rustynet.adapters.http_api.preauth import authenticate_first
from rustynet.adapters.http_api.rejections import rejecting_runner
from rustynet.adapters.http_api.routes import add_routes
from rustynet.adapters.http_api.settings import ApiSettings

from rustynet.application.admission import RequestAdmission
from rustynet.application.control import ControlService

SHUTDOWN_TIMEOUT: Final = 5.0  # seconds a long-poll may take to notice shutdown
_log = structlog.get_logger("rustynet.http")

__all__ = ["ApiSettings", "create_app", "make_runner"]


async def _upkeep(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE_KEY]
    admission = app[ADMISSION_KEY]
    interval = app[SETTINGS_KEY].tick_interval

    async def loop(every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                admission.prune()
                await service.tick()
            except Exception as exc:  # noqa: BLE001 - upkeep must survive a failed round
                _log.warning("control.tick_failed", error_type=type(exc).__name__)

    task = asyncio.create_task(loop(interval)) if interval is not None else None
    try:
        yield
    finally:
        service.waiters.wake_all()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await service.flush_audit()  # graceful shutdown: no counted failure is lost


async def _server_header(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER_NAME  # not aiohttp's `Python/3.x aiohttp/3.y`


async def _wake_waiters(app: web.Application) -> None:
    app[SERVICE_KEY].waiters.wake_all()


def create_app(
    service: ControlService,
    settings: ApiSettings | None = None,
    extra_metrics: Sequence[Callable[[], str]] = (),
) -> web.Application:
    """The control API application for `service`; `extra_metrics` add text to /metrics."""
    settings = settings if settings is not None else ApiSettings()
    app = web.Application(
        middlewares=[
            metrics_middleware,
            error_middleware,
            admission_gate,  # per-IP token spent before any body is read (admission.py)
            authenticate_first,  # credential checked before any body is read (preauth.py)
            query_guard,
            json_content_type,
        ],
        # The server-wide ceiling; each route reads at most its own cap (read_json).
        client_max_size=max(settings.max_body_bytes, settings.max_document_bytes),
        # Wins over whatever runner serves the app (run_app, test servers): the default access
        # logger prints the request line, query string included.
        handler_args={
            "access_log_class": RouteAccessLogger,
            "access_log": ACCESS_LOG_SINK,
        },
    )
    app[SERVICE_KEY] = service
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = ApiMetrics()
    app[ADMISSION_KEY] = RequestAdmission.for_limits(
        service.clock, service.settings.limits, service.settings.admin_per_ip
    )
    app[EXTRA_METRICS_KEY] = tuple(extra_metrics)
    add_routes(app)
    app.on_response_prepare.append(_server_header)
    app.on_shutdown.append(_wake_waiters)
    app.cleanup_ctx.append(_upkeep)
    return app


def make_runner(app: web.Application, shutdown_timeout: float = SHUTDOWN_TIMEOUT) -> web.AppRunner:
    """A runner that logs access through `RouteAccessLogger` (never the request line) and
    answers requests the HTTP parser refuses (JSON 400), and expectations other than
    `100-continue` (JSON 417, expect.py), counted as `unmatched`."""
    metrics = app[METRICS_KEY]

    def on_rejected(method: str, status: int) -> None:
        metrics.observe_request(method, UNMATCHED_ROUTE, status, 0.0)

    return rejecting_runner(
        app,
        on_rejected=on_rejected,
        access_log_class=RouteAccessLogger,
        access_log=ACCESS_LOG_SINK,
        shutdown_timeout=shutdown_timeout,
        handle_signals=False,
    )
