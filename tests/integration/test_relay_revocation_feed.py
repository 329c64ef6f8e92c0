"""Revocation reaches the relay: a real control plane (HTTPS, SQLite) serving the signed
revocation feed, a real relay following it, real WebSocket sessions with relay tokens the
control plane issued. A revoked node's session closes within ~1 s and its still-valid token is
refused, the other nodes' sessions stay; forged, unsigned and rolled-back feeds change nothing;
the relay keeps relaying when control is unreachable; a handshake flood from one address is
limited while another address is served."""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
import pytest_asyncio
from aiohttp import web
from rustynet.adapters.clock import SystemClock
from rustynet.adapters.control_client import pinned_ssl_context
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.http_api.tls import server_ssl_context
from rustynet.adapters.relay.client import WebSocketRelaySession, WebSocketRelayTransport
from rustynet.adapters.relay.revocation_feed import RevocationFeedFollower
from rustynet.adapters.relay.server import create_relay_app, make_runner
from rustynet.adapters.relay.udp_sessions import UdpRelay
from rustynet.adapters.tls_cert import create_self_signed

from rustynet.application.control.relay_revocations import (
    MAX_FEED_WAITERS,
    RelayRevocationFeed,
)
from rustynet.application.errors import RateLimited
from rustynet.application.relay import RelayService
from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.keys import Purpose, SigningKey
from rustynet.domain.netmap import RelayEntry
from rustynet.domain.relay import RelayLimits, RelayTrust
from rustynet.domain.relay_revocations import FeedRejected, Revocation, RevocationFeed
from rustynet.domain.signed import SignedEnvelope, canonical_json
from rustynet.domain.tls_pin import SpkiPin
from rustynet.domain.udp_relay import AllocationTable, UdpRelayLimits
from rustynet.ports.relay import RelayAuth, RelayClosed, RelayEndpoint, RelayUnauthorized
from tests.integration import test_relay as relay_test
from tests.integration import test_relay_udp_allocation as udp_test
from tests.integration.http_server import LiveApi, enroll_over_http, node_headers, running_api

RELAY_ID = "relay-rev"
ISSUER = "https://127.0.0.1"  # the control URL running_api gives the service
ENTROPY = OsEntropy()


@attrs.frozen
class Member:
    node_id: str
    identity: SigningKey
    result: Any


@attrs.define
class World:
    api: LiveApi
    join: str
    members: list[Member]
    service: RelayService
    endpoint: RelayEndpoint
    http: aiohttp.ClientSession


async def _token(w: World, m: Member) -> str:
    async with w.http.post(
        "/v1/relay-token", json={"relay_id": RELAY_ID}, headers=node_headers(m.result)
    ) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["token"])


async def _auth(w: World, m: Member, token: str | None = None) -> RelayAuth:
    trust = m.result["trust"]
    return RelayAuth(
        node_id=m.node_id,
        identity_key=m.identity.public_key.to_text(),
        token=token if token is not None else await _token(w, m),
        root_certificate=trust["root_certificate"],
        signing_certificates=tuple(trust["signing_certificates"]),
        sign=lambda message: m.identity.sign(Purpose.RELAY_AUTH, message),
    )


async def _revoke(w: World, m: Member) -> None:
    async with w.http.post(
        f"/v1/admin/nodes/{m.node_id}/revoke", headers=w.api.admin_headers()
    ) as response:
        assert response.status == 200


async def _start_relay(tmp_path: Path, root: Any, **limits: int) -> tuple[web.AppRunner, Any]:
    cert = create_self_signed(
        "https://127.0.0.1:1",
        tmp_path / "relay.crt",
        tmp_path / "relay.key",
        now=datetime.now(UTC),
    )
    service = RelayService(
        RelayTrust(RELAY_ID, ISSUER, root), RelayLimits(**limits), SystemClock(), ENTROPY
    )
    runner = make_runner(create_relay_app(service), shutdown_timeout=1.0)
    await runner.setup()
    ssl_context = server_ssl_context(cert.certificate, cert.private_key)
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    port = runner.addresses[0][1]
    endpoint = RelayEndpoint(RELAY_ID, f"wss://127.0.0.1:{port}/v1/relay", cert.pin)
    return runner, (service, endpoint)


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """Control (relay `relay-rev` configured), three enrolled nodes, a relay following the feed."""
    relay_entry = RelayEntry(RELAY_ID, "wss://127.0.0.1:1/v1/relay", SpkiPin(bytes(32)))
    async with running_api(tmp_path, relays=(relay_entry,)) as api:
        connector = aiohttp.TCPConnector(ssl=api.client_ssl)
        async with aiohttp.ClientSession(base_url=api.base_url, connector=connector) as http:
            members, join = [], ""
            for name in ("a", "b", "c"):
                async with http.post(
                    "/v1/admin/join-keys", json={"ttl_seconds": 600}, headers=api.admin_headers()
                ) as response:
                    join = (await response.json())["token"]
                attempt = await enroll_over_http(http, join, f"rev-{name}")
                assert attempt.status == 200
                members.append(Member(attempt.body["node_id"], attempt.identity, attempt.body))
            root = JoinToken.parse(join).root_fingerprint
            runner, (service, endpoint) = await _start_relay(tmp_path, root)
            follower = RevocationFeedFollower(
                service, api.base_url, ssl_context=api.client_ssl, poll_wait=30
            )
            task = asyncio.create_task(follower.follow())
            try:
                yield World(api, join, members, service, endpoint, http)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await runner.cleanup()


