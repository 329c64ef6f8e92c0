"""Hostile input against the live control API and relay over real TLS (threat model T77-T80).

- a corpus (deep nesting, huge and non-finite numbers, lone surrogates, invalid UTF-8, bad
  credential header bytes, huge and odd ids, path oddities, hostile queries) sent to every
  route of the route table and openapi.json, without auth, with a wrong key and with the real
  admin key: no 5xx anywhere, every error in the `{"error", "detail"}` shape;
- `ttl_seconds` out of 1..max (huge, 0, negative) on join keys and API keys: 400, and the
  maxima themselves are accepted;
- the per-IP limiter counts a request before its body is parsed: malformed bodies end in 429;
- requests the HTTP parser refuses (header over 8 KiB, too many headers, invalid header byte,
  bad bytes in the URL, Content-Length with Transfer-Encoding), each carrying a bearer secret:
  a fixed JSON 400 that echoes nothing, no traceback and no secret in any log, one access line
  with route `unmatched` and a counted metric; the same against the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import aiohttp
import pytest
import pytest_asyncio
import yarl
from aiohttp import web
from rustynet.adapters.clock import SystemClock
from rustynet.adapters.control_client import pinned_ssl_context
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.http_api.admission import ROUTE_GATES
from rustynet.adapters.http_api.handlers import openapi_document
from rustynet.adapters.http_api.routes import ROUTES
from rustynet.adapters.http_api.tls import server_ssl_context
from rustynet.adapters.relay.server import create_relay_app, make_runner
from rustynet.adapters.tls_cert import create_self_signed

from rustynet.application.control.inputs import API_KEY_MAX_TTL_SECONDS, JOIN_KEY_MAX_TTL_SECONDS
from rustynet.application.relay import RelayService
from rustynet.domain.keys import SigningKey
from rustynet.domain.limits import BucketPolicy
from rustynet.domain.relay import RelayLimits, RelayTrust
from tests.integration.http_server import GENEROUS_LIMITS, LiveApi, running_api, tls_connection
from tests.log_records import event_fields, event_name, rendered

SECRET: Final = "rnk_h0stile1nput2must3never4echo5back6"
GENEROUS_ADMIN: Final = BucketPolicy(burst=100_000, refill=100_000, per=timedelta(minutes=1))
DEEP: Final = b"[" * 30_000 + b"]" * 30_000
BODIES: Final[tuple[bytes, ...]] = (
    DEEP,
    b'{"a":' + DEEP + b"}",
    b'{"ttl_seconds":' + b"9" * 5000 + b"}",
    b'{"ttl_seconds":1e999}',
    b'{"ttl_seconds":-1e999,"uses":NaN}',
    b'{"description":"\\ud800","scope":"admin"}',
    b'{"\\udfff":1}',
    b'{"name":"\xff\xfe"}',
    b"",
    b"[]",
    b'{"tags":[' + b'"x",' * 5000 + b'"x"]}',
    b'{"ttl_seconds":99999999999999999999,"reusable":true}',
)
IDS: Final = ("n" * 4000, "%00", "%FF%FE", "..%2F..%2Fetc", "%E2%80%AE", "9" * 30, "-1")
ODD_PATHS: Final = (
    "/v1/../v1/admin/nodes",
    "//v1//enroll",
    "/%2e%2e/%2e%2e/",
    "/v1/admin/nodes/" + "a" * 9000,
    "/v1/peermap?after=99999999999999999999999&wait=-1",
    "/v1/admin/audit?limit=0&start=1e999",
    "/v1/admin/audit?limit=%FF&start=%00",
    "/v1/admin/nodes?token=" + SECRET,
)
ERROR_KEYS: Final = {"error", "detail", "pointer"}


def _routes() -> list[tuple[str, str]]:
    """Every (method, template) of the route table and of openapi.json."""
    document = json.loads(openapi_document())
    from_doc = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    return sorted(from_doc | {(m, p) for m, p, _ in ROUTES})


UNAUTHENTICATED_LONG_POLLS = frozenset({"/v1/relay/revocations"})


def _assert_no_5xx(status: int, content_type: str, body: bytes, what: str) -> None:
    assert status < 500, f"{what}: {status} {body[:200]!r}"
    if status >= 400:
        assert content_type == "application/json", f"{what}: {content_type}"
        parsed = json.loads(body)
        assert isinstance(parsed, dict), what
        assert {"error", "detail"} <= set(parsed) <= ERROR_KEYS, f"{what}: {parsed}"
    assert SECRET.encode() not in body, what


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[LiveApi]:
    """A live API with room for a corpus from one address (the limiter is tested apart)."""
    async with running_api(tmp_path, limits=GENEROUS_LIMITS, admin_per_ip=GENEROUS_ADMIN) as live:
        yield live


@contextlib.asynccontextmanager
async def _session(api: LiveApi) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=api.client_ssl)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def _exchange(base_url: str, context: ssl.SSLContext, data: bytes) -> tuple[int, bytes]:
    """Send raw bytes over TLS; the status and the whole raw response (the server closes)."""
    async with tls_connection(base_url, context) as (reader, writer):
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    status = int(raw.split(b" ", 2)[1])
    return status, raw


def _split(raw: bytes) -> tuple[str, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    content_type = ""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            content_type = value.decode().split(";")[0].strip()
    return content_type, body


# --- the corpus: no 5xx anywhere ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_hostile_corpus_gets_no_5xx_on_any_route(api: LiveApi) -> None:
    """Every route, three credentials, every hostile body, id and path: < 500, JSON errors."""
    auths: tuple[dict[str, str], ...] = (
        {},
        {"Authorization": "Bearer rnk_wrong_key", "Rustynet-Node": "n" * 200},
        api.admin_headers(),
    )
    sent = 0
    async with _session(api) as http:
        for method, template in _routes():
            paths = [template.replace("{id}", i) for i in IDS] if "{id}" in template else [template]
            if template in UNAUTHENTICATED_LONG_POLLS:
                paths = [f"{p}?wait=0" for p in paths]  # answers at once instead of in 60 s
            bodies: tuple[bytes | None, ...] = (
                (None, *BODIES) if method in {"POST", "PUT", "PATCH"} else (None, b"{}")
            )
            for path in paths:
                for headers in auths:
                    for body in bodies if path == paths[0] else (None,):
                        url = yarl.URL(api.base_url + path, encoded=True)
                        hdrs = {**headers, "Content-Type": "application/json"}
                        async with http.request(method, url, data=body, headers=hdrs) as resp:
                            raw = await resp.read()
                            what = f"{method} {path[:60]} auth={sorted(headers)} body={body!r:.40}"
                            _assert_no_5xx(resp.status, resp.content_type, raw, what)
                            sent += 1
        for path in ODD_PATHS:
            for method in ("GET", "POST", "DELETE"):
                url = yarl.URL(api.base_url + path, encoded=True)
                async with http.request(method, url, headers=api.admin_headers()) as resp:
                    raw = await resp.read()
                    _assert_no_5xx(resp.status, resp.content_type, raw, f"{method} {path[:60]}")
                    sent += 1
    # Credential headers that are not UTF-8 (aiohttp's client cannot send them): raw bytes.
    for method, template in _routes():
        target = template.replace("{id}", "x").encode()
        if template in UNAUTHENTICATED_LONG_POLLS:
            target += b"?wait=0"
        for header in (b"Rustynet-Node: \xff\xfe\xed\xa0\x80", b"Authorization: Bearer \xff\xfe"):
            request = (
                method.encode()
                + b" "
                + target
                + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + header
                + b"\r\n"
                b"Authorization: Bearer rnk_x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
            )
            status, raw = await _exchange(api.base_url, api.client_ssl, request)
            content_type, body = _split(raw)
            _assert_no_5xx(status, content_type, body, f"{method} {template} {header!r}")
            sent += 1
    assert sent > 500
    async with _session(api) as http, http.get(api.base_url + "/metrics") as resp:
        text = await resp.text()
    assert not [line for line in text.splitlines() if 'status="5' in line]


@pytest.mark.asyncio
async def test_malformed_json_answers_400_with_the_reason(api: LiveApi) -> None:
    """The items of issue 11 §2, one by one: 400 `bad_request` saying what is wrong."""
    cases = (
        ("/v1/enroll", DEEP, "nests deeper"),
        ("/v1/admin/policy/check", DEEP, "nests deeper"),
        ("/v1/enroll", b'{"a":' + b"1" * 4301 + b"}", "integer out of range"),
        ("/v1/enroll", b'{"a":1e999}', "finite"),
        ("/v1/enroll", b'{"a":NaN}', "constant NaN"),
        ("/v1/admin/api-keys", b'{"scope":"admin","description":"\\ud800"}', "surrogate"),
    )
    async with _session(api) as http:
        for path, body, reason in cases:
            headers = {**api.admin_headers(), "Content-Type": "application/json"}
            async with http.post(api.base_url + path, data=body, headers=headers) as resp:
                answer = await resp.json()
                assert resp.status == 400, (path, answer)
                assert answer["error"] == "bad_request"
                assert reason in answer["detail"], answer


@pytest.mark.asyncio
async def test_ttl_seconds_out_of_range_is_400_and_the_bounds_are_documented(
    api: LiveApi,
) -> None:
    """Huge, zero and negative lifetimes are 400 on both key kinds; the maxima are accepted;
    openapi.json states the same bounds."""
    routes: tuple[tuple[str, dict[str, str], int, str], ...] = (
        ("/v1/admin/join-keys", {}, JOIN_KEY_MAX_TTL_SECONDS, "CreateJoinKeyRequest"),
        (
            "/v1/admin/api-keys",
            {"scope": "read-only"},
            API_KEY_MAX_TTL_SECONDS,
            "CreateApiKeyRequest",
        ),
    )
    schemas = json.loads(openapi_document())["components"]["schemas"]
    async with _session(api) as http:
        for path, base, maximum, schema in routes:
            for ttl in (10**17, 10**18, 2**63 - 1, maximum + 1, 0, -1):
                body = {**base, "ttl_seconds": ttl}
                async with http.post(
                    api.base_url + path, json=body, headers=api.admin_headers()
                ) as resp:
                    answer = await resp.json()
                    assert resp.status == 400, (path, ttl, answer)
                    assert answer["error"] == "bad_request"
                    assert answer["pointer"] == "/ttl_seconds"
            body = {**base, "ttl_seconds": maximum}
            async with http.post(api.base_url + path, json=body, headers=api.admin_headers()) as r:
                assert r.status == 201, await r.text()
            documented = schemas[schema]["properties"]["ttl_seconds"]
            assert (documented["minimum"], documented["maximum"]) == (1, maximum)


# --- the limiter counts before the body is parsed ----------------------------------------------


@pytest.mark.asyncio
async def test_malformed_bodies_spend_per_ip_tokens_and_end_in_429(tmp_path: Path) -> None:
    """Default limits (burst 20 per IP): 30 unparsable enroll bodies in a row → 429 from the
    21st on, with Retry-After; before the fix all 30 were 400."""
    async with running_api(tmp_path) as api, _session(api) as http:
        statuses = []
        for _ in range(30):
            headers = {"Content-Type": "application/json"}
            async with http.post(api.base_url + "/v1/enroll", data=DEEP, headers=headers) as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) >= 1
                    assert (await r.json())["error"] == "rate_limited"
    assert statuses == [400] * 20 + [429] * 10


def test_every_route_that_reads_a_body_has_an_admission_gate() -> None:
    """A new body-reading route cannot be added without its pre-parse per-IP budget."""
    for method, template, handler in ROUTES:
        source = inspect.getsource(handler)
        if "read_json" in source or "_policy_document" in source:
            assert (method, template) in ROUTE_GATES, (method, template)
    assert set(ROUTE_GATES) <= {(m, p) for m, p, _ in ROUTES}


# --- requests the HTTP parser refuses ----------------------------------------------------------


def _parser_rejects() -> dict[str, bytes]:
    auth = b"Authorization: Bearer " + SECRET.encode()
    start = b"GET /v1/admin/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    return {
        "header over 8 KiB": start + auth + b"A" * 9000 + b"\r\n\r\n",
        "too many headers": start
        + auth
        + b"\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        + b"\r\n",
        "invalid header byte": start
        + auth
        + b"\r\nX-Bad\x01Name: "
        + SECRET.encode()
        + b"\r\n\r\n",
        "bad bytes in the URL": b"GET /v1/peermap?t="
        + SECRET.encode()
        + b"\x00\x7f HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + auth
        + b"\r\n\r\n",
        "Content-Length with Transfer-Encoding": b"POST /v1/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + auth
        + b"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    }


def _log_text(record: logging.LogRecord) -> str:
    """Every raw field of the record (a structlog event's dict included) and its rendered line."""
    return json.dumps({k: str(v) for k, v in record.__dict__.items()}) + rendered(record)


def _has_trace(record: logging.LogRecord) -> bool:
    """A stdlib record's exc_info, or a structlog event's formatted `exception`."""
    return bool(record.exc_info or record.exc_text or "exception" in event_fields(record))


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of every logger, DEBUG and up (access lines included)."""
    with caplog.at_level(logging.DEBUG):
        yield caplog


@pytest.mark.asyncio
async def test_parser_rejections_answer_json_and_echo_nothing(
    api: LiveApi, all_logs: pytest.LogCaptureFixture
) -> None:
    """Each refused request: JSON 400 with a fixed detail, connection closed, the secret in no
    response and no log record, no traceback, one access line `unmatched`, one metric count."""
    cases = _parser_rejects()
    for name, request in cases.items():
        status, raw = await _exchange(api.base_url, api.client_ssl, request)
        content_type, body = _split(raw)
        assert status == 400, (name, raw[:300])
        assert content_type == "application/json", name
        assert json.loads(body) == {"error": "bad_request", "detail": "malformed HTTP request"}
        assert SECRET.encode() not in raw, name
        assert b"Bearer" not in raw, name
        assert b"AAAA" not in raw, name
    records = all_logs.records
    assert not [r for r in records if SECRET in _log_text(r)]
    assert not [r for r in records if _has_trace(r)]
    assert not [r for r in records if r.name.startswith("aiohttp")]
    access = [event_fields(r) for r in records if r.name == "rustynet.http.access"]
    assert [(a["route"], a["status"]) for a in access] == [("unmatched", 400)] * len(cases)
    rejected = [r for r in records if event_name(r) == "http.request_rejected"]
    assert len(rejected) == len(cases)
    async with _session(api) as http, http.get(api.base_url + "/metrics") as resp:
        text = await resp.text()
    line = 'rustynet_http_requests_total{method="UNKNOWN",route="unmatched",status="400"}'
    assert f"{line} {float(len(cases))}" in text.splitlines()  # counts are written as floats


@pytest.mark.asyncio
async def test_relay_parser_rejections_echo_nothing(
    tmp_path: Path, all_logs: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """The relay's HTTP server: the same refused requests get the fixed JSON 400, the secret
    reaches neither the response nor its logs, no traceback, and the refusals are counted."""
    entropy = OsEntropy()
    cert = create_self_signed(
        "https://127.0.0.1:1", tmp_path / "r.crt", tmp_path / "r.key", now=datetime.now(UTC)
    )
    root = SigningKey.generate(entropy).public_key.fingerprint()
    trust = RelayTrust("relay-hostile", "https://control.example.net:8443", root)
    service = RelayService(trust, RelayLimits(), SystemClock(), entropy)
    runner = make_runner(create_relay_app(service), shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            "127.0.0.1",
            0,
            ssl_context=server_ssl_context(cert.certificate, cert.private_key),
        )
        await site.start()
        base = f"https://127.0.0.1:{runner.addresses[0][1]}"
        context = pinned_ssl_context(cert.pin)
        cases = _parser_rejects()
        for name, request in cases.items():
            status, raw = await _exchange(
                base, context, request.replace(b"/v1/admin/nodes", b"/v1/relay")
            )
            content_type, body = _split(raw)
            assert status == 400, (name, raw[:300])
            assert content_type == "application/json", name
            assert json.loads(body) == {"error": "bad_request", "detail": "malformed HTTP request"}
            assert SECRET.encode() not in raw, name
        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.get(base + "/metrics") as resp:
                metrics = await resp.text()
        assert f"rustynet_relay_rejected_requests_total {float(len(cases))}" in metrics.splitlines()
    finally:
        await runner.cleanup()
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
    records = all_logs.records
    assert not [r for r in records if SECRET in _log_text(r)]
    assert not [r for r in records if _has_trace(r)]
    assert not [r for r in records if r.name.startswith("aiohttp")]
