"""Attacks on the encrypted-file key store, tried for real on a temporary directory.

Each test plants one problem (loose mode, symlink, foreign owner, downgraded or tampered
header, wrong passphrase) and checks that the store refuses with an operator-readable error
and changes nothing on disk. Tests run as root, so `chown` to uid 65534 plants a foreign owner.
"""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import keyring.backends.fail
import keyring.backends.null
import pytest
from keyring.backend import KeyringBackend
from rustynet.adapters.keystore import files
from rustynet.adapters.keystore import os_keyring as os_keyring_module
from rustynet.adapters.keystore.encrypted_file import (
    FIXED_HEADER_SIZE,
    FLOOR,
    FileKeystore,
    KdfParams,
)
from rustynet.adapters.keystore.os_keyring import OsKeyringKeystore
from rustynet.adapters.keystore.passphrase import (
    CREDENTIAL_NAME,
    PassphraseRefused,
    PassphraseSource,
)
from rustynet.adapters.support.private_file import write_private_at

from rustynet.bootstrap.keystores import KeystoreSettings, build_keystore, choose_keystore
from rustynet.ports.keystore import (
    KeystoreError,
    KeystoreIntegrityError,
    KeystorePermissionError,
    KeystoreUnavailable,
)

PASSPHRASE = b"correct horse battery staple"
NAME = "node-identity"
SECRET = b"\x11" * 32
# Header offsets (see encrypted_file's format): m at 7..11, t at 11..15, p at 15..19.
PARAM_OFFSETS = {"memory_kib": 7, "iterations": 11, "lanes": 15}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@attrs.frozen
class Setup:
    """A state directory with one stored key."""

    state: Path
    keys: Path
    key_file: Path
    store: FileKeystore


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """An opened store holding NAME, in a private state directory."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    store = FileKeystore(state / "keys", bytearray(PASSPHRASE))
    store.open()
    store.put(NAME, SECRET)
    try:
        yield Setup(state, state / "keys", state / "keys" / NAME, store)
    finally:
        store.close()


def _reopen(s: Setup, passphrase: bytes | None = PASSPHRASE) -> FileKeystore:
    return FileKeystore(s.keys, None if passphrase is None else bytearray(passphrase))


def test_good_store_reads_back_and_checks_clean(setup: Setup) -> None:
    """Baseline: the fixture's store is private and the key reads back in a new instance."""
    fresh = _reopen(setup)
    fresh.open()
    assert fresh.get(NAME) == bytearray(SECRET)
    assert fresh.check() == ()
    assert (_mode(setup.keys), _mode(setup.key_file)) == (0o700, 0o600)


def test_constructor_does_no_io(tmp_path: Path) -> None:
    """Building a store touches nothing; open() creates the key directory 0700."""
    tmp_path.chmod(0o700)
    store = FileKeystore(tmp_path / "keys", bytearray(PASSPHRASE))
    assert not (tmp_path / "keys").exists()
    store.open()
    assert _mode(tmp_path / "keys") == 0o700


def test_world_readable_key_file_is_refused(setup: Setup) -> None:
    """A 0644 key file: start and read refuse, naming path and modes; the mode stays 0644."""
    setup.key_file.chmod(0o644)
    with pytest.raises(KeystorePermissionError) as read_err:
        setup.store.get(NAME)
    with pytest.raises(KeystorePermissionError) as open_err:
        _reopen(setup).open()
    for err in (read_err.value, open_err.value):
        assert str(setup.key_file) in str(err)
        assert "found 0644" in str(err)
        assert "expected 0600" in str(err)
    assert _mode(setup.key_file) == 0o644


def test_group_readable_directory_is_refused(setup: Setup) -> None:
    """A 0755 key directory: refused at start and on read; the mode stays 0755."""
    setup.keys.chmod(0o755)
    with pytest.raises(KeystorePermissionError, match=r"found 0755, expected 0700"):
        setup.store.get(NAME)
    with pytest.raises(KeystorePermissionError, match=str(setup.keys)):
        _reopen(setup).open()
    assert _mode(setup.keys) == 0o755


