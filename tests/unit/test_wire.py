"""The v1 wire contract: the one strict codec, and the typed clients' reading of answers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from rustynet.adapters.control_admin_http import HttpAdminApi
from rustynet.adapters.control_plane_http import HttpControlPlane

from rustynet.ports.control_api import ControlUnreachable, JsonObject, JsonValue, decode_answer
from rustynet.ports.control_plane import NodeCredentials
from rustynet.ports.wire.codec import WireError, decode, encode, parse_json_object
from rustynet.ports.wire.v1 import (
    CreateJoinKeyRequest,
    NodeInfo,
    PeerMapDelivery,
    Trust,
    UpdateNodeRequest,
)

WHEN = "2026-01-02T03:04:05Z"
NODE: JsonObject = {
    "id": "node_AAAAAAAAAAAAAAAA",
    "name": "web",
    "state": "active",
    "overlay_addresses": ["100.64.0.1/32"],
    "tags": ["tag:web"],
    "identity_key": "rnpk_x",
    "tunnel_key": "rntk_x25519_x",
    "tunnel_key_expires_at": WHEN,
    "created_at": WHEN,
    "last_seen_at": None,
    "revoked_at": None,
    "candidates": [{"endpoint": "198.51.100.2:41641", "kind": "local"}],
    "candidates_updated_at": "2026-01-02T03:04:06Z",
    "nat_classification": None,
}


def test_a_wire_value_round_trips_through_the_codec() -> None:
    """Decode then encode gives the same JSON bytes the server sends."""
    raw = encode(NODE)
    node = decode(parse_json_object(raw), NodeInfo)
    assert node.tunnel_key_expires_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert node.tags == ("tag:web",)
    assert encode(node) == raw


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"reusable": "false"}, "/reusable"),  # no coercion of "false" to True
        ({"ttl_seconds": 1800.0}, "/ttl_seconds"),  # a float is not an integer
        ({"tags": "tag:a"}, "/tags"),  # a string is not a list of letters
        ({"tags": ["tag:a", 1]}, "/tags/1"),
        ({"colour": "red"}, "/colour"),  # unknown fields are refused
    ],
)
def test_the_codec_refuses_with_a_pointer(body: dict[str, Any], pointer: str) -> None:
    """Every mismatch is a `WireError` naming the field by JSON pointer."""
    with pytest.raises(WireError) as caught:
        decode(body, CreateJoinKeyRequest)
    assert [p.pointer for p in caught.value.problems] == [pointer]


def test_the_json_limits_hold_in_the_codec() -> None:
    """Depth, integer range and lone surrogates are refused before structuring."""
    for raw in (b"[" * 40 + b"]" * 40, b'{"a": 99999999999999999999}', b'{"a": "\\ud800"}'):
        with pytest.raises(WireError):
            parse_json_object(raw)


def test_an_answer_of_another_shape_is_unreachable_naming_the_route() -> None:
    """A client never acts on a half-read answer: `ControlUnreachable` with route and field."""
    with pytest.raises(ControlUnreachable, match=r"GET /x: .*/state"):
        decode_answer("GET /x", {**NODE, "state": 1}, NodeInfo)
    with pytest.raises(ControlUnreachable, match="GET /x"):
        decode_answer("GET /x", ["not", "an", "object"], NodeInfo)


class _AdminRoutes:
    """Raw JSON answers as `ControlClient` returns them; records the calls."""

    def __init__(self, nodes: list[JsonValue]) -> None:
        self.nodes = nodes
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def list_nodes(self) -> list[JsonValue]:
        return self.nodes

    async def update_node(
        self, node_id: str, *, name: str | None = None, tags: Sequence[str] | None = None
    ) -> JsonObject:
        self.calls.append(("update_node", {"id": node_id, "name": name, "tags": tags}))
        return dict(NODE)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected call {name}")


def test_the_admin_client_returns_wire_types() -> None:
    """`HttpAdminApi` answers with `NodeInfo`s, passes typed requests on, refuses bad shapes."""
    routes = _AdminRoutes([NODE])
    api = HttpAdminApi(routes)  # a partial fake: every other route raises
    (node,) = asyncio.run(api.list_nodes())
    assert isinstance(node, NodeInfo)
    assert node.name == "web"
    updated = asyncio.run(api.update_node(node.id, UpdateNodeRequest(name="db")))
    assert updated == node
    assert routes.calls == [("update_node", {"id": node.id, "name": "db", "tags": None})]
    routes.nodes = [{**NODE, "extra": True}]
    with pytest.raises(ControlUnreachable, match="/nodes/0/extra"):
        asyncio.run(api.list_nodes())


class _NodeRoutes:
    def __init__(self, answer: JsonObject) -> None:
        self.answer = answer

    async def peer_map(self, auth: NodeCredentials, **_: Any) -> JsonObject:
        return self.answer

    async def token_challenge(self, *, node_id: str) -> JsonObject:
        return self.answer

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected call {name}")


def test_the_node_client_returns_wire_types() -> None:
    """`HttpControlPlane` decodes peer maps strictly and challenge ids to bytes."""
    trust: JsonObject = {"root_certificate": "r", "signing_certificates": ["s"]}
    plane = HttpControlPlane(_NodeRoutes({"envelope": "e", "trust": trust}))
    auth = NodeCredentials("node_AAAAAAAAAAAAAAAA", "v4.public.x")
    delivery = asyncio.run(plane.peer_map(auth, 0, 1.0))
    assert delivery == PeerMapDelivery("e", Trust("r", ("s",)))
    challenge = asyncio.run(
        HttpControlPlane(_NodeRoutes({"challenge_id": "AAEC", "expires_at": WHEN})).token_challenge(
            "node_AAAAAAAAAAAAAAAA"
        )
    )
    assert challenge.challenge_id == b"\x00\x01\x02"
    bad = HttpControlPlane(_NodeRoutes({"challenge_id": "!!", "expires_at": WHEN}))
    with pytest.raises(ControlUnreachable, match="challenge_id"):
        asyncio.run(bad.token_challenge("node_AAAAAAAAAAAAAAAA"))


def test_the_node_client_refuses_empty_texts() -> None:
    """An empty token (or envelope, node id, certificate) is no answer the agent can act on."""
    trust: JsonObject = {"root_certificate": "", "signing_certificates": ["s"]}
    plane = HttpControlPlane(_NodeRoutes({"envelope": "e", "trust": trust}))
    auth = NodeCredentials("node_AAAAAAAAAAAAAAAA", "v4.public.x")
    with pytest.raises(ControlUnreachable, match="empty 'root_certificate'"):
        asyncio.run(plane.peer_map(auth, 0, 1.0))
