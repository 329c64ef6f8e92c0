"""Schemathesis against the live control API over TLS 1.3: no 5xx, no schema violations.

The server (real SqliteStore, real TLS) runs on its own event loop in a thread for the module,
because schemathesis drives it with blocking `requests` calls. Every generated request carries
the initial admin key, so the admin routes are exercised past authentication. Examples are
bounded (a few per operation, derandomized) to keep the run well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import traceback
from collections.abc import Iterator
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

from tests.integration.http_server import GENEROUS_LIMITS, LiveApi, running_api

# Per operation, half valid and half invalid requests on average: ~27 x 8 requests, a few seconds.
MAX_EXAMPLES = 8
CHECKS = [
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
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
        async with running_api(self._directory, limits=GENEROUS_LIMITS) as api:
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


@pytest.fixture(scope="module")
def live_api() -> Iterator[LiveApi]:
    """The control API served over TLS in a background thread for this module."""
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
    return [result.ok() for result in results]


def _run(live_api: LiveApi, operations: list[Any]) -> list[str]:
    failures: list[str] = []
    for operation in operations:

        @given(
            case=st.one_of(
                operation.as_strategy(GenerationMode.POSITIVE),
                operation.as_strategy(GenerationMode.NEGATIVE),
            )
        )
        @settings(
            max_examples=MAX_EXAMPLES,
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
    assert len(operations) == 27  # every route of openapi.json (with POST /v1/relay-token)
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
