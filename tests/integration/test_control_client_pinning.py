"""The control client trusts the server by its SPKI pin and TLS 1.3 only, checked before sending."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from rustynet.adapters.control_client import ControlClient, NodeAuth, pinned_ssl_context
from rustynet.adapters.tls_cert import CertificateInfo, create_self_signed

from rustynet.domain.tls_pin import SpkiPin
from rustynet.ports.control_api import ControlRejected, ControlUnreachable, ControlUntrusted

URL = "https://127.0.0.1:1"
API_KEY = b"rnk_abc_canarysecretvalue"


def _cert(tmp_path: Path, name: str) -> CertificateInfo:
    return create_self_signed(
        URL, tmp_path / f"{name}.pem", tmp_path / f"{name}.key", now=datetime.now(UTC)
    )


def _server_context(info: CertificateInfo, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = version
    ctx.maximum_version = version
    ctx.load_cert_chain(info.certificate, info.private_key)
    return ctx


Seen = list[dict[str, str]]


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Callable[[ssl.SSLContext], Awaitable[tuple[str, Seen]]]]:
    """Start an aiohttp HTTPS server with a given context; returns (url, seen request headers)."""
    runners: list[web.AppRunner] = []

    async def start(ctx: ssl.SSLContext) -> tuple[str, Seen]:
        seen: Seen = []

        async def nodes(request: web.Request) -> web.Response:
            seen.append(dict(request.headers))
            return web.json_response({"nodes": [{"id": "n1"}]})

        async def peermap(request: web.Request) -> web.Response:
            seen.append(dict(request.headers))
            return web.Response(status=204)

        async def revoke(request: web.Request) -> web.Response:
            seen.append(dict(request.headers))
            return web.json_response({"error": "gone", "detail": "used"}, status=410)

        async def big_document(request: web.Request) -> web.StreamResponse:
            # 300 KB in 4 KB pieces with pauses: the client sees many partial reads.
            body = json.dumps(
                {"nodes": [{"id": f"n{i:06d}", "pad": "x" * 200} for i in range(1500)]}
            )
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            data = body.encode()
            for start in range(0, len(data), 4096):
                await response.write(data[start : start + 4096])
                if start % (16 * 4096) == 0:
                    await asyncio.sleep(0.01)
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_get("/v1/admin/nodes", nodes)
        app.router.add_get("/v1/admin/policy", big_document)
        app.router.add_get("/v1/peermap", peermap)
        app.router.add_delete("/v1/admin/join-keys/{id}", revoke)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"https://127.0.0.1:{port}", seen

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_pinned_client_talks_to_the_pinned_server(
    tmp_path: Path, serve: Callable[[ssl.SSLContext], Awaitable[tuple[str, Seen]]]
) -> None:
    """With the right pin, requests go through and carry the API key."""
    info = _cert(tmp_path, "a")
    url, seen = await serve(_server_context(info, ssl.TLSVersion.TLSv1_3))
    async with ControlClient(url, info.pin, api_key=API_KEY) as client:
        assert await client.list_nodes() == [{"id": "n1"}]
        assert await client.peer_map(NodeAuth("n1", "v4.public.x"), after=3) is None
    assert seen[0]["Authorization"] == "Bearer " + API_KEY.decode()
    assert seen[1]["Rustynet-Node"] == "n1"


@pytest.mark.asyncio
async def test_a_response_arriving_in_many_pieces_is_read_whole(
    tmp_path: Path, serve: Callable[[ssl.SSLContext], Awaitable[tuple[str, Seen]]]
) -> None:
    """A 300 KB answer sent in 4 KB pieces with pauses parses whole (it used to be cut at the
    first read and refused as invalid JSON)."""
    info = _cert(tmp_path, "a")
    url, _ = await serve(_server_context(info, ssl.TLSVersion.TLSv1_3))
    async with ControlClient(url, info.pin, api_key=API_KEY) as client:
        document = await client.get_policy()
    nodes = document["nodes"]
    assert isinstance(nodes, list)
    assert [n["id"] for n in nodes if isinstance(n, dict)] == [f"n{i:06d}" for i in range(1500)]


@pytest.mark.asyncio
async def test_server_error_document_becomes_control_rejected(
    tmp_path: Path, serve: Callable[[ssl.SSLContext], Awaitable[tuple[str, Seen]]]
) -> None:
    """A JSON error answer raises ControlRejected with the server's code and status."""
    info = _cert(tmp_path, "a")
    url, _ = await serve(_server_context(info, ssl.TLSVersion.TLSv1_3))
    async with ControlClient(url, info.pin, api_key=API_KEY) as client:
        with pytest.raises(ControlRejected) as caught:
            await client.revoke_join_key("k1")
    assert (caught.value.status, caught.value.code) == (410, "gone")