def _transport() -> WebSocketRelayTransport:
    return WebSocketRelayTransport(ssl_context=pinned_ssl_context, timeout=5.0)


async def _until(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def _receive_until_closed(session: WebSocketRelaySession) -> None:
    while True:
        await session.receive()


async def _closed(session: WebSocketRelaySession) -> None:
    with pytest.raises(RelayClosed):
        await _receive_until_closed(session)


async def _refused(
    transport: WebSocketRelayTransport, endpoint: RelayEndpoint, auth: RelayAuth
) -> bool:
    """True when the relay refuses the session (a session it accepts is closed again)."""
    try:
        session = await transport.connect(endpoint, auth)
    except RelayUnauthorized:
        return True
    await session.close()
    return False


@pytest.mark.asyncio
async def test_revoked_nodes_session_closes_within_a_second_and_its_token_is_refused(
    world: World,
) -> None:
    a, b, c = world.members
    transport = _transport()
    await _until(lambda: world.service.counters.feed_up == 1)
    token_a = await _token(world, a)
    sa = await transport.connect(world.endpoint, await _auth(world, a, token_a))
    sb = await transport.connect(world.endpoint, await _auth(world, b))
    sc = await transport.connect(world.endpoint, await _auth(world, c))
    started = time.monotonic()
    await _revoke(world, a)
    await asyncio.wait_for(_closed(sa), timeout=1.5)
    elapsed = time.monotonic() - started
    await sa.close()
    print(f"revocation -> relay session closed: {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0
    assert world.service.counters.revoked_sessions == 1
    # Its token has not expired, yet a new session with it is refused.
    assert await _refused(transport, world.endpoint, await _auth(world, a, token_a))
    assert world.service.counters.revoked_refusals == 1
    # The other nodes still relay.
    await sb.send(c.node_id, b"still here")
    assert await asyncio.wait_for(sc.receive(), 3) == (b.node_id, b"still here")
    for session in (sb, sc):
        await session.close()


@pytest.mark.asyncio
async def test_revocation_to_close_latency_median(world: World) -> None:
    """Three revocations in a row; prints the median (the figure the docs quote)."""
    transport = _transport()
    await _until(lambda: world.service.counters.feed_up == 1)
    times = []
    for member in world.members:
        session = await transport.connect(world.endpoint, await _auth(world, member))
        started = time.monotonic()
        await _revoke(world, member)
        await asyncio.wait_for(_closed(session), timeout=1.5)
        times.append(time.monotonic() - started)
        await session.close()
    median = statistics.median(times)
    print(f"revocation -> close, ms: {[round(t * 1000) for t in times]} median {median * 1000:.0f}")
    assert median < 1.0


async def _feed(world: World, after: int = 0) -> dict[str, Any]:
    async with world.http.get(f"/v1/relay/revocations?after={after}&wait=0") as response:
        assert response.status == 200
        return dict(await response.json())


@pytest.mark.asyncio
async def test_forged_unsigned_and_rolled_back_feeds_change_nothing(world: World) -> None:
    a, b, c = world.members
    await _until(lambda: world.service.counters.feed_up == 1)
    await _revoke(world, a)
    await _until(lambda: world.service.revoked.watermark > 0)
    first = await _feed(world)
    await _revoke(world, b)
    await _until(lambda: world.service.revoked.is_revoked(b.node_id, datetime.now(UTC)))
    service = world.service
    watermark, rejected = service.revoked.watermark, service.counters.feeds_rejected
    trust = first["trust"]
    # Rolled back: the genuine older document.
    with pytest.raises(FeedRejected):
        service.apply_revocations(
            first["envelope"], trust["root_certificate"], trust["signing_certificates"]
        )
    # Forged: a newer serial naming c, signed by a key no certificate of the root covers.
    payload = RevocationFeed.from_payload(
        json.loads(SignedEnvelope.from_text(first["envelope"]).payload)
    )
    forged_feed = attrs.evolve(payload, serial=watermark + 100)
    forged = SignedEnvelope.seal(
        SigningKey.generate(ENTROPY), Purpose.REVOCATION, forged_feed.to_payload()
    )
    # Tampered: the genuine envelope's key id and signature over a payload naming c.
    genuine = SignedEnvelope.from_text(first["envelope"])
    tampered = SignedEnvelope(
        genuine.purpose, genuine.key_id, canonical_json(forged_feed.to_payload()), genuine.signature
    )
    # Unsigned: not an envelope at all.
    for envelope in (forged.to_text(), tampered.to_text(), "rnenv_not-signed"):
        with pytest.raises(FeedRejected):
            service.apply_revocations(
                envelope, trust["root_certificate"], trust["signing_certificates"]
            )
    assert service.revoked.watermark == watermark
    assert service.counters.feeds_rejected == rejected + 4
    assert not service.revoked.is_revoked(c.node_id, datetime.now(UTC))
    assert service.revoked.is_revoked(a.node_id, datetime.now(UTC))


@pytest.mark.asyncio
async def test_relay_keeps_relaying_when_control_is_unreachable(tmp_path: Path) -> None:
    """A follower pointed at a closed port: the feed is down (gauge 0, failures counted) and
    the relay still authenticates and forwards with tokens it verifies itself."""
    signing = SigningKey.generate(ENTROPY)
    root = signing.public_key.fingerprint()
    runner, (service, _endpoint) = await _start_relay(tmp_path, root)
    follower = RevocationFeedFollower(service, "https://127.0.0.1:9", poll_wait=1)
    task = asyncio.create_task(follower.follow())
    try:
        await _until(lambda: service.counters.feed_failures >= 1)
        assert service.counters.feed_up == 0
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()


async def _handshake_status(base: str, source: str) -> int:
    connector = aiohttp.TCPConnector(ssl=False, local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            async with http.ws_connect(base + "/v1/relay") as ws:
                await ws.close()
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


@pytest.mark.asyncio
async def test_a_handshake_flood_from_one_address_is_limited_while_another_is_served(
    tmp_path: Path,
) -> None:
    root = SigningKey.generate(ENTROPY).public_key.fingerprint()
    runner, (service, endpoint) = await _start_relay(
        tmp_path, root, handshakes_per_second=1, handshakes_burst=3
    )
    base = endpoint.url.replace("wss://", "https://").removesuffix("/v1/relay")
    try:
        flood = [await _handshake_status(base, "127.0.0.1") for _ in range(6)]
        assert flood[:3] == [101, 101, 101]
        assert 429 in flood[3:]
        assert await _handshake_status(base, "127.0.0.2") == 101
        assert service.counters.handshakes_limited >= 1
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_waiting_feed_polls_are_bounded(world: World) -> None:
    """The feed has no credential: beyond `MAX_FEED_WAITERS` waiting polls it answers 429."""
    feed = RelayRevocationFeed(world.api.service.context)
    feed.waiting = MAX_FEED_WAITERS
    with pytest.raises(RateLimited):
        await feed.revocations(0, 0)
    feed.waiting = MAX_FEED_WAITERS - 1
    assert await feed.revocations(0, 0) is None  # nothing revoked yet: 204


@pytest.mark.asyncio
async def test_revocation_removes_the_nodes_udp_allocations(tmp_path: Path) -> None:
    """A verified feed naming a node ends its sessions, so its UDP allocations (and the
    forwarder's rules for them) are removed; the feed is signed like control signs it."""
    h = udp_test.HIERARCHY
    cert = create_self_signed(
        "https://127.0.0.1:1", tmp_path / "u.crt", tmp_path / "u.key", now=datetime.now(UTC)
    )
    trust = RelayTrust(relay_test.RELAY_ID, relay_test.ISSUER, h.root_key.public_key.fingerprint())
    service = RelayService(trust, RelayLimits(), SystemClock(), ENTROPY)
    forwarding = udp_test.RecordingForwarding()
    first = 20000 + 16 * secrets.randbelow(2000)
    limits = UdpRelayLimits(port_first=first, port_last=first + 15, per_node=2, total=4)
    udp = UdpRelay("127.0.0.1", AllocationTable(limits, ENTROPY), forwarding, SystemClock())
    await udp.start()
    runner = make_runner(create_relay_app(service, udp=udp), shutdown_timeout=1.0)
    await runner.setup()
    ssl_context = server_ssl_context(cert.certificate, cert.private_key)
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    port = runner.addresses[0][1]
    endpoint = RelayEndpoint(relay_test.RELAY_ID, f"wss://127.0.0.1:{port}/v1/relay", cert.pin)
    try:
        a, b = relay_test.Node.make("node_a"), relay_test.Node.make("node_b")
        sa = await _transport().connect(endpoint, a.auth(h, h.token(a)))
        sb = await _transport().connect(endpoint, b.auth(h, h.token(b)))
        await sa.allocate_udp("node_b")
        await sb.allocate_udp("node_a")
        assert len(udp.table) == 1
        now = datetime.now(UTC).replace(microsecond=0)
        feed = RevocationFeed(1, relay_test.ISSUER, now, (Revocation("node_a", now),))
        envelope = SignedEnvelope.seal(h.signing_key, Purpose.REVOCATION, feed.to_payload())
        closed = service.apply_revocations(
            envelope.to_text(), h.root_certificate, (h.signing_certificate,)
        )
        assert closed == 1
        await asyncio.wait_for(_closed(sa), timeout=1.5)
        await sa.close()
        await _until(lambda: len(udp.table) == 0)
        await udp.settled()
        assert len(udp.table) == 0
        await sb.close()
    finally:
        await runner.cleanup()
        await udp.close()
