"""Values of the control-plane use cases that are not wire bodies (docs/control-api.md).

The one rule: request and response bodies are the wire types of `rustynet.ports.wire.v1`, one
vocabulary for the server, the clients and the use cases; this module holds only what never
crosses the wire as such: the credentials a request carried (`AdminAuth`, `NodeAuth`), the
peer-map result with its serial for the adapter's logs, and the numbers behind `/metrics`.
"""

from __future__ import annotations

import attrs

from rustynet.ports.wire.v1 import Trust

__all__ = ["AdminAuth", "ControlStats", "NodeAuth", "PeerMapResponse"]


@attrs.frozen
class AdminAuth:
    """An admin request's credentials: the bearer API key text and the client address."""

    api_key: str = attrs.field(repr=False)
    client_ip: str


@attrs.frozen
class NodeAuth:
    """A node request's credentials: `Rustynet-Node` header, bearer access token, client IP."""

    node_id: str
    access_token: str = attrs.field(repr=False)
    client_ip: str


@attrs.frozen
class PeerMapResponse:
    """`GET /v1/peermap` result (None from the use case means 204); the wire body is its
    `envelope` and `trust` (`PeerMapDelivery`)."""

    envelope: str
    trust: Trust
    serial: int  # also inside the envelope; handy for the adapter's logs and metrics


@attrs.frozen
class ControlStats:
    """Numbers for `/metrics` that only the use cases know."""

    policy_version: int
    active_waiters: int
    enrollments: int
    pending_enrollments: int
