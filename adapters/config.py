"""TOML configuration files: `control.toml` (the server) and `admin.toml` (the admin CLI).

The one rule: parsing is strict — an unknown table or key, a wrong type or a malformed value
is an error that names the file and the key (`control.toml: [tls].certificate: ...`), never a
silently ignored setting. Relative paths are relative to the directory of the file, so a data
directory can be moved as a whole. Rendering writes the same keys back (init uses it).

control.toml:

    [control]
    url = "https://ctl.example.org:8443"   # the public URL nodes and admins use
    listen = "0.0.0.0:8443"                # ADDR:PORT ([v6]:PORT) to bind
    backlog = 4096                         # optional, listen(2) backlog

    [database]
    url = "sqlite:control.db"              # sqlite:PATH or postgresql://...

    [tls]
    certificate = "tls/control.crt"
    private_key = "tls/control.key"

    [keystore]
    kind = "file"                          # file | os
    passphrase_file = "keystore.pass"      # optional (file kind); see docs/control-plane.md

    [connections]                          # optional; every key optional, defaults shown
    tls_handshake_timeout = 10.0           # seconds: accept -> TLS handshake done
    header_timeout = 10.0                  # seconds: first byte -> request headers complete
    body_timeout = 30.0                    # seconds: headers -> request body complete
    keepalive_timeout = 30.0               # seconds: response sent -> next request starts
    max_connections = 16384                # open connections in total
    max_connections_per_ip = 256           # ... per IPv4 address / IPv6 /64

    [stun]                                 # optional; defaults shown (adapters/support/
    enabled = true                         # stun_config.py; docs/control-plane.md "STUN")
    listen = ["0.0.0.0:3478", "0.0.0.0:3479"]
    advertise = ["203.0.113.1:3478", "203.0.113.1:3479"]  # default: derived, see there

    [[relays]]                             # optional, any number; the first is the home relay
    id = "relay-1"                         # 1-64 characters a-z 0-9 -; relay tokens' audience
    url = "wss://relay.example.org:443/v1/relay"
    tls_spki_sha256 = "sha256//..."        # printed by `rustynet-relay init`

admin.toml (top-level keys): `url`, `spki_pin` (`sha256//...`), `key_file`.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Literal, TypeVar
from urllib.parse import urlsplit

import attrs
from rustynet.adapters.support.config_file import ConfigFileRefused, read_config_file
from rustynet.adapters.support.config_values import (
    parse_control_url,
    parse_listen,
    relative_path,
    render_listen,
    toml_string,
)
from rustynet.adapters.support.stun_config import (
    StunConfig,
    StunConfigError,
    render_stun_config,
    stun_config_from,
)

from rustynet.domain.candidates import Candidate, CandidateKind
from rustynet.domain.connection_limits import (
    ConnectionLimits,
    ConnectionLimitsError,
    connection_limits_from,
    render_connection_limits,
)
from rustynet.domain.errors import DecodeError, RustynetError
from rustynet.domain.netmap import RELAY_ID_RE, RelayEntry, check_relays, parse_relay_url
from rustynet.domain.tls_pin import SpkiPin
from rustynet.domain.tunnel import IPNetwork

DEFAULT_BACKLOG: Final = 4096
MAX_CONFIG_SIZE: Final = 64 * 1024
KeystoreKind = Literal["file", "os"]
T = TypeVar("T")


class ConfigError(RustynetError):
    """A configuration file is missing, unreadable or invalid; the message names file and key."""


@attrs.frozen
class DatabaseUrl:
    """`sqlite:PATH` (resolved against the data directory) or `postgresql://...`."""

    kind: Literal["sqlite", "postgresql"]
    sqlite_path: Path | None = None
    conninfo: str | None = attrs.field(default=None, repr=False)  # may hold a password

    @classmethod
    def parse(cls, text: str, base: Path) -> DatabaseUrl:
        """Parse `text`; relative SQLite paths are taken relative to `base`."""
        if text.startswith(("postgresql://", "postgres://")):
            return cls("postgresql", conninfo=text)
        if text.startswith("sqlite:"):
            rest = text.removeprefix("sqlite:")
            rest = "/" + rest.lstrip("/") if rest.startswith("///") else rest
            if not rest:
                raise ValueError("sqlite: needs a file path")
            path = Path(rest)
            return cls("sqlite", sqlite_path=path if path.is_absolute() else base / path)
        raise ValueError("expected sqlite:PATH or postgresql://...")

    def render(self) -> str:
        """The text form (absolute SQLite path)."""
        if self.kind == "postgresql" and self.conninfo is not None:
            return self.conninfo
        return f"sqlite:{self.sqlite_path}"

    def describe(self) -> str:
        """For logs and output: never the password of a PostgreSQL URL."""
        if self.kind == "sqlite":
            return f"SQLite {self.sqlite_path}"
        parts = urlsplit(self.conninfo or "")
        return f"PostgreSQL {parts.hostname or 'local'}:{parts.port or 5432}{parts.path}"


@attrs.frozen
class ControlConfig:
    """The parsed `control.toml` (paths absolute)."""

    url: str
    listen: tuple[str, int]
    database: DatabaseUrl
    certificate: Path
    private_key: Path
    keystore: KeystoreKind = "file"
    passphrase_file: Path | None = None
    backlog: int = DEFAULT_BACKLOG
    relays: tuple[RelayEntry, ...] = ()
    connections: ConnectionLimits = attrs.field(factory=ConnectionLimits)
    stun: StunConfig = attrs.field(factory=StunConfig)


@attrs.frozen
class AdminConfig:
    """The parsed `admin.toml`."""

    url: str
    spki_pin: SpkiPin
    key_file: Path


class _Reader:
    """Strict typed access to a TOML table, naming `file: [table].key` in every error."""

    def __init__(self, source: str, table: Mapping[str, object], prefix: str) -> None:
        self.source, self.table, self.prefix = source, table, prefix
        self.used: set[str] = set()

    def _where(self, key: str) -> str:
        return f"{self.source}: {self.prefix}{key}"

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self._where(key)}: {problem}")

    def get(self, key: str, kind: type, *, required: bool = True) -> object:
        self.used.add(key)
        if key not in self.table:
            if required:
                raise ConfigError(f"{self._where(key)}: missing (required)")
            return None
        value = self.table[key]
        if kind is int and isinstance(value, bool):
            raise self.fail(key, "expected an integer, got a boolean")
        if not isinstance(value, kind):
            raise self.fail(key, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def text(self, key: str, *, required: bool = True) -> str | None:
        value = self.get(key, str, required=required)
        return value if isinstance(value, str) else None

    def sub(self, key: str) -> _Reader:
        value = self.get(key, dict)
        assert isinstance(value, dict)
        return _Reader(self.source, value, f"[{key}].")

    def finish(self) -> None:
        extra = sorted(set(self.table) - self.used)
        if extra:
            raise ConfigError(f"{self._where(extra[0])}: unknown setting")

    def convert(self, key: str, value: str, parse: Callable[[str], T]) -> T:
        try:
            return parse(value)
        except (ValueError, DecodeError) as exc:
            raise self.fail(key, str(exc)) from None


def _read_toml(path: Path) -> dict[str, object]:
    try:
        raw = read_config_file(Path(path), max_size=MAX_CONFIG_SIZE)
    except ConfigFileRefused as exc:  # missing, unreadable, or writable by someone else
        raise ConfigError(str(exc)) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _resolve(base: Path, text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else base / path


def _relays(top: _Reader) -> tuple[RelayEntry, ...]:
    """`[[relays]]`: each table exactly id, url, tls_spki_sha256; ids unique; order kept."""
    value = top.get("relays", list, required=False)
    relays: list[RelayEntry] = []
    for i, item in enumerate(value if isinstance(value, list) else []):
        if not isinstance(item, dict):
            raise top.fail("relays", "expected [[relays]] tables")
        table = _Reader(top.source, item, f"[[relays]] #{i + 1}: ")
        relay_id = table.text("id") or ""
        if not RELAY_ID_RE.fullmatch(relay_id):
            raise table.fail("id", "1-64 characters of a-z, 0-9 and '-'")
        if any(r.id == relay_id for r in relays):
            raise table.fail("id", f"relay id {relay_id!r} is listed twice")
        url = table.convert("url", table.text("url") or "", parse_relay_url)
        pin = table.convert(
            "tls_spki_sha256", table.text("tls_spki_sha256") or "", SpkiPin.from_text
        )
        table.finish()
        relays.append(RelayEntry(relay_id, url, pin))
    try:
        return check_relays(relays)
    except DecodeError as exc:
        raise top.fail("relays", str(exc)) from None


def _optional_table(
    top: _Reader, name: str, default: Callable[[], T], parse: Callable[[Mapping[str, object]], T]
) -> T:
    """An optional table (`[connections]`, `[stun]`): its defaults when absent, else parsed with
    errors naming the key."""
    if name not in top.table:
        top.used.add(name)
        return default()
    table = top.sub(name)
    try:
        return parse(table.table)
    except (ConnectionLimitsError, StunConfigError) as exc:
        raise table.fail(exc.key, exc.problem) from None


def load_control_config(path: Path) -> ControlConfig:
    """Parse `control.toml` strictly; raise `ConfigError` naming the bad key."""
    path = Path(path)
    base = path.parent.resolve()
    top = _Reader(str(path), _read_toml(path), "")
    control, database, tls, keystore = (
        top.sub("control"),
        top.sub("database"),
        top.sub("tls"),
        top.sub("keystore"),
    )
    relays = _relays(top)
    # [connections]: deadlines and connection caps, see docs/control-plane.md; [stun]: the STUN
    # service, see adapters/support/stun_config.py.
    connections = _optional_table(top, "connections", ConnectionLimits, connection_limits_from)
    stun = _optional_table(
        top, "stun", StunConfig, lambda t: stun_config_from(t, advertise_allowed=True)
    )
    top.finish()
    url = control.convert("url", control.text("url") or "", parse_control_url)
    listen = control.convert("listen", control.text("listen") or "", parse_listen)
    backlog_value = control.get("backlog", int, required=False)
    backlog = DEFAULT_BACKLOG if backlog_value is None else int(str(backlog_value))
    if not 1 <= backlog <= 65535:
        raise control.fail("backlog", "must be 1-65535")
    control.finish()
    db = database.convert("url", database.text("url") or "", lambda t: DatabaseUrl.parse(t, base))
    database.finish()
    certificate = _resolve(base, tls.text("certificate") or "")
    private_key = _resolve(base, tls.text("private_key") or "")
    tls.finish()
    kind_text = keystore.text("kind")
    if kind_text not in ("file", "os"):
        raise keystore.fail("kind", "expected 'file' or 'os'")
    kind: KeystoreKind = "file" if kind_text == "file" else "os"
    passphrase = keystore.text("passphrase_file", required=False)
    if passphrase is not None and kind != "file":
        raise keystore.fail("passphrase_file", "only the file key store takes a passphrase")
    keystore.finish()
    return ControlConfig(
        url=url,
        listen=listen,
        database=db,
        certificate=certificate,
        private_key=private_key,
        keystore=kind,
        passphrase_file=_resolve(base, passphrase) if passphrase is not None else None,
        backlog=backlog,
        relays=relays,
        connections=connections,
        stun=stun,
    )


def render_control_config(config: ControlConfig, base: Path) -> str:
    """`control.toml` text for `config`; paths under `base` are written relative to it."""
    listen = render_listen(*config.listen)
    db = config.database
    db_text = (
        f"sqlite:{relative_path(db.sqlite_path, base)}"
        if db.kind == "sqlite" and db.sqlite_path is not None
        else db.render()
    )
    lines = [
        "# Rustynet control plane. Written by `rustynet-control init`; paths are relative",
        "# to this file's directory. Unknown keys are errors.",
        "[control]",
        f"url = {toml_string(config.url)}",
        f"listen = {toml_string(listen)}",
        f"backlog = {config.backlog}",
        "",
        "[database]",
        f"url = {toml_string(db_text)}",
        "",
        "[tls]",
        f"certificate = {toml_string(relative_path(config.certificate, base))}",
        f"private_key = {toml_string(relative_path(config.private_key, base))}",
        "",
        "[keystore]",
        f"kind = {toml_string(config.keystore)}",
    ]
    if config.passphrase_file is not None:
        lines.append(
            f"passphrase_file = {toml_string(relative_path(config.passphrase_file, base))}"
        )
    lines += ["", "# Deadlines (seconds) and caps of client connections: docs/control-plane.md."]
    lines += render_connection_limits(config.connections)
    lines += render_stun_config(config.stun, advertise_allowed=True)
    for relay in config.relays:
        lines += [
            "",
            "[[relays]]",
            f"id = {toml_string(relay.id)}",
            f"url = {toml_string(relay.url)}",
            f"tls_spki_sha256 = {toml_string(relay.tls_spki_sha256.to_text())}",
        ]
    return "\n".join(lines) + "\n"


def load_admin_config(path: Path) -> AdminConfig:
    """Parse `admin.toml` strictly; raise `ConfigError` naming the bad key."""
    path = Path(path)
    base = path.parent.resolve()
    top = _Reader(str(path), _read_toml(path), "")
    url = top.convert("url", top.text("url") or "", parse_control_url)
    pin = top.convert("spki_pin", top.text("spki_pin") or "", SpkiPin.from_text)
    key_file = _resolve(base, top.text("key_file") or "")
    top.finish()
    return AdminConfig(url=url, spki_pin=pin, key_file=key_file)


def render_admin_config(config: AdminConfig) -> str:
    """`admin.toml` text for `config` (the key file path is written as given)."""
    return (
        "# Rustynet admin CLI: which control plane, its TLS key pin (checked on every\n"
        "# connection) and the file holding the admin API key.\n"
        f"url = {toml_string(config.url)}\n"
        f"spki_pin = {toml_string(config.spki_pin.to_text())}\n"
        f"key_file = {toml_string(str(config.key_file))}\n"
    )


# --- rustynetd.toml ---------------------------------------------------------------------------

DEFAULT_NODE_STATE_DIR: Final = Path("/var/lib/rustynet")
DEFAULT_NODE_SOCKET: Final = Path("/run/rustynet/rustynetd.sock")
DEFAULT_INTERFACE: Final = "rustynet0"
NodeBackend = Literal["auto", "kernel", "userspace", "memory"]
NodeKeystoreKind = Literal["auto", "os", "file"]
LogLevel = Literal["debug", "info", "warning", "error"]
_NODE_BACKENDS: Final[Mapping[str, NodeBackend]] = {
    "auto": "auto",
    "kernel": "kernel",
    "userspace": "userspace",
    "memory": "memory",
}
_NODE_KEYSTORES: Final[Mapping[str, NodeKeystoreKind]] = {
    "auto": "auto",
    "os": "os",
    "file": "file",
}
_LOG_LEVELS: Final[Mapping[str, LogLevel]] = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
}
_INTERFACE_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,14}")
_GROUP_RE: Final = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@attrs.frozen
class NodeConfig:
    """The parsed `rustynetd.toml` (paths absolute). Every key is optional.

    rustynetd.toml (top-level keys, defaults shown)::

        state_dir = "/var/lib/rustynet"            # node state + encrypted keys (STATE_DIR/keys)
        socket = "/run/rustynet/rustynetd.sock"    # local API for the CLI, mode 0600
        socket_group = "rustynet"                  # optional: mode 0660, this group may use it
        interface = "rustynet0"                    # tunnel interface name (<= 15 characters)
        backend = "auto"                           # auto | kernel | userspace | memory
        underlay_port = 41641                      # UDP port; absent: the OS picks one
        underlay_endpoints = ["198.51.100.7:41641"] # optional override: where peers may reach
                                                   # us (IP:PORT); absent: gathered
        candidates.exclude = ["198.51.100.0/28"]   # interface addresses never reported
        candidates.nat_interval = 300              # seconds between NAT re-classifications
                                                   # (also on address/route changes), 10-86400
        log_level = "info"                         # debug | info | warning | error
        keystore = "auto"                          # auto | os | file
        passphrase_file = "/etc/rustynet/keystore.pass"  # file key store; a systemd
                                                   # credential is preferred when present
    """

    state_dir: Path = DEFAULT_NODE_STATE_DIR
    socket: Path = DEFAULT_NODE_SOCKET
    socket_group: str | None = None
    interface: str = DEFAULT_INTERFACE
    backend: NodeBackend = "auto"
    underlay_port: int | None = None
    underlay_endpoints: tuple[str, ...] = ()
    candidates_exclude: tuple[IPNetwork, ...] = ()
    nat_interval: float = 300.0
    log_level: LogLevel = "info"
    keystore: NodeKeystoreKind = "auto"
    passphrase_file: Path | None = None


def _choice(reader: _Reader, key: str, allowed: Mapping[str, T], default: T) -> T:
    value = reader.text(key, required=False)
    if value is None:
        return default
    if value not in allowed:
        raise reader.fail(key, f"expected one of {', '.join(allowed)}")
    return allowed[value]


def _endpoint_text(text: str) -> str:
    host, port = parse_listen(text)
    if port == 0:
        raise ValueError("port must be 1-65535")
    return render_listen(host, port)


def _configured_endpoint(text: str) -> str:
    """An `underlay_endpoints` entry: IP:PORT that passes the candidate rule."""
    return Candidate.parse(_endpoint_text(text), CandidateKind.CONFIGURED.value).endpoint.to_text()


def _candidates_table(top: _Reader, default_interval: float) -> tuple[tuple[IPNetwork, ...], float]:
    """`[candidates] exclude = ["prefix", ...]` (interface addresses never reported) and
    `nat_interval` (seconds between NAT re-classifications)."""
    if "candidates" not in top.table:
        top.used.add("candidates")
        return (), default_interval
    table = top.sub("candidates")
    interval_value = table.get("nat_interval", int, required=False)
    interval = default_interval if interval_value is None else float(str(interval_value))
    if not 10 <= interval <= 86400:
        raise table.fail("nat_interval", "must be 10-86400 seconds")
    value = table.get("exclude", list, required=False)
    prefixes = []
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, str):
            raise table.fail("exclude", "expected a list of prefixes")
        prefixes.append(table.convert("exclude", item, _prefix))
    table.finish()
    return tuple(prefixes), interval


def _prefix(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=True)


def parse_node_config(data: Mapping[str, object], source: str, base: Path) -> NodeConfig:
    """Strictly parse a `rustynetd.toml` document; relative paths are relative to `base`."""
    top = _Reader(source, data, "")
    defaults = NodeConfig()
    state_dir = top.text("state_dir", required=False)
    socket_path = top.text("socket", required=False)
    group = top.text("socket_group", required=False)
    if group is not None and not _GROUP_RE.fullmatch(group):
        raise top.fail("socket_group", "not a valid group name")
    interface = top.text("interface", required=False) or defaults.interface
    if not _INTERFACE_RE.fullmatch(interface):
        raise top.fail("interface", "1-15 characters: a letter, then letters, digits, _ . -")
    port_value = top.get("underlay_port", int, required=False)
    port = None if port_value is None else int(str(port_value))
    if port is not None and not 1 <= port <= 65535:
        raise top.fail("underlay_port", "must be 1-65535")
    endpoints_value = top.get("underlay_endpoints", list, required=False)
    endpoints: list[str] = []
    for item in endpoints_value if isinstance(endpoints_value, list) else []:
        if not isinstance(item, str):
            raise top.fail("underlay_endpoints", "expected a list of IP:PORT strings")
        endpoints.append(top.convert("underlay_endpoints", item, _configured_endpoint))
    exclude, nat_interval = _candidates_table(top, defaults.nat_interval)
    passphrase = top.text("passphrase_file", required=False)
    config = NodeConfig(
        state_dir=_resolve(base, state_dir) if state_dir else defaults.state_dir,
        socket=_resolve(base, socket_path) if socket_path else defaults.socket,
        socket_group=group,
        interface=interface,
        backend=_choice(top, "backend", _NODE_BACKENDS, defaults.backend),
        underlay_port=port,
        underlay_endpoints=tuple(endpoints),
        candidates_exclude=exclude,
        nat_interval=nat_interval,
        log_level=_choice(top, "log_level", _LOG_LEVELS, defaults.log_level),
        keystore=_choice(top, "keystore", _NODE_KEYSTORES, defaults.keystore),
        passphrase_file=_resolve(base, passphrase) if passphrase is not None else None,
    )
    if config.passphrase_file is not None and config.keystore == "os":
        raise top.fail("passphrase_file", "only the file key store takes a passphrase")
    top.finish()
    return config


def load_node_config(path: Path | None) -> NodeConfig:
    """Parse `rustynetd.toml` strictly (None: every default); `ConfigError` names the key."""
    if path is None:
        return NodeConfig()
    path = Path(path)
    return parse_node_config(_read_toml(path), str(path), path.parent.resolve())
