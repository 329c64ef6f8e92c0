"""Tunnel values and the pure peer diff (domain/tunnel.py)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import pytest

from rustynet.domain.errors import DecodeError
from rustynet.domain.keys import TunnelKey, TunnelKeyScheme, TunnelPrivateKey
from rustynet.domain.tunnel import (
    Capability,
    InterfaceConfig,
    PeerConfig,
    PeerDiff,
    PeerStats,
    TunnelConfigError,
    UnderlayEndpoint,
    diff_peers,
    required_capabilities,
)


def key(n: int) -> TunnelKey:
    """A distinct, valid-looking tunnel key for index n."""
    return TunnelKey(TunnelKeyScheme.X25519, n.to_bytes(2, "big") * 16)


def peer(n: int, **kw: object) -> PeerConfig:
    """Peer n owning 100.64.(n // 256).(n % 256)/32."""
    prefixes = kw.pop("prefixes", [f"100.64.{n // 256}.{n % 256}/32"])
    return PeerConfig(key(n), prefixes, **kw)  # type: ignore[arg-type]


def test_underlay_endpoint_parses_and_prints_both_families() -> None:
    """IPv4 and bracketed IPv6 endpoints round-trip through their canonical text."""
    assert str(UnderlayEndpoint.parse("198.51.100.2:41641")) == "198.51.100.2:41641"
    v6 = UnderlayEndpoint.parse("[2001:DB8:0::1]:41641")
    assert str(v6) == "[2001:db8::1]:41641"
    assert v6.address == ipaddress.IPv6Address("2001:db8::1")


@pytest.mark.parametrize(
    "text",
    [
        "198.51.100.2",
        "198.51.100.2:0",
        "198.51.100.2:65536",
        "2001:db8::1:41641",
        "[fe80::1%eth0]:41641",
        "host.example:41641",
        "[198.51.100.2]:1",
        "198.51.100.2:+1",
    ],
)
def test_underlay_endpoint_rejects_malformed_text(text: str) -> None:
    """Host names, zone ids, unbracketed IPv6 and bad ports are refused."""
    with pytest.raises(DecodeError):
        UnderlayEndpoint.parse(text)


def test_peer_prefixes_are_canonical() -> None:
    """Prefixes are de-duplicated and sorted (IPv4 before IPv6), so equal configs compare equal."""
    a = PeerConfig(key(1), ["fd00::/64", "100.64.0.2/32", "100.64.0.1/32", "100.64.0.2/32"])
    b = PeerConfig(key(1), ["100.64.0.1/32", "fd00::/64", "100.64.0.2/32"])
    assert a == b
    assert [str(n) for n in a.overlay_prefixes] == ["100.64.0.1/32", "100.64.0.2/32", "fd00::/64"]


def test_peer_prefix_with_host_bits_is_refused() -> None:
    """`100.64.0.1/24` is ambiguous (address or network?) and is refused."""
    with pytest.raises(TunnelConfigError):
        PeerConfig(key(1), ["100.64.0.1/24"])


@pytest.mark.parametrize("keepalive", [0, -1, 65536, True])
def test_peer_keepalive_out_of_range_is_refused(keepalive: object) -> None:
    """Keepalive is 1..65535 seconds or None (off)."""
    with pytest.raises(TunnelConfigError):
        PeerConfig(key(1), [], keepalive_seconds=keepalive)  # type: ignore[arg-type]


def test_interface_config_hides_private_key_in_repr() -> None:
    """The private key (and its hex/base64 forms) never shows in repr or str."""
    private = TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, bytes(range(32)))
    config = InterfaceConfig("rn0", private, 41641, ["100.64.0.1/10"], ["100.64.0.0/10"])
    text = repr(config) + str(config)
    assert bytes(range(32)).hex() not in text
    assert "secret" not in text.lower()
    assert config.public_key == private.public_key


