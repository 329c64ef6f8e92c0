"""The `[stun]` table of control.toml and relay.toml: the STUN service's settings.

    [stun]                                     # optional; defaults shown
    enabled = true
    listen = ["0.0.0.0:3478", "0.0.0.0:3479"]  # exactly two ADDR:PORT, different
    advertise = ["203.0.113.1:3478", ...]      # control.toml only: the peer map's STUN list

Two sockets so that a node can tell endpoint-independent from endpoint-dependent mapping (3478
is STUN's registered port; 3479 the next one). `advertise` is every STUN server nodes should
use — the control host's and each relay's — as IP-literal endpoints; without it the control
plane advertises its own two ports at its URL's host when that host is an IP literal, and
nothing otherwise (docs/control-plane.md, "STUN").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

import attrs
from rustynet.adapters.support.config_values import parse_listen, render_listen, toml_string

from rustynet.domain.errors import DecodeError
from rustynet.domain.stun import check_servers, format_server

# A public service: every address by default (the operator narrows it in [stun].listen).
DEFAULT_LISTEN: Final = (("0.0.0.0", 3478), ("0.0.0.0", 3479))  # noqa: S104


class StunConfigError(ValueError):
    """A `[stun]` key is wrong; `key` names it, `problem` says why."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"[stun].{key}: {problem}")
        self.key = key
        self.problem = problem


@attrs.frozen
class StunConfig:
    """The parsed `[stun]` table; `advertise` None means "derive it" (control only)."""

    enabled: bool = True
    listen: tuple[tuple[str, int], ...] = DEFAULT_LISTEN
    advertise: tuple[str, ...] | None = None

    def advertised(self, control_url: str) -> tuple[str, ...]:
        """The peer map's STUN list: `advertise`, or this host's ports at an IP-literal URL."""
        if self.advertise is not None:
            return self.advertise
        host = urlsplit(control_url).hostname or ""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return ()
        if not self.enabled:
            return ()
        return tuple(format_server((ip, port)) for _, port in self.listen)


def stun_config_from(table: Mapping[str, object], *, advertise_allowed: bool) -> StunConfig:
    """Parse a `[stun]` table strictly; raise `StunConfigError`."""
    allowed = {"enabled", "listen"} | ({"advertise"} if advertise_allowed else set())
    for key in sorted(set(table) - allowed):
        raise StunConfigError(key, "unknown setting")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise StunConfigError("enabled", "expected true or false")
    listen: tuple[tuple[str, int], ...] = DEFAULT_LISTEN
    if "listen" in table:
        value = table["listen"]
        if not isinstance(value, list) or len(value) != 2:
            raise StunConfigError("listen", "expected a list of two ADDR:PORT strings")
        try:
            listen = tuple(parse_listen(str(item)) for item in value)
        except ValueError as exc:
            raise StunConfigError("listen", str(exc)) from None
        if listen[0] == listen[1]:
            raise StunConfigError("listen", "the two addresses must differ")
    advertise = None
    if "advertise" in table:
        try:
            advertise = check_servers(table["advertise"])
        except DecodeError as exc:
            raise StunConfigError("advertise", str(exc)) from None
    return StunConfig(enabled=enabled, listen=listen, advertise=advertise)


def render_stun_config(config: StunConfig, *, advertise_allowed: bool) -> list[str]:
    """The `[stun]` table's lines."""
    listen = ", ".join(toml_string(render_listen(*pair)) for pair in config.listen)
    lines = [
        "",
        "# The STUN service (two ports: mapping discovery): docs/control-plane.md.",
        "[stun]",
        f"enabled = {'true' if config.enabled else 'false'}",
        f"listen = [{listen}]",
    ]
    if advertise_allowed and config.advertise is not None:
        lines.append(f"advertise = [{', '.join(map(toml_string, config.advertise))}]")
    return lines
