"""IPAM address plan: deterministic, complete and spread probe sequences inside 100.64.0.0/10."""

from __future__ import annotations

import ipaddress

import pytest

from rustynet.domain.ipam import OVERLAY_NETWORK, AddressPlan, AddressPlanError


def test_probe_sequence_visits_every_usable_address_once() -> None:
    """In a /28 the sequence is a permutation of the 14 usable addresses."""
    plan = AddressPlan(network=ipaddress.IPv4Network("100.64.0.0/28"))
    seq = list(plan.candidates("node-a"))
    assert len(seq) == len(set(seq)) == 14
    assert all(plan.usable(a) for a in seq)


def test_probe_sequence_is_deterministic_per_node_and_differs_between_nodes() -> None:
    """Same id, same first address; different ids start apart."""
    plan = AddressPlan()
    assert next(plan.candidates("n1")) == next(plan.candidates("n1"))
    firsts = {next(plan.candidates(f"n{i}")) for i in range(100)}
    assert len(firsts) == 100
    assert all(a in OVERLAY_NETWORK for a in firsts)


def test_reserved_network_and_broadcast_addresses_are_never_candidates() -> None:
    """100.100.100.100 and the network/broadcast addresses are skipped."""
    plan = AddressPlan(network=ipaddress.IPv4Network("100.100.100.96/29"))
    seq = set(plan.candidates("x"))
    assert ipaddress.IPv4Address("100.100.100.100") not in seq
    assert len(seq) == 5


def test_networks_outside_the_overlay_range_are_refused() -> None:
    """A plan on 10.0.0.0/8 (or a /31) is a configuration error."""
    with pytest.raises(AddressPlanError):
        AddressPlan(network=ipaddress.IPv4Network("10.0.0.0/8"))
    with pytest.raises(AddressPlanError):
        AddressPlan(network=ipaddress.IPv4Network("100.64.0.0/31"))
