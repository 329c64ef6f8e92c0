"""`relay.toml`: the relay's configuration file (strict, like control.toml).

The one rule: an unknown table or key, a wrong type or a malformed value is an error naming the
file and key, never a silently ignored setting; relative paths are relative to the file.

    [relay]
    id = "relay-1"                              # [a-z0-9-]{1,64}, the token audience
    url = "wss://relay.example.org:8444/v1/relay"  # public URL (goes into control.toml)
    listen = "0.0.0.0:8444"                     # ADDR:PORT ([v6]:PORT) to bind

    [control]
    url = "https://ctl.example.org:8443"        # relay-token issuer
    root_fingerprint = "rnfp_..."               # the control root key (join tokens pin it)
    revocation_feed = true                      # optional: follow GET /v1/relay/revocations

    [tls]
    certificate = "tls/relay.crt"
    private_key = "tls/relay.key"

    [limits]                                    # optional; every key optional (defaults:
    packets_per_second = 50000                  # rustynet.domain.relay.RelayLimits)
    ...

    [connections]                               # optional; every key optional, defaults shown
    tls_handshake_timeout = 10.0                # seconds: accept -> TLS handshake done
    header_timeout = 10.0                       # seconds: first byte -> request headers done
    body_timeout = 30.0                         # seconds: headers -> request body complete
    keepalive_timeout = 30.0                    # seconds: response sent -> next request
    max_connections = 16384                     # >= [limits].max_sessions
    max_connections_per_ip = 256                # per IPv4 address / IPv6 /64

    [udp]                                       # optional; absent: no UDP relay sessions
    address = "203.0.113.5"                     # the relay's public IPv4 address (bound)
    port_first = 40000                          # allocated ports (a pair per peer pair);
    port_last = 40999                           # other keys: per_node, total
                                                # (rustynet.domain.udp_relay.UdpRelayLimits)

    [stun]                                      # optional; defaults shown: the STUN
    enabled = true                              # service (adapters/support/stun_config.py);
    listen = ["0.0.0.0:3478", "0.0.0.0:3479"]   # its public addresses go into control.toml

`[connections]` bounds every connection before the WebSocket upgrade (and caps all of them);
after the upgrade, `[limits].handshake_timeout` bounds authentication (docs/relay-protocol.md).
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Final
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

from rustynet.domain.connection_limits import (
    SETTINGS as CONNECTION_SETTINGS,
)
from rustynet.domain.connection_limits import (
    ConnectionLimits,
    ConnectionLimitsError,
    connection_limits_from,
    render_connection_limits,
)
from rustynet.domain.errors import DecodeError, RustynetError
from rustynet.domain.keys import KeyFingerprint
from rustynet.domain.relay import RelayLimits, validate_relay_id
from rustynet.domain.udp_relay import UdpRelayLimits

MAX_CONFIG_SIZE: Final = 64 * 1024
_INT_LIMITS: Final = (
    "packets_per_second",
    "packets_burst",
    "bytes_per_second",
    "bytes_burst",
    "sessions_per_node",
    "max_sessions",
    "max_frame_bytes",
    "send_queue_frames",
    "handshakes_per_second",
    "handshakes_burst",
    "handshake_sources",
)
_SECTIONS: Final = {
    "relay": frozenset({"id", "url", "listen"}),
    "control": frozenset({"url", "root_fingerprint", "revocation_feed"}),
    "tls": frozenset({"certificate", "private_key"}),
    "limits": frozenset({*_INT_LIMITS, "handshake_timeout"}),
    "connections": frozenset(CONNECTION_SETTINGS),
    "stun": frozenset({"enabled", "listen"}),
    "udp": frozenset({"address", "port_first", "port_last", "per_node", "total"}),
}
_OPTIONAL: Final = frozenset({"limits", "connections", "stun", "udp"})


class RelayConfigError(RustynetError):
    """relay.toml is missing, unreadable or invalid; the message names file and key."""


@attrs.frozen
class RelayConfig:
    """The parsed relay.toml (paths absolute)."""

    relay_id: str
    url: str
    listen: tuple[str, int]
    control_url: str
    root_fingerprint: KeyFingerprint
    certificate: Path
    private_key: Path
    limits: RelayLimits = attrs.field(factory=RelayLimits)
    connections: ConnectionLimits = attrs.field(factory=ConnectionLimits)
    stun: StunConfig = attrs.field(factory=StunConfig)
    udp: UdpConfig | None = None
    revocation_feed: bool = True


@attrs.frozen
class UdpConfig:
    """`[udp]`: the address UDP relay sessions use and their bounds."""

    address: str
    limits: UdpRelayLimits


def parse_relay_url(text: str) -> str:
    """`wss://HOST[:PORT]/v1/relay`."""
    parts = urlsplit(text)
    if parts.scheme != "wss" or not parts.hostname or parts.path != "/v1/relay":
        raise ValueError("expected wss://HOST[:PORT]/v1/relay")
    if parts.query or parts.fragment or parts.username:
        raise ValueError("the relay URL has no query, fragment or user part")
    _ = parts.port  # raises ValueError on a bad port
    return text


def _fail(source: Path, where: str, problem: str) -> RelayConfigError:
    return RelayConfigError(f"{source}: {where}: {problem}")


def _text(source: Path, table: dict[str, object], section: str, key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str):
        raise _fail(source, f"[{section}].{key}", "missing or not a string")
    return value


def load_relay_config(path: Path) -> RelayConfig:
    """Parse relay.toml strictly; raise `RelayConfigError` naming the bad key."""
    path = Path(path)
    try:
        raw = read_config_file(path, max_size=MAX_CONFIG_SIZE)
    except ConfigFileRefused as exc:  # missing, unreadable, or writable by someone else
        raise RelayConfigError(str(exc)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RelayConfigError(f"{path}: not valid TOML: {exc}") from None
    for name in set(data) - set(_SECTIONS):
        raise _fail(path, f"[{name}]", "unknown table")
    tables: dict[str, dict[str, object]] = {}
    for name, keys in _SECTIONS.items():
        table = data.get(name, {} if name in _OPTIONAL else None)
        if not isinstance(table, dict):
            raise _fail(path, f"[{name}]", "missing table")
        for key in sorted(set(table) - keys):
            raise _fail(path, f"[{name}].{key}", "unknown setting")
        tables[name] = table
    base = path.parent.resolve()
    try:
        relay_id = validate_relay_id(_text(path, tables["relay"], "relay", "id"))
        url = parse_relay_url(_text(path, tables["relay"], "relay", "url"))
        listen = parse_listen(_text(path, tables["relay"], "relay", "listen"))
        control_url = parse_control_url(_text(path, tables["control"], "control", "url"))
        root = KeyFingerprint.from_text(
            _text(path, tables["control"], "control", "root_fingerprint")
        )
    except (ValueError, DecodeError) as exc:
        raise RelayConfigError(f"{path}: {exc}") from None
    revocation_feed = tables["control"].get("revocation_feed", True)
    if not isinstance(revocation_feed, bool):
        raise _fail(path, "[control].revocation_feed", "expected true or false")
    certificate = base / _text(path, tables["tls"], "tls", "certificate")
    private_key = base / _text(path, tables["tls"], "tls", "private_key")
    limits = _limits(path, tables["limits"])
    try:
        connections = connection_limits_from(tables["connections"])
    except ConnectionLimitsError as exc:
        raise _fail(path, f"[connections].{exc.key}", exc.problem) from None
    try:
        stun = stun_config_from(tables["stun"], advertise_allowed=False)
    except StunConfigError as exc:
        raise _fail(path, f"[stun].{exc.key}", exc.problem) from None
    if connections.max_connections < limits.max_sessions:
        raise _fail(
            path,
            "[connections].max_connections",
            f"below [limits].max_sessions ({limits.max_sessions}): sessions are connections",
        )
    return RelayConfig(
        udp=_udp(path, tables["udp"]),
        relay_id=relay_id,
        url=url,
        listen=listen,
        control_url=control_url,
        root_fingerprint=root,
        certificate=certificate,
        private_key=private_key,
        limits=limits,
        connections=connections,
        stun=stun,
        revocation_feed=revocation_feed,
    )


def _limits(path: Path, table: dict[str, object]) -> RelayLimits:
    values: dict[str, int | float] = {}
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(path, f"[limits].{key}", "expected a number")
        if key in _INT_LIMITS and not isinstance(value, int):
            raise _fail(path, f"[limits].{key}", "expected an integer")
        values[key] = value
    try:
        return RelayLimits(**values)  # type: ignore[arg-type]
    except (ValueError, TypeError, RustynetError) as exc:
        raise _fail(path, "[limits]", str(exc)) from None


def _udp(path: Path, table: dict[str, object]) -> UdpConfig | None:
    if not table:
        return None
    address = _text(path, table, "udp", "address")
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise _fail(path, "[udp].address", "expected an IPv4 address") from None
    values: dict[str, int] = {}
    for key, value in table.items():
        if key == "address":
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, f"[udp].{key}", "expected an integer")
        values[key] = value
    try:
        return UdpConfig(address, UdpRelayLimits(**values))
    except (ValueError, TypeError, RustynetError) as exc:
        raise _fail(path, "[udp]", str(exc)) from None


def render_relay_config(config: RelayConfig, base: Path) -> str:
    """relay.toml text for `config`, limits written out with their values."""

    def rel(p: Path) -> str:
        return relative_path(p, base)

    listen = render_listen(*config.listen)
    limits = attrs.asdict(config.limits)
    lines = [
        "# Rustynet relay. Written by `rustynet-relay init`; paths are relative to this",
        "# file's directory. Unknown keys are errors.",
        "[relay]",
        f"id = {toml_string(config.relay_id)}",
        f"url = {toml_string(config.url)}",
        f"listen = {toml_string(listen)}",
        "",
        "[control]",
        f"url = {toml_string(config.control_url)}",
        f"root_fingerprint = {toml_string(config.root_fingerprint.to_text())}",
        f"revocation_feed = {'true' if config.revocation_feed else 'false'}",
        "",
        "[tls]",
        f"certificate = {toml_string(rel(config.certificate))}",
        f"private_key = {toml_string(rel(config.private_key))}",
        "",
        "[limits]",
        *(f"{key} = {value!r}" for key, value in limits.items()),
        "",
        *render_connection_limits(config.connections),
        *render_stun_config(config.stun, advertise_allowed=False),
    ]
    if config.udp is not None:
        lines += ["", "[udp]", f"address = {toml_string(config.udp.address)}"]
        lines += [f"{key} = {value!r}" for key, value in attrs.asdict(config.udp.limits).items()]
    return "\n".join(lines) + "\n"
