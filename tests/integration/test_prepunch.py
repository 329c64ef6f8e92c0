"""The raw-socket pre-punch (`adapters/tunnel/prepunch.py`): exactly `count` datagrams to each
target, leaving from the tunnel's port (so they open the NAT mapping the tunnel uses), carrying
only the marker the peer's tunnel drops."""

from __future__ import annotations

import asyncio
import socket

import pytest
from rustynet.adapters.tunnel.prepunch import MARKER, RawPrePunch

from rustynet.domain.tunnel import UnderlayEndpoint
from tests.netns import require_root

pytestmark = pytest.mark.root

TUNNEL_PORT = 41999  # never bound here: the raw socket only writes it as the source port


def _receiver(family: socket.AddressFamily, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(0.5)
    return sock


def _drain(sock: socket.socket) -> list[tuple[bytes, int]]:
    got: list[tuple[bytes, int]] = []
    while True:
        try:
            data, addr = sock.recvfrom(2048)
        except TimeoutError:
            return got
        got.append((data, addr[1]))


@pytest.mark.parametrize(
    ("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_each_target_gets_count_datagrams_from_the_tunnel_port(
    family: socket.AddressFamily, host: str
) -> None:
    require_root()
    first, second = _receiver(family, host), _receiver(family, host)
    with first, second:
        targets = tuple(
            UnderlayEndpoint.parse(
                f"{host}:{s.getsockname()[1]}"
                if family == socket.AF_INET
                else f"[{host}]:{s.getsockname()[1]}"
            )
            for s in (first, second)
        )
        puncher = RawPrePunch(TUNNEL_PORT)
        assert asyncio.run(puncher.punch(targets, 2)) == 4
        for sock in (first, second):
            assert _drain(sock) == [(MARKER, TUNNEL_PORT)] * 2
    assert (puncher.sent, puncher.failed) == (4, 0)


def test_nothing_is_sent_for_zero_count_or_no_target() -> None:
    require_root()
    puncher = RawPrePunch(TUNNEL_PORT)
    target = (UnderlayEndpoint.parse("127.0.0.1:9"),)
    assert asyncio.run(puncher.punch(target, 0)) == 0
    assert asyncio.run(puncher.punch((), 2)) == 0
    assert puncher.sent == 0
