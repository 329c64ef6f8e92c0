"""Schemathesis against the live control API over TLS 1.3: no 5xx, no schema violations, and
the document says what the server enforces.

The server (real SqliteStore, real TLS) runs on its own event loop in a thread, one per test,
because schemathesis drives it with blocking `requests` calls. Every generated request carries
the initial admin key, so the admin routes are exercised past authentication. Examples are
bounded (a few per operation, derandomized) to keep the run well under a minute.

Both data checks run: `positive_data_acceptance` (a request the document calls valid is not
answered 400) and `negative_data_rejection` (a request it calls invalid is not answered 2xx).
Three kinds of 400 to schema-valid data are accepted, each because JSON Schema cannot state the
rule, and each named by the error's `pointer` (`_beyond_json_schema`):
- a whole float (`87.0`) where an integer goes: JSON Schema calls it an integer, the API takes
  JSON integers only (nothing is coerced; the document's description says so);
- `/tunnel_key_binding` of an enrollment: a signed envelope, whose inner structure and
  signature the document can only describe;
- a pointer inside a section of a policy document (`/acls/0/src/1`, never `/unknown`):
  references (tags owned in tagOwners, declared groups and hosts), CIDRs and the policy's
  tests are checked by the server.
(And `/ttl_seconds` while the document does not state its bounds: `_ttl_bounds_documented`.)
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import traceback
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rustynet.adapters.http_api.handlers import openapi_document
from rustynet.adapters.http_api.keys import METRICS_KEY
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import Failure

from tests.integration.http_server import GENEROUS_LIMITS, LiveApi, running_api

# Per operation, half valid and half invalid requests on average: ~27 x 8 requests, a few seconds.
MAX_EXAMPLES = 8
POLICY_PATHS = frozenset({"/v1/admin/policy", "/v1/admin/policy/check"})
POLICY_SECTIONS = frozenset({"groups", "tagOwners", "hosts", "acls", "tests"})
ENVELOPES = frozenset({("/v1/enroll", "/tunnel_key_binding")})


def _at(document: object, pointer: str) -> object:
    """The value at an RFC 6901 `pointer` in `document` (None when there is none)."""
    value = document
    for raw in pointer.split("/")[1:] if pointer else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _beyond_json_schema(case: Any, response: Any) -> bool:
    """A 400 to schema-valid data for a rule JSON Schema cannot state (module docstring)."""
    if response.status_code != 400:
        return False
    try:
        pointer = json.loads(response.content).get("pointer")
    except (ValueError, AttributeError):
        return False
    if not isinstance(pointer, str):
        return False
    value = _at(case.body, pointer)
    if isinstance(value, float) and value.is_integer():
        return True
    if (case.operation.path, pointer) in ENVELOPES:
        return True
    if pointer == "/ttl_seconds" and not _ttl_bounds_documented():
        return True
    section = pointer.split("/")[1] if pointer.count("/") >= 2 else ""
    return case.operation.path in POLICY_PATHS and section in POLICY_SECTIONS


def _ttl_bounds_documented() -> bool:
    """Whether the document states `ttl_seconds` bounds. They land with the server-side fix of
    the ttl overflow (issue 11, section 2); until then a 400 there is the one known gap, and
    the moment the document states a minimum this allowance stops applying by itself."""
    schemas = json.loads(openapi_document())["components"]["schemas"]
    return all(
        "minimum" in schemas[name]["properties"]["ttl_seconds"]
        for name in ("CreateJoinKeyRequest", "CreateApiKeyRequest")
    )


@schemathesis.check
def positive_data_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """`positive_data_acceptance`, less the 400s `_beyond_json_schema` explains."""
    try:
        result: bool | None = positive_data_acceptance(ctx, response, case)
    except Failure:
        if _beyond_json_schema(case, response):
            return None
        raise
    return result


CHECKS = [
    negative_data_rejection,
    not_a_server_error,
    positive_data_accepted,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


class _ServerThread:
    """`running_api` on a private event loop in a daemon thread."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.api: LiveApi | None = None
        self._thread = threading.Thread(target=self._run, name="control-api", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread, which raises it
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        # Long polls (the unauthenticated relay revocation feed waits by default) end within
        # 1 s, well under the client's read timeout.
        async with running_api(
            self._directory, limits=GENEROUS_LIMITS, long_poll_timeout=timedelta(seconds=1)
        ) as api:
            self.api = api
            self._ready.set()
            await self._stop.wait()

    def start(self) -> LiveApi:
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._error is not None or self.api is None:
            raise RuntimeError("the control API did not start") from self._error
        return self.api

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


@pytest.fixture
def live_api() -> Iterator[LiveApi]:
    """The control API served over TLS in a background thread, fresh for each test (a run may
    revoke the admin key, change the policy or spend rate limits)."""
    with tempfile.TemporaryDirectory(prefix="rustynet-schemathesis-") as directory:
        server = _ServerThread(Path(directory))
        api = server.start()
        try:
            yield api
        finally:
            server.stop()


def _operations(live_api: LiveApi, document: dict[str, Any] | None = None) -> list[Any]:
    schema = schemathesis.openapi.from_dict(document or json.loads(openapi_document()))
    schema.config.update(base_url=live_api.base_url)
    results: list[Any] = list(schema.get_all_operations())
    # Revoking an API key may revoke the one every request carries (ids come back from the
    # listing): that operation goes last, so it cannot turn the rest into plain 401s.
    return sorted(
        (result.ok() for result in results),
        key=lambda op: (op.method.upper(), op.path) == ("DELETE", "/v1/admin/api-keys/{id}"),
    )


def _run(
    live_api: LiveApi,
    operations: list[Any],
    modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
    max_examples: int = MAX_EXAMPLES,
) -> list[str]:
    failures: list[str] = []
    for operation in operations:

        @given(case=st.one_of(*(operation.as_strategy(mode) for mode in modes)))
        @settings(
            max_examples=max_examples,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: Any) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {live_api.admin_key}"},
                verify=str(live_api.certificate.cert_path),
                checks=CHECKS,
                timeout=10,
            )

        try:
            exercise()
        # schemathesis raises its FailureGroup, a BaseExceptionGroup: catch it too.
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect, report all
            text = "".join(traceback.format_exception(exc, limit=0))
            failures.append(f"{operation.method.upper()} {operation.path}: {text}")
    return failures


