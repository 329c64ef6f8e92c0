"""`PUT /v1/node/endpoints` with candidates, over HTTPS against the real server: hostile
candidates are 400s naming the field (nothing stored), good ones are stored with their kind and
time, shown on the admin routes, and signed into the peers' maps with their kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rustynet.domain.candidates import MAX_CANDIDATES
from rustynet.domain.signed import SignedEnvelope
from tests.integration.http_server import LiveApi, enroll_over_http, node_headers, running_api

ALLOW_ALL = {"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}
GOOD = [
    {"endpoint": "198.51.100.2:41641", "kind": "local"},
    {"endpoint": "[2001:db8::2]:41641", "kind": "local"},
    {"endpoint": "203.0.113.9:6000", "kind": "reflexive"},
]


def _session(api: LiveApi) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=api.client_ssl)
    return aiohttp.ClientSession(base_url=api.base_url, connector=connector)


async def _call(
    http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, path, **kwargs) as response:
        raw = await response.read()
        return response.status, json.loads(raw) if raw else None


async def _enroll(http: aiohttp.ClientSession, api: LiveApi, name: str) -> dict[str, str]:
    status, key = await _call(
        http, "POST", "/v1/admin/join-keys", json={}, headers=api.admin_headers()
    )
    assert status == 201
    enrolled = await enroll_over_http(http, key["token"], name)
    assert enrolled.status == 200, enrolled.body
    return dict(enrolled.body)


HOSTILE = [
    ({"candidates": [{"endpoint": "127.0.0.1:41641", "kind": "local"}]}, "/candidates/0/endpoint"),
    ({"candidates": [{"endpoint": "[::1]:41641", "kind": "local"}]}, "/candidates/0/endpoint"),
    (
        {"candidates": [GOOD[0], {"endpoint": "169.254.9.9:41641", "kind": "local"}]},
        "/candidates/1/endpoint",
    ),
    ({"candidates": [{"endpoint": "[fe80::1]:41641", "kind": "local"}]}, "/candidates/0/endpoint"),
    ({"candidates": [{"endpoint": "224.0.0.5:41641", "kind": "local"}]}, "/candidates/0/endpoint"),
    ({"candidates": [{"endpoint": "[ff02::1]:1", "kind": "reflexive"}]}, "/candidates/0/endpoint"),
    ({"candidates": [{"endpoint": "0.0.0.0:41641", "kind": "local"}]}, "/candidates/0/endpoint"),
    (
        {"candidates": [{"endpoint": "vpn.example.net:1", "kind": "local"}]},
        "/candidates/0/endpoint",
    ),
    ({"candidates": [{"endpoint": "198.51.100.2:1", "kind": "relay"}]}, "/candidates/0/kind"),
    ({"underlay_endpoints": ["127.0.0.1:41641"]}, "/underlay_endpoints/0"),
    ({"candidates": GOOD[:1], "nat_classification": "full-cone"}, "/nat_classification"),
    ({"candidates": GOOD[:1], "nat_classification": "PUBLIC"}, "/nat_classification"),
    (
        {
            "candidates": [
                {"endpoint": f"198.51.100.{i}:41641", "kind": "local"}
                for i in range(MAX_CANDIDATES + 1)
            ]
        },
        "/candidates",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("body", "pointer"), HOSTILE)
async def test_hostile_candidates_are_400_naming_the_field(
    tmp_path: Path, body: dict[str, Any], pointer: str
) -> None:
    """Loopback, link-local, multicast, unspecified, host names, unknown kinds and too many
    candidates: 400 with the offending field's pointer; the stored list is unchanged."""
    async with running_api(tmp_path) as api, _session(api) as http:
        node = await _enroll(http, api, "hostile")
        headers = node_headers(node)
        status, _ = await _call(
            http, "PUT", "/v1/node/endpoints", json={"candidates": GOOD[:1]}, headers=headers
        )
        assert status == 204
        status, problem = await _call(http, "PUT", "/v1/node/endpoints", json=body, headers=headers)
        assert status == 400, problem
        assert problem["pointer"] == pointer, problem
        status, shown = await _call(
            http, "GET", f"/v1/admin/nodes/{node['node_id']}", headers=api.admin_headers()
        )
        assert status == 200
        assert shown["candidates"] == GOOD[:1]


@pytest.mark.asyncio
async def test_candidates_are_stored_shown_and_signed_with_their_kinds(tmp_path: Path) -> None:
    """Good candidates: 204; the admin routes show them with kind and time and the reported
    NAT classification (also when only it changed);
    the peer's map lists them, kinds included."""
    async with running_api(tmp_path) as api, _session(api) as http:
        status, _ = await _call(
            http, "PUT", "/v1/admin/policy", json=ALLOW_ALL, headers=api.admin_headers()
        )
        assert status == 200
        server = await _enroll(http, api, "server")
        laptop = await _enroll(http, api, "laptop")
        status, _ = await _call(
            http,
            "PUT",
            "/v1/node/endpoints",
            json={"candidates": GOOD, "nat_classification": "eim-port-preserving"},
            headers=node_headers(server),
        )
        assert status == 204
        status, listed = await _call(http, "GET", "/v1/admin/nodes", headers=api.admin_headers())
        assert status == 200
        shown = next(n for n in listed["nodes"] if n["id"] == server["node_id"])
        assert shown["candidates"] == GOOD
        assert shown["candidates_updated_at"] is not None
        assert shown["nat_classification"] == "eim-port-preserving"
        status, _ = await _call(  # the same candidates, a new classification: stored too
            http,
            "PUT",
            "/v1/node/endpoints",
            json={"candidates": GOOD, "nat_classification": "hard"},
            headers=node_headers(server),
        )
        assert status == 204
        status, shown = await _call(
            http, "GET", f"/v1/admin/nodes/{server['node_id']}", headers=api.admin_headers()
        )
        assert shown["nat_classification"] == "hard"
        status, delivered = await _call(
            http, "GET", "/v1/peermap?after=0", headers=node_headers(laptop)
        )
        assert status == 200
        payload = json.loads(SignedEnvelope.from_text(delivered["envelope"]).payload)
        [peer] = payload["peers"]
        assert peer["candidates"] == GOOD
