"""The checked-in OpenAPI 3.1 document, the wire types and the live app agree.

Every registered route is documented and every documented operation is registered; every wire
type of `rustynet.ports.wire.v1` has the shape of its schema (fields, required fields, JSON
types, nesting), derived from its annotations; responses the live server gives (a scripted flow
through HTTPS) validate against the document's schemas with `jsonschema` (Draft 2020-12, the
dialect of OpenAPI 3.1), decode strictly into their wire types and encode back to the same JSON.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
import pytest_asyncio
from aiohttp import web
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # no stubs locked
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from rustynet.adapters.http_api.app import create_app
from rustynet.adapters.http_api.handlers import openapi_document
from rustynet.adapters.http_api.routes import QUERY
from rustynet.adapters.storage.memory import MemoryStore

from rustynet.ports.wire.codec import decode, to_json_value
from rustynet.ports.wire.v1 import COMPONENTS
from tests.integration.http_server import (
    LiveApi,
    build_service,
    enroll_over_http,
    node_headers,
    running_api,
)

DOC: dict[str, Any] = json.loads(openapi_document())
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}


def _registered_routes(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        routes.add((route.method.lower(), route.resource.canonical if route.resource else ""))
    return routes


def _documented_routes() -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in DOC["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for `schema` that resolves `#/components/...` against the document."""
    registry: Registry[Any] = Registry().with_resource(
        "urn:rustynet:openapi", DRAFT202012.create_resource(DOC)
    )
    rebased = json.loads(
        json.dumps(schema).replace('"#/components/', '"urn:rustynet:openapi#/components/')
    )
    return Draft202012Validator(rebased, registry=registry)


def _response_schema(method: str, template: str, status: int) -> dict[str, Any] | None:
    operation = DOC["paths"][template][method]
    response = operation["responses"].get(str(status)) or operation["responses"]["default"]
    while "$ref" in response:
        name = response["$ref"].rsplit("/", 1)[1]
        response = DOC["components"]["responses"][name]
    content = response.get("content", {})
    media = content.get("application/json")
    return media["schema"] if media else None


def _template_of(path: str) -> str:
    for template in DOC["paths"]:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            return str(template)
    raise AssertionError(f"{path} matches no documented path")


def test_every_registered_route_is_documented_and_vice_versa() -> None:
    """The router and the document list exactly the same (method, path) pairs."""
    app = create_app(build_service(MemoryStore(), "https://127.0.0.1"))
    registered = _registered_routes(app)
    documented = _documented_routes()
    assert registered - documented == set(), "routes missing from openapi.json"
    assert documented - registered == set(), "documented routes the app does not serve"


def test_each_route_takes_exactly_the_query_parameters_it_documents() -> None:
    """The query guard's table (routes.QUERY) and the document's `in: query` parameters agree."""
    documented = {}
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            names = frozenset(
                p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"
            )
            if names:
                documented[(method.upper(), path)] = names
    assert documented == dict(QUERY)


def test_document_is_openapi_31_with_resolvable_references() -> None:
    """The document declares 3.1 and every `$ref` points at an existing component."""
    assert DOC["openapi"].startswith("3.1.")
    refs = set(re.findall(r'"\$ref": "#/components/(\w+)/(\w+)"', json.dumps(DOC, indent=1)))
    assert refs
    for section, name in refs:
        assert name in DOC["components"][section], f"{section}/{name}"
    for section, name in refs:
        if section == "schemas":
            Draft202012Validator.check_schema(DOC["components"]["schemas"][name])


def test_every_operation_documents_errors_and_an_id() -> None:
    """Each operation has a unique operationId and documents the error shape (`default`)."""
    ids = [
        op["operationId"]
        for item in DOC["paths"].values()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]
    assert len(ids) == len(set(ids))
    for item in DOC["paths"].values():
        for method, op in item.items():
            if method in HTTP_METHODS:
                assert "default" in op["responses"]


# Schemas without a wire class: the error document (rendered by the error table) and the
# free-form policy document (the use cases parse it).
UNTYPED_SCHEMAS = {"Error", "PolicyDocument"}
_JSON_TYPES: dict[object, dict[str, str]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    bool: {"type": "boolean"},
    float: {"type": "number"},
    datetime: {"type": "string", "format": "date-time"},
}
_SHAPE_KEYS = {"type", "format", "items", "$ref"}