def test_symlinked_key_file_is_refused(setup: Setup, tmp_path: Path) -> None:
    """A key file replaced by a symlink (to a valid, private key file) is refused."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    target = elsewhere / NAME
    setup.key_file.rename(target)
    setup.key_file.symlink_to(target)
    with pytest.raises(KeystorePermissionError, match="symlink"):
        setup.store.get(NAME)
    with pytest.raises(KeystorePermissionError, match="symlink"):
        _reopen(setup).open()
    assert setup.key_file.is_symlink()
    assert _mode(target) == 0o600


def test_symlinked_key_directory_is_refused(setup: Setup, tmp_path: Path) -> None:
    """The key directory replaced by a symlink to a private directory is refused."""
    real = tmp_path / "real-keys"
    setup.keys.rename(real)
    setup.keys.symlink_to(real, target_is_directory=True)
    with pytest.raises(KeystorePermissionError, match="symlink"):
        setup.store.get(NAME)
    with pytest.raises(KeystorePermissionError, match="symlink"):
        _reopen(setup).open()
    assert _mode(real) == 0o700


def test_key_file_owned_by_another_user_is_refused(setup: Setup) -> None:
    """A key file owned by uid 65534 is refused, naming both uids; ownership unchanged."""
    os.chown(setup.key_file, 65534, 65534)
    with pytest.raises(KeystorePermissionError, match=r"found uid 65534, expected uid 0"):
        setup.store.get(NAME)
    with pytest.raises(KeystorePermissionError):
        _reopen(setup).open()
    assert setup.key_file.stat().st_uid == 65534


def test_key_directory_owned_by_another_user_is_refused(setup: Setup) -> None:
    """A key directory owned by uid 65534 is refused at start and on read."""
    os.chown(setup.keys, 65534, 65534)
    with pytest.raises(KeystorePermissionError, match="another user"):
        setup.store.get(NAME)
    with pytest.raises(KeystorePermissionError, match="another user"):
        _reopen(setup).open()
    assert setup.keys.stat().st_uid == 65534


@pytest.mark.parametrize("field", ["memory_kib", "iterations", "lanes"])
def test_downgraded_argon2_parameter_is_refused_before_deriving(setup: Setup, field: str) -> None:
    """A header with m, t or p below the floor is refused, even by a store with no passphrase
    (so no derivation could have run); the file is left as it was."""
    data = bytearray(setup.key_file.read_bytes())
    offset = PARAM_OFFSETS[field]
    lowered = getattr(FLOOR, field) - 1
    data[offset : offset + 4] = struct.pack(">I", lowered)
    setup.key_file.write_bytes(bytes(data))
    with pytest.raises(KeystoreIntegrityError, match=f"{field}={lowered} is below the floor"):
        _reopen(setup, passphrase=None).get(NAME)
    with pytest.raises(KeystoreIntegrityError, match="below the floor"):
        setup.store.get(NAME)
    assert setup.key_file.read_bytes() == bytes(data)
    assert _mode(setup.key_file) == 0o600


def test_store_refuses_to_write_below_the_floor(tmp_path: Path) -> None:
    """Lower parameters cannot be configured either (no test-only weak mode)."""
    with pytest.raises(KeystoreIntegrityError):
        FileKeystore(tmp_path, bytearray(PASSPHRASE), params=KdfParams(32 * 1024, 3, 4))


def test_every_flipped_header_byte_is_refused(setup: Setup) -> None:
    """Flipping any single header byte (magic, version, ids, params, salt, nonce, name) makes
    the read fail: either a refused field or a failed AEAD check over the header."""
    original = setup.key_file.read_bytes()
    header_size = FIXED_HEADER_SIZE + len(NAME)
    for i in range(header_size):
        tampered = bytearray(original)
        tampered[i] ^= 0xFF
        setup.key_file.write_bytes(bytes(tampered))
        with pytest.raises(KeystoreIntegrityError):
            setup.store.get(NAME)
    setup.key_file.write_bytes(original)
    assert setup.store.get(NAME) == bytearray(SECRET)


def test_a_key_file_relabelled_as_another_key_is_refused(setup: Setup) -> None:
    """Key substitution: NAME's file copied under another name of the same length, its header
    name rewritten to match, passes every field check; the header is AEAD associated data, so
    it is refused, and the other key's own value still reads back."""
    other = "node-identitx"
    assert len(other) == len(NAME)
    setup.store.put(other, b"\x22" * 32)
    data = setup.key_file.read_bytes()
    start = FIXED_HEADER_SIZE
    assert data[start : start + len(NAME)] == NAME.encode("ascii")
    relabelled = data[:start] + other.encode("ascii") + data[start + len(NAME) :]
    target = setup.keys / other
    target.write_bytes(relabelled)
    with pytest.raises(KeystoreIntegrityError, match="authentication failed"):
        setup.store.get(other)
    target.unlink()
    setup.store.put(other, b"\x22" * 32)
    assert setup.store.get(other) == bytearray(b"\x22" * 32)


