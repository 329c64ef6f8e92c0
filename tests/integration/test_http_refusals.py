"""What the HTTP servers say when they refuse, against the live control API and relay over TLS.

- `Expect:` other than `100-continue` → JSON 417 that echoes nothing (control API and relay);
  `100-continue` is answered only once the request passed admission and authentication;
- every relay HTTP error (404, 405, no WebSocket upgrade, relay full) is the JSON error shape;
- no response names the Python or aiohttp version (`Server: rustynet`);
- an admin or node route authenticates before it reads its body: 401 at once for a request
  whose body never comes, and for a 30,000-deep array without credentials;
- `rustynet_rate_limit_rejections_total` counts every 429 and `rustynet_auth_failures_total`
  every 401, exactly, under concurrent clients (threat model T12, T24, T29).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import web
from rustynet.adapters.clock import SystemClock
from rustynet.adapters.control_client import pinned_ssl_context
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.http_api.tls import server_ssl_context
from rustynet.adapters.relay.server import create_relay_app, make_runner
from rustynet.adapters.tls_cert import create_self_signed

from rustynet.application.relay import RelayService
from rustynet.domain.keys import SigningKey
from rustynet.domain.limits import BucketPolicy
from rustynet.domain.relay import RelayLimits, RelayTrust
from tests.integration.http_server import LiveApi, running_api, tls_connection

CANARY: Final = "rnk_SECRETCANARY0must1never2echo3back"
EXPECT_VALUES: Final = (f"100-{CANARY}", CANARY, f"100-Continue, {CANARY}")
DEEP: Final = b"[" * 30_000 + b"]" * 30_000
PROMPTLY: Final = 5.0  # seconds: an answer that does not wait for a body
JSON_KEYS: Final = {"error", "detail"}
EMPTY: Final = b""


# --- raw HTTP over TLS -------------------------------------------------------------------------


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, bytes]:
    """One response (status, headers, body, raw bytes), read by its Content-Length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=PROMPTLY)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), timeout=PROMPTLY) if length else b""
    return int(lines[0].split(" ", 2)[1]), headers, body, head + body


async def _ask(
    base_url: str, context: ssl.SSLContext, data: bytes
) -> tuple[int, dict[str, str], bytes, bytes]:
    async with tls_connection(base_url, context) as (reader, writer):
        writer.write(data)
        await writer.drain()
        return await _response(reader)


def _request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode() + body


def _assert_json_error(status: int, headers: dict[str, str], body: bytes, code: str) -> None:
    assert headers.get("content-type", "").startswith("application/json"), (status, headers)
    parsed = json.loads(body)
    assert set(parsed) == JSON_KEYS, parsed
    assert parsed["error"] == code, (status, parsed)


def _metric(text: str, name: str) -> float:
    pattern = re.compile(rf"^{re.escape(name)} (\S+)$", re.MULTILINE)
    found = pattern.search(text)
    assert found is not None, name
    return float(found.group(1))


async def _metrics(api: LiveApi) -> str:
    connector = aiohttp.TCPConnector(ssl=api.client_ssl)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.get(api.base_url + "/metrics") as resp,
    ):
        return await resp.text()


# --- a live relay ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _relay(tmp_path: Path, limits: RelayLimits) -> AsyncIterator[tuple[str, ssl.SSLContext]]:
    entropy = OsEntropy()
    cert = create_self_signed(
        "https://127.0.0.1:1", tmp_path / "r.crt", tmp_path / "r.key", now=datetime.now(UTC)
    )
    root = SigningKey.generate(entropy).public_key.fingerprint()
    trust = RelayTrust("relay-refusals", "https://control.example.net:8443", root)
    service = RelayService(trust, limits, SystemClock(), entropy)
    runner = make_runner(create_relay_app(service), shutdown_timeout=1.0)
    await runner.setup()
    try:
        context = server_ssl_context(cert.certificate, cert.private_key)
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        yield f"https://127.0.0.1:{runner.addresses[0][1]}", pinned_ssl_context(cert.pin)
    finally:
        await runner.cleanup()


