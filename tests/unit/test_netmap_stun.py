"""STUN servers in the signed peer map: the top-level `stun` list round-trips in order through
the acceptor, is required (strict payload), and malformed lists are refused."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from rustynet.domain.errors import DecodeError
from rustynet.domain.netmap import (
    MalformedPeerMap,
    PeerMap,
    PeerMapAcceptor,
    build_peer_map,
    seal_peer_map,
)
from rustynet.domain.stun import MAX_STUN_SERVERS, check_servers, parse_server
from tests.unit.test_netmap import KEYS, NOW, make_map, trust

STUN = ("203.0.113.1:3478", "203.0.113.1:3479", "[2001:db8::1]:3478")


def stun_map(stun: tuple[str, ...] = STUN) -> PeerMap:
    base = make_map(serial=3)
    return build_peer_map(
        self_entry=base.self_entry,
        peers=base.peers,
        inbound=(),
        serial=3,
        policy_version=7,
        now=NOW,
        ttl=timedelta(hours=1),
        stun=stun,
    )


def test_stun_servers_round_trip_in_order_through_the_acceptor() -> None:
    envelope = seal_peer_map(KEYS.signing, stun_map(), NOW).to_text()
    accepted = PeerMapAcceptor(trust(), "node_a").accept(envelope, NOW)
    assert accepted.stun == STUN
    assert stun_map().to_payload()["stun"] == list(STUN)


def test_a_payload_without_stun_is_refused() -> None:
    payload: dict[str, Any] = dict(stun_map().to_payload())
    del payload["stun"]
    with pytest.raises(MalformedPeerMap):
        PeerMap.from_payload(payload)


@pytest.mark.parametrize(
    "bad",
    [
        "203.0.113.1:3478",
        ["example.org:3478"],
        ["203.0.113.1"],
        ["203.0.113.1:0"],
        ["203.0.113.1:65536"],
        ["2001:db8::1:3478"],
        ["[2001:DB8::1]:3478"],
        ["0.0.0.0:3478"],
        ["224.0.0.1:3478"],
        ["203.0.113.1:03478"],
        ["203.0.113.1:3478", "203.0.113.1:3478"],
        [f"203.0.113.1:{port}" for port in range(1, MAX_STUN_SERVERS + 2)],
        [3478],
    ],
)
def test_malformed_stun_lists_are_refused(bad: object) -> None:
    payload: dict[str, Any] = dict(stun_map().to_payload())
    payload["stun"] = bad
    with pytest.raises(MalformedPeerMap):
        PeerMap.from_payload(payload)
    with pytest.raises(DecodeError):
        check_servers(bad if isinstance(bad, list) else 1)


def test_parse_server_reads_both_families() -> None:
    assert str(parse_server("[2001:db8::1]:3478")[0]) == "2001:db8::1"
    assert parse_server("203.0.113.1:3479")[1] == 3479
