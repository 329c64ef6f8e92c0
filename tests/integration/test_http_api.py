"""The control API through real HTTPS on 127.0.0.1 with a real SqliteStore: the strict edge
(caps, content type, strict JSON, secret query guard, error shapes, access log, metrics).

Everything here goes through HTTP; nothing calls a handler directly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from rustynet.adapters.http_api.settings import DEFAULT_BODY_LIMIT

from tests.integration.http_server import LiveApi, running_api

ADMIN = {"Authorization": "Bearer rnk_nobody_nothing"}


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[LiveApi]:
    """A live API over TLS 1.3 with a fresh SQLite database."""
    async with running_api(tmp_path) as live:
        yield live


@pytest_asyncio.fixture
async def http(api: LiveApi) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that trusts only the throwaway certificate."""
    connector = aiohttp.TCPConnector(ssl=api.client_ssl)
    async with aiohttp.ClientSession(base_url=api.base_url, connector=connector) as session:
        yield session


async def _call(
    http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, Any], Any]:
    async with http.request(method, path, **kwargs) as response:
        body = await response.read()
        parsed = json.loads(body) if body and response.content_type == "application/json" else body
        return response.status, dict(response.headers), parsed


def _assert_error(body: Any, code: str) -> None:
    assert isinstance(body, dict)
    assert body["error"] == code
    assert isinstance(body["detail"], str)
    assert set(body) <= {"error", "detail", "pointer"}


