"""Slow and idle clients against a real `rustynet-control serve` (TLS on loopback, short
`[connections]` deadlines): closed in time, normal clients served throughout, long polls kept,
memory and descriptors back where they were, caps enforced at accept.

Memory bound (documented in docs/control-plane.md): while 200 slow connections are open the
server's RSS grows by less than MEMORY_PEAK_BOUND, and a second identical wave leaves it within
MEMORY_REPEAT_BOUND of the first (no per-connection residue); descriptors return to the idle
count after each wave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import attrs
import pytest
from rustynet.adapters.config import load_control_config, render_control_config

from tests.integration.http_server import enroll_over_http, node_headers
from tests.integration.slowloris import (
    LIMITS,
    MEMORY_PEAK_BOUND,
    PER_KIND,
    SLOW_SOURCES,
    Kind,
    ProcessProbe,
    Target,
    deadline_of,
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
from tests.integration.test_control_cli import (
    CONTROL,
    RUSTYNET,
    _free_port,
    init_listening,
    run,
    spawn_until_ready,
    terminate,
)

pytestmark = pytest.mark.slow

MEMORY_REPEAT_BOUND = 8 * 1024  # KiB from wave 1 to wave 2: < 40 KiB per slow connection
LONG_POLL = 4  # seconds: longer than every deadline in LIMITS


@attrs.frozen
class Served:
    data_dir: Path
    port: int
    pid: int


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """init, then serve with LIMITS written into control.toml's [connections]."""
    data_dir = tmp_path_factory.mktemp("slow") / "data"
    port = _free_port()
    init_listening(data_dir, port)
    config = attrs.evolve(load_control_config(data_dir / "control.toml"), connections=LIMITS)
    (data_dir / "control.toml").write_text(render_control_config(config, data_dir))
    assert load_control_config(data_dir / "control.toml").connections == LIMITS
    proc, _log, reader = spawn_until_ready([CONTROL, "serve", "--data-dir", str(data_dir)])
    try:
        yield Served(data_dir, port, proc.pid)
    finally:
        terminate(proc, reader)


def _target(served: Served) -> Target:
    return Target(
        host="127.0.0.1",
        port=served.port,
        client_ssl=insecure_tls13(),
        body_request=(
            b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000\r\n\r\n"
        ),
        plain_request=b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )


def _session(served: Served) -> aiohttp.ClientSession:
    """A keep-alive client from 127.0.0.2."""
    connector = aiohttp.TCPConnector(ssl=insecure_tls13(), local_addr=("127.0.0.2", 0))
    return aiohttp.ClientSession(f"https://127.0.0.1:{served.port}", connector=connector)


async def _metrics(served: Served) -> dict[str, float]:
    connector = aiohttp.TCPConnector(ssl=insecure_tls13(), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"https://127.0.0.1:{served.port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    await let_tls_close()
    return parse_metrics(text)


async def _fresh_healthz(served: Served) -> int:
    """GET /healthz on a new connection (the caps must keep admitting new clients)."""
    connector = aiohttp.TCPConnector(
        ssl=insecure_tls13(), force_close=True, local_addr=("127.0.0.3", 0)
    )
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"https://127.0.0.1:{served.port}/healthz") as response,
    ):
        status = response.status
    await let_tls_close()
    return status


async def _enrolled_node(served: Served, http: aiohttp.ClientSession) -> dict[str, str]:
    done = run(RUSTYNET, "admin", "--config", str(served.data_dir / "admin.toml"), "keys", "create")
    assert done.returncode == 0, done.stderr
    attempt = await enroll_over_http(http, done.stdout.strip(), "slow-test-node")
    assert attempt.status == 200, attempt.body
    return node_headers(attempt.body)


@pytest.mark.asyncio
async def test_slowloris_waves_are_closed_in_time_while_clients_and_long_polls_are_served(
    served: Served,
) -> None:
    """200 slow connections (5 kinds) are each closed within their deadline + slack, twice;
    a keep-alive client and a new-connection client get 200 every 250 ms throughout; an
    authenticated long poll held for LONG_POLL s (past every deadline) ends in its 204;
    memory and descriptors are bounded (see the module docstring)."""
    async with _session(served) as http:
        await _waves(served, http)
    await let_tls_close()