@pytest.mark.parametrize("where", ["ciphertext", "tag"])
def test_tampered_ciphertext_is_refused(setup: Setup, where: str) -> None:
    """A flipped ciphertext or tag byte fails authentication; the file stays as planted."""
    data = bytearray(setup.key_file.read_bytes())
    index = FIXED_HEADER_SIZE + len(NAME) if where == "ciphertext" else len(data) - 1
    data[index] ^= 0x01
    setup.key_file.write_bytes(bytes(data))
    with pytest.raises(KeystoreIntegrityError, match="authentication failed"):
        setup.store.get(NAME)
    assert setup.key_file.read_bytes() == bytes(data)


def test_wrong_passphrase_is_refused(setup: Setup) -> None:
    """Another passphrase cannot read the key; the file and its mode are untouched."""
    before = setup.key_file.read_bytes()
    with pytest.raises(KeystoreIntegrityError, match="wrong passphrase"):
        _reopen(setup, passphrase=b"not the passphrase").get(NAME)
    assert setup.key_file.read_bytes() == before
    assert _mode(setup.key_file) == 0o600


def test_swapped_key_file_is_refused(setup: Setup) -> None:
    """A valid file for one key copied over another name is refused (name is in the header)."""
    other = setup.keys / "node-tunnel"
    other.write_bytes(setup.key_file.read_bytes())
    other.chmod(0o600)
    with pytest.raises(KeystoreIntegrityError, match="holds key 'node-identity'"):
        setup.store.get("node-tunnel")


def test_fresh_salt_and_nonce_on_every_write(setup: Setup) -> None:
    """Writing the same secret twice gives different files (fresh salt, nonce)."""
    first = setup.key_file.read_bytes()
    setup.store.put(NAME, SECRET)
    second = setup.key_file.read_bytes()
    assert first[19:47] != second[19:47]
    assert setup.store.get(NAME) == bytearray(SECRET)


def test_atomic_write_leaves_no_temp_files(setup: Setup) -> None:
    """After writes (and one that fails at rename) only key files remain, all 0600."""
    setup.store.put("node-tunnel", b"t" * 32)
    (setup.keys / "blocked").mkdir(mode=0o700)  # a directory where a key file would go
    with pytest.raises(KeystorePermissionError, match="not a regular file"):
        setup.store.put("blocked", b"x")
    fd = files.open_private_dir(setup.keys, uid=0)
    try:  # the helper alone: rename onto a directory fails after the temp file was written
        with pytest.raises(OSError, match="directory"):
            write_private_at(fd, "blocked", b"x")
    finally:
        os.close(fd)
    (setup.keys / "blocked").rmdir()
    names = sorted(p.name for p in setup.keys.iterdir())
    assert names == ["node-identity", "node-tunnel"]
    assert all(_mode(setup.keys / n) == 0o600 for n in names)


