"""Composition root of `rustynet-control`: `init` makes a data directory, `serve` runs it.

The one rule: both commands harden the process and check the crypto policy before they touch a
secret, and `init` never overwrites anything — if the data directory already holds any file it
would create, it refuses with a clear message (running it twice is an error, not a reset).

Data directory layout (`init`):

    DIR/control.toml     server config (adapters/config.py), 0600
    DIR/keys/            encrypted key store: root, peer-map signing, audit and token keys
    DIR/keystore.pass    random passphrase of DIR/keys, 0600 (file key store only, see below)
    DIR/tls/control.crt  self-signed ECDSA P-256 certificate (SAN = URL host, <= 90 days)
    DIR/tls/control.key  its private key, 0600
    DIR/control.db       SQLite database (unless --database postgresql://...)
    DIR/admin.key        the first admin API key (rnk_...), 0600
    DIR/admin.toml       URL + TLS SPKI pin + key file path, for `rustynet admin --config`

What `keystore.pass` protects against: someone who gets DIR/keys ALONE (a backup of only the
key directory, a copied volume snapshot of it) cannot use the keys. It does NOT protect against
anyone who gets the whole data directory (the passphrase sits next to the keys) or root on the
host. For real protection move the passphrase into a systemd credential
(`LoadCredentialEncrypted=rustynet-keystore-passphrase`, see
packaging/rustynet-control.service) and delete keystore.pass: `serve` prefers the credential.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import attrs
import uvloop

from rustynet.adapters.cli import control as control_cli
from rustynet.adapters.clock import SystemClock
from rustynet.adapters.config import (
    AdminConfig,
    ConfigError,
    ControlConfig,
    DatabaseUrl,
    load_control_config,
    render_admin_config,
    render_control_config,
)
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.http_api.app import create_app, make_runner
from rustynet.adapters.http_api.settings import ApiSettings
from rustynet.adapters.http_api.tls import server_ssl_context
from rustynet.adapters.keystore.encrypted_file import FileKeystore
from rustynet.adapters.keystore.os_keyring import OsKeyringKeystore
from rustynet.adapters.logging import configure_logging
from rustynet.adapters.storage.local_feed import LocalChangeFeed
from rustynet.adapters.storage.postgres import PostgresStore
from rustynet.adapters.storage.sqlite import SqliteStore
from rustynet.adapters.support.config_values import parse_control_url, parse_listen
from rustynet.adapters.support.private_file import write_private
from rustynet.adapters.tls_cert import create_self_signed, spki_pin_of_pem_file
from rustynet.application.control import (
    ControlService,
    ControlSettings,
    create_initial_admin_key,
)
from rustynet.application.control_keys import (
    KEY_NAMES,
    ROOT_KEY,
    ControlKeys,
    create_control_keys,
    load_control_keys,
)
from rustynet.bootstrap.control_reload import RelayReloader
from rustynet.bootstrap.crypto_policy import load_crypto_policy
from rustynet.bootstrap.keystores import (
    KeystoreSettings,
    build_keystore,
    check_private_key_file,
)
from rustynet.bootstrap.process import disable_core_dumps
from rustynet.bootstrap.serving import connection_guard, serve_until_stopped, stun_server
from rustynet.domain.errors import RustynetError
from rustynet.domain.keys import b64encode
from rustynet.ports.change_feed import ChangeFeed
from rustynet.ports.keystore import Keystore, KeystoreUnavailable
from rustynet.ports.store import Store

CONTROL_TOML: Final = "control.toml"
ADMIN_TOML: Final = "admin.toml"
ADMIN_KEY: Final = "admin.key"
PASSPHRASE_FILE: Final = "keystore.pass"  # noqa: S105 - a file name, not a secret
KEYS_DIR: Final = "keys"
TLS_DIR: Final = "tls"
CERTIFICATE: Final = "tls/control.crt"
PRIVATE_KEY: Final = "tls/control.key"
DATABASE: Final = "control.db"
OS_KEYRING_SERVICE: Final = "rustynet-control"
LISTEN_BACKLOG: Final = 4096
PASSPHRASE_BYTES: Final = 32

_INIT_PATHS: Final = (
    CONTROL_TOML,
    ADMIN_TOML,
    ADMIN_KEY,
    PASSPHRASE_FILE,
    KEYS_DIR,
    TLS_DIR,
    DATABASE,
)


class InitRefused(RustynetError):  # noqa: N818 - names the outcome
    """The data directory already holds a control plane (or part of one)."""


def _store_for(database: DatabaseUrl) -> Store:
    if database.kind == "postgresql" and database.conninfo is not None:
        return PostgresStore(database.conninfo)
    assert database.sqlite_path is not None  # DatabaseUrl guarantees one of the two
    return SqliteStore(database.sqlite_path)


def _change_feed_for(store: Store) -> ChangeFeed:
    """Wake-ups from other instances: LISTEN/NOTIFY on PostgreSQL, nothing for SQLite."""
    if isinstance(store, PostgresStore):
        return store.change_feed()
    return LocalChangeFeed()


def _default_listen(url: str) -> str:
    port = urlsplit(url).port or 443
    return f"0.0.0.0:{port}"


def _open_init_keystore(
    data_dir: Path, kind: control_cli.InitKeystore, entropy: OsEntropy
) -> tuple[Keystore, str, Path | None, tuple[str, ...]]:
    """The key store init writes to: (store, kind, passphrase file, notes for the operator)."""
    if kind in ("auto", "os"):
        os_store = OsKeyringKeystore(service=OS_KEYRING_SERVICE)
        try:
            os_store.open()
        except KeystoreUnavailable:
            if kind == "os":
                raise
        else:
            if os_store.exists(ROOT_KEY):
                raise InitRefused(
                    f"the OS key store (service {OS_KEYRING_SERVICE!r}) already holds control "
                    "keys; refusing to replace them"
                )
            return os_store, "os", None, ("keys are in the OS key store",)
    passphrase = bytearray(b64encode(entropy.token_bytes(PASSPHRASE_BYTES)).encode("ascii"))
    pass_path = data_dir / PASSPHRASE_FILE
    write_private(pass_path, passphrase + b"\n", replace=False)
    store = FileKeystore(data_dir / KEYS_DIR, passphrase)
    store.open()
    notes = (
        f"{pass_path} holds a random passphrase for {data_dir / KEYS_DIR}: it protects the keys "
        "against theft of the keys directory ALONE, not of the whole data directory or root "
        "on this host. For more, move it into a systemd credential (LoadCredentialEncrypted="
        "rustynet-keystore-passphrase) and delete the file.",
    )
    return store, "file", pass_path, notes


async def _init_database(
    database: DatabaseUrl, keys: ControlKeys, now: datetime, entropy: OsEntropy
) -> tuple[str, str]:
    """Run migrations and create the first (audited) admin API key: (key id, key text)."""
    store = _store_for(database)
    await store.open()
    try:
        created = await create_initial_admin_key(store, now=now, entropy=entropy, keys=keys)
    finally:
        await store.close()
    return created.id, created.key


def init_control(request: control_cli.InitRequest) -> control_cli.InitReport:
    """`rustynet-control init`: everything a first start needs, or nothing and an error."""
    clock, entropy = SystemClock(), OsEntropy()
    now = clock.now()
    load_crypto_policy(now, request.crypto_policy_override)
    os.umask(0o077)  # the database, its WAL and every directory: private to this user
    data_dir = Path(request.data_dir).absolute()
    try:
        url = parse_control_url(request.url)
        listen_text = request.listen or _default_listen(url)
        listen = parse_listen(listen_text)
        database = (
            DatabaseUrl.parse(request.database, data_dir)
            if request.database is not None
            else DatabaseUrl("sqlite", sqlite_path=data_dir / DATABASE)
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    existing = [name for name in _INIT_PATHS if (data_dir / name).exists()]
    if existing:
        raise InitRefused(
            f"{data_dir} is already initialised (found {', '.join(existing)}); refusing to "
            "overwrite it. Use another --data-dir, or remove the directory to start over."
        )
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store, kind, pass_path, notes = _open_init_keystore(data_dir, request.keystore, entropy)
    created: list[Path] = [] if pass_path is None else [pass_path]
    keys, entries = create_control_keys(entropy, now)
    try:
        try:
            for name in KEY_NAMES:
                store.put(name, entries[name])
        finally:
            store.close()
            for value in entries.values():
                value[:] = bytes(len(value))
        if kind == "file":
            created.append(data_dir / KEYS_DIR)
        (data_dir / TLS_DIR).mkdir(mode=0o700)
        cert = create_self_signed(url, data_dir / CERTIFICATE, data_dir / PRIVATE_KEY, now=now)
        created += [cert.certificate, cert.private_key]
        key_id, key_text = asyncio.run(_init_database(database, keys, now, entropy))
    finally:
        keys.wipe()
    if database.kind == "sqlite" and database.sqlite_path is not None:
        created.append(database.sqlite_path)
    key_bytes = bytearray(key_text.encode("ascii") + b"\n")
    try:
        write_private(data_dir / ADMIN_KEY, key_bytes, replace=False)
    finally:
        key_bytes[:] = bytes(len(key_bytes))
    admin = AdminConfig(url=url, spki_pin=cert.pin, key_file=data_dir / ADMIN_KEY)
    write_private(data_dir / ADMIN_TOML, render_admin_config(admin).encode("utf-8"), replace=False)
    config = ControlConfig(
        url=url,
        listen=listen,
        database=database,
        certificate=cert.certificate,
        private_key=cert.private_key,
        keystore="file" if kind == "file" else "os",
        passphrase_file=pass_path,
        backlog=LISTEN_BACKLOG,
    )
    # control.toml last: its presence means "initialised", so a crash before it leaves files
    # that make the next init refuse by name rather than a config pointing at missing keys.
    write_private(
        data_dir / CONTROL_TOML,
        render_control_config(config, data_dir).encode("utf-8"),
        replace=False,
    )
    created += [data_dir / ADMIN_KEY, data_dir / ADMIN_TOML, data_dir / CONTROL_TOML]
    return control_cli.InitReport(
        data_dir=data_dir,
        url=url,
        listen=listen_text,
        database=database.describe(),
        spki_pin=cert.pin.to_text(),
        keystore=kind,
        created=tuple(created),
        admin_config=data_dir / ADMIN_TOML,
        notes=(*notes, f"first admin API key {key_id} is in {data_dir / ADMIN_KEY} (0600)"),
    )


def _open_serve_keystore(data_dir: Path, config: ControlConfig) -> Keystore:
    if config.keystore == "os":
        store: Keystore = OsKeyringKeystore(service=OS_KEYRING_SERVICE)
        store.open()
        return store
    settings = KeystoreSettings(
        state_dir=data_dir, kind="file", passphrase_file=config.passphrase_file
    )
    # Preference: --passphrase-fd (not offered here), systemd credential, then the file.
    return build_keystore(settings, environ=os.environ, interactive=False)


@attrs.frozen
class _Prepared:
    config: ControlConfig
    database: DatabaseUrl


def _load_keys(data_dir: Path, config: ControlConfig, now: datetime) -> ControlKeys:
    """The control keys from the configured key store; the raw entries are wiped."""
    keystore = _open_serve_keystore(data_dir, config)
    try:
        entries = {name: keystore.get(name) for name in KEY_NAMES}
    finally:
        keystore.close()
    try:
        return load_control_keys(entries, now)
    finally:
        for value in entries.values():
            value[:] = bytes(len(value))


def _freeze_startup_garbage() -> None:
    # Start-up garbage (imports, keys, schema) is long-lived: move it out of the
    # collector's generations so full collections stay short under load.
    gc.collect()
    gc.freeze()


async def _serve(data_dir: Path, prepared: _Prepared, ready: Sequence[str]) -> None:
    config = prepared.config
    clock, entropy = SystemClock(), OsEntropy()
    keys = _load_keys(data_dir, config, clock.now())
    pin = spki_pin_of_pem_file(config.certificate)
    ssl_context = server_ssl_context(config.certificate, config.private_key)
    store = _store_for(prepared.database)
    await store.open()
    service = ControlService(
        store,
        keys,
        clock,
        entropy,
        ControlSettings(
            control_url=config.url,
            tls_spki_sha256=pin.digest,
            relays=config.relays,
            stun_servers=config.stun.advertised(config.url),
        ),
        changes=_change_feed_for(store),
    )
    await service.start()
    guard = connection_guard(config.connections)
    stun = stun_server(config.stun.enabled, config.stun.listen)
    metrics = (guard.render_metrics,) + ((stun.render_metrics,) if stun else ())
    runner = make_runner(create_app(service, ApiSettings(), extra_metrics=metrics))
    reloads = RelayReloader(service, data_dir / CONTROL_TOML, config)
    try:
        # Deadlines and caps on every connection ([connections] in control.toml), around the
        # handler the runner makes (parser-error answers: support/rejections.py).
        await serve_until_stopped(
            runner,
            config.listen,
            ssl_context=ssl_context,
            guard=guard,
            backlog=config.backlog,
            ready="".join(ready),
            pin=pin,
            on_hangup=reloads.request,
            before_ready=_freeze_startup_garbage,
            stun=stun,
        )
    finally:
        await reloads.close()
        await service.close()
        await store.close()
        keys.wipe()


def serve_control(request: control_cli.ServeRequest) -> int:
    """`rustynet-control serve`: run until SIGTERM/SIGINT, then stop cleanly (exit 0)."""
    load_crypto_policy(SystemClock().now(), request.crypto_policy_override)
    os.umask(0o077)
    configure_logging(request.log_level, json=request.log_json)
    data_dir = Path(request.data_dir).absolute()
    config = load_control_config(data_dir / CONTROL_TOML)
    check_private_key_file(config.private_key)
    database = config.database
    if request.database is not None:
        try:
            database = DatabaseUrl.parse(request.database, data_dir)
        except ValueError as exc:
            raise ConfigError(f"--database: {exc}") from None
    prepared = _Prepared(config, database)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(data_dir, prepared, ["rustynet-control: ready;"]))
    return 0


def show_control(request: control_cli.ShowRequest) -> control_cli.ShowReport:
    """`rustynet-control show`: public facts, read like `serve` reads them (keys wiped)."""
    clock = SystemClock()
    load_crypto_policy(clock.now(), request.crypto_policy_override)
    data_dir = Path(request.data_dir).absolute()
    config = load_control_config(data_dir / CONTROL_TOML)
    keys = _load_keys(data_dir, config, clock.now())
    try:
        root = keys.root.key_id.to_text()
    finally:
        keys.wipe()
    host, port = config.listen
    return control_cli.ShowReport(
        url=config.url,
        listen=f"{host}:{port}",
        spki_pin=spki_pin_of_pem_file(config.certificate).to_text(),
        root_fingerprint=root,
        relays=tuple((r.id, r.url, r.tls_spki_sha256.to_text()) for r in config.relays),
    )


class _ControlCommands:
    """`ControlCommands` for the CLI adapter."""

    def init(self, request: control_cli.InitRequest) -> control_cli.InitReport:
        return init_control(request)

    def serve(self, request: control_cli.ServeRequest) -> int:
        return serve_control(request)

    def show(self, request: control_cli.ShowRequest) -> control_cli.ShowReport:
        return show_control(request)


def control_main(argv: Sequence[str] | None = None) -> int:
    """`rustynet-control` console script."""
    disable_core_dumps()
    return control_cli.main(argv, _ControlCommands())


__all__ = ["control_main", "init_control", "serve_control", "show_control"]