# --- B: Expect ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_control_api_refuses_unknown_expectations_with_json_417_echoing_nothing(
    tmp_path: Path,
) -> None:
    """On a real route, a body route and an unknown path: 417 in the error shape, the header
    not echoed, the connection closed, counted under `unmatched`."""
    async with running_api(tmp_path) as api:
        paths = (("POST", "/v1/enroll"), ("PUT", "/v1/admin/policy"), ("GET", "/nope"))
        for method, path in paths:
            for value in EXPECT_VALUES:
                data = _request(method, path, f"Expect: {value}", "Content-Length: 2", body=b"{}")
                async with tls_connection(api.base_url, api.client_ssl) as (reader, writer):
                    writer.write(data)
                    status, headers, body, raw = await _response(reader)
                    assert status == 417, (path, raw)
                    _assert_json_error(status, headers, body, "expectation_failed")
                    assert CANARY.encode() not in raw
                    # nothing more: the connection is closed (the body is not read)
                    assert await asyncio.wait_for(reader.read(), timeout=PROMPTLY) == EMPTY
        text = await _metrics(api)
    count = len(EXPECT_VALUES)
    series = 'rustynet_http_requests_total{{method={0},route="unmatched",status="417"}}'
    assert _metric(text, series.format('"POST"')) == count
    assert _metric(text, series.format('"PUT"')) == count
    assert _metric(text, series.format('"GET"')) == count


@pytest.mark.asyncio
async def test_relay_http_errors_are_json_and_echo_nothing(tmp_path: Path) -> None:
    """Relay: unknown Expect (417), unknown path (404), wrong method (405 + Allow), a plain GET
    of the WebSocket path (400), a full relay (503): the JSON error shape, nothing echoed."""
    async with _relay(tmp_path, RelayLimits(max_sessions=1)) as (base, context):
        cases = [
            (_request("GET", "/v1/relay", f"Expect: 100-{CANARY}"), 417, "expectation_failed"),
            (_request("GET", f"/nope-{CANARY}"), 404, "not_found"),
            (_request("POST", "/v1/relay", "Content-Length: 0"), 405, "method_not_allowed"),
            (_request("GET", "/v1/relay", f"X-Canary: {CANARY}"), 400, "bad_request"),
        ]
        for data, expected, code in cases:
            status, headers, body, raw = await _ask(base, context, data)
            assert status == expected, raw
            _assert_json_error(status, headers, body, code)
            assert CANARY.encode() not in raw
            assert b"WebSocket" not in raw
        assert headers is not None
        connector = aiohttp.TCPConnector(ssl=context)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.ws_connect(base + "/v1/relay") as first,
        ):
            await first.receive()  # its challenge: the only session slot is taken
            async with http.get(base + "/v1/relay", headers=_upgrade()) as resp:
                assert resp.status == 503
                assert await resp.json() == {
                    "error": "unavailable",
                    "detail": "the relay is full; retry later",
                }
            async with http.get(base + "/metrics") as resp:
                metrics = await resp.text()
    assert _metric(metrics, "rustynet_relay_rejected_requests_total") == 1  # the 417


def _upgrade() -> dict[str, str]:
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }


@pytest.mark.asyncio
async def test_continue_is_sent_only_after_admission_and_authentication(tmp_path: Path) -> None:
    """`Expect: 100-continue` without a valid key: the final 401 comes first, no interim 100
    (aiohttp invited the body before any check). With the admin key: 100, body, 200."""
    document = b'{"tagOwners": {}, "acls": []}'
    async with running_api(tmp_path) as api:
        wrong = _request(
            "POST",
            "/v1/admin/policy/check",
            f"Authorization: Bearer {CANARY}",
            "Content-Type: application/json",
            "Expect: 100-continue",
            f"Content-Length: {len(document)}",
        )
        status, headers, body, raw = await _ask(api.base_url, api.client_ssl, wrong)
        assert status == 401, raw
        _assert_json_error(status, headers, body, "unauthorized")
        good = _request(
            "POST",
            "/v1/admin/policy/check",
            f"Authorization: Bearer {api.admin_key}",
            "Content-Type: application/json",
            "Expect: 100-continue",
            f"Content-Length: {len(document)}",
        )
        async with tls_connection(api.base_url, api.client_ssl) as (reader, writer):
            writer.write(good)
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=PROMPTLY)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(document)
            status, _headers, body, _raw = await _response(reader)
        assert status == 200, body


