"""The control API through real HTTPS on 127.0.0.1 with a real SqliteStore: the strict edge
(caps, content type, strict JSON, secret query guard, error shapes, access log, metrics).

Everything here goes through HTTP; nothing calls a handler directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from rustynet.adapters.http_api.settings import DEFAULT_BODY_LIMIT
from rustynet.adapters.storage.postgres import PostgresStore

from rustynet.ports.store import Store
from tests.integration.http_server import (
    GENEROUS_LIMITS,
    EnrollAttempt,
    LiveApi,
    enroll_over_http,
    forged_join_tokens,
    node_headers,
    peer_map_acceptor,
    running_api,
)
from tests.log_records import event_fields


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
async def test_oversized_body_is_refused_with_413(
    api: LiveApi, http: aiohttp.ClientSession
) -> None:
    """A body over the 64 KiB cap is refused by its Content-Length, before it is read (an
    authenticated request: without a valid key it is a 401, preauth.py)."""
    big = json.dumps({"tags": ["x" * (DEFAULT_BODY_LIMIT + 1)]})
    status, _, body = await _call(
        http,
        "POST",
        "/v1/admin/join-keys",
        data=big,
        headers={**api.admin_headers(), "Content-Type": "application/json"},
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
async def test_a_policy_document_arriving_in_many_pieces_is_read_whole(
    api: LiveApi, http: aiohttp.ClientSession
) -> None:
    """A 240 KB policy (under the 1 MiB document cap) sent in 4 KB pieces with pauses, so the
    server sees many partial reads, is stored whole (it used to be cut at the first read)."""
    groups = {f"group:g{i}": [f"host-{i}-{j:03d}" for j in range(100)] for i in range(150)}
    acls = [{"action": "accept", "src": [g], "dst": [f"{g}:22"], "proto": "tcp"} for g in groups]
    document = json.dumps({"groups": groups, "acls": acls}).encode()
    assert 200_000 < len(document) < 1024 * 1024

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(document), 4096):
            yield document[start : start + 4096]
            if start % (64 * 4096) == 0:
                await asyncio.sleep(0.01)

    status, _, body = await _call(
        http,
        "PUT",
        "/v1/admin/policy",
        data=pieces(),
        headers={**api.admin_headers(), "Content-Type": "application/json"},
    )
    assert status == 200, body
    assert body["document"]["groups"] == groups


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
@pytest.mark.parametrize(
    ("node_id", "status"),
    [
        ("node_AAAAAAAAAAAAAAAA", 200),  # the one form the server issues (unknown ids alike)
        ("n1", 400),
        ("node_x", 400),
        ("node_AAAAAAAAAAAAAAA\u00e9", 400),
        ("node_AAAAAAAAAAAAAAAAA", 400),
    ],
    ids=["well-formed", "short", "node_x", "non-ascii", "17-chars"],
)
async def test_token_challenge_takes_only_node_ids_of_the_issued_form(
    http: aiohttp.ClientSession, node_id: str, status: int
) -> None:
    """openapi.json states the node id pattern, so the server enforces exactly that pattern:
    anything else is a 400 naming /node_id (it used to take any printable text)."""
    got, _, body = await _call(http, "POST", "/v1/token/challenge", json={"node_id": node_id})
    assert got == status
    if status == 400:
        assert body["pointer"] == "/node_id"


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
    api: LiveApi, http: aiohttp.ClientSession, payload: dict[str, Any], pointer: str
) -> None:
    """`"false"` is not a boolean and `"3"` is not an integer: 400 at the field's pointer."""
    headers = api.admin_headers()
    status, _, body = await _call(
        http, "POST", "/v1/admin/join-keys", json=payload, headers=headers
    )
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
    assert "credentials are not accepted" in body["detail"]  # not just an unknown parameter
    assert value not in json.dumps(body)
    assert caplog.records, "the access log should have recorded the request"
    for record in caplog.records:
        assert value not in record.getMessage()
        assert value not in repr(vars(record))


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/admin/audit", [("limit", "5"), ("colour", "blue")]),  # unknown to this route
        ("/v1/admin/audit", [("limit", "5"), ("limit", "6")]),  # repeated
        ("/v1/admin/nodes", [("after", "0")]),  # the peer map's, not this route's
        ("/healthz", [("x", "1")]),  # a route that takes none
    ],
)
async def test_a_query_parameter_the_route_does_not_take_is_refused(
    http: aiohttp.ClientSession, api: LiveApi, path: str, params: list[tuple[str, str]]
) -> None:
    """Nothing in a query string is silently ignored: 400, naming what the route takes."""
    headers = api.admin_headers()
    status, _, body = await _call(http, "GET", path, params=params, headers=headers)
    assert status == 400
    _assert_error(body, "bad_request")
    assert "this route takes" in body["detail"]
    assert "blue" not in body["detail"]
    assert "colour" not in body["detail"]
    ok, _, _ = await _call(http, "GET", "/v1/admin/audit", params=[("limit", "5")], headers=headers)
    assert ok == 200


