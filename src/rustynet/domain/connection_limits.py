"""How long a client may take and how many connections it may hold (both HTTPS servers).

The one rule: a client that does not finish what it started in time loses its connection, and
no address, nor all of them together, holds more connections than the caps. The numbers live
in `control.toml` / `relay.toml` under `[connections]` (docs/control-plane.md); the adapter
that enforces them is `rustynet.adapters.http_api.connection_guard`.

* `tls_handshake_timeout`: accept → TLS handshake done.
* `header_timeout`: a fresh connection → its first request's headers complete, and first byte
  of any later request → its headers complete (a total, not a per-read gap: trickling does
  not extend it).
* `body_timeout`: headers complete → the whole request body received.
* `keepalive_timeout`: end of a response → first byte of the next request.
* `max_connections`, `max_connections_per_ip`: open connections (a connection in its TLS
  handshake counts); IPv4 per /32, IPv6 per /64, as the request limiter keys addresses.

A request whose body has arrived is never timed out here: a long poll from an authenticated
node, or a WebSocket session after the upgrade, is served, not idle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

import attrs

from rustynet.domain.errors import LocalProtocolError

MAX_TIMEOUT: Final = 3600.0
MAX_CONNECTIONS: Final = 1_000_000
TIMEOUT_SETTINGS: Final = (
    "tls_handshake_timeout",
    "header_timeout",
    "body_timeout",
    "keepalive_timeout",
)
COUNT_SETTINGS: Final = ("max_connections", "max_connections_per_ip")
SETTINGS: Final = (*TIMEOUT_SETTINGS, *COUNT_SETTINGS)


class ConnectionLimitsError(LocalProtocolError):
    """A `[connections]` setting is unknown, of the wrong type or out of range."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def _timeout(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= MAX_TIMEOUT
    ):
        raise ConnectionLimitsError(attribute.name, "must be a number of seconds in (0, 3600]")


def _count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_CONNECTIONS:
        raise ConnectionLimitsError(attribute.name, f"must be an integer in 1..{MAX_CONNECTIONS}")


@attrs.frozen
class ConnectionLimits:
    """Deadlines (seconds) and connection caps of one HTTPS listener."""

    tls_handshake_timeout: float = attrs.field(default=10.0, validator=_timeout)
    header_timeout: float = attrs.field(default=10.0, validator=_timeout)
    body_timeout: float = attrs.field(default=30.0, validator=_timeout)
    keepalive_timeout: float = attrs.field(default=30.0, validator=_timeout)
    max_connections: int = attrs.field(default=16_384, validator=_count)
    max_connections_per_ip: int = attrs.field(default=256, validator=_count)

    def __attrs_post_init__(self) -> None:
        if self.max_connections_per_ip > self.max_connections:
            raise ConnectionLimitsError("max_connections_per_ip", "must not exceed max_connections")

    @property
    def shortest_timeout(self) -> float:
        """The smallest deadline (the guard checks connections a few times within it)."""
        return min(
            self.tls_handshake_timeout,
            self.header_timeout,
            self.body_timeout,
            self.keepalive_timeout,
        )

    def capped(self, max_connections: int) -> ConnectionLimits:
        """These limits with at most `max_connections` in total (the per-IP cap follows)."""
        total = max(1, min(self.max_connections, max_connections))
        return attrs.evolve(
            self,
            max_connections=total,
            max_connections_per_ip=min(self.max_connections_per_ip, total),
        )


def connection_limits_from(values: Mapping[str, object]) -> ConnectionLimits:
    """`ConnectionLimits` from a `[connections]` table; every key is optional.

    Raises `ConnectionLimitsError` naming the key for an unknown key, a wrong type or a value
    out of range.
    """
    for key in values:
        if key not in SETTINGS:
            raise ConnectionLimitsError(key, "unknown setting")
    for key, value in values.items():
        if isinstance(value, bool):
            raise ConnectionLimitsError(key, "expected a number, got a boolean")
        if key in COUNT_SETTINGS and not isinstance(value, int):
            raise ConnectionLimitsError(key, "expected an integer")
        if key in TIMEOUT_SETTINGS and not isinstance(value, int | float):
            raise ConnectionLimitsError(key, "expected a number of seconds")
    kwargs: dict[str, object] = dict(values)
    for key in TIMEOUT_SETTINGS:
        value = values.get(key)
        if isinstance(value, int | float):
            try:
                kwargs[key] = float(value)
            except OverflowError:
                raise ConnectionLimitsError(
                    key, "must be a number of seconds in (0, 3600]"
                ) from None
    return ConnectionLimits(**kwargs)  # type: ignore[arg-type]


def render_connection_limits(limits: ConnectionLimits) -> list[str]:
    """The `[connections]` table as TOML lines (every setting with its value)."""
    lines = ["[connections]"]
    for name in SETTINGS:
        value = getattr(limits, name)
        lines.append(f"{name} = {value!r}")
    return lines
