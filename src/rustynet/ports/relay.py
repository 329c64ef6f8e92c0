"""Relay transport port: how a node carries opaque packets to peers through a relay.

The one rule: a session is authenticated before it carries anything, and its end is never
silent — `receive()` raises `RelayClosed` once the session is over (closed by either side, the
token expired unrenewed, the connection dropped), so the caller notices and reconnects.

Failures say whose fault they are: `RelayUnauthorized` (the relay refused the session or a
renewal: the one generic rejection, close code 4401), `RelayUnreachable` (no session: refused,
timeout, TLS failure) and its subclass `RelayUntrusted` (the relay's TLS key is not the pinned
one; nothing was sent), `RelayClosed` (an established session ended). Implemented by
`rustynet.adapters.relay.client.WebSocketRelayTransport` (docs/relay-protocol.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

import attrs

from rustynet.domain.errors import DecodeError, RustynetError
from rustynet.domain.relay import validate_relay_id
from rustynet.domain.tls_pin import SpkiPin
from rustynet.domain.udp_relay import UdpGrant


class RelayError(RustynetError):
    """A relay operation failed; the message is for the operator and never holds a secret."""


class RelayUnauthorized(RelayError):  # noqa: N818 - names the outcome
    """The relay refused the session or a renewal (generic: it never says why)."""


class RelayUnreachable(RelayError):  # noqa: N818 - names the state
    """No session could be set up: connection refused, timeout, TLS or protocol failure."""


class RelayUntrusted(RelayUnreachable):
    """The relay's TLS key is not the pinned one; nothing was sent to it."""


class RelayClosed(RelayError):  # noqa: N818 - names the state
    """The session is over; make a new one."""


def _relay_id(_: object, __: attrs.Attribute[str], value: str) -> None:
    validate_relay_id(value)


def _wss_url(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value.startswith("wss://"):
        raise DecodeError("a relay URL is wss://HOST:PORT/v1/relay")


@attrs.frozen
class RelayEndpoint:
    """A relay as the signed peer map lists it."""

    relay_id: str = attrs.field(validator=_relay_id)
    url: str = attrs.field(validator=_wss_url)
    tls_pin: SpkiPin = attrs.field(validator=attrs.validators.instance_of(SpkiPin))


@attrs.frozen
class RelayAuth:
    """What a node presents: its id, identity key, relay token, trust chain and a signer.

    `sign(message)` signs with the node identity key for `Purpose.RELAY_AUTH` (the key itself
    stays with the agent); `identity_key` is its public key text (`rnpk_...`).
    """

    node_id: str
    identity_key: str
    token: str = attrs.field(repr=False)
    root_certificate: str = attrs.field(repr=False)
    signing_certificates: tuple[str, ...] = attrs.field(repr=False)
    sign: Callable[[bytes], bytes] = attrs.field(repr=False)


class RelaySession(Protocol):
    """One authenticated session with a relay."""

    @property
    def expires_at(self) -> datetime:
        """When the relay closes the session unless `renew` is called before (UTC)."""
        ...

    async def send(self, destination_node_id: str, packet: bytes) -> None:
        """Hand `packet` to the relay for `destination_node_id`. Delivery is best effort: the
        relay drops what it cannot forward and never says so. `RelayClosed` once over."""
        ...

    async def send_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Send several (destination node id, packet) pairs in one message (one write for a
        burst; the relay checks and counts each as if sent alone). `RelayClosed` once over."""
        ...

    async def receive(self) -> tuple[str, bytes]:
        """The next (source node id, packet) the relay forwarded; `RelayClosed` once over."""
        ...

    async def renew(self, token: str) -> datetime:
        """Present a fresh relay token on the same session; returns the new expiry.
        `RelayUnauthorized` if refused (the relay then closes the session)."""
        ...

    async def allocate_udp(self, peer: str) -> UdpGrant:
        """Ask for a UDP relay session toward the node `peer` (docs/relay-protocol.md, "UDP
        relay sessions"): this node's side of it. `AllocationRefusedError` with the relay's
        reason word, `RelayClosed` once the session is over."""
        ...

    async def close(self) -> None:
        """End the session; idempotent."""
        ...


class RelayTransport(Protocol):
    """Makes relay sessions."""

    async def connect(self, endpoint: RelayEndpoint, auth: RelayAuth) -> RelaySession:
        """Connect, authenticate and return an open session (`RelayUnauthorized`,
        `RelayUnreachable`/`RelayUntrusted` otherwise)."""
        ...
