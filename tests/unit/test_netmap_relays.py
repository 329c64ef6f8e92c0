"""Relays in the signed peer map: the top-level `relays` list round-trips in order, is covered
by the signature (a tampered entry never verifies), and malformed entries are refused."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import attrs
import pytest

from rustynet.domain.errors import DecodeError
from rustynet.domain.netmap import (
    MalformedPeerMap,
    PeerMap,
    PeerMapAcceptor,
    PeerMapSignatureError,
    RelayEntry,
    build_peer_map,
    parse_relay_url,
    seal_peer_map,
)
from rustynet.domain.signed import SignedEnvelope, canonical_json
from rustynet.domain.tls_pin import SpkiPin
from tests.unit.test_netmap import KEYS, NOW, make_map, trust

PIN_1 = SpkiPin(bytes(range(32)))
PIN_2 = SpkiPin(bytes(range(1, 33)))
RELAYS = (
    RelayEntry("relay-1", "wss://relay1.example.org:443/v1/relay", PIN_1),
    RelayEntry("relay-2", "wss://[2001:db8::7]:8443/v1/relay", PIN_2),
)


def relay_map(relays: tuple[RelayEntry, ...] = RELAYS, serial: int = 3) -> PeerMap:
    base = make_map(serial=serial)
    return build_peer_map(
        self_entry=base.self_entry,
        peers=base.peers,
        inbound=(),
        serial=serial,
        policy_version=7,
        now=NOW,
        ttl=timedelta(hours=1),
        relays=relays,
    )


def test_relays_round_trip_in_order_through_the_acceptor() -> None:
    """What the control plane lists is what the node accepts, first relay first."""
    peer_map = relay_map()
    envelope = seal_peer_map(KEYS.signing, peer_map, NOW).to_text()
    accepted = PeerMapAcceptor(trust(), "node_a").accept(envelope, NOW)
    assert accepted.relays == RELAYS
    assert accepted.relays[0].id == "relay-1"
    assert accepted.relays[1].tls_spki_sha256 == PIN_2
    assert peer_map.to_payload()["relays"] == [
        {
            "id": "relay-1",
            "url": "wss://relay1.example.org:443/v1/relay",
            "tls_spki_sha256": PIN_1.to_text(),
        },
        {
            "id": "relay-2",
            "url": "wss://[2001:db8::7]:8443/v1/relay",
            "tls_spki_sha256": PIN_2.to_text(),
        },
    ]


def test_a_map_without_relays_carries_an_empty_list() -> None:
    """No relay configured: the payload still has `relays`, empty, and it round-trips."""
    peer_map = make_map()
    assert peer_map.relays == ()
    assert peer_map.to_payload()["relays"] == []
    assert PeerMap.from_payload(peer_map.to_payload()) == peer_map


@pytest.mark.parametrize(
    "tamper",
    [
        lambda r: r[0].update(url="wss://evil.example.org:443/v1/relay"),
        lambda r: r[0].update(tls_spki_sha256=SpkiPin(bytes(32)).to_text()),
        lambda r: r[0].update(id="relay-9"),
        lambda r: r.reverse(),  # another home relay
        lambda r: r.pop(),
        lambda r: r.append(
            {
                "id": "relay-x",
                "url": "wss://x.example:1/v1/relay",
                "tls_spki_sha256": PIN_1.to_text(),
            }
        ),
    ],
    ids=["url", "pin", "id", "order", "dropped", "added"],
)
def test_a_tampered_relay_entry_fails_verification(tamper: Callable[[list[Any]], None]) -> None:
    """An attacker who rewrites the relay list under the original signature is refused."""
    envelope = seal_peer_map(KEYS.signing, relay_map(), NOW)
    payload = copy.deepcopy(dict(envelope.unverified_payload()))
    relays = payload["relays"]
    assert isinstance(relays, list)
    tamper(relays)
    forged = attrs.evolve(envelope, payload=canonical_json(payload)).to_text()
    acceptor = PeerMapAcceptor(trust(), "node_a")
    with pytest.raises(PeerMapSignatureError):
        acceptor.accept(forged, NOW)
    assert acceptor.watermark == 0
    # Control: the same round trip without the tampering verifies.
    untouched = SignedEnvelope.from_text(envelope.to_text()).to_text()
    assert acceptor.accept(untouched, NOW).relays == RELAYS


GOOD_ENTRY = {
    "id": "relay-1",
    "url": "wss://relay1.example.org:443/v1/relay",
    "tls_spki_sha256": PIN_1.to_text(),
}


@pytest.mark.parametrize(
    "relays",
    [
        "relay-1",
        {"relay-1": GOOD_ENTRY},
        ["relay-1"],
        [{k: v for k, v in GOOD_ENTRY.items() if k != "tls_spki_sha256"}],
        [{**GOOD_ENTRY, "extra": 1}],
        [{**GOOD_ENTRY, "id": ""}],
        [{**GOOD_ENTRY, "id": "Relay-1"}],
        [{**GOOD_ENTRY, "id": "relay_1"}],
        [{**GOOD_ENTRY, "id": "r" * 65}],
        [{**GOOD_ENTRY, "id": 1}],
        [{**GOOD_ENTRY, "url": "https://relay1.example.org/v1/relay"}],
        [{**GOOD_ENTRY, "url": "ws://relay1.example.org/v1/relay"}],
        [{**GOOD_ENTRY, "url": "wss://user@relay1.example.org/v1/relay"}],
        [{**GOOD_ENTRY, "url": "wss://relay1.example.org/v1/relay?token=x"}],
        [{**GOOD_ENTRY, "url": "wss://relay1.example.org:0/v1/relay"}],
        [{**GOOD_ENTRY, "url": "wss://relay1.example.org:70000/v1/relay"}],
        [{**GOOD_ENTRY, "url": "wss://relay1..example.org/v1/relay"}],
        [{**GOOD_ENTRY, "url": "wss:// relay1.example.org/"}],
        [{**GOOD_ENTRY, "tls_spki_sha256": "sha1//AAAA"}],
        [{**GOOD_ENTRY, "tls_spki_sha256": "sha256//" + "A" * 10}],
        [{**GOOD_ENTRY, "tls_spki_sha256": PIN_1.to_text().rstrip("=")}],
        [GOOD_ENTRY, GOOD_ENTRY],
    ],
    ids=[
        "not-a-list",
        "an-object",
        "bare-id",
        "missing-pin",
        "extra-field",
        "empty-id",
        "uppercase-id",
        "underscore-id",
        "long-id",
        "int-id",
        "https-url",
        "ws-url",
        "userinfo",
        "query",
        "port-0",
        "port-70000",
        "empty-label",
        "space",
        "other-hash",
        "short-pin",
        "non-canonical-pin",
        "duplicate-id",
    ],
)
def test_malformed_relay_entries_are_rejected(relays: object) -> None:
    """The payload parser is strict about the relay list, as about everything else."""
    payload = dict(make_map().to_payload())
    payload["relays"] = relays  # type: ignore[assignment]  # deliberately malformed
    with pytest.raises(MalformedPeerMap):
        PeerMap.from_payload(payload)


def test_a_payload_without_relays_is_malformed() -> None:
    """`relays` is a required field of the payload (an empty list when none)."""
    payload = dict(make_map().to_payload())
    del payload["relays"]
    with pytest.raises(MalformedPeerMap):
        PeerMap.from_payload(payload)


def test_relay_entry_refuses_bad_values_at_construction() -> None:
    """A RelayEntry cannot hold an invalid id or URL; the text constructor parses the pin."""
    with pytest.raises(DecodeError):
        RelayEntry("Bad", "wss://relay.example/v1/relay", PIN_1)
    with pytest.raises(DecodeError):
        RelayEntry("ok", "http://relay.example/v1/relay", PIN_1)
    with pytest.raises(DecodeError):
        RelayEntry.from_texts("ok", "wss://relay.example/v1/relay", "sha256//nope")
    entry = RelayEntry.from_texts("ok", "wss://relay.example/v1/relay", PIN_1.to_text())
    assert entry.tls_spki_sha256 == PIN_1
    assert parse_relay_url("wss://198.51.100.4:443/v1/relay") == "wss://198.51.100.4:443/v1/relay"


def test_a_map_cannot_list_one_relay_id_twice() -> None:
    """Building a map with a duplicate relay id is refused (relay ids are token audiences)."""
    with pytest.raises(DecodeError):
        relay_map((RELAYS[0], attrs.evolve(RELAYS[1], id="relay-1")))