@pytest.mark.asyncio
async def test_access_log_holds_route_template_not_request_line(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Access records carry method, route template, status and duration; no path ids or query."""
    caplog.set_level(logging.DEBUG)
    await _call(http, "GET", "/v1/admin/nodes/node-secretish-id", params={"after": "5"})
    access = [r for r in caplog.records if r.name == "rustynet.http.access"]
    assert len(access) == 1
    record = event_fields(access[0])
    assert record["route"] == "/v1/admin/nodes/{id}"
    assert record["method"] == "GET"
    assert isinstance(record["status"], int)
    assert isinstance(record["duration_ms"], float)
    assert "node-secretish-id" not in repr(vars(access[0]))
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


# --- the use cases through HTTP ---------------------------------------------------------------


async def _join_key(http: aiohttp.ClientSession, api: LiveApi, **body: Any) -> str:
    status, _, created = await _call(
        http, "POST", "/v1/admin/join-keys", json=body, headers=api.admin_headers()
    )
    assert status == 201, created
    token = created["token"]
    assert isinstance(token, str)
    assert token.startswith("rnjoin1_")
    return token


@pytest.mark.asyncio
async def test_node_enrolls_fetches_verified_peer_map_and_is_revoked(
    api: LiveApi, http: aiohttp.ClientSession
) -> None:
    """Admin creates a join key, a node enrolls over HTTPS, verifies its signed peer map, is
    revoked: its token fails on the next request and the revocation is in the audit log."""
    join = await _join_key(http, api)
    attempt = await enroll_over_http(http, join, "laptop")
    assert attempt.status == 200, attempt.body
    result = attempt.body
    assert result["overlay_addresses"][0].startswith("100.")
    status, _, peer_map = await _call(
        http, "GET", "/v1/peermap", params={"after": "0"}, headers=node_headers(result)
    )
    assert status == 200
    accepted = peer_map_acceptor(join, result).accept(peer_map["envelope"], datetime.now(UTC))
    assert accepted.serial >= 1
    started = time.monotonic()
    status, _, _ = await _call(
        http,
        "GET",
        "/v1/peermap",
        params={"after": str(accepted.serial), "wait": "0"},
        headers=node_headers(result),
    )
    assert status == 204  # nothing newer, and wait=0 does not park the request
    assert time.monotonic() - started < 30, "wait=0 parked the request for the long poll"
    status, _, _ = await _call(
        http, "POST", f"/v1/admin/nodes/{result['node_id']}/revoke", headers=api.admin_headers()
    )
    assert status == 200
    status, _, body = await _call(
        http, "GET", "/v1/peermap", params={"after": "0"}, headers=node_headers(result)
    )
    assert status == 401
    _assert_error(body, "unauthorized")
    status, _, audit = await _call(http, "GET", "/v1/admin/audit", headers=api.admin_headers())
    assert status == 200
    actions = [entry["action"] for entry in audit["entries"]]
    assert "node.enrolled" in actions
    assert any(action.startswith("node.revoked") for action in actions), actions
    assert join not in json.dumps(audit)


@pytest.mark.asyncio
async def test_unauthenticated_admin_request_is_401(http: aiohttp.ClientSession) -> None:
    """No Authorization header, or a non-bearer one: 401."""
    for headers in ({}, {"Authorization": "Basic YWRtaW46YWRtaW4="}):
        status, _, body = await _call(http, "GET", "/v1/admin/nodes", headers=headers)
        assert status == 401
        _assert_error(body, "unauthorized")


@pytest.mark.asyncio
async def test_read_only_key_may_read_but_not_write(
    api: LiveApi, http: aiohttp.ClientSession
) -> None:
    """A read-only API key lists nodes (200) and is refused on a write (403)."""
    status, _, created = await _call(
        http, "POST", "/v1/admin/api-keys", json={"scope": "read-only"}, headers=api.admin_headers()
    )
    assert status == 201
    read_only = {"Authorization": f"Bearer {created['key']}"}
    status, _, _ = await _call(http, "GET", "/v1/admin/nodes", headers=read_only)
    assert status == 200
    status, _, body = await _call(http, "POST", "/v1/admin/join-keys", json={}, headers=read_only)
    assert status == 403
    _assert_error(body, "forbidden")


@pytest.mark.asyncio
async def test_unknown_and_wrong_api_keys_answer_identically(
    api: LiveApi, http: aiohttp.ClientSession
) -> None:
    """An unknown key id (well-formed, or not an id at all) and a known id with a wrong secret
    get byte-identical answers."""
    real = api.admin_key
    kind, real_id, secret = real.split("_", 2)  # the secret is base64url: it may hold "_"
    wrong_secret = f"{kind}_{real_id}_{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"
    unknown_id = f"{kind}_{'0' if real_id[0] != '0' else '1'}{real_id[1:]}_{secret}"
    malformed_id = f"{kind}_{'x' * len(real_id)}_{secret}"
    answers = []
    for key in (wrong_secret, unknown_id, malformed_id):
        async with http.get(
            "/v1/admin/nodes", headers={"Authorization": f"Bearer {key}"}
        ) as response:
            answers.append((response.status, await response.read()))
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == 401


@pytest.mark.asyncio
async def test_unknown_and_wrong_join_secrets_answer_identically(
    api: LiveApi, http: aiohttp.ClientSession
) -> None:
    """A join token for an unknown key and one with a wrong secret are refused alike."""
    join = await _join_key(http, api)
    wrong, unknown = forged_join_tokens(join)
    first = await enroll_over_http(http, wrong, "a")
    second = await enroll_over_http(http, unknown, "b")
    assert (first.status, first.body) == (second.status, second.body)
    assert first.status == 401


@pytest.mark.asyncio
async def test_repeated_bad_enrollments_from_one_ip_are_rate_limited(
    http: aiohttp.ClientSession,
) -> None:
    """21 bad join attempts from one address: the 21st is refused with 429 + Retry-After."""
    attempts = [await enroll_over_http(http, "rnjoin1_" + "A" * 120, f"bad-{n}") for n in range(21)]
    assert attempts[0].status == 401
    last = attempts[-1]
    assert last.status == 429, [a.status for a in attempts]
    _assert_error(last.body, "rate_limited")
    assert last.retry_after is not None
    assert last.retry_after.isdigit()
    assert int(last.retry_after) >= 1


@pytest.mark.asyncio
async def test_repeated_wrong_secret_for_one_api_key_backs_off(
    api: LiveApi, http: aiohttp.ClientSession
) -> None:
    """Wrong secrets for one API key id: after a few failures the answer becomes 429 with a
    Retry-After in whole seconds, and even the right secret must wait."""
    prefix, _, secret = api.admin_key.rpartition("_")
    wrong = prefix + "_" + ("A" if secret[0] != "A" else "B") + secret[1:]
    statuses = []
    headers: dict[str, str] = {}
    for _ in range(21):
        status, headers, body = await _call(
            http, "GET", "/v1/admin/nodes", headers={"Authorization": f"Bearer {wrong}"}
        )
        statuses.append(status)
        if status == 429:
            _assert_error(body, "rate_limited")
            break
    assert statuses[0] == 401
    assert statuses[-1] == 429, statuses
    assert headers["Retry-After"].isdigit()
    assert int(headers["Retry-After"]) >= 1
    status, _, _ = await _call(http, "GET", "/v1/admin/nodes", headers=api.admin_headers())
    assert status == 429


@pytest.mark.asyncio
async def test_metrics_count_routes_by_template_and_enrollments(
    api: LiveApi, http: aiohttp.ClientSession
) -> None:
    """/metrics: per-route counts under templates, enrollments and the policy version."""
    join = await _join_key(http, api)
    assert (await enroll_over_http(http, join, "box")).status == 200
    await _call(http, "GET", "/v1/admin/nodes/some-node-id", headers=api.admin_headers())
    async with http.get("/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    assert "rustynet_enrollments_total 1" in text
    assert 'route="/v1/admin/nodes/{id}"' in text
    assert "some-node-id" not in text
    assert "rustynet_policy_version 0" in text
    assert "rustynet_peer_map_waiters 0" in text
    assert (
        'rustynet_http_requests_total{method="POST",route="/v1/enroll/complete",status="200"} 1'
        in text
    )


# --- redemption races over HTTP ---------------------------------------------------------------

CONCURRENCY = 50


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def loaded_api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LiveApi]:
    """A live API (SQLite, or a real throwaway PostgreSQL 15) whose per-IP limits leave room
    for 50 nodes from 127.0.0.1."""
    store: Store | None = None
    if request.param == "postgres":
        store = PostgresStore(request.getfixturevalue("postgres_dsn"), min_size=4, max_size=8)
    async with running_api(tmp_path, store=store, limits=GENEROUS_LIMITS) as live:
        yield live


async def _race(api: LiveApi, join: str) -> list[EnrollAttempt]:
    connector = aiohttp.TCPConnector(ssl=api.client_ssl, limit=CONCURRENCY)
    async with aiohttp.ClientSession(base_url=api.base_url, connector=connector) as http:
        return list(
            await asyncio.gather(
                *(enroll_over_http(http, join, f"racer-{n}") for n in range(CONCURRENCY))
            )
        )


async def _node_count(api: LiveApi) -> int:
    async with api.store.unit_of_work() as uow:
        return len(await uow.nodes.list_all())


@pytest.mark.asyncio
@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "expected"), [({}, 1), ({"reusable": True, "uses": 3, "tags": ["tag:ci"]}, 3)]
)
async def test_concurrent_redemptions_over_http_register_exactly_the_allowed_nodes(
    loaded_api: LiveApi, body: dict[str, Any], expected: int
) -> None:
    """50 nodes race one join key over HTTPS: a one-time key yields exactly one node, a
    `uses: 3` key exactly three; every loser gets 410 and no node record."""
    connector = aiohttp.TCPConnector(ssl=loaded_api.client_ssl)
    async with aiohttp.ClientSession(base_url=loaded_api.base_url, connector=connector) as http:
        join = await _join_key(http, loaded_api, **body)
    attempts = await _race(loaded_api, join)
    winners = [a for a in attempts if a.status == 200]
    assert len(winners) == expected, sorted(a.status for a in attempts)
    assert {a.status for a in attempts} <= {200, 410}, sorted(a.status for a in attempts)
    assert await _node_count(loaded_api) == expected
    assert len({w.body["overlay_addresses"][0] for w in winners}) == expected