@pytest.mark.parametrize("name", ["", "a" * 16, "../x", "a b", ".x", "x/y"])
def test_interface_name_rules(name: str) -> None:
    """Interface names are 1-15 safe characters."""
    private = TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, bytes(32))
    with pytest.raises(TunnelConfigError):
        InterfaceConfig(name, private)


def test_diff_of_same_state_is_empty() -> None:
    """Applying the same desired state twice: the second diff changes nothing."""
    desired = [peer(i) for i in range(5)]
    actual = {p.key: p for p in desired}
    diff = diff_peers(actual, desired)
    assert diff.empty
    assert diff.touched == 0


def test_one_peer_change_touches_one_peer() -> None:
    """Changing one peer of fifty yields a diff with exactly that peer as an update."""
    desired = [peer(i) for i in range(50)]
    actual = {p.key: p for p in desired}
    changed = peer(17, prefixes=["100.64.0.17/32", "100.64.9.0/24"])
    diff = diff_peers(actual, [changed if p.key == changed.key else p for p in desired])
    assert diff == PeerDiff(update=(changed,))


def test_diff_adds_and_removes() -> None:
    """New keys are added, vanished keys removed, unchanged ones untouched."""
    actual = {p.key: p for p in [peer(1), peer(2)]}
    diff = diff_peers(actual, [peer(2), peer(3)])
    assert diff.add == (peer(3),)
    assert diff.update == ()
    assert diff.remove == (key(1),)


def test_learned_endpoint_satisfies_a_config_without_one() -> None:
    """A peer configured without endpoint that learned one is unchanged; a set one must match."""
    learned = peer(1, underlay_endpoint="198.51.100.9:5000")
    assert diff_peers({learned.key: learned}, [peer(1)]).empty
    moved = peer(1, underlay_endpoint="198.51.100.2:41641")
    assert diff_peers({learned.key: learned}, [moved]).update == (moved,)


def test_keepalive_change_is_an_update() -> None:
    """Turning keepalive on is an update of that one peer."""
    actual = {key(1): peer(1)}
    assert diff_peers(actual, [peer(1, keepalive_seconds=25)]).touched == 1


def test_duplicate_desired_key_is_refused() -> None:
    """A desired set naming one key twice is a bug, not a last-wins merge."""
    with pytest.raises(TunnelConfigError):
        diff_peers({}, [peer(1), peer(1, prefixes=["100.64.1.1/32"])])


def test_prefix_given_to_two_peers_is_refused() -> None:
    """One overlay prefix for two peers would silently move between them: refused."""
    with pytest.raises(TunnelConfigError):
        diff_peers({}, [peer(1), peer(2, prefixes=["100.64.0.1/32"])])


def test_diff_refuses_a_peer_twice() -> None:
    """A diff value cannot name one peer in two lists."""
    with pytest.raises(TunnelConfigError):
        PeerDiff(add=(peer(1),), remove=(key(1),))


def test_required_capabilities() -> None:
    """IPv6 values need IPv6; /0 needs exit routing; plain IPv4 needs nothing."""
    assert required_capabilities(diff=PeerDiff(add=(peer(1),))) == frozenset()
    v6 = PeerDiff(add=(peer(1, prefixes=["fd00::/64"]),))
    assert required_capabilities(diff=v6) == {Capability.IPV6}
    v6_endpoint = PeerDiff(add=(peer(1, underlay_endpoint="[2001:db8::1]:1"),))
    assert required_capabilities(diff=v6_endpoint) == {Capability.IPV6}
    exit_route = [ipaddress.IPv4Network("0.0.0.0/0")]
    assert required_capabilities(routes=exit_route) == {Capability.EXIT_ROUTING}


def test_stats_need_aware_times_and_real_counts() -> None:
    """Naive datetimes and negative counters are refused."""
    PeerStats(key(1), datetime(2025, 1, 1, tzinfo=UTC), 1, 2)
    with pytest.raises(TunnelConfigError):
        PeerStats(key(1), datetime(2025, 1, 1), 1, 2)  # noqa: DTZ001 - the refused value
    with pytest.raises(TunnelConfigError):
        PeerStats(key(1), None, -1, 0)