def _component_name(cls: type) -> str:
    return next(name for name, klass in COMPONENTS.items() if klass is cls)


def _shape(annotation: Any) -> dict[str, Any]:
    """The JSON Schema shape (type, format, items, $ref) of a wire field's annotation."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        shape = _shape(inner)
        assert "type" in shape, f"nullable {inner} needs a JSON type"
        return {**shape, "type": [shape["type"], "null"]}
    if annotation in _JSON_TYPES:
        return dict(_JSON_TYPES[annotation])
    if attrs.has(annotation):
        return {"$ref": f"#/components/schemas/{_component_name(annotation)}"}
    origin = typing.get_origin(annotation)
    if origin is tuple and args[-1] is Ellipsis:
        return {"type": "array", "items": _shape(args[0])}
    if origin is Mapping:
        return {"type": "object"}
    raise AssertionError(f"no JSON shape for {annotation!r}")


def _documented_shape(schema: dict[str, Any]) -> dict[str, Any]:
    shape = {k: v for k, v in schema.items() if k in _SHAPE_KEYS}
    if "items" in shape:
        shape["items"] = _documented_shape(shape["items"])
    return shape


def test_the_wire_types_are_the_documents_schemas() -> None:
    """One class per schema; each has exactly the schema's fields in its order, the same
    required fields (a field with a default is optional) and the same JSON type per field."""
    schemas = DOC["components"]["schemas"]
    assert set(COMPONENTS) == set(schemas) - UNTYPED_SCHEMAS
    for name, cls in COMPONENTS.items():
        schema = schemas[name]
        fields = attrs.fields(cls)
        hints = typing.get_type_hints(cls)
        assert schema["type"] == "object"
        assert schema["additionalProperties"] is False, name
        assert list(schema["properties"]) == [f.name for f in fields], name
        required = [f.name for f in fields if f.default is attrs.NOTHING]
        assert schema.get("required", []) == required, name
        for field in fields:
            documented = _documented_shape(schema["properties"][field.name])
            assert documented == _shape(hints[field.name]), f"{name}.{field.name}"


def _decodes_to_itself(schema: dict[str, Any], body: Any) -> None:
    """A documented 2xx body decodes strictly into its wire type and encodes back unchanged."""
    name = schema.get("$ref", "").rsplit("/", 1)[-1]
    if name in COMPONENTS:
        assert to_json_value(decode(body, COMPONENTS[name])) == body, name


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[LiveApi]:
    """A live API over TLS 1.3 with a fresh SQLite database."""
    async with running_api(tmp_path) as live:
        yield live


async def _checked(
    http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    """Call the live server and validate the response against the document."""
    async with http.request(method, path, **kwargs) as response:
        raw = await response.read()
        status = response.status
        template = _template_of(path.split("?", 1)[0])
        if method.lower() not in DOC["paths"][template]:
            # An undocumented method: the router's 405 in the shared error shape.
            assert status == 405
            schema = DOC["components"]["schemas"]["Error"]
        else:
            operation = DOC["paths"][template][method.lower()]
            documented = set(operation["responses"])
            assert str(status) in documented or "default" in documented
            schema = _response_schema(method.lower(), template, status)
        if status == 204:
            assert raw == b""
            return status, None
        body = json.loads(raw) if response.content_type == "application/json" else raw
        if schema is not None:
            errors = sorted(_validator(schema).iter_errors(body), key=str)
            assert not errors, f"{method} {path} → {status}: {errors[0].message}"
            if status < 300:
                _decodes_to_itself(schema, body)
        return status, body


@pytest.mark.asyncio
async def test_edge_responses_match_the_document(api: LiveApi) -> None:
    """Responses decided at the edge (400/404/405/413/415, health) validate against it."""
    connector = aiohttp.TCPConnector(ssl=api.client_ssl)
    async with aiohttp.ClientSession(base_url=api.base_url, connector=connector) as http:
        assert (await _checked(http, "GET", "/healthz"))[0] == 200
        assert (await _checked(http, "GET", "/v1/openapi.json"))[0] == 200
        bad = {"reusable": "false"}
        admin = api.admin_headers()  # a body route authenticates before it reads the body
        status, _ = await _checked(http, "POST", "/v1/admin/join-keys", json=bad, headers=admin)
        assert status == 400
        status, _ = await _checked(
            http, "POST", "/v1/enroll", data="x", headers={"Content-Type": "text/plain"}
        )
        assert status == 415
        status, _ = await _checked(
            http,
            "POST",
            "/v1/enroll",
            data=b"{" + b" " * 70_000 + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert status == 413
        assert (await _checked(http, "GET", "/v1/peermap?token=x"))[0] == 400
        assert (await _checked(http, "DELETE", "/v1/admin/policy"))[0] == 405


@pytest.mark.asyncio
async def test_scripted_flow_responses_match_the_document(api: LiveApi) -> None:
    """A whole admin + node session: every response validates against the document."""
    admin = api.admin_headers()
    connector = aiohttp.TCPConnector(ssl=api.client_ssl)
    async with aiohttp.ClientSession(base_url=api.base_url, connector=connector) as http:
        status, created = await _checked(
            http, "POST", "/v1/admin/join-keys", json={"ttl_seconds": 600}, headers=admin
        )
        assert status == 201
        assert (await _checked(http, "GET", "/v1/admin/join-keys", headers=admin))[0] == 200
        enrolled = await enroll_over_http(http, created["token"], "flow-node")
        assert enrolled.status == 200
        errors = list(
            _validator(DOC["components"]["schemas"]["EnrollResult"]).iter_errors(enrolled.body)
        )
        assert not errors
        node = enrolled.body["node_id"]
        headers = node_headers(enrolled.body)
        assert (await _checked(http, "GET", "/v1/peermap?after=0", headers=headers))[0] == 200
        status, _ = await _checked(  # no relays configured here: every relay id is unknown
            http, "POST", "/v1/relay-token", json={"relay_id": "relay-1"}, headers=headers
        )
        assert status == 404
        status, _ = await _checked(
            http,
            "PUT",
            "/v1/node/endpoints",
            json={
                "candidates": [{"endpoint": "198.51.100.3:41641", "kind": "local"}],
                "underlay_endpoints": ["198.51.100.2:41641"],
            },
            headers=headers,
        )
        assert status == 204
        status, challenge = await _checked(
            http, "POST", "/v1/token/challenge", json={"node_id": node}
        )
        assert status == 200
        assert (await _checked(http, "GET", "/v1/admin/nodes", headers=admin))[0] == 200
        assert (await _checked(http, "GET", f"/v1/admin/nodes/{node}", headers=admin))[0] == 200
        status, _ = await _checked(
            http, "PATCH", f"/v1/admin/nodes/{node}", json={"name": "renamed"}, headers=admin
        )
        assert status == 200
        status, key = await _checked(
            http, "POST", "/v1/admin/api-keys", json={"scope": "read-only"}, headers=admin
        )
        assert status == 201
        assert (await _checked(http, "GET", "/v1/admin/api-keys", headers=admin))[0] == 200
        status, _ = await _checked(http, "DELETE", f"/v1/admin/api-keys/{key['id']}", headers=admin)
        assert status == 200
        assert (await _checked(http, "GET", "/v1/admin/policy", headers=admin))[0] == 200
        status, problem = await _checked(
            http, "POST", "/v1/admin/policy/check", json={"acls": "nope"}, headers=admin
        )
        assert status == 400
        assert "pointer" in problem
        assert (await _checked(http, "GET", "/v1/admin/audit?limit=5", headers=admin))[0] == 200
        assert (await _checked(http, "POST", "/v1/admin/audit/verify", headers=admin))[0] == 200
        status, _ = await _checked(http, "POST", f"/v1/admin/nodes/{node}/revoke", headers=admin)
        assert status == 200
        assert (await _checked(http, "GET", "/v1/peermap?after=0", headers=headers))[0] == 401
        assert (await _checked(http, "DELETE", f"/v1/admin/nodes/{node}", headers=admin))[0] == 204
        status, _ = await _checked(
            http, "DELETE", f"/v1/admin/join-keys/{created['id']}", headers=admin
        )
        assert status in {200, 409}
        assert (await _checked(http, "GET", "/metrics"))[0] == 200
        assert challenge["challenge_id"]