async def _waves(served: Served, http: aiohttp.ClientSession) -> None:
    target = _target(served)
    probe = ProcessProbe(served.pid)
    node = await _enrolled_node(served, http)

    async def keepalive_healthz() -> int:
        async with http.get("/healthz") as response:
            return response.status

    async def fresh_healthz() -> int:
        return await _fresh_healthz(served)

    for _ in range(5):  # warm up: first-use allocations are not the attack's
        assert await keepalive_healthz() == await fresh_healthz() == 200
    before = await _metrics(served)
    idle_fds = probe.fds()
    idle_rss = probe.rss_kib()

    async def long_poll() -> int:
        url = f"/v1/peermap?after=1000000000&wait={LONG_POLL}"
        async with http.get(url, headers=node) as response:
            return response.status

    poll = asyncio.ensure_future(long_poll())
    first = await slowloris_wave(
        target,
        LIMITS,
        probe,
        per_kind=PER_KIND,
        sources=SLOW_SOURCES,
        normal=(keepalive_healthz, fresh_healthz),
    )
    assert await poll == 204, "the long poll was cut"
    assert late(first, LIMITS) == []
    assert first.normal, "the normal clients made no request"
    assert set(first.normal) == {200}, first.normal
    assert await settle(probe, idle_fds) <= idle_fds
    after_first = probe.rss_kib()

    second = await slowloris_wave(
        target,
        LIMITS,
        probe,
        per_kind=PER_KIND,
        sources=SLOW_SOURCES,
        normal=(keepalive_healthz, fresh_healthz),
    )
    assert late(second, LIMITS) == []
    assert set(second.normal) == {200}, second.normal
    assert await settle(probe, idle_fds) <= idle_fds
    after_second = probe.rss_kib()

    peak = max(first.peak_rss_kib, second.peak_rss_kib)
    assert peak - idle_rss < MEMORY_PEAK_BOUND, (idle_rss, peak)
    assert after_second - after_first < MEMORY_REPEAT_BOUND, (after_first, after_second)
    print(f"rss idle {idle_rss} KiB, peak {peak} KiB, after waves {after_first}/{after_second} KiB")

    after = await _metrics(served)

    def grew(phase: str) -> float:
        name = f'rustynet_connections_timed_out_total{{phase="{phase}"}}'
        return after[name] - before[name]

    assert grew("tls_handshake") == 2 * PER_KIND
    assert grew("idle") >= 2 * PER_KIND
    assert grew("header") >= 2 * 2 * PER_KIND  # fresh idle + header trickle
    assert grew("body") >= 1
    assert deadline_of(Kind.NO_HELLO, LIMITS) == LIMITS.tls_handshake_timeout


@pytest.mark.asyncio
async def test_per_ip_cap_refuses_the_next_connection_at_accept(served: Served) -> None:
    """max_connections_per_ip from 127.0.0.20 are held; the next one is closed at once and
    counted as per_ip; 127.0.0.21 still gets in."""
    await per_ip_cap(_target(served), LIMITS, lambda: _metrics(served))


@pytest.mark.asyncio
async def test_total_cap_refuses_beyond_max_connections(served: Served) -> None:
    """From many addresses, each under its cap: max_connections are held, the rest refused
    (counted as total); afterwards a new client is served again."""
    await total_cap(_target(served), LIMITS, lambda: _metrics(served))
    assert await _fresh_healthz(served) == 200


@pytest.mark.asyncio
async def test_guard_keeps_the_runners_handler_for_parser_errors(served: Served) -> None:
    """Behind the guard the runner's own handler still answers a request the parser refuses
    (JSON 400, nothing echoed): the guard wraps the handler, it does not replace it."""
    answer = await parser_rejection(_target(served))
    assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:80]
    assert b'"malformed HTTP request"' in answer
    assert b"aaaa" not in answer
