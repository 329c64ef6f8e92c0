"""One contract suite for the `Keystore` port, run against every adapter.

The OS keyring adapter runs against a real in-process `keyring` backend defined here
(`DictKeyring`, installed with `keyring.set_keyring`): this headless machine has no Secret
Service daemon, so keyring's own choice is the `fail` backend, which the adapter must (and
does, see tests/integration/test_keystore_files.py) report as unavailable. The backend is a
real `KeyringBackend` subclass, so the adapter code path is the production one.
The file store runs with the real Argon2id floor (lower parameters are refused by design).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend
from rustynet.adapters.keystore.encrypted_file import FileKeystore
from rustynet.adapters.keystore.memory import MemoryKeystore
from rustynet.adapters.keystore.os_keyring import OsKeyringKeystore

from rustynet.ports.keystore import (
    InvalidKeyName,
    KeyNotFound,
    Keystore,
    KeystoreError,
    KeystoreUnavailable,
    MissingIdentityKey,
    load_or_create,
)


class DictKeyring(KeyringBackend):
    """A real keyring backend holding entries in a dict (stands in for Secret Service)."""

    # Negative: keyring's automatic selection never picks this class (defining a subclass
    # registers it); tests install an instance explicitly with keyring.set_keyring.
    priority = -1

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # keyring's base class is untyped
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        del self.entries[(service, username)]


@pytest.fixture
def dict_keyring() -> Iterator[DictKeyring]:
    """Install DictKeyring as keyring's backend for one test, then restore the previous one."""
    previous = keyring.get_keyring()
    backend = DictKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


@pytest.fixture(params=["memory", "file", "os-keyring"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Keystore]:
    """An opened store of each adapter kind."""
    made: Keystore
    if request.param == "memory":
        made = MemoryKeystore()
    elif request.param == "file":
        tmp_path.chmod(0o700)
        made = FileKeystore(tmp_path / "keys", bytearray(b"correct horse battery staple"))
    else:
        request.getfixturevalue("dict_keyring")
        made = OsKeyringKeystore(service="rustynet-test")
    made.open()
    try:
        yield made
    finally:
        made.close()


def test_put_then_get_round_trips_the_secret(store: Keystore) -> None:
    """What was put comes back byte for byte."""
    store.put("node-identity", b"\x00\x01secret\xff")
    assert store.get("node-identity") == bytearray(b"\x00\x01secret\xff")


def test_get_returns_a_fresh_bytearray_the_caller_owns(store: Keystore) -> None:
    """The returned buffer is a bytearray; wiping it does not wipe the stored key."""
    store.put("k1", bytearray(b"abc"))
    first = store.get("k1")
    assert type(first) is bytearray
    first[:] = b"\x00\x00\x00"
    assert store.get("k1") == bytearray(b"abc")


def test_put_overwrites_the_previous_value(store: Keystore) -> None:
    """A second put replaces the first."""
    store.put("k1", b"old")
    store.put("k1", b"new-value")
    assert store.get("k1") == bytearray(b"new-value")


def test_missing_key_raises_key_not_found_never_empty(store: Keystore) -> None:
    """A key never stored is KeyNotFound, not an empty buffer."""
    with pytest.raises(KeyNotFound):
        store.get("never-stored")
    assert store.exists("never-stored") is False


def test_delete_removes_the_key(store: Keystore) -> None:
    """After delete, get raises and exists is False; deleting again raises KeyNotFound."""
    store.put("k1", b"v")
    assert store.exists("k1") is True
    store.delete("k1")
    assert store.exists("k1") is False
    with pytest.raises(KeyNotFound):
        store.get("k1")
    with pytest.raises(KeyNotFound):
        store.delete("k1")


@pytest.mark.parametrize("bad", ["", "../etc/passwd", "a/b", ".hidden", "UPPER", "x" * 65, "é"])
def test_invalid_key_names_are_refused(store: Keystore, bad: str) -> None:
    """Names that could be paths, hidden files or odd text are refused on every operation."""
    with pytest.raises(InvalidKeyName):
        store.put(bad, b"v")
    with pytest.raises(InvalidKeyName):
        store.get(bad)
    with pytest.raises(InvalidKeyName):
        store.exists(bad)


def test_empty_secret_is_refused(store: Keystore) -> None:
    """An empty secret could read back as 'no key', so it cannot be stored."""
    with pytest.raises(KeystoreError):
        store.put("k1", b"")
    assert store.exists("k1") is False


def test_keys_are_independent(store: Keystore) -> None:
    """Two names hold two values."""
    store.put("a", b"1")
    store.put("b", b"2")
    assert (store.get("a"), store.get("b")) == (bytearray(b"1"), bytearray(b"2"))


def test_load_or_create_refuses_a_missing_identity(store: Keystore) -> None:
    """must_exist=True: a missing key is an error, and nothing new is created."""
    with pytest.raises(MissingIdentityKey):
        load_or_create(store, "node-identity", lambda: bytearray(b"new"), must_exist=True)
    assert store.exists("node-identity") is False


def test_load_or_create_creates_once_then_loads(store: Keystore) -> None:
    """must_exist=False creates and stores on first use, then returns the stored key."""
    made = load_or_create(store, "node-identity", lambda: bytearray(b"first"), must_exist=False)
    again = load_or_create(store, "node-identity", lambda: bytearray(b"second"), must_exist=True)
    assert made == again == bytearray(b"first")


def test_closed_store_is_unavailable(store: Keystore) -> None:
    """After close() every operation raises KeystoreUnavailable."""
    store.put("k1", b"v")
    store.close()
    with pytest.raises(KeystoreUnavailable):
        store.get("k1")


def test_describe_names_the_kind(store: Keystore) -> None:
    """describe() says what kind of store it is, for doctor."""
    assert store.describe().kind in {"memory", "encrypted-file", "os-keyring"}


def test_os_keyring_empty_entry_is_key_not_found(dict_keyring: DictKeyring) -> None:
    """A backend that reads a missing entry back as "" yields KeyNotFound, not an empty key."""
    dict_keyring.entries[("rustynet-test", "k1")] = ""
    store = OsKeyringKeystore(service="rustynet-test")
    with pytest.raises(KeyNotFound):
        store.get("k1")
    assert store.exists("k1") is False
