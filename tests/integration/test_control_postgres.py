"""`rustynet-control init/serve --database postgresql://...` as subprocesses on a real,
throwaway PostgreSQL 15 (tests/postgres.py): a node enrolls over pinned TLS, reports its
underlay endpoints, its peer verifies the signed map; after a restart of the server every node,
endpoint and audit entry is still there (read back over HTTPS and straight from PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from rustynet.adapters.control_client import ControlClient, NodeAuth

from rustynet.domain.netmap import PeerEntry, PeerMap, PeerMapAcceptor
from rustynet.domain.tls_pin import SpkiPin
from tests.integration.test_control_cli import (
    CONTROL,
    POLICY,
    Plane,
    _enroll,
    _free_port,
    _start,
    _stop,
    run,
)

pytestmark = pytest.mark.slow


def postgres_url(conninfo: str) -> str:
    """The fixture's key=value conninfo as the postgresql:// URL the CLI accepts (unix socket
    directory in the `host` query parameter, as libpq reads it)."""
    parts = conninfo_to_dict(conninfo)
    return (
        f"postgresql://{parts['user']}@/{parts['dbname']}?host={parts['host']}&port={parts['port']}"
    )


async def _map(plane: Plane, auth: NodeAuth, acceptor: PeerMapAcceptor) -> PeerMap:
    """The node's current peer map (after=0), verified by a fresh acceptor with its trust."""
    async with ControlClient(plane.url, plane.pin()) as client:
        response = await client.peer_map(auth, after=0, timeout=5)
    assert response is not None
    envelope = response["envelope"]
    assert isinstance(envelope, str)
    fresh = PeerMapAcceptor(acceptor.trust, auth.node_id)
    return fresh.accept(envelope, datetime.now(UTC))


# The first endpoint in the previous shape (a configured one), the second as a local candidate.
CANDIDATES = (("198.51.100.2:41641", "configured"), ("[2001:db8::2]:41641", "local"))


def _candidates(peer: PeerEntry) -> tuple[tuple[str, str], ...]:
    return tuple((c.endpoint.to_text(), c.kind.value) for c in peer.candidates)


async def _put_endpoints(url: str, pin: SpkiPin, auth: NodeAuth, endpoints: list[str]) -> None:
    async with ControlClient(url, pin) as client:
        await client.put_endpoints(
            auth,
            [{"endpoint": endpoints[1], "kind": "local"}],
            underlay_endpoints=endpoints[:1],
            nat_classification="eim",
        )


def _count(conninfo: str, table: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # fixed table names
    assert row is not None
    return int(row[0])


def test_serve_on_postgresql_keeps_nodes_and_endpoints_across_a_restart(
    postgres_dsn: str, tmp_path: Path
) -> None:
    """init + serve with --database postgresql://: join keys, two enrollments, endpoints and a
    verified peer map; SIGTERM, serve again: the nodes, the endpoints in the peer's map and the
    audit chain are all still there, and PostgreSQL (not a SQLite file) holds them."""
    data_dir = tmp_path / "data"
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    database = postgres_url(postgres_dsn)
    init = run(
        CONTROL,
        "init",
        "--data-dir",
        str(data_dir),
        "--url",
        url,
        "--keystore",
        "file",
        "--database",
        database,
    )
    assert init.returncode == 0, init.stderr
    assert "PostgreSQL" in init.stdout
    assert not (data_dir / "control.db").exists()
    assert _count(postgres_dsn, "api_keys") == 1

    plane = _start(data_dir, port)
    try:
        policy = tmp_path / "policy.json"
        policy.write_text(json.dumps(POLICY))
        assert plane.admin("policy", "set", str(policy)).returncode == 0
        server_key = plane.admin("keys", "create", "--tags", "tag:server").stdout.strip()
        client_key = plane.admin("keys", "create", "--tags", "tag:client").stdout.strip()
        server_id, server_auth, _ = asyncio.run(_enroll(server_key, "db1"))
        client_id, client_auth, client_acc = asyncio.run(_enroll(client_key, "laptop"))
        endpoints = ["198.51.100.2:41641", "[2001:db8::2]:41641"]
        asyncio.run(_put_endpoints(plane.url, plane.pin(), server_auth, endpoints))
        before = asyncio.run(_map(plane, client_auth, client_acc))
        assert [(p.id, _candidates(p)) for p in before.peers] == [(server_id, CANDIDATES)]
    finally:
        assert _stop(plane) == 0

    assert _count(postgres_dsn, "nodes") == 2
    again = _start(data_dir, port)
    try:
        nodes = again.admin_json("nodes", "list")
        assert isinstance(nodes, list)
        assert {n["id"] for n in nodes} == {server_id, client_id}
        shown = next(n for n in nodes if n["id"] == server_id)
        assert [(c["endpoint"], c["kind"]) for c in shown["candidates"]] == list(CANDIDATES)
        assert shown["candidates_updated_at"] is not None
        assert shown["nat_classification"] == "eim"  # stored (migration 0006) across restart
        after = asyncio.run(_map(again, client_auth, client_acc))
        assert [(p.id, _candidates(p)) for p in after.peers] == [(server_id, CANDIDATES)]
        assert after.serial == before.serial  # serials are stored too: nothing changed
        verified = again.admin("audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        assert _stop(again) == 0