def _served(live_api: LiveApi) -> int:
    return sum(live_api.app[METRICS_KEY].requests.values())


def test_live_api_conforms_to_its_openapi_document(live_api: LiveApi) -> None:
    """Generated requests (valid and invalid by the document) to every operation never get a
    5xx, an undocumented status, content type or header, or a body off its schema."""
    operations = _operations(live_api)
    assert len(operations) == 28  # every route of openapi.json (with the relay revocation feed)
    before = _served(live_api)
    failures = _run(live_api, operations)
    assert not failures, "\n\n".join(failures)
    assert _served(live_api) - before >= 2 * len(operations)


def test_a_response_off_the_document_is_caught(live_api: LiveApi) -> None:
    """Negative control: with a document that says /healthz answers `degraded`, the same run
    reports the live `ok` as a schema violation (the checks really read the responses)."""
    document = json.loads(openapi_document())
    document["components"]["schemas"]["Health"]["properties"]["status"]["enum"] = ["degraded"]
    healthz = [op for op in _operations(live_api, document) if op.path == "/healthz"]
    failures = _run(live_api, healthz)
    assert len(failures) == 1
    assert '"ok" is not one of "degraded"' in failures[0]


def test_a_document_looser_than_the_server_is_caught(live_api: LiveApi) -> None:
    """Negative control for the positive check: a document that admits `limit=0` (the issue's
    example; the server takes 1..1000) is reported as "schema-valid request rejected"."""
    document = json.loads(openapi_document())
    limit = next(
        p for p in document["paths"]["/v1/admin/audit"]["get"]["parameters"] if p["name"] == "limit"
    )
    limit.update(required=True, schema={"type": "integer", "const": 0})
    audit = [op for op in _operations(live_api, document) if op.path == "/v1/admin/audit"]
    failures = _run(live_api, audit, (GenerationMode.POSITIVE,))
    assert len(failures) == 1
    assert "Schema-valid request rejected" in failures[0]


def test_a_document_tighter_than_the_server_is_caught(live_api: LiveApi) -> None:
    """Negative control for the negative check: a document that demands an `X-Probe` header of
    three letters on /healthz (which the server never reads) is reported, since the server
    answers 200 to requests the document calls invalid ("API accepted schema-violating
    request"). (A query parameter would not do: the server refuses every query parameter a
    route does not take.)"""
    document = json.loads(openapi_document())
    probe = {
        "name": "X-Probe",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "pattern": "^[a-z]{3}$"},
    }
    document["paths"]["/healthz"]["get"]["parameters"] = [probe]
    healthz = [op for op in _operations(live_api, document) if op.path == "/healthz"]
    failures = _run(live_api, healthz, (GenerationMode.NEGATIVE,))
    assert len(failures) == 1
    assert "Schema-violating request accepted" in failures[0]
