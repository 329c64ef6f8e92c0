"""Request pipeline: metrics → error table → secret-query guard → JSON content type.

The one rule: nothing about a request is logged or counted before the secret-query guard ran,
and what is logged is the route TEMPLATE, method, status and duration — never the request
line, query string, headers or body. aiohttp's default access log prints the request line
(`GET /v1/peermap?token=...`), so the app is served with `RouteAccessLogger` instead.

Order (outermost first): `metrics_middleware` times every request and counts it under its
template with the FINAL status; `error_middleware` turns every exception into the one JSON
error shape (errors.py); `admission_gate` (admission.py) spends the client's per-IP token
before a body-reading route reads its body; `authenticate_first` (preauth.py) checks the
credential of such an admin or node route before its body is read; `query_guard` refuses a
query parameter named like a secret, one the route does not take, and a repeated one;
`json_content_type` refuses a body that is not `application/json`. Body size caps are applied
where the body is read (`read_json`), per route, before the body is buffered. Requests the HTTP
parser refuses (rejections.py) and expectations other than `100-continue` (expect.py) never
reach this pipeline.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Final, TypeVar

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.log import access_logger as aiohttp_access_logger
from aiohttp.typedefs import Handler
from rustynet.adapters.http_api.errors import (
    JSON_CONTENT_TYPE,
    ApiError,
    error_response,
    map_exception,
)
from rustynet.adapters.http_api.expect import send_continue
from rustynet.adapters.http_api.keys import METRICS_KEY, QUERY_KEY, SETTINGS_KEY
from rustynet.adapters.http_api.metrics import UNMATCHED_ROUTE

from rustynet.application.errors import BadRequest, FieldProblem, ValidationError
from rustynet.ports.wire.codec import CONVERTER, WireError, parse_json_object, structure

T = TypeVar("T")

ACCESS_LOGGER_NAME: Final = "rustynet.http.access"
ERROR_LOGGER_NAME: Final = "rustynet.http"
# aiohttp's API demands a stdlib logger for its access-log class; ours writes through structlog
# (RouteAccessLogger), so aiohttp gets its own access logger, which nothing writes to.
ACCESS_LOG_SINK: Final = aiohttp_access_logger
# token, key, secret, password/passwd, passphrase, api_key/api-key, anywhere in the name.
_SECRET_PARAM: Final = re.compile(r"(?i)token|key|secret|passw(?:or)?d|passphrase")
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_log = structlog.get_logger(ERROR_LOGGER_NAME)
_access_log = structlog.get_logger(ACCESS_LOGGER_NAME)


def route_template(request: web.BaseRequest) -> str:
    """The matched route's template (`/v1/admin/nodes/{id}`), or `unmatched`."""
    try:
        match_info = getattr(request, "match_info", None)
    except AssertionError:  # aiohttp asserts a resolved route: the parser refused the request
        return UNMATCHED_ROUTE
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(match_info, "http_exception", None) is not None:
        return UNMATCHED_ROUTE
    return str(resource.canonical)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request under its route template and final status."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        status = exc.status
        raise
    else:
        status = response.status
        return response
    finally:
        request.app[METRICS_KEY].observe_request(
            request.method, route_template(request), status, time.perf_counter() - started
        )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as `{"error", "detail"}` JSON; a 500 never carries a trace."""
    try:
        return await handler(request)
    except Exception as exc:  # noqa: BLE001 - the one place every failure becomes a response
        api_error = map_exception(exc)
        if api_error.status >= 500:
            # The client gets a fixed text; the operator gets the trace, which the redacting
            # handler (rustynet.adapters.logging) scrubs of secret-shaped text.
            _log.error(
                "http.request_failed",
                route=route_template(request),
                error_type=type(exc).__name__,
                exc_info=exc,
            )
        request.app[METRICS_KEY].count_refusal(route_template(request), api_error.status)
        return error_response(api_error)


@web.middleware
async def query_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A query parameter named like a secret → 400 (its value is never echoed or logged); one
    the route does not take (routes.QUERY), or one given twice → 400 naming what it takes."""
    names = [name for name, _ in request.query.items()]  # every occurrence, repeats too
    if any(_SECRET_PARAM.search(name) for name in names):
        raise ApiError(
            400,
            "bad_request",
            "credentials are not accepted in the query string; use the Authorization header",
        )
    if names:
        taken = request.app[QUERY_KEY].get((request.method, route_template(request)), frozenset())
        if not set(names) <= taken or len(set(names)) != len(names):
            accepted = ", ".join(sorted(taken)) or "none"
            raise ApiError(
                400,
                "bad_request",
                f"unknown or repeated query parameter; this route takes: {accepted}",
            )
    return await handler(request)


