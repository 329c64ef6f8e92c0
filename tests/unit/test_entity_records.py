"""The control plane's entity records refuse values a store must never hold (pure, no store)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta, timezone

import attrs
import pytest

from rustynet.domain.api_keys import ApiKeyRecord, ApiKeyScope
from rustynet.domain.challenges import (
    MAX_CHALLENGE_ID,
    MAX_CHALLENGE_PAYLOAD,
    MIN_CHALLENGE_ID,
    ChallengeKind,
    ChallengeRecord,
)
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.keys import SigningKey, TunnelKey, TunnelKeyScheme
from rustynet.domain.nodes import MAX_NAME_LENGTH, NodeRecord, NodeStatus
from rustynet.domain.policy_versions import PolicyVersion
from rustynet.domain.scope import Tag

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _node() -> NodeRecord:
    return NodeRecord(
        id="node-1",
        name="host-1",
        identity_key=SigningKey.from_seed(bytes([1]) * 32).public_key,
        tunnel_key=TunnelKey(TunnelKeyScheme.X25519, bytes([1]) * 32),
        tunnel_key_expires_at=NOW + timedelta(days=180),
        overlay_ipv4=ipaddress.IPv4Address("100.64.0.1"),
        tags=frozenset({Tag("tag:server")}),
        created_at=NOW,
    )


def test_a_node_has_revoked_at_exactly_when_it_is_revoked() -> None:
    node = _node()
    assert node.state is NodeStatus.ACTIVE
    revoked = attrs.evolve(node, state=NodeStatus.REVOKED, revoked_at=NOW)
    assert revoked.overlay_addresses == (node.overlay_ipv4,)
    with pytest.raises(LocalProtocolError):
        attrs.evolve(node, state=NodeStatus.REVOKED)
    with pytest.raises(LocalProtocolError):
        attrs.evolve(node, revoked_at=NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("created_at", datetime(2026, 1, 1)),  # noqa: DTZ001 - a naive time, on purpose
        ("created_at", datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=1)))),
        ("last_seen_at", datetime(2026, 1, 1)),  # noqa: DTZ001 - on purpose
        ("id", ""),
        ("id", "x" * 129),
        ("id", "node\n1"),
        ("name", ""),
        ("name", "n" * (MAX_NAME_LENGTH + 1)),
        ("tags", {Tag("tag:server")}),
    ],
)
def test_a_node_record_refuses_malformed_fields(field: str, value: object) -> None:
    with pytest.raises(LocalProtocolError):
        attrs.evolve(_node(), **{field: value})  # type: ignore[arg-type]  # on purpose


def test_an_api_key_is_usable_until_its_expiry_and_not_once_revoked() -> None:
    key = ApiKeyRecord(
        id="0123456789abcdef",
        secret_hash=bytes(32),
        scope=ApiKeyScope.READ_ONLY,
        description="ci",
        created_at=NOW,
        expires_at=NOW + timedelta(days=1),
    )
    assert key.usable_at(NOW + timedelta(days=1) - timedelta(microseconds=1))
    assert not key.usable_at(NOW + timedelta(days=1))
    assert not attrs.evolve(key, revoked_at=NOW).usable_at(NOW)
    assert "secret_hash" not in repr(key)


@pytest.mark.parametrize(
    ("challenge_id", "payload"),
    [
        (bytes(MIN_CHALLENGE_ID - 1), ""),
        (bytes(MAX_CHALLENGE_ID + 1), ""),
        (bytes(MIN_CHALLENGE_ID), "p" * (MAX_CHALLENGE_PAYLOAD + 1)),
    ],
)
def test_a_challenge_record_refuses_short_or_long_ids_and_payloads(
    challenge_id: bytes, payload: str
) -> None:
    with pytest.raises(LocalProtocolError):
        ChallengeRecord(challenge_id, ChallengeKind.ENROLLMENT, "jk-1", payload, NOW)


def test_a_policy_version_needs_an_aware_time() -> None:
    assert PolicyVersion(1, "{}", NOW, "admin").version == 1
    with pytest.raises(LocalProtocolError):
        PolicyVersion(1, "{}", datetime(2026, 1, 1), "admin")  # noqa: DTZ001 - on purpose