@pytest.mark.asyncio
async def test_other_key_same_host_is_refused_before_any_request(
    tmp_path: Path, serve: Callable[[ssl.SSLContext], Awaitable[tuple[str, Seen]]]
) -> None:
    """A valid certificate for the same host but another key: refused, no request arrives."""
    pinned, impostor = _cert(tmp_path, "a"), _cert(tmp_path, "b")
    assert impostor.host == pinned.host
    url, seen = await serve(_server_context(impostor, ssl.TLSVersion.TLSv1_3))
    async with ControlClient(url, pinned.pin, api_key=API_KEY) as client:
        with pytest.raises(ControlUntrusted, match="not the pinned"):
            await client.list_nodes()
    assert seen == []


@pytest.mark.asyncio
async def test_impostor_receives_no_application_bytes(tmp_path: Path) -> None:
    """At the raw TLS layer the impostor never reads one decrypted byte (no bearer token)."""
    pinned, impostor = _cert(tmp_path, "a"), _cert(tmp_path, "b")
    received = bytearray()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError):
            received.extend(await asyncio.wait_for(reader.read(65536), 2))
        writer.close()

    server = await asyncio.start_server(
        handle, "127.0.0.1", 0, ssl=_server_context(impostor, ssl.TLSVersion.TLSv1_3)
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with ControlClient(
            f"https://127.0.0.1:{port}", pinned.pin, api_key=API_KEY
        ) as client:
            with pytest.raises(ControlUntrusted):
                await client.list_nodes()
        await asyncio.sleep(0.2)
    finally:
        server.close()
        await server.wait_closed()
    assert API_KEY not in received
    assert bytes(received) == b""


@pytest.mark.asyncio
async def test_tls12_server_is_refused(
    tmp_path: Path, serve: Callable[[ssl.SSLContext], Awaitable[tuple[str, Seen]]]
) -> None:
    """A server that only speaks TLS 1.2 is refused even with the right key (handshake fails)."""
    info = _cert(tmp_path, "a")
    assert pinned_ssl_context(info.pin).minimum_version == ssl.TLSVersion.TLSv1_3
    url, seen = await serve(_server_context(info, ssl.TLSVersion.TLSv1_2))
    async with ControlClient(url, info.pin, api_key=API_KEY) as client:
        with pytest.raises(ControlUnreachable):
            await client.list_nodes()
    assert seen == []


@pytest.mark.asyncio
async def test_nothing_listening_is_unreachable_not_untrusted(tmp_path: Path) -> None:
    """Connection refused is ControlUnreachable (exit 3 in the CLI), not a rejection."""
    sock_server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = sock_server.sockets[0].getsockname()[1]
    sock_server.close()
    await sock_server.wait_closed()
    pin = SpkiPin(bytes(32))
    async with ControlClient(f"https://127.0.0.1:{port}", pin, api_key=API_KEY) as client:
        with pytest.raises(ControlUnreachable) as caught:
            await client.list_nodes()
    assert not isinstance(caught.value, ControlUntrusted)
