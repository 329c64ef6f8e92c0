"""The node's persisted state: a strict, versioned plain-data format and atomic stores."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rustynet.adapters.node_state_file import FileNodeStateStore, MemoryNodeStateStore

from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.keys import KeyFingerprint, TunnelKey, TunnelKeyScheme
from rustynet.domain.node_state import NodeState, NodeStateCorrupt

STATE = NodeState(
    node_id="node_abc",
    name="laptop",
    overlay_addresses=("100.64.0.7/32",),
    control_url="https://control.example.net:8443",
    root_fingerprint=KeyFingerprint(bytes(range(32))),
    tls_spki_sha256=bytes(32),
    root_certificate="rncert-root",
    signing_certificates=("rncert-a",),
    tunnel_key=TunnelKey(TunnelKeyScheme.X25519, bytes(range(1, 33))),
    tunnel_key_expires_at=datetime(2026, 6, 1, tzinfo=UTC),
    peer_map_watermark=7,
    last_peer_map="envelope",
)


def test_node_state_round_trips_through_bytes() -> None:
    """to_bytes → from_bytes gives back the same state."""
    assert NodeState.from_bytes(STATE.to_bytes()) == STATE


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", 2),
        ("peer_map_watermark", -1),
        ("peer_map_watermark", "7"),
        ("peer_map_watermark", True),
        ("control_url", "http://control.example.net"),
        ("tls_spki_sha256", "00"),
        ("tunnel_key", "rnpk_AAAA"),
        ("last_peer_map", 3),
        ("tunnel_key_expires_at", "2026-06-01"),
    ],
)
def test_node_state_with_a_bad_field_is_refused(field: str, value: object) -> None:
    """Any field outside the format makes the whole state corrupt (never a default)."""
    data = json.loads(STATE.to_bytes())
    data[field] = value
    with pytest.raises(NodeStateCorrupt):
        NodeState.from_bytes(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())


def test_node_state_with_missing_or_extra_keys_is_refused() -> None:
    """The key set is exact: a missing watermark never reads back as 0."""
    data = json.loads(STATE.to_bytes())
    del data["peer_map_watermark"]
    with pytest.raises(NodeStateCorrupt):
        NodeState.from_json(data)
    data = json.loads(STATE.to_bytes())
    data["extra"] = 1
    with pytest.raises(NodeStateCorrupt):
        NodeState.from_json(data)
    with pytest.raises(NodeStateCorrupt):
        NodeState.from_bytes(b"not json")


def test_watermark_only_rises() -> None:
    """Recording a map at or below the watermark is a bug and raises."""
    assert STATE.with_peer_map(8, "e8").peer_map_watermark == 8
    with pytest.raises(LocalProtocolError):
        STATE.with_peer_map(7, "again")


def test_file_store_saves_atomically_with_private_mode(tmp_path: Path) -> None:
    """The file store round-trips, writes mode 0600 and leaves no temporary file behind."""
    store = FileNodeStateStore(tmp_path / "state.json")
    assert store.load() is None
    store.save(STATE)
    store.save(STATE.with_peer_map(9, "e9"))
    loaded = store.load()
    assert loaded is not None
    assert loaded.peer_map_watermark == 9
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    store.clear()
    assert store.load() is None


def test_file_store_refuses_a_tampered_file(tmp_path: Path) -> None:
    """A hand-edited state file raises instead of loading a guess."""
    path = tmp_path / "state.json"
    path.write_bytes(
        STATE.to_bytes().replace(b'"peer_map_watermark":7', b'"peer_map_watermark":0.0')
    )
    with pytest.raises(NodeStateCorrupt):
        FileNodeStateStore(path).load()


def test_memory_store_round_trips() -> None:
    """The memory store goes through the same strict parser."""
    store = MemoryNodeStateStore()
    assert store.load() is None
    store.save(STATE)
    assert store.load() == STATE
