"""One handler per route: HTTP in → one `ControlService` call → HTTP out.

The one rule: no decisions here. A handler reads the credentials the request carries (bearer
text, `Rustynet-Node`, client address) without judging them, structures the body strictly,
calls exactly one use case and renders its result (bodies in and out are the wire types of
`rustynet.ports.wire.v1`, through the one codec); every refusal is an exception that the
error table (errors.py) renders. Missing credentials are passed on as empty strings so the use
case answers them exactly like wrong ones (credentials.py). The credential of a route that
takes a body was checked before its handler runs (preauth.py); the use case checks it again.
"""

from __future__ import annotations

import importlib.resources
from functools import cache
from typing import Any, Final

from aiohttp import web
from rustynet.adapters.http_api.credentials import admin_auth, client_ip, node_auth
from rustynet.adapters.http_api.errors import JSON_CONTENT_TYPE
from rustynet.adapters.http_api.keys import (
    EXTRA_METRICS_KEY,
    METRICS_KEY,
    SERVICE_KEY,
    SETTINGS_KEY,
)
from rustynet.adapters.http_api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from rustynet.adapters.http_api.middleware import read_json, read_json_object

from rustynet.application.control import ControlService
from rustynet.application.errors import ValidationError
from rustynet.ports.wire.codec import encode
from rustynet.ports.wire.v1 import (
    ApiKeyList,
    AuditList,
    CreateApiKeyRequest,
    CreateJoinKeyRequest,
    EndpointsRequest,
    EnrollCompleteRequest,
    EnrollRequest,
    Health,
    JoinKeyList,
    NodeList,
    PeerMapDelivery,
    RelayTokenRequest,
    RotateTunnelKeyRequest,
    TokenChallengeRequest,
    TokenRenewRequest,
    UpdateNodeRequest,
)

MAX_QUERY_INT: Final = 2**63 - 1
OPENAPI_RESOURCE: Final = "openapi.json"


# --- request helpers (translation only) -------------------------------------------------------


def _service(request: web.Request) -> ControlService:
    return request.app[SERVICE_KEY]