# --- E1: no version in Server ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_no_response_names_the_python_or_aiohttp_version(tmp_path: Path) -> None:
    """Control API (200, 401, 404, 405, 417, parser 400) and relay (200, 404, 417, parser 400,
    WebSocket 101): `Server: rustynet`, and neither `Python` nor `aiohttp` in any head."""
    control = (
        _request("GET", "/healthz"),
        _request("GET", "/metrics"),
        _request("GET", "/v1/admin/nodes"),
        _request("GET", "/nope"),
        _request("DELETE", "/healthz"),
        _request("GET", "/healthz", "Expect: nope"),
        _request("GET", "/healthz", "X-Bad\x01: y"),
    )
    relay = (
        _request("GET", "/healthz"),
        _request("GET", "/metrics"),
        _request("GET", "/nope"),
        _request("GET", "/healthz", "Expect: nope"),
        _request("GET", "/healthz", "X-Bad\x01: y"),
        _request("GET", "/v1/relay", *(f"{k}: {v}" for k, v in _upgrade().items())),
    )
    heads: list[tuple[int, dict[str, str], bytes]] = []
    async with running_api(tmp_path) as api:
        for data in control:
            status, headers, _body, raw = await _ask(api.base_url, api.client_ssl, data)
            heads.append((status, headers, raw))
    async with _relay(tmp_path, RelayLimits()) as (base, context):
        for data in relay:
            status, headers, _body, raw = await _ask(base, context, data)
            heads.append((status, headers, raw))
    assert sorted({status for status, _, _ in heads}) == [101, 200, 400, 401, 404, 405, 417]
    for status, headers, raw in heads:
        assert headers.get("server") == "rustynet", (status, raw)
        assert b"Python" not in raw
        assert b"aiohttp" not in raw


# --- E2: authenticate before the body is read --------------------------------------------------


@pytest.mark.asyncio
async def test_admin_and_node_routes_answer_401_before_reading_the_body(tmp_path: Path) -> None:
    """Headers announce 1,000,000 bytes that never come: 401 at once, not a wait for the body
    (admin without and with a wrong key, node with a wrong token)."""
    async with running_api(tmp_path) as api:
        for path, credentials in (
            ("/v1/admin/policy", ()),
            ("/v1/admin/policy", (f"Authorization: Bearer {CANARY}",)),
            ("/v1/admin/policy/check", (f"Authorization: Bearer {CANARY}",)),
            ("/v1/node/endpoints", ("Authorization: Bearer x", "Rustynet-Node: node_x")),
        ):
            data = _request(
                "PUT" if path != "/v1/admin/policy/check" else "POST",
                path,
                *credentials,
                "Content-Type: application/json",
                "Content-Length: 1000000",
            )
            status, headers, body, raw = await _ask(api.base_url, api.client_ssl, data)
            assert status == 401, (path, raw)
            _assert_json_error(status, headers, body, "unauthorized")


@pytest.mark.asyncio
async def test_an_unauthenticated_deeply_nested_body_is_401_not_parsed(tmp_path: Path) -> None:
    """30,000 nested arrays on the policy routes without a valid key: 401 (it was a parsed
    400), audited as failed authentications; the admin key still gets the parser's 400."""
    async with running_api(tmp_path) as api:
        connector = aiohttp.TCPConnector(ssl=api.client_ssl)
        async with aiohttp.ClientSession(api.base_url, connector=connector) as http:
            for headers in ({}, {"Authorization": f"Bearer {CANARY}"}):
                for method, path in (
                    ("POST", "/v1/admin/policy/check"),
                    ("PUT", "/v1/admin/policy"),
                ):
                    headers["Content-Type"] = "application/json"
                    async with http.request(method, path, data=DEEP, headers=headers) as resp:
                        assert resp.status == 401, (method, path, await resp.text())
            admin = {**api.admin_headers(), "Content-Type": "application/json"}
            async with http.post("/v1/admin/policy/check", data=DEEP, headers=admin) as resp:
                assert resp.status == 400
            async with http.get("/v1/admin/audit?limit=1000", headers=admin) as resp:
                entries = (await resp.json())["entries"]
    failures = [e for e in entries if e["action"] == "admin.auth_failed"]
    assert len(failures) == 1  # the first failure; its repeats fold into a later summary