def test_check_reports_every_problem_without_changing_anything(setup: Setup) -> None:
    """check() lists a loose file and a loose directory at once, and repairs neither."""
    setup.key_file.chmod(0o640)
    setup.keys.chmod(0o750)
    problems = {(f.path, f.found) for f in _reopen(setup).check()}
    assert (str(setup.keys), "0750") in problems
    assert (str(setup.key_file), "0640") in problems
    assert (_mode(setup.keys), _mode(setup.key_file)) == (0o750, 0o640)


@pytest.mark.parametrize(
    "backend_cls", [keyring.backends.fail.Keyring, keyring.backends.null.Keyring]
)
def test_fail_and_null_keyring_backends_are_unavailable(backend_cls: type[KeyringBackend]) -> None:
    """keyring's fail/null backends (what a headless host gets) are refused by name."""
    backend = backend_cls()
    store = OsKeyringKeystore(backend=backend)
    name = f"{type(backend).__module__}.{type(backend).__qualname__}"
    with pytest.raises(KeystoreUnavailable, match=name.replace(".", r"\.")):
        store.open()
    with pytest.raises(KeystoreUnavailable):
        store.get(NAME)
    assert store.check()


_PROBE = """
import keyring
from rustynet.adapters.keystore.os_keyring import OsKeyringKeystore, backend_name
from rustynet.ports.keystore import KeystoreUnavailable
print(backend_name(keyring.get_keyring()))
try:
    OsKeyringKeystore().open()
except KeystoreUnavailable as exc:
    print("unavailable:", exc)
"""


def test_default_keyring_on_this_headless_host_is_unavailable() -> None:
    """keyring's own choice on a headless host (fail backend) is reported unavailable.

    Run in a fresh interpreter: backends defined by other test modules would otherwise join
    keyring's automatic selection."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    if out[0] != "keyring.backends.fail.Keyring":
        pytest.skip(f"this host has a keyring backend ({out[0]}); the headless case needs none")
    assert out[1].startswith("unavailable:")
    assert "keyring.backends.fail.Keyring" in out[1]


# -- passphrase sources ----------------------------------------------------------------------


def test_passphrase_environment_variable_is_refused() -> None:
    """A RUSTYNET_*PASS* variable makes resolution fail loudly instead of being used."""
    with pytest.raises(PassphraseRefused, match="RUSTYNET_PASSPHRASE"):
        PassphraseSource.resolve(
            fd=None, file=None, environ={"RUSTYNET_PASSPHRASE": "x"}, interactive=False
        )


def test_passphrase_file_with_loose_mode_is_refused(tmp_path: Path) -> None:
    """A 0644 passphrase file is refused and left 0644."""
    path = tmp_path / "pass"
    path.write_bytes(PASSPHRASE + b"\n")
    path.chmod(0o644)
    with pytest.raises(KeystorePermissionError, match="found 0644"):
        PassphraseSource.from_file(path).read()
    assert _mode(path) == 0o644


def test_passphrase_file_symlink_is_refused(tmp_path: Path) -> None:
    """A passphrase file that is a symlink is refused."""
    real = tmp_path / "real"
    real.write_bytes(PASSPHRASE)
    real.chmod(0o600)
    link = tmp_path / "pass"
    link.symlink_to(real)
    with pytest.raises(KeystorePermissionError, match="symlink"):
        PassphraseSource.from_file(link).read()


def test_passphrase_from_descriptor_and_credentials_directory(tmp_path: Path) -> None:
    """A descriptor and a systemd credentials directory both yield the passphrase (one
    trailing newline stripped); the credential is preferred when present."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, PASSPHRASE + b"\n")
    os.close(write_fd)
    assert PassphraseSource.from_fd(read_fd).read() == bytearray(PASSPHRASE)
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o500)
    cred = creds / CREDENTIAL_NAME
    cred.write_bytes(PASSPHRASE)
    cred.chmod(0o400)
    source = PassphraseSource.resolve(
        fd=None,
        file=tmp_path / "unused",
        environ={"CREDENTIALS_DIRECTORY": str(creds)},
        interactive=False,
    )
    assert source.kind == "credential"
    assert source.read() == bytearray(PASSPHRASE)


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    """An empty passphrase file is refused, and so is an empty passphrase buffer."""
    path = tmp_path / "pass"
    path.write_bytes(b"\n")
    path.chmod(0o600)
    with pytest.raises(PassphraseRefused):
        PassphraseSource.from_file(path).read()
    with pytest.raises(KeystoreError):
        FileKeystore(tmp_path, bytearray())