# --- body caps and content type ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_oversized_body_is_refused_with_413(http: aiohttp.ClientSession) -> None:
    """A body over the 64 KiB cap is refused by its Content-Length, before it is parsed."""
    big = json.dumps({"tags": ["x" * (DEFAULT_BODY_LIMIT + 1)]})
    status, _, body = await _call(
        http,
        "POST",
        "/v1/admin/join-keys",
        data=big,
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert status == 413
    _assert_error(body, "payload_too_large")


@pytest.mark.asyncio
async def test_oversized_chunked_body_is_refused_with_413(http: aiohttp.ClientSession) -> None:
    """Without a Content-Length (chunked), the cap still holds: reading stops past the cap."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"tags": ["'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"]}'

    status, _, body = await _call(
        http,
        "POST",
        "/v1/enroll",
        data=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 413
    _assert_error(body, "payload_too_large")


@pytest.mark.asyncio
async def test_non_json_content_type_is_refused_with_415(http: aiohttp.ClientSession) -> None:
    """A form or text body is refused: the API speaks application/json only."""
    status, _, body = await _call(
        http, "POST", "/v1/enroll", data="join_secret=x", headers={"Content-Type": "text/plain"}
    )
    assert status == 415
    _assert_error(body, "unsupported_media_type")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1, 2]", b'{"node_id": "a", "node_id": "b"}', b'{"x": NaN}', b"\xff\xfe"],
    ids=["garbage", "array", "duplicate-key", "nan", "not-utf8"],
)
async def test_malformed_json_is_refused_with_400(http: aiohttp.ClientSession, raw: bytes) -> None:
    """Bodies that are not one strict UTF-8 JSON object are refused before any use case."""
    status, _, body = await _call(
        http, "POST", "/v1/token/challenge", data=raw, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    _assert_error(body, "bad_request")


@pytest.mark.asyncio
async def test_missing_body_is_refused_with_400(http: aiohttp.ClientSession) -> None:
    """A route that needs a body refuses an empty request."""
    status, _, body = await _call(http, "POST", "/v1/token/challenge")
    assert status == 400
    _assert_error(body, "bad_request")


# --- strict fields ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_unknown_field_is_refused_with_its_path(http: aiohttp.ClientSession) -> None:
    """An unknown key is a 400 whose pointer names it (forbid_extra_keys)."""
    status, _, body = await _call(
        http, "POST", "/v1/token/challenge", json={"node_id": "n1", "is_admin": True}
    )
    assert status == 400
    _assert_error(body, "bad_request")
    assert body["pointer"] == "/is_admin"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("payload", "pointer"),
    [
        ({"reusable": "false"}, "/reusable"),
        ({"reusable": 0}, "/reusable"),
        ({"uses": "3"}, "/uses"),
        ({"uses": True}, "/uses"),
        ({"ttl_seconds": 1800.5}, "/ttl_seconds"),
        ({"tags": "tag:a"}, "/tags"),
        ({"tags": ["tag:a", 7]}, "/tags/1"),
    ],
    ids=["str-bool", "int-bool", "str-int", "bool-int", "float-int", "str-list", "int-item"],
)
async def test_wrong_json_types_are_not_coerced(
    http: aiohttp.ClientSession, payload: dict[str, Any], pointer: str
) -> None:
    """`"false"` is not a boolean and `"3"` is not an integer: 400 at the field's pointer."""
    status, _, body = await _call(http, "POST", "/v1/admin/join-keys", json=payload, headers=ADMIN)
    assert status == 400
    _assert_error(body, "bad_request")
    assert body["pointer"] == pointer


@pytest.mark.asyncio
async def test_missing_required_field_names_it(http: aiohttp.ClientSession) -> None:
    """A missing required field is a 400 pointing at it."""
    status, _, body = await _call(http, "POST", "/v1/enroll/complete", json={"challenge_id": "x"})
    assert status == 400
    assert body["pointer"] == "/signature"


# --- the secret query guard and the access log ------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["token", "api_key", "secret", "password", "key", "AccessToken"])
async def test_secret_named_query_parameter_is_refused_and_never_logged(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """`?token=...` → 400 before anything is logged; the value appears in no log record."""
    caplog.set_level(logging.DEBUG)
    value = "canary-7f3a9c1e5b"
    status, _, body = await _call(http, "GET", "/v1/peermap", params={name: value, "after": "0"})
    assert status == 400
    _assert_error(body, "bad_request")
    assert value not in json.dumps(body)
    assert caplog.records, "the access log should have recorded the request"
    for record in caplog.records:
        assert value not in record.getMessage()
        assert value not in repr(vars(record))


@pytest.mark.asyncio
async def test_access_log_holds_route_template_not_request_line(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Access records carry method, route template, status and duration; no path ids or query."""
    caplog.set_level(logging.DEBUG)
    await _call(http, "GET", "/v1/admin/nodes/node-secretish-id", params={"after": "5"})
    access = [r for r in caplog.records if r.name == "rustynet.http.access"]
    assert len(access) == 1
    record = vars(access[0])
    assert record["route"] == "/v1/admin/nodes/{id}"
    assert record["method"] == "GET"
    assert isinstance(record["status"], int)
    assert isinstance(record["duration_ms"], float)
    assert "node-secretish-id" not in repr(record)
    assert not [r for r in caplog.records if r.name == "aiohttp.access"]


# --- error shapes for the router's own answers ------------------------------------------------


@pytest.mark.asyncio
async def test_unknown_route_is_json_404(http: aiohttp.ClientSession) -> None:
    """An unknown path answers in the API's error shape."""
    status, _, body = await _call(http, "GET", "/v1/nothing-here")
    assert status == 404
    _assert_error(body, "not_found")


@pytest.mark.asyncio
async def test_wrong_method_is_json_405_with_allow(http: aiohttp.ClientSession) -> None:
    """A known path with the wrong method: 405, JSON, and the Allow header."""
    status, headers, body = await _call(http, "DELETE", "/v1/admin/policy")
    assert status == 405
    _assert_error(body, "method_not_allowed")
    assert set(headers["Allow"].split(", ")) == {"GET", "PUT"}


@pytest.mark.asyncio
async def test_bad_query_integer_is_400(http: aiohttp.ClientSession) -> None:
    """`after` must be a non-negative decimal integer."""
    for after in ("-1", "1e3", "abc", " 1", "99999999999999999999"):
        status, _, body = await _call(http, "GET", "/v1/peermap", params={"after": after})
        assert status == 400, after
        _assert_error(body, "bad_request")


# --- operational ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_healthz_answers_ok(http: aiohttp.ClientSession) -> None:
    """GET /healthz → 200 {"status": "ok"}."""
    status, _, body = await _call(http, "GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})


@pytest.mark.asyncio
async def test_openapi_document_is_served(http: aiohttp.ClientSession) -> None:
    """GET /v1/openapi.json serves the checked-in OpenAPI 3.1 document."""
    status, _, body = await _call(http, "GET", "/v1/openapi.json")
    assert status == 200
    assert body["openapi"].startswith("3.1")