def _is_json(content_type: str) -> bool:
    return content_type == JSON_CONTENT_TYPE


@web.middleware
async def json_content_type(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request that carries a body must say `Content-Type: application/json`."""
    if (
        request.method in _BODY_METHODS
        and request.body_exists
        and not _is_json(request.content_type)
    ):
        raise ApiError(415, "unsupported_media_type", "request body must be application/json")
    return await handler(request)


def body_invalid(detail: str) -> BadRequest:
    """The request body is missing or did not arrive: 400."""
    return BadRequest(detail)


def refused(error: WireError) -> BadRequest:
    """A body the wire codec refused: 400 `bad_request`, with the first pointer when known."""
    if not error.problems:
        return BadRequest(error.detail)
    problems = [FieldProblem(p.pointer, p.message) for p in error.problems]
    return ValidationError(problems, error.detail)


async def read_json_object(request: web.Request, limit: int) -> dict[str, Any]:
    """Read at most `limit` bytes of body and parse it as one strict JSON object.

    Content-Length above the cap → 413 before reading; a chunked body is read up to one byte
    past the cap and refused the same way, so the cap holds without a Content-Length too.
    """
    if not request.body_exists:
        raise body_invalid("a JSON object body is required")
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
    if not _is_json(request.content_type):
        raise ApiError(415, "unsupported_media_type", "request body must be application/json")
    await send_continue(request)  # admission and credential passed: now invite the body
    # `read(n)` returns what has arrived (up to n), not n bytes: a body larger than one TCP/TLS
    # read (a 150 KB policy document) came back cut short and failed as "not JSON".
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        try:
            chunk = await request.content.read(limit + 1 - size)
        except ConnectionResetError:
            # The client went away mid-body, or the connection guard aborted it at its body
            # deadline: a client's doing, so a 400 without an error log (no reply arrives).
            raise body_invalid("the request body did not arrive") from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
    try:
        return parse_json_object(b"".join(chunks))
    except WireError as exc:
        raise refused(exc) from exc


async def read_json(request: web.Request, cls: type[T]) -> T:
    """Read a capped JSON body and structure it strictly into the wire type `cls` (400 with
    pointers)."""
    limit = request.app[SETTINGS_KEY].max_body_bytes
    body = await read_json_object(request, limit)
    try:
        return structure(CONVERTER, body, cls)
    except WireError as exc:
        raise refused(exc) from exc


class RouteAccessLogger(AbstractAccessLogger):
    """Access log line: method, route template, status, duration. No path, query or headers.

    Events go to the structlog logger `rustynet.http.access` as bound key-values, so the
    redacting handler that bootstrap installs (rustynet.adapters.logging) renders them. The
    stdlib logger aiohttp hands in (`ACCESS_LOG_SINK`) only answers `enabled`; it is never
    written to.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write one access record for a finished request."""
        _access_log.info(
            "http.request_served",
            method=request.method,
            route=route_template(request),
            status=response.status,
            duration_ms=round(time * 1000, 3),
        )

    @property
    def enabled(self) -> bool:
        """Only format records someone will see."""
        return self.logger.isEnabledFor(logging.INFO)
