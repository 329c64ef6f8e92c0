"""The relay over real TLS on loopback: sessions, forwarding, limits and every auth rejection.

Tokens are real PASETO relay tokens from `issue_token`, signed by a signing key the test root
certified, exactly as the control plane issues them (docs/relay-protocol.md).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

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
from rustynet.adapters.relay.server import create_relay_app, make_runner
from rustynet.adapters.tls_cert import CertificateInfo, create_self_signed

from rustynet.application.relay import RelayService
from rustynet.domain.key_hierarchy import (
    ROLE_MAX_LIFETIME,
    KeyRole,
)
from rustynet.domain.keys import Purpose, SigningKey
from rustynet.domain.relay import RelayLimits, RelayTrust, encode_frame
from rustynet.domain.tls_pin import SpkiPin
from rustynet.domain.tokens import TokenKind, issue_token
from rustynet.ports.relay import (
    RelayAuth,
    RelayClosed,
    RelayEndpoint,
    RelayUnauthorized,
    RelayUnreachable,
    RelayUntrusted,
)
from tests.integration.tls_probe import assert_groups_and_alerts
from tests.key_chain import SigningChain

ISSUER = "https://control.example.net:8443"
RELAY_ID = "relay-test"
ENTROPY = OsEntropy()


@attrs.frozen
class Hierarchy:
    """A control root and one certified signing key (what signs relay tokens)."""

    root_key: SigningKey
    root_certificate: str
    signing_key: SigningKey
    signing_certificate: str

    @classmethod
    def make(cls) -> Hierarchy:
        now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        chain = SigningChain.make(
            ENTROPY,
            now,
            root_not_after=now + ROLE_MAX_LIFETIME[KeyRole.ROOT] - timedelta(seconds=1),
            scope=frozenset({Purpose.PEER_MAP, Purpose.REVOCATION}),
        )
        return cls(
            chain.root_key,
            chain.root_certificate.to_text(),
            chain.signing_key,
            chain.signing_certificate.to_text(),
        )

    def token(
        self,
        node: Node,
        *,
        lifetime: int = 120,
        audience: str = RELAY_ID,
        subject: str | None = None,
        bound: SigningKey | None = None,
        now: datetime | None = None,
        key: SigningKey | None = None,
    ) -> str:
        return issue_token(
            key or self.signing_key,
            kind=TokenKind.RELAY,
            issuer=ISSUER,
            subject=subject or node.node_id,
            audience=audience,
            bound_identity=(bound or node.identity).public_key,
            now=now or datetime.now(UTC),
            lifetime=timedelta(seconds=lifetime),
            entropy=ENTROPY,
        )


@attrs.frozen
class Node:
    node_id: str
    identity: SigningKey

    @classmethod
    def make(cls, node_id: str) -> Node:
        return cls(node_id, SigningKey.generate(ENTROPY))

    def auth(self, h: Hierarchy, token: str, **changes: object) -> RelayAuth:
        auth = RelayAuth(
            node_id=self.node_id,
            identity_key=self.identity.public_key.to_text(),
            token=token,
            root_certificate=h.root_certificate,
            signing_certificates=(h.signing_certificate,),
            sign=lambda m: self.identity.sign(Purpose.RELAY_AUTH, m),
        )
        return attrs.evolve(auth, **changes)  # type: ignore[arg-type]


@attrs.define
class Relay:
    service: RelayService
    endpoint: RelayEndpoint
    base: str
    cert: CertificateInfo

    async def get(self, path: str) -> tuple[int, str]:
        connector = aiohttp.TCPConnector(ssl=pinned_ssl_context(self.endpoint.tls_pin))
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get(self.base + path) as response,
        ):
            return response.status, await response.text()

    async def metric(self, line_prefix: str) -> int:
        _, text = await self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(line_prefix + " "):
                value = float(line.split()[-1])  # the exposition writes counts as floats
                assert value.is_integer(), line
                return int(value)
        raise AssertionError(f"{line_prefix} not in metrics")


StartRelay = Callable[..., Awaitable[Relay]]


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return Hierarchy.make()


@pytest_asyncio.fixture
async def start_relay(tmp_path: Path, hierarchy: Hierarchy) -> AsyncIterator[StartRelay]:
    """Start relays on loopback with TLS 1.3 and the given limits."""
    runners: list[web.AppRunner] = []

    async def start(**limits: object) -> Relay:
        index = len(runners)
        cert = create_self_signed(
            "https://127.0.0.1:1",
            tmp_path / f"relay{index}.crt",
            tmp_path / f"relay{index}.key",
            now=datetime.now(UTC),
        )
        trust = RelayTrust(RELAY_ID, ISSUER, hierarchy.root_key.public_key.fingerprint())
        service = RelayService(trust, RelayLimits(**limits), SystemClock(), ENTROPY)  # type: ignore[arg-type]
        runner = make_runner(create_relay_app(service), shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(
            runner,
            "127.0.0.1",
            0,
            ssl_context=server_ssl_context(cert.certificate, cert.private_key),
        )
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        endpoint = RelayEndpoint(RELAY_ID, f"wss://127.0.0.1:{port}/v1/relay", cert.pin)
        return Relay(service, endpoint, f"https://127.0.0.1:{port}", cert)

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def transport() -> WebSocketRelayTransport:
    return WebSocketRelayTransport(ssl_context=pinned_ssl_context, timeout=5.0)


async def _pair(
    relay: Relay, h: Hierarchy, transport: WebSocketRelayTransport
) -> tuple[Node, WebSocketRelaySession, Node, WebSocketRelaySession]:
    a, b = Node.make("node_a"), Node.make("node_b")
    sa = await transport.connect(relay.endpoint, a.auth(h, h.token(a)))
    sb = await transport.connect(relay.endpoint, b.auth(h, h.token(b)))
    return a, sa, b, sb


async def _receive(session: WebSocketRelaySession, timeout: float = 3.0) -> tuple[str, bytes]:
    return await asyncio.wait_for(session.receive(), timeout)


async def _drain(session: WebSocketRelaySession, quiet: float = 0.3) -> list[bytes]:
    got: list[bytes] = []
    while True:
        try:
            got.append((await asyncio.wait_for(session.receive(), quiet))[1])
        except TimeoutError:
            return got


# --- the happy path ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_two_nodes_exchange_frames_both_ways_through_the_relay(
    start_relay: StartRelay, hierarchy: Hierarchy, transport: WebSocketRelayTransport
) -> None:
    """A's packet reaches B named as from A, and B's reply reaches A; metrics count both."""
    relay = await start_relay()
    _, sa, _, sb = await _pair(relay, hierarchy, transport)
    try:
        await sa.send("node_b", b"hello b")
        assert await _receive(sb) == ("node_a", b"hello b")
        await sb.send("node_a", b"hello a")
        assert await _receive(sa) == ("node_b", b"hello a")
        assert await relay.metric("rustynet_relay_frames_forwarded_total") == 2
        assert await relay.metric("rustynet_relay_open_sessions") == 2
        status, body = await relay.get("/healthz")
        assert status == 200
        assert json.loads(body)["status"] == "ok"
    finally:
        await sa.close()
        await sb.close()


@pytest.mark.asyncio
async def test_a_batch_is_forwarded_and_counted_frame_by_frame(
    start_relay: StartRelay, hierarchy: Hierarchy, transport: WebSocketRelayTransport
) -> None:
    """One batch message with three packets for B and one for an unknown node: B gets the
    three in order (named as from A), the fourth is dropped, each counted on its own."""
    relay = await start_relay()
    _, sa, _, sb = await _pair(relay, hierarchy, transport)
    try:
        await sa.send_many(
            [("node_b", b"one"), ("node_b", b"two"), ("node_nobody", b"x"), ("node_b", b"three")]
        )
        got = [await _receive(sb) for _ in range(3)]
        assert got == [("node_a", b"one"), ("node_a", b"two"), ("node_a", b"three")]
        assert await relay.metric("rustynet_relay_frames_forwarded_total") == 3
        dropped = 'rustynet_relay_frames_dropped_total{reason="unknown_destination"}'
        assert await relay.metric(dropped) == 1
    finally:
        await sa.close()
        await sb.close()


@pytest.mark.asyncio
async def test_relay_passes_arbitrary_payload_bytes_unchanged(
    start_relay: StartRelay, hierarchy: Hierarchy, transport: WebSocketRelayTransport
) -> None:
    """Opacity: every byte value, an empty packet and a frame-looking packet arrive as sent."""
    relay = await start_relay()
    _, sa, _, sb = await _pair(relay, hierarchy, transport)
    payloads = [
        bytes(range(256)),
        b"",
        encode_frame(0x02, "node_x", b"spoof"),
        ENTROPY.token_bytes(1400),
    ]
    try:
        for payload in payloads:
            await sa.send("node_b", payload)
        got = [await _receive(sb) for _ in payloads]
        assert got == [("node_a", p) for p in payloads]
    finally:
        await sa.close()
        await sb.close()


# --- drops ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_frame_to_unknown_destination_is_dropped_and_counted(
    start_relay: StartRelay, hierarchy: Hierarchy, transport: WebSocketRelayTransport
) -> None:
    """Nobody is told; the drop shows in the metrics under its reason."""
    relay = await start_relay()
    _, sa, _, sb = await _pair(relay, hierarchy, transport)
    try:
        await sa.send("node_nobody", b"lost")
        await sa.send("node_b", b"marker")
        assert await _receive(sb) == ("node_a", b"marker")
        dropped = 'rustynet_relay_frames_dropped_total{reason="unknown_destination"}'
        assert await relay.metric(dropped) == 1
    finally:
        await sa.close()
        await sb.close()


@pytest.mark.asyncio
async def test_oversize_frame_is_dropped_and_counted(
    start_relay: StartRelay, hierarchy: Hierarchy, transport: WebSocketRelayTransport
) -> None:
    """A frame over max_frame_bytes never reaches the destination; smaller ones still do."""
    relay = await start_relay(max_frame_bytes=1024, bytes_burst=4096)
    _, sa, _, sb = await _pair(relay, hierarchy, transport)
    try:
        await sa.send("node_b", b"x" * 2000)
        await sa.send("node_b", b"small")
        assert await _receive(sb) == ("node_a", b"small")
        assert await relay.metric('rustynet_relay_frames_dropped_total{reason="oversize"}') == 1
    finally:
        await sa.close()
        await sb.close()


@pytest.mark.asyncio
async def test_over_limit_frames_are_dropped_and_counted(
    start_relay: StartRelay, hierarchy: Hierarchy, transport: WebSocketRelayTransport
) -> None:
    """Per-node packet budget: a burst of 5 at 1/s lets about 5 of 30 through."""
    relay = await start_relay(packets_per_second=1, packets_burst=5)
    _, sa, _, sb = await _pair(relay, hierarchy, transport)
    try:
        for i in range(30):
            await sa.send("node_b", i.to_bytes(2, "big"))
        got = await _drain(sb)
        assert 5 <= len(got) <= 6
        limited = await relay.metric('rustynet_relay_frames_dropped_total{reason="rate_limited"}')
        assert limited == 30 - len(got)
    finally:
        await sa.close()
        await sb.close()


@pytest.mark.asyncio
async def test_byte_budget_drops_frames_over_bytes_per_second(
    start_relay: StartRelay, hierarchy: Hierarchy, transport: WebSocketRelayTransport
) -> None:
    """Per-node byte budget: 4 KiB burst at 1 KiB/s admits four 1000-byte frames of ten."""
    relay = await start_relay(bytes_per_second=1024, bytes_burst=4096, max_frame_bytes=2048)
    _, sa, _, sb = await _pair(relay, hierarchy, transport)
    try:
        for _ in range(10):
            await sa.send("node_b", b"y" * 990)
        got = await _drain(sb)
        assert len(got) == 4
        limited = await relay.metric('rustynet_relay_frames_dropped_total{reason="rate_limited"}')
        assert limited == 6
    finally:
        await sa.close()
        await sb.close()


# --- session lifetime -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_renewal_keeps_the_session_past_the_first_tokens_expiry(
    start_relay: StartRelay, hierarchy: Hierarchy, transport: WebSocketRelayTransport
) -> None:
    """Renewed in session: frames still flow after the first token expired."""
    relay = await start_relay()
    a, b = Node.make("node_a"), Node.make("node_b")
    sa = await transport.connect(relay.endpoint, a.auth(hierarchy, hierarchy.token(a, lifetime=2)))
    sb = await transport.connect(relay.endpoint, b.auth(hierarchy, hierarchy.token(b)))
    try:
        first = sa.expires_at
        new_expiry = await sa.renew(hierarchy.token(a, lifetime=10))
        assert new_expiry > first
        await asyncio.sleep((first - datetime.now(UTC)).total_seconds() + 0.5)
        await sa.send("node_b", b"still here")
        assert await _receive(sb) == ("node_a", b"still here")
        await sb.send("node_a", b"and back")
        assert await _receive(sa) == ("node_b", b"and back")
        assert await relay.metric("rustynet_relay_renewals_total") == 1
    finally:
        await sa.close()
        await sb.close()


@pytest.mark.asyncio
async def test_session_without_renewal_is_closed_at_token_expiry(
    start_relay: StartRelay, hierarchy: Hierarchy, transport: WebSocketRelayTransport
) -> None:
    """No renewal: the relay closes the session when the token expires (RelayClosed)."""
    relay = await start_relay()
    a = Node.make("node_a")
    sa = await transport.connect(relay.endpoint, a.auth(hierarchy, hierarchy.token(a, lifetime=2)))
    try:
        with pytest.raises(RelayClosed):
            await asyncio.wait_for(sa.receive(), 5.0)
        with pytest.raises(RelayClosed):
            await sa.send("node_b", b"too late")
        assert await relay.metric("rustynet_relay_expired_sessions_total") == 1
        assert await relay.metric("rustynet_relay_open_sessions") == 0
    finally:
        await sa.close()


@pytest.mark.asyncio
async def test_renewal_with_a_token_for_another_node_is_refused_and_closes(
    start_relay: StartRelay, hierarchy: Hierarchy, transport: WebSocketRelayTransport
) -> None:
    """A renewal must be for the same node: refused with the generic 4401, session over."""
    relay = await start_relay()
    a, b = Node.make("node_a"), Node.make("node_b")
    sa = await transport.connect(relay.endpoint, a.auth(hierarchy, hierarchy.token(a)))
    try:
        with pytest.raises(RelayUnauthorized):
            await sa.renew(hierarchy.token(b, bound=a.identity))
        with pytest.raises(RelayClosed):
            await _receive(sa)
    finally:
        await sa.close()


# --- authentication rejections ----------------------------------------------------------------


def _other_hierarchy_auth(node: Node, h: Hierarchy) -> RelayAuth:
    other = Hierarchy.make()
    return node.auth(other, other.token(node))


def _rogue_signing_certificate_auth(node: Node, h: Hierarchy) -> RelayAuth:
    """The pinned root, but a signing certificate (and token) from another root."""
    other = Hierarchy.make()
    return node.auth(h, other.token(node), signing_certificates=(other.signing_certificate,))


REJECTIONS: dict[str, Callable[[Node, Hierarchy], RelayAuth]] = {
    "garbage token": lambda n, h: n.auth(h, "v4.public.garbage"),
    "expired token": lambda n, h: n.auth(
        h, h.token(n, now=datetime.now(UTC) - timedelta(seconds=200))
    ),
    "token for another relay": lambda n, h: n.auth(h, h.token(n, audience="relay-other")),
    "token for another node": lambda n, h: n.auth(h, h.token(n, subject="node_other")),
    "token bound to another identity": lambda n, h: n.auth(
        h, h.token(n, bound=SigningKey.generate(ENTROPY))
    ),
    "token signed by an uncertified key": lambda n, h: n.auth(
        h, h.token(n, key=SigningKey.generate(ENTROPY))
    ),
    "wrong challenge signature": lambda n, h: n.auth(
        h, h.token(n), sign=lambda m: SigningKey.generate(ENTROPY).sign(Purpose.RELAY_AUTH, m)
    ),
    "challenge signed for another purpose": lambda n, h: n.auth(
        h, h.token(n), sign=lambda m: n.identity.sign(Purpose.TOKEN_RENEWAL, m)
    ),
    "root certificate of another control plane": _other_hierarchy_auth,
    "signing certificate issued by another root": _rogue_signing_certificate_auth,
    "signing certificate missing": lambda n, h: n.auth(
        h, h.token(n), signing_certificates=(h.root_certificate,)
    ),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("case", sorted(REJECTIONS))
async def test_relay_rejects_session_with_generic_4401(
    case: str,
    start_relay: StartRelay,
    hierarchy: Hierarchy,
    transport: WebSocketRelayTransport,
) -> None:
    """Each forged or misused credential is refused the same way and nothing is forwarded."""
    relay = await start_relay()
    b = Node.make("node_b")
    sb = await transport.connect(relay.endpoint, b.auth(hierarchy, hierarchy.token(b)))
    try:
        with pytest.raises(RelayUnauthorized):
            await transport.connect(
                relay.endpoint, REJECTIONS[case](Node.make("node_a"), hierarchy)
            )
        assert await relay.metric("rustynet_relay_auth_failures_total") == 1
        assert await relay.metric("rustynet_relay_open_sessions") == 1
        assert relay.service.node_count == 1
    finally:
        await sb.close()


async def _raw_socket(
    relay: Relay, http: aiohttp.ClientSession
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, str]]:
    ws = await http.ws_connect(relay.endpoint.url)
    challenge = json.loads((await ws.receive()).data)
    return ws, challenge


@pytest.mark.asyncio
async def test_connection_without_auth_is_closed_after_the_handshake_timeout(
    start_relay: StartRelay,
) -> None:
    """Silent (or binary-only) clients are cut off with 4401 once the timeout passes."""
    relay = await start_relay(handshake_timeout=0.5)
    connector = aiohttp.TCPConnector(ssl=pinned_ssl_context(relay.endpoint.tls_pin))
    async with aiohttp.ClientSession(connector=connector) as http:
        ws, challenge = await _raw_socket(relay, http)
        assert challenge["type"] == "challenge"
        assert challenge["relay_id"] == RELAY_ID
        await ws.send_bytes(encode_frame(0x01, "node_b", b"early"))
        msg = await asyncio.wait_for(ws.receive(), 3.0)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4401
        assert msg.extra == "unauthorized"
    assert await relay.metric("rustynet_relay_handshake_timeouts_total") == 1
    assert await relay.metric('rustynet_relay_frames_dropped_total{reason="unauthenticated"}') == 1
    assert await relay.metric("rustynet_relay_pending_handshakes") == 0


@pytest.mark.asyncio
async def test_malformed_auth_message_gets_the_same_generic_close(
    start_relay: StartRelay,
) -> None:
    """Non-JSON, wrong shape: one close code and reason, no detail."""
    relay = await start_relay()
    connector = aiohttp.TCPConnector(ssl=pinned_ssl_context(relay.endpoint.tls_pin))
    async with aiohttp.ClientSession(connector=connector) as http:
        for text in ("not json", '{"type": "auth"}', "[1, 2]"):
            ws, _ = await _raw_socket(relay, http)
            await ws.send_str(text)
            msg = await asyncio.wait_for(ws.receive(), 3.0)
            assert (msg.type, ws.close_code, msg.extra) == (
                aiohttp.WSMsgType.CLOSE,
                4401,
                "unauthorized",
            )
    assert await relay.metric("rustynet_relay_auth_failures_total") == 3


# --- TLS --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tls12_client_is_refused(start_relay: StartRelay) -> None:
    """The relay speaks TLS 1.3 only: a client capped at 1.2 fails the handshake."""
    relay = await start_relay()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.get(relay.base + "/healthz")


@pytest.mark.asyncio
async def test_relay_key_exchange_follows_the_crypto_policy(start_relay: StartRelay) -> None:
    """openssl s_client against the live relay: groups outside the policy (ffdhe2048 first),
    TLS_AES_128_GCM_SHA256 and TLS 1.2 are refused with an alert; X25519 and P-256 accepted."""
    relay = await start_relay()
    port = urlsplit(relay.base).port
    assert port is not None
    await assert_groups_and_alerts("127.0.0.1", port)


@pytest.mark.asyncio
async def test_client_refuses_relay_whose_key_is_not_pinned(
    start_relay: StartRelay, hierarchy: Hierarchy, transport: WebSocketRelayTransport
) -> None:
    """Pinned-SPKI mismatch: RelayUntrusted and the relay never saw an auth attempt."""
    relay = await start_relay()
    wrong = attrs.evolve(relay.endpoint, tls_pin=SpkiPin(bytes(32)))
    a = Node.make("node_a")
    with pytest.raises(RelayUntrusted):
        await transport.connect(wrong, a.auth(hierarchy, hierarchy.token(a)))
    assert relay.service.counters.auth_failures == 0
    assert relay.service.counters.auth_successes == 0


@pytest.mark.asyncio
async def test_client_reports_an_unreachable_relay(
    hierarchy: Hierarchy, transport: WebSocketRelayTransport
) -> None:
    """Nothing listening: RelayUnreachable (not a hang, not a raw aiohttp error)."""
    endpoint = RelayEndpoint(RELAY_ID, "wss://127.0.0.1:1/v1/relay", SpkiPin(bytes(32)))
    a = Node.make("node_a")
    with pytest.raises(RelayUnreachable):
        await transport.connect(endpoint, a.auth(hierarchy, hierarchy.token(a)))


@pytest.mark.asyncio
async def test_relay_refuses_connections_beyond_max_sessions(
    start_relay: StartRelay, hierarchy: Hierarchy, transport: WebSocketRelayTransport
) -> None:
    """A full relay answers 503 before any handshake; the client says unreachable."""
    relay = await start_relay(max_sessions=1)
    a, b = Node.make("node_a"), Node.make("node_b")
    sa = await transport.connect(relay.endpoint, a.auth(hierarchy, hierarchy.token(a)))
    try:
        with pytest.raises(RelayUnreachable):
            await transport.connect(relay.endpoint, b.auth(hierarchy, hierarchy.token(b)))
        assert await relay.metric("rustynet_relay_rejected_connections_total") == 1
    finally:
        await sa.close()


@pytest.mark.asyncio
async def test_new_session_of_a_node_over_its_limit_replaces_the_oldest(
    start_relay: StartRelay, hierarchy: Hierarchy, transport: WebSocketRelayTransport
) -> None:
    """sessions_per_node=1: a reconnect wins, the stale session is closed, frames go to the new."""
    relay = await start_relay(sessions_per_node=1)
    a, b = Node.make("node_a"), Node.make("node_b")
    old = await transport.connect(relay.endpoint, a.auth(hierarchy, hierarchy.token(a)))
    new = await transport.connect(relay.endpoint, a.auth(hierarchy, hierarchy.token(a)))
    sb = await transport.connect(relay.endpoint, b.auth(hierarchy, hierarchy.token(b)))
    try:
        with pytest.raises(RelayClosed):
            await _receive(old)
        await sb.send("node_a", b"to the new one")
        assert await _receive(new) == ("node_b", b"to the new one")
        assert await relay.metric("rustynet_relay_replaced_sessions_total") == 1
    finally:
        for s in (old, new, sb):
            await s.close()
