"""Slow and idle clients against a real `rustynet-relay serve` before the WebSocket upgrade:
closed in time while `/healthz` is served throughout and an authenticated relay session, held
past every deadline, keeps relaying; descriptors and memory come back; caps hold at accept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import attrs
import pytest
from rustynet.adapters.control_client import pinned_ssl_context
from rustynet.adapters.relay.client import WebSocketRelayTransport
from rustynet.adapters.relay.config import load_relay_config, render_relay_config

from rustynet.domain.tls_pin import SpkiPin
from rustynet.ports.relay import RelayEndpoint
from tests.integration.slowloris import (
    LIMITS,
    MEMORY_PEAK_BOUND,
    PER_KIND,
    SLOW_SOURCES,
    ProcessProbe,
    Target,
    insecure_tls13,
    late,
    let_tls_close,
    parse_metrics,
    parser_rejection,
    per_ip_cap,
    settle,
    slowloris_wave,
    total_cap,
)
from tests.integration.test_control_cli import spawn_until_ready, terminate
from tests.integration.test_relay import Hierarchy, Node
from tests.integration.test_relay_cli import RELAY, _free_port, _init

pytestmark = pytest.mark.slow

SESSION_HELD = 3.0  # seconds: longer than every deadline in LIMITS


@attrs.frozen
class Served:
    port: int
    pid: int
    pin: SpkiPin
    hierarchy: Hierarchy


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """init, then serve with LIMITS in relay.toml's [connections] (max_sessions below it)."""
    directory = tmp_path_factory.mktemp("slow-relay")
    hierarchy = Hierarchy.make()
    port = _free_port()
    path, pin = _init(directory, hierarchy, port)
    config = load_relay_config(path)
    config = attrs.evolve(
        config, connections=LIMITS, limits=attrs.evolve(config.limits, max_sessions=200)
    )
    path.write_text(render_relay_config(config, directory))
    assert load_relay_config(path).connections == LIMITS
    proc, _log, reader = spawn_until_ready([*RELAY, "serve", "--config", str(path)])
    try:
        yield Served(port, proc.pid, pin, hierarchy)
    finally:
        terminate(proc, reader)


def _target(served: Served) -> Target:
    return Target(
        host="127.0.0.1",
        port=served.port,
        client_ssl=insecure_tls13(),
        # The relay reads no request body: /healthz answers, then the body is drained for at
        # most the body timeout and the connection is bounded by the header deadline.
        body_request=b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n",
        plain_request=b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )


async def _get(served: Served, path: str, *, source: str = "127.0.0.3") -> tuple[int, str]:
    connector = aiohttp.TCPConnector(ssl=insecure_tls13(), force_close=True, local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"https://127.0.0.1:{served.port}{path}") as response,
    ):
        answer = response.status, await response.text()
    await let_tls_close()
    return answer


async def _metrics(served: Served) -> dict[str, float]:
    status, text = await _get(served, "/metrics", source="127.0.0.1")
    assert status == 200
    return parse_metrics(text)


@pytest.mark.asyncio
async def test_slowloris_before_upgrade_is_closed_while_sessions_relay(served: Served) -> None:
    """200 slow pre-upgrade connections each close within deadline + slack; /healthz on new
    connections answers 200 every 250 ms; an authenticated session open for SESSION_HELD s
    (past every deadline) still relays; descriptors return to idle, memory stays bounded."""
    target = _target(served)
    probe = ProcessProbe(served.pid)
    node = Node.make("node_a")
    transport = WebSocketRelayTransport(ssl_context=pinned_ssl_context)
    endpoint = RelayEndpoint("relay-test", f"wss://127.0.0.1:{served.port}/v1/relay", served.pin)

    async def healthz() -> int:
        return (await _get(served, "/healthz"))[0]

    for _ in range(5):
        assert await healthz() == 200
    idle_fds = probe.fds()
    idle_rss = probe.rss_kib()
    before = await _metrics(served)
    session = await transport.connect(
        endpoint, node.auth(served.hierarchy, served.hierarchy.token(node))
    )
    try:
        opened = asyncio.get_running_loop().time()
        wave = await slowloris_wave(
            target, LIMITS, probe, per_kind=PER_KIND, sources=SLOW_SOURCES, normal=(healthz,)
        )
        left = SESSION_HELD - (asyncio.get_running_loop().time() - opened)
        await asyncio.sleep(max(0.0, left))
        await session.send("node_a", b"still here")
        assert await asyncio.wait_for(session.receive(), 5) == ("node_a", b"still here")
    finally:
        await session.close()
        await let_tls_close()
    assert late(wave, LIMITS) == []
    assert wave.normal, "the normal client made no request"
    assert set(wave.normal) == {200}, wave.normal
    assert await settle(probe, idle_fds) <= idle_fds
    assert wave.peak_rss_kib - idle_rss < MEMORY_PEAK_BOUND, (idle_rss, wave.peak_rss_kib)
    after = await _metrics(served)
    name = 'rustynet_connections_timed_out_total{phase="tls_handshake"}'
    assert after[name] - before[name] == PER_KIND
    assert (
        after["rustynet_relay_auth_successes_total"] - before["rustynet_relay_auth_successes_total"]
        == 1
    )


@pytest.mark.asyncio
async def test_per_ip_cap_refuses_the_next_connection_at_accept(served: Served) -> None:
    """As on the control plane: the N+1th connection from one address is refused at accept."""
    await per_ip_cap(_target(served), LIMITS, lambda: _metrics(served))


@pytest.mark.asyncio
async def test_total_cap_refuses_beyond_max_connections(served: Served) -> None:
    """Beyond max_connections every connection is refused (total); then /healthz answers."""
    await total_cap(_target(served), LIMITS, lambda: _metrics(served))
    assert (await _get(served, "/healthz"))[0] == 200


def test_relay_config_refuses_fewer_connections_than_sessions(tmp_path: Path) -> None:
    """[connections].max_connections below [limits].max_sessions is a config error naming it."""
    path, _ = _init(tmp_path, Hierarchy.make(), 8444)
    text = path.read_text().replace("max_connections = 16384", "max_connections = 1000")
    path.write_text(text)
    with pytest.raises(Exception, match=r"\[connections\]\.max_connections: below"):
        load_relay_config(path)


@pytest.mark.asyncio
async def test_guard_keeps_the_runners_handler_for_parser_errors(served: Served) -> None:
    """The relay's own answer to a request the parser refuses survives the guard."""
    answer = await parser_rejection(_target(served))
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:80]
    assert b"malformed HTTP request" in answer
    assert b"aaaa" not in answer