@pytest.mark.asyncio
async def test_an_authenticated_body_request_is_charged_once(tmp_path: Path) -> None:
    """The pre-check takes nothing from the authenticated-admin bucket: with a burst of 3,
    three policy checks pass and the fourth is 429 (a double charge refused the second)."""
    three = BucketPolicy(burst=3, refill=1, per=timedelta(hours=1))
    async with running_api(tmp_path, admin_per_ip=three) as api:
        connector = aiohttp.TCPConnector(ssl=api.client_ssl)
        async with aiohttp.ClientSession(api.base_url, connector=connector) as http:
            statuses = []
            for _ in range(4):
                document: dict[str, object] = {"tagOwners": {}, "acls": []}
                async with http.post(
                    "/v1/admin/policy/check", json=document, headers=api.admin_headers()
                ) as resp:
                    statuses.append(resp.status)
    assert statuses == [200, 200, 200, 429]


# --- C: the metrics count what the clients were told -------------------------------------------


async def _concurrently(
    api: LiveApi, clients: int, each: int, send: Callable[[aiohttp.ClientSession], Awaitable[int]]
) -> Counter[int]:
    """`clients` connections at once, each sending `each` requests; the statuses seen."""
    seen: Counter[int] = Counter()

    async def client() -> None:
        connector = aiohttp.TCPConnector(ssl=api.client_ssl, limit=1)
        async with aiohttp.ClientSession(api.base_url, connector=connector) as http:
            for _ in range(each):
                seen[await send(http)] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return seen


async def _status(http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> int:
    async with http.request(method, path, **kwargs) as resp:
        await resp.read()
        return resp.status


@pytest.mark.asyncio
async def test_rate_limit_and_auth_failure_metrics_count_exactly_the_answers(
    tmp_path: Path,
) -> None:
    """Default limits, one address, concurrent clients: bad admin keys (8 clients, 25 each),
    bad node tokens on a body route (8 clients, 20 each: the pre-body admission gate's 429s
    too) and malformed enrollment bodies (30): every 401 seen is one `auth_failures`, every
    429 one `rate_limit_rejections`, no more, no less."""
    bad_admin = {"Authorization": f"Bearer {CANARY}"}
    bad_node = {"Authorization": "Bearer x", "Rustynet-Node": "node_AAAAAAAAAAAAAAAA"}
    json_type = {"Content-Type": "application/json"}
    seen: Counter[int] = Counter()
    async with running_api(tmp_path) as api:
        before = await _metrics(api)
        seen += await _concurrently(
            api, 8, 25, lambda http: _status(http, "GET", "/v1/admin/nodes", headers=bad_admin)
        )
        seen += await _concurrently(
            api,
            8,
            20,
            lambda http: _status(
                http, "PUT", "/v1/node/endpoints", data=b"{}", headers={**bad_node, **json_type}
            ),
        )
        seen += await _concurrently(
            api,
            3,
            10,
            lambda http: _status(http, "POST", "/v1/enroll", data=DEEP, headers=json_type),
        )
        after = await _metrics(api)
    assert set(seen) <= {400, 401, 429}, seen
    assert seen[429] > 0, seen
    assert seen[401] > 0, seen

    def rose(name: str) -> int:
        return int(_metric(after, name) - _metric(before, name))

    assert rose("rustynet_auth_failures_total") == seen[401], seen
    assert rose("rustynet_rate_limit_rejections_total") == seen[429], seen