def _query_int(request: web.Request, name: str, default: int) -> int:
    """A non-negative decimal integer query parameter (strict: no sign, no spaces)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > MAX_QUERY_INT:
        raise ValidationError.at(f"?{name}", "expected a non-negative integer")
    return int(raw)


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(body=encode(value), status=status, content_type=JSON_CONTENT_TYPE)


# --- node routes ------------------------------------------------------------------------------


async def enroll(request: web.Request) -> web.Response:
    """POST /v1/enroll."""
    body = await read_json(request, EnrollRequest)
    return _json(await _service(request).enroll(body, client_ip=client_ip(request)))


async def enroll_complete(request: web.Request) -> web.Response:
    """POST /v1/enroll/complete."""
    body = await read_json(request, EnrollCompleteRequest)
    result = await _service(request).enroll_complete(body, client_ip=client_ip(request))
    return _json(result)


async def token_challenge(request: web.Request) -> web.Response:
    """POST /v1/token/challenge."""
    body = await read_json(request, TokenChallengeRequest)
    result = await _service(request).token_challenge(body, client_ip=client_ip(request))
    return _json(result)


async def renew_token(request: web.Request) -> web.Response:
    """POST /v1/token."""
    body = await read_json(request, TokenRenewRequest)
    result = await _service(request).renew_token(body, client_ip=client_ip(request))
    return _json(result)


async def rotate_tunnel_key(request: web.Request) -> web.Response:
    """POST /v1/node/tunnel-key."""
    body = await read_json(request, RotateTunnelKeyRequest)
    return _json(await _service(request).rotate_tunnel_key(node_auth(request), body))


async def set_endpoints(request: web.Request) -> web.Response:
    """PUT /v1/node/endpoints → 204."""
    body = await read_json(request, EndpointsRequest)
    await _service(request).set_endpoints(node_auth(request), body)
    return web.Response(status=204)


async def peer_map(request: web.Request) -> web.Response:
    """GET /v1/peermap?after=SERIAL[&wait=S]: 200 with a newer map, 204 after the long-poll
    timeout (the server's, or `wait` seconds when shorter: 0 answers at once)."""
    after = _query_int(request, "after", 0)
    service = _service(request)
    longest = service.settings.long_poll_timeout.total_seconds()
    wait = min(float(_query_int(request, "wait", int(longest))), longest)
    result = await service.peer_map(node_auth(request), after, wait)
    if result is None:
        return web.Response(status=204)
    return _json(PeerMapDelivery(result.envelope, result.trust))


async def relay_token(request: web.Request) -> web.Response:
    """POST /v1/relay-token."""
    body = await read_json(request, RelayTokenRequest)
    return _json(await _service(request).relay_token(node_auth(request), body))


async def relay_revocations(request: web.Request) -> web.Response:
    """GET /v1/relay/revocations?after=SERIAL[&wait=S]: 200 with a newer signed feed, 204 after
    the long-poll timeout (as for the peer map); no credential (the document is signed)."""
    after = _query_int(request, "after", 0)
    service = _service(request)
    longest = service.settings.long_poll_timeout.total_seconds()
    wait = min(float(_query_int(request, "wait", int(longest))), longest)
    result = await service.relay_revocations(after, wait)
    if result is None:
        return web.Response(status=204)
    return _json(result)


# --- admin routes -----------------------------------------------------------------------------


async def create_join_key(request: web.Request) -> web.Response:
    """POST /v1/admin/join-keys → 201 (the token is in this response only)."""
    body = await read_json(request, CreateJoinKeyRequest)
    created = await _service(request).create_join_key(admin_auth(request), body)
    return _json(created, status=201)


async def list_join_keys(request: web.Request) -> web.Response:
    """GET /v1/admin/join-keys."""
    items = await _service(request).list_join_keys(admin_auth(request))
    return _json(JoinKeyList(items))


async def revoke_join_key(request: web.Request) -> web.Response:
    """DELETE /v1/admin/join-keys/{id}."""
    key_id = request.match_info["id"]
    return _json(await _service(request).revoke_join_key(admin_auth(request), key_id))


async def list_nodes(request: web.Request) -> web.Response:
    """GET /v1/admin/nodes."""
    return _json(NodeList(await _service(request).list_nodes(admin_auth(request))))


async def get_node(request: web.Request) -> web.Response:
    """GET /v1/admin/nodes/{id}."""
    node_id = request.match_info["id"]
    return _json(await _service(request).get_node(admin_auth(request), node_id))


async def update_node(request: web.Request) -> web.Response:
    """PATCH /v1/admin/nodes/{id}."""
    body = await read_json(request, UpdateNodeRequest)
    node_id = request.match_info["id"]
    return _json(await _service(request).update_node(admin_auth(request), node_id, body))


async def revoke_node(request: web.Request) -> web.Response:
    """POST /v1/admin/nodes/{id}/revoke."""
    node_id = request.match_info["id"]
    return _json(await _service(request).revoke_node(admin_auth(request), node_id))


async def delete_node(request: web.Request) -> web.Response:
    """DELETE /v1/admin/nodes/{id} → 204."""
    await _service(request).delete_node(admin_auth(request), request.match_info["id"])
    return web.Response(status=204)


async def create_api_key(request: web.Request) -> web.Response:
    """POST /v1/admin/api-keys → 201 (the key is in this response only)."""
    body = await read_json(request, CreateApiKeyRequest)
    created = await _service(request).create_api_key(admin_auth(request), body)
    return _json(created, status=201)


async def list_api_keys(request: web.Request) -> web.Response:
    """GET /v1/admin/api-keys."""
    items = await _service(request).list_api_keys(admin_auth(request))
    return _json(ApiKeyList(items))


async def revoke_api_key(request: web.Request) -> web.Response:
    """DELETE /v1/admin/api-keys/{id}."""
    key_id = request.match_info["id"]
    return _json(await _service(request).revoke_api_key(admin_auth(request), key_id))


async def _policy_document(request: web.Request) -> dict[str, Any]:
    return await read_json_object(request, request.app[SETTINGS_KEY].max_document_bytes)


async def get_policy(request: web.Request) -> web.Response:
    """GET /v1/admin/policy."""
    return _json(await _service(request).get_policy(admin_auth(request)))


async def put_policy(request: web.Request) -> web.Response:
    """PUT /v1/admin/policy (body: the policy document)."""
    document = await _policy_document(request)
    return _json(await _service(request).put_policy(admin_auth(request), document))


async def check_policy(request: web.Request) -> web.Response:
    """POST /v1/admin/policy/check (body: the policy document)."""
    document = await _policy_document(request)
    return _json(await _service(request).check_policy(admin_auth(request), document))


async def list_audit(request: web.Request) -> web.Response:
    """GET /v1/admin/audit?start=&limit=."""
    start = _query_int(request, "start", 0)
    limit = _query_int(request, "limit", 100)
    entries = await _service(request).list_audit(admin_auth(request), start=start, limit=limit)
    return _json(AuditList(entries))


async def verify_audit(request: web.Request) -> web.Response:
    """POST /v1/admin/audit/verify."""
    return _json(await _service(request).verify_audit(admin_auth(request)))


# --- operational ------------------------------------------------------------------------------


async def healthz(_request: web.Request) -> web.Response:
    """GET /healthz: the process serves requests."""
    return _json(Health("ok"))


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text exposition."""
    text = request.app[METRICS_KEY].render(_service(request).stats())
    text += "".join(render() for render in request.app[EXTRA_METRICS_KEY])
    return web.Response(body=text.encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})


@cache
def openapi_document() -> bytes:
    """The checked-in OpenAPI 3.1 document (package data next to this module)."""
    package = importlib.resources.files("rustynet.adapters.http_api")
    return package.joinpath(OPENAPI_RESOURCE).read_bytes()


async def openapi(_request: web.Request) -> web.Response:
    """GET /v1/openapi.json."""
    return web.Response(body=openapi_document(), content_type=JSON_CONTENT_TYPE)
