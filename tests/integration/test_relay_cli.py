"""`rustynet-relay init` then `serve` as a real process: config, 0600 key, pin, SIGTERM exit 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rustynet.adapters.control_client import pinned_ssl_context
from rustynet.adapters.relay.client import WebSocketRelayTransport
from rustynet.adapters.relay.config import RelayConfigError, load_relay_config

from rustynet.domain.tls_pin import SpkiPin
from rustynet.ports.relay import RelayEndpoint
from tests.integration.test_relay import ISSUER, Hierarchy, Node

RELAY = [
    sys.executable,
    "-c",
    "from rustynet.bootstrap.relay import relay_main; raise SystemExit(relay_main())",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init(tmp_path: Path, h: Hierarchy, port: int) -> tuple[Path, SpkiPin]:
    config = tmp_path / "relay.toml"
    out = subprocess.run(
        [
            *RELAY,
            "init",
            "--config",
            str(config),
            "--url",
            f"wss://127.0.0.1:{port}/v1/relay",
            "--control-url",
            ISSUER,
            "--root-fingerprint",
            h.root_key.public_key.fingerprint().to_text(),
            "--id",
            "relay-test",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    match = re.search(r'tls_spki_sha256 = "(sha256//[^"]+)"', out)
    assert match is not None, out
    return config, SpkiPin.from_text(match.group(1))


def test_init_writes_a_strict_config_and_a_private_key_and_refuses_twice(tmp_path: Path) -> None:
    """The key is 0600, the config parses back, and a second init changes nothing."""
    h = Hierarchy.make()
    config, _ = _init(tmp_path, h, 8444)
    assert stat.S_IMODE((tmp_path / "tls/relay.key").stat().st_mode) == 0o600
    loaded = load_relay_config(config)
    assert (loaded.relay_id, loaded.control_url) == ("relay-test", ISSUER)
    assert loaded.root_fingerprint == h.root_key.public_key.fingerprint()
    before = config.read_bytes()
    with pytest.raises(subprocess.CalledProcessError):
        _init(tmp_path, h, 8444)
    assert config.read_bytes() == before
    config.write_text(before.decode() + "\n[extra]\nx = 1\n")
    with pytest.raises(RelayConfigError, match=r"\[extra\]"):
        load_relay_config(config)


def test_serve_relays_a_session_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """A served relay authenticates a node; SIGTERM ends it with exit 0 and no secret in logs."""
    h = Hierarchy.make()
    port = _free_port()
    config, pin = _init(tmp_path, h, port)
    proc = subprocess.Popen(
        [*RELAY, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        node = Node.make("node_a")
        token = h.token(node)

        async def session() -> None:
            transport = WebSocketRelayTransport(ssl_context=pinned_ssl_context)
            endpoint = RelayEndpoint("relay-test", f"wss://127.0.0.1:{port}/v1/relay", pin)
            s = await transport.connect(endpoint, node.auth(h, token))
            await s.send("node_a", b"loop")
            assert await asyncio.wait_for(s.receive(), 5) == ("node_a", b"loop")
            await s.close()
            await asyncio.sleep(0.2)  # let the TLS transport finish closing before the loop ends

        asyncio.run(session())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "relay.session_opened" in err
        assert token not in err
        assert "v4.public" not in err
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
