"""Admission middleware: a request spends its per-IP token BEFORE its body is read.

The one rule: every request of a route that reads a body passes `RequestAdmission.admit`
(rustynet.application.admission) before the handler runs, so the token is spent whether the
body later parses or not, and a client over its budget gets 429 without its body being read.
`ROUTE_GATES` names the gate of every such route (tests/integration/test_hostile_input.py
checks that no body-reading route of the route table is missing from it). Routes without a
body (GET, DELETE, long polls) are limited by their use cases before any work, except the
relays' revocation feed, which has no credential and spends a `RELAY_FEED` token here.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler
from rustynet.adapters.http_api.keys import ADMISSION_KEY
from rustynet.adapters.http_api.middleware import route_template

from rustynet.application.admission import Gate

ROUTE_GATES: Final[dict[tuple[str, str], Gate]] = {
    ("POST", "/v1/enroll"): Gate.PUBLIC,
    ("POST", "/v1/enroll/complete"): Gate.PUBLIC,
    ("POST", "/v1/token/challenge"): Gate.PUBLIC,
    ("POST", "/v1/token"): Gate.PUBLIC,
    ("POST", "/v1/node/tunnel-key"): Gate.NODE,
    ("PUT", "/v1/node/endpoints"): Gate.NODE,
    ("POST", "/v1/relay-token"): Gate.NODE,
    ("GET", "/v1/relay/revocations"): Gate.RELAY_FEED,  # no body, but no credential either
    ("POST", "/v1/admin/join-keys"): Gate.ADMIN,
    ("PATCH", "/v1/admin/nodes/{id}"): Gate.ADMIN,
    ("POST", "/v1/admin/api-keys"): Gate.ADMIN,
    ("PUT", "/v1/admin/policy"): Gate.ADMIN,
    ("POST", "/v1/admin/policy/check"): Gate.ADMIN,
}


@web.middleware
async def admission_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Spend the client's per-IP token for a body-reading route, then handle the request."""
    gate = ROUTE_GATES.get((request.method, route_template(request)))
    if gate is not None:
        request.app[ADMISSION_KEY].admit(gate, request.remote or "unknown")
    return await handler(request)
