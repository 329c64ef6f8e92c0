"""NAT classification (`rustynet.domain.nat.classify`): each kind from the observations a node
would make behind it, and the rule's edges."""

from __future__ import annotations

import ipaddress

import pytest

from rustynet.domain.nat import NatClass, StunObservation, classify, direct_unlikely
from rustynet.domain.tunnel import UnderlayEndpoint

S1A = UnderlayEndpoint.parse("203.0.113.5:3478")
S1B = UnderlayEndpoint.parse("203.0.113.5:3479")
S2A = UnderlayEndpoint.parse("203.0.113.6:3478")
LOCAL = ipaddress.ip_address("198.51.100.18")
PORT = 41641


def obs(server: UnderlayEndpoint, mapped: str | None) -> StunObservation:
    return StunObservation(server, None if mapped is None else UnderlayEndpoint.parse(mapped), 0.01)


def test_public_host_sees_its_own_address_and_port() -> None:
    report = classify(
        [obs(S1A, "198.51.100.18:41641"), obs(S1B, "198.51.100.18:41641")], PORT, [LOCAL]
    )
    assert report.nat is NatClass.PUBLIC
    assert report.port_preserved is True


def test_same_mapping_everywhere_with_the_local_port_is_eim_port_preserving() -> None:
    report = classify(
        [obs(S1A, "203.0.113.10:41641"), obs(S1B, "203.0.113.10:41641")], PORT, [LOCAL]
    )
    assert report.nat is NatClass.EIM_PORT_PRESERVING
    assert report.reflexive == (UnderlayEndpoint.parse("203.0.113.10:41641"),)


def test_same_mapping_with_another_port_is_eim() -> None:
    report = classify([obs(S1A, "203.0.113.10:1024"), obs(S2A, "203.0.113.10:1024")], PORT, [LOCAL])
    assert report.nat is NatClass.EIM
    assert report.port_preserved is False


def test_a_mapping_per_destination_is_hard() -> None:
    report = classify(
        [obs(S1A, "203.0.113.10:50001"), obs(S1B, "203.0.113.10:61002")], PORT, [LOCAL]
    )
    assert report.nat is NatClass.HARD
    assert len(report.reflexive) == 2
    assert not report.nat.direct_friendly


def test_no_answer_is_udp_blocked_and_no_question_is_unknown() -> None:
    assert classify([obs(S1A, None), obs(S1B, None)], PORT, [LOCAL]).nat is NatClass.UDP_BLOCKED
    assert classify([], PORT, [LOCAL]).nat is NatClass.UNKNOWN


@pytest.mark.parametrize("second", [None, "203.0.113.10:41641"])
def test_one_destination_cannot_tell_mapping_behaviour(second: str | None) -> None:
    observations = [obs(S1A, "203.0.113.10:41641")]
    if second is not None:
        observations.append(obs(S1A, second))  # the same destination twice tells nothing more
    assert classify(observations, PORT, [LOCAL]).nat is NatClass.UNKNOWN


def test_a_public_address_on_another_port_is_not_public() -> None:
    report = classify(
        [obs(S1A, "198.51.100.18:5000"), obs(S1B, "198.51.100.18:5000")], PORT, [LOCAL]
    )
    assert report.nat is NatClass.EIM


def test_every_class_has_a_description() -> None:
    assert all(c.description for c in NatClass)


@pytest.mark.parametrize(
    ("ours", "theirs", "unlikely"),
    [
        (NatClass.HARD, NatClass.HARD, True),
        (NatClass.UDP_BLOCKED, NatClass.PUBLIC, True),
        (NatClass.EIM, NatClass.UDP_BLOCKED, True),
        (NatClass.HARD, NatClass.EIM, False),  # a full-cone NAT lets the hard side in
        (NatClass.HARD, NatClass.PUBLIC, False),
        (NatClass.HARD, NatClass.UNKNOWN, False),
        (NatClass.HARD, None, False),  # not classified: try
        (None, None, False),
        (NatClass.EIM_PORT_PRESERVING, NatClass.EIM_PORT_PRESERVING, False),
    ],
)
def test_direct_is_unlikely_only_between_two_hard_nats_or_with_udp_blocked(
    ours: NatClass | None, theirs: NatClass | None, unlikely: bool
) -> None:
    assert direct_unlikely(ours, theirs) is unlikely
    assert direct_unlikely(theirs, ours) is unlikely
