"""The STUN service and probe over loopback: Debian's `stun` client gets its mapped address,
malformed / oversized / non-Binding datagrams get nothing, one source's flood is rate limited
while another source is answered, bytes out stay <= 2.5x bytes in over a hostile mix, and the
probe ignores (and counts) forged responses."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import struct
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from rustynet.adapters.stun.client import ProbeCounters, probe
from rustynet.adapters.stun.server import StunLimits, StunServer

from rustynet.domain.limits import BucketPolicy
from rustynet.domain.stun import encode_request, encode_success, parse

pytestmark = pytest.mark.asyncio


class CountingEntropy:
    def __init__(self) -> None:
        self.n = 0

    def token_bytes(self, n: int) -> bytes:
        self.n += 1
        return self.n.to_bytes(n, "big")


@pytest_asyncio.fixture
async def server() -> AsyncIterator[StunServer]:
    service = StunServer([("127.0.0.1", 0), ("127.0.0.1", 0)])
    await service.start()
    try:
        yield service
    finally:
        service.close()


def _udp(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


async def _exchange(sock: socket.socket, data: bytes, to: tuple[str, int]) -> bytes | None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, data, to)
    try:
        reply, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 0.3)
    except TimeoutError:
        return None
    return reply


def _stun_binary() -> str:
    found = shutil.which("stun")
    if found is None:
        reason = "Debian's stun-client (`stun`) is not installed (tools/setup.sh installs it)"
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(f"{reason}; CI requires it", pytrace=False)
        pytest.skip(reason)
    return found


@pytest.mark.parametrize("which", [0, 1])
async def test_debian_stun_client_gets_its_mapped_address(server: StunServer, which: int) -> None:
    binary = _stun_binary()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as free:
        free.bind(("127.0.0.1", 0))
        source_port = free.getsockname()[1]
    host, port = server.bound[which]
    process = await asyncio.create_subprocess_exec(
        binary, f"{host}:{port}", "1", "-v", "-p", str(source_port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 15)
    assert f"MappedAddress = 127.0.0.1:{source_port}" in out.decode(), out.decode()
    assert server.counters.answered == 1


async def test_malformed_oversized_and_non_binding_get_no_answer(server: StunServer) -> None:
    tid = b"t" * 12
    hostile = [
        b"",
        b"GET / HTTP/1.1\r\n\r\n",
        encode_request(tid)[:-1],
        encode_request(tid)[:20] + b"\x00" * 600,  # oversized
        struct.pack("!HHI", 0x0003, 0, 0x2112A442) + tid,  # Allocate
        struct.pack("!HHI", 0x0011, 0, 0x2112A442) + tid,  # Binding indication
        encode_success(tid, (ipaddress.IPv4Address("127.0.0.1"), 1)),  # a response
        struct.pack("!HHI", 1, 8, 0x2112A442) + tid + struct.pack("!HHI", 0x0006, 4, 0),
    ]
    with _udp() as sock:
        for data in hostile:
            assert await _exchange(sock, data, server.bound[0]) is None, data
        assert await _exchange(sock, encode_request(tid), server.bound[0]) is not None
    assert server.counters.dropped_malformed == len(hostile)
    assert server.counters.answered == 1


async def test_a_flood_from_one_source_is_limited_while_another_is_answered() -> None:
    limits = StunLimits(per_source=BucketPolicy(burst=5, refill=1, per=timedelta(seconds=10)))
    service = StunServer([("127.0.0.1", 0), ("127.0.0.1", 0)], limits)
    await service.start()
    try:
        loop = asyncio.get_running_loop()
        with _udp("127.0.0.1") as flood, _udp("127.0.0.2") as other:
            for i in range(200):
                await loop.sock_sendto(
                    flood, encode_request(i.to_bytes(12, "big")), service.bound[0]
                )
            await asyncio.sleep(0.2)
            assert service.counters.answered == 5
            assert service.counters.dropped_rate_limited == 195
            assert await _exchange(other, encode_request(b"o" * 12), service.bound[1]) is not None
    finally:
        service.close()


async def test_the_source_table_is_bounded() -> None:
    service = StunServer(
        [("127.0.0.1", 0), ("127.0.0.1", 0)],
        StunLimits(
            per_source=BucketPolicy(burst=1, refill=1, per=timedelta(hours=1)), max_sources=4
        ),
    )
    await service.start()
    try:
        loop = asyncio.get_running_loop()
        for last in range(1, 11):
            with _udp(f"127.0.0.{last}") as sock:
                await loop.sock_sendto(sock, encode_request(b"b" * 12), service.bound[0])
        await asyncio.sleep(0.2)
        assert service.sources_tracked == 4
        assert service.counters.answered == 4
        assert service.counters.dropped_rate_limited == 6
    finally:
        service.close()


async def test_bytes_out_stay_within_2_5x_bytes_in_over_a_hostile_mix(server: StunServer) -> None:
    loop = asyncio.get_running_loop()
    tid = b"m" * 12
    bare = struct.pack("!HHI", 1, 0, 0x2112A442) + tid  # 20 bytes: the smallest request
    mix = [bare, encode_request(tid), b"\x00" * 20, bare + b"junk", b"x" * 1400] * 3
    with _udp() as sock:
        for data in mix:
            await loop.sock_sendto(sock, data, server.bound[0])
        await asyncio.sleep(0.2)
    c = server.counters
    assert c.answered == 6
    assert c.bytes_out <= 2.5 * c.bytes_in
    assert c.bytes_out <= 2.5 * 6 * 20 + 6 * 2.5 * 8  # answers to answered requests only


async def test_probe_returns_the_mapped_endpoint_from_the_real_service(server: StunServer) -> None:
    with _udp() as sock:
        result = await probe(sock, server.bound[1], CountingEntropy(), timeout=2)
        assert result is not None
        assert (str(result.mapped[0]), result.mapped[1]) == sock.getsockname()
        assert result.other is not None
        assert (str(result.other[0]), result.other[1]) == server.bound[0]


async def test_probe_ignores_and_counts_forged_responses() -> None:
    loop = asyncio.get_running_loop()
    with _udp() as fake, _udp() as forger, _udp() as node:
        target = fake.getsockname()
        counters = ProbeCounters()
        entropy = CountingEntropy()
        task = asyncio.create_task(probe(node, target, entropy, timeout=3, counters=counters))
        request, where = await asyncio.wait_for(loop.sock_recvfrom(fake, 2048), 2)
        tid = parse(request).transaction_id
        forged_mapped = (ipaddress.IPv4Address("203.0.113.66"), 6666)
        real_mapped = (ipaddress.IPv4Address(where[0]), where[1])
        await loop.sock_sendto(forger, encode_success(tid, forged_mapped), where)  # wrong source
        await loop.sock_sendto(fake, encode_success(b"\x99" * 12, forged_mapped), where)  # tid
        await loop.sock_sendto(fake, encode_request(tid), where)  # not a response
        await loop.sock_sendto(fake, b"garbage", where)
        await asyncio.sleep(0.1)
        assert not task.done()
        await loop.sock_sendto(fake, encode_success(tid, real_mapped), where)
        result = await task
        assert result is not None
        assert result.mapped == real_mapped
        assert counters == ProbeCounters(wrong_source=1, wrong_transaction=1, malformed=2)


async def test_probe_times_out_with_none() -> None:
    with _udp() as silent, _udp() as node:
        assert await probe(node, silent.getsockname(), CountingEntropy(), timeout=0.2) is None