def test_put_refuses_to_replace_a_loose_key_file(setup: Setup) -> None:
    """Writing over a 0644 key file would hide the problem: refused, file left as found."""
    setup.key_file.chmod(0o644)
    before = setup.key_file.read_bytes()
    with pytest.raises(KeystorePermissionError, match="found 0644"):
        setup.store.put(NAME, b"replacement")
    assert (setup.key_file.read_bytes(), _mode(setup.key_file)) == (before, 0o644)


# -- composition root ------------------------------------------------------------------------


def test_build_keystore_opens_the_file_store_with_a_passphrase_file(tmp_path: Path) -> None:
    """auto on this host (no real keyring) or file: an opened FileKeystore that works."""
    tmp_path.chmod(0o700)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    passfile = tmp_path / "pass"
    passfile.write_bytes(PASSPHRASE)
    passfile.chmod(0o600)
    settings = KeystoreSettings(state_dir=state, kind="file", passphrase_file=passfile)
    store = build_keystore(settings, environ={}, interactive=False)
    try:
        store.put(NAME, SECRET)
        assert store.get(NAME) == bytearray(SECRET)
    finally:
        store.close()
    assert _mode(state / "keys") == 0o700


def test_build_keystore_refuses_env_passphrase_and_missing_source(tmp_path: Path) -> None:
    """A passphrase variable in the environment is refused; no source at all is unavailable."""
    tmp_path.chmod(0o700)
    settings = KeystoreSettings(state_dir=tmp_path, kind="file")
    with pytest.raises(PassphraseRefused):
        build_keystore(settings, environ={"RUSTYNET_KEYSTORE_PASSPHRASE": "x"}, interactive=False)
    with pytest.raises(KeystoreUnavailable, match="no passphrase source"):
        build_keystore(settings, environ={}, interactive=False)
    assert not (tmp_path / "keys").exists()


def test_auto_keeps_an_existing_key_directory(tmp_path: Path) -> None:
    """auto uses the file store whenever the key directory exists (keys are never hidden)."""
    (tmp_path / "keys").mkdir(mode=0o700)
    choice = choose_keystore(
        KeystoreSettings(state_dir=tmp_path, kind="auto"), environ={}, interactive=False
    )
    assert isinstance(choice.keystore, FileKeystore)
    assert "exists" in choice.reason


def test_auto_with_a_key_directory_never_loads_keyring(tmp_path: Path) -> None:
    """The file-store path of `auto` does not import `keyring` (≈3 MB of daemon RSS): checked in
    a fresh interpreter, where nothing else has imported it yet."""
    (tmp_path / "keys").mkdir(mode=0o700)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from rustynet.bootstrap.keystores import KeystoreSettings, choose_keystore\n"
        f"s = KeystoreSettings(state_dir=Path({str(tmp_path)!r}), kind='auto')\n"
        "choice = choose_keystore(s, environ={}, interactive=False)\n"
        "print(type(choice.keystore).__name__, 'keyring' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["FileKeystore", "False"]


def test_keystore_settings_default_service_is_the_adapters() -> None:
    """The bootstrap names the OS keyring service without importing the adapter: same value."""
    assert KeystoreSettings().service == os_keyring_module.DEFAULT_SERVICE
