"""rustynetd's light entry point: the key-store unlock it runs ahead changes nothing observable
but time (same keys, same errors), and it reads exactly the keys the agent reads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rustynet.adapters.keystore.encrypted_file import FileKeystore

from rustynet.application.node import IDENTITY_KEY, TUNNEL_KEY
from rustynet.bootstrap.node_main import UNLOCK_AHEAD, unlock_ahead
from rustynet.ports.keystore import KeystoreIntegrityError

PASSPHRASE = b"correct horse battery staple, node main"


def _store(tmp_path: Path) -> FileKeystore:
    store = FileKeystore(tmp_path / "keys", bytearray(PASSPHRASE))
    store.open()
    return store


def test_unlock_ahead_reads_the_keys_the_agent_reads() -> None:
    """The names read ahead are the agent's identity and tunnel keys, in its order."""
    assert UNLOCK_AHEAD == (IDENTITY_KEY, TUNNEL_KEY)


def test_unlock_ahead_makes_the_agents_reads_cheap_and_identical(tmp_path: Path) -> None:
    """After the unlock ahead, a fresh store's reads return the same secrets without Argon2id."""
    writer = _store(tmp_path)
    writer.put(IDENTITY_KEY, b"identity-secret")
    writer.put(TUNNEL_KEY, b"tunnel-secret")
    writer.close()
    store = _store(tmp_path)
    unlock_ahead(store)
    started = time.perf_counter()
    identity, tunnel = store.get(IDENTITY_KEY), store.get(TUNNEL_KEY)
    elapsed = time.perf_counter() - started
    assert (bytes(identity), bytes(tunnel)) == (b"identity-secret", b"tunnel-secret")
    # Two Argon2id derivations at the floor (m=64 MiB, t=3) take > 0.1 s; two decryptions not.
    assert elapsed < 0.05, elapsed
    store.close()


def test_unlock_ahead_leaves_a_tampered_key_to_the_agent(tmp_path: Path) -> None:
    """A tampered key file: the unlock ahead stays quiet, the agent's read still refuses it."""
    writer = _store(tmp_path)
    writer.put(IDENTITY_KEY, b"identity-secret")
    writer.close()
    path = tmp_path / "keys" / IDENTITY_KEY
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    store = _store(tmp_path)
    unlock_ahead(store)  # no exception
    with pytest.raises(KeystoreIntegrityError):
        store.get(IDENTITY_KEY)
    store.close()


def test_unlock_ahead_skips_absent_keys(tmp_path: Path) -> None:
    """A node that is not enrolled yet has no keys: nothing is read, nothing raised."""
    store = _store(tmp_path)
    unlock_ahead(store)
    assert not store.exists(IDENTITY_KEY)
    store.close()


def test_console_entry_does_not_import_the_daemon_before_the_unlock() -> None:
    """Importing the entry module leaves aiohttp, pyroute2 and the daemon for later (they load
    while the unlock runs)."""
    code = (
        "import sys, rustynet.bootstrap.node_main\n"
        "heavy = ['aiohttp', 'pyroute2', 'pyseto', 'rustynet.bootstrap.node']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert done.stdout.strip() == "[]"
