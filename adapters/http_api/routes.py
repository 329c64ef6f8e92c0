"""The route table of control API v1: (method, path template, handler), nothing else.

The one rule: this table and openapi.json list the same routes, and `QUERY` the same query
parameters (tests/integration/test_openapi.py compares them both ways); a route refuses any
query parameter it does not take (middleware.query_guard).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aiohttp import web
from rustynet.adapters.http_api import handlers as h
from rustynet.adapters.http_api.expect import defer_continue
from rustynet.adapters.http_api.keys import QUERY_KEY

ROUTES: Final = (
    # node routes
    ("POST", "/v1/enroll", h.enroll),
    ("POST", "/v1/enroll/complete", h.enroll_complete),
    ("POST", "/v1/token/challenge", h.token_challenge),
    ("POST", "/v1/token", h.renew_token),
    ("POST", "/v1/node/tunnel-key", h.rotate_tunnel_key),
    ("PUT", "/v1/node/endpoints", h.set_endpoints),
    ("GET", "/v1/peermap", h.peer_map),
    ("POST", "/v1/relay-token", h.relay_token),
    # relay routes
    ("GET", "/v1/relay/revocations", h.relay_revocations),
    # admin routes
    ("POST", "/v1/admin/join-keys", h.create_join_key),
    ("GET", "/v1/admin/join-keys", h.list_join_keys),
    ("DELETE", "/v1/admin/join-keys/{id}", h.revoke_join_key),
    ("GET", "/v1/admin/nodes", h.list_nodes),
    ("GET", "/v1/admin/nodes/{id}", h.get_node),
    ("PATCH", "/v1/admin/nodes/{id}", h.update_node),
    ("POST", "/v1/admin/nodes/{id}/revoke", h.revoke_node),
    ("DELETE", "/v1/admin/nodes/{id}", h.delete_node),
    ("POST", "/v1/admin/api-keys", h.create_api_key),
    ("GET", "/v1/admin/api-keys", h.list_api_keys),
    ("DELETE", "/v1/admin/api-keys/{id}", h.revoke_api_key),
    ("GET", "/v1/admin/policy", h.get_policy),
    ("PUT", "/v1/admin/policy", h.put_policy),
    ("POST", "/v1/admin/policy/check", h.check_policy),
    ("GET", "/v1/admin/audit", h.list_audit),
    ("POST", "/v1/admin/audit/verify", h.verify_audit),
    # operational
    ("GET", "/healthz", h.healthz),
    ("GET", "/metrics", h.metrics),
    ("GET", "/v1/openapi.json", h.openapi),
)

# (method, route template) → the query parameters it takes; every other route takes none.
QUERY: Final[Mapping[tuple[str, str], frozenset[str]]] = {
    ("GET", "/v1/peermap"): frozenset({"after", "wait"}),
    ("GET", "/v1/relay/revocations"): frozenset({"after", "wait"}),
    ("GET", "/v1/admin/audit"): frozenset({"start", "limit"}),
}


def add_routes(app: web.Application) -> None:
    """Register every route of the table (GET routes do not also answer HEAD); `100 Continue`
    waits until the handler reads the body (expect.py)."""
    app[QUERY_KEY] = QUERY
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler, expect_handler=defer_continue)
