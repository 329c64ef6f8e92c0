"""Control-plane client port: what the node agent asks of the control plane.

The one rule: the agent sees typed values and three kinds of failure, never a transport
library: `ControlRejected` (the server answered no; status 401 after enrollment means the node
is revoked or its token is void), `ControlUnreachable` (no answer; the agent keeps its last good
state and retries) and `ControlUntrusted` (the server is not the pinned one: nothing was sent).
These are the same errors as the admin side (`rustynet.ports.control_api`), so one CLI
exit-code table covers both.

Adapters: `rustynet.adapters.control_plane_local.LocalControlPlane` (calls the use cases in
process: tests and simulated nodes); an HTTPS adapter wraps `ControlClient`'s node routes.
Requests and answers are the wire types of `rustynet.ports.wire.v1` (the same values the use
cases take and return); only binary values (challenge ids, signatures) are bytes here, and
adapters encode them for the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import attrs

from rustynet.domain.candidates import Candidate
from rustynet.domain.nat import NatClass
from rustynet.ports.control_api import ControlRejected, ControlUnreachable, ControlUntrusted
from rustynet.ports.wire.v1 import (
    AccessToken,
    EnrollRequest,
    EnrollResult,
    PeerMapDelivery,
    RelayToken,
)

__all__ = [
    "ControlPlaneClient",
    "ControlRejected",
    "ControlUnreachable",
    "ControlUntrusted",
    "NodeCredentials",
    "SignableChallenge",
    "is_revocation",
]


def is_revocation(error: BaseException) -> bool:
    """True when a node route's refusal means the node may no longer take part (401)."""
    return isinstance(error, ControlRejected) and error.status == 401


@attrs.frozen
class NodeCredentials:
    """What authenticates a node request: its id and current access token."""

    node_id: str
    access_token: str = attrs.field(repr=False)


@attrs.frozen
class SignableChallenge:
    """A single-use challenge to sign before `expires_at`: the wire `Challenge` with its
    base64url id decoded (the agent signs the bytes)."""

    challenge_id: bytes
    expires_at: datetime


class ControlPlaneClient(Protocol):
    """The node routes of control API v1.

    Contract: every method either returns the documented value or raises `ControlRejected`,
    `ControlUnreachable` or `ControlUntrusted`; nothing else escapes (adapters translate their
    library errors). Nothing the server returns is trusted: peer maps are verified by the agent.
    """

    async def enroll(self, offer: EnrollRequest) -> SignableChallenge:
        """Present the join secret and keys; get the proof challenge."""
        ...

    async def complete_enrollment(self, challenge_id: bytes, signature: bytes) -> EnrollResult:
        """Send the identity key's proof (Purpose.ENROLLMENT_PROOF); get the node record."""
        ...

    async def token_challenge(self, node_id: str) -> SignableChallenge:
        """Ask for a token-renewal challenge."""
        ...

    async def renew_token(self, node_id: str, challenge_id: bytes, signature: bytes) -> AccessToken:
        """Exchange a signature (Purpose.TOKEN_RENEWAL) over the challenge for a token."""
        ...

    async def peer_map(
        self, auth: NodeCredentials, after: int, timeout: float
    ) -> PeerMapDelivery | None:
        """Long-poll for a map with a serial above `after`; None when `timeout` s passed."""
        ...

    async def rotate_tunnel_key(
        self, auth: NodeCredentials, tunnel_key: str, tunnel_key_binding: str
    ) -> datetime:
        """Publish a new tunnel key bound by the identity key; returns its expiry."""
        ...

    async def put_candidates(
        self,
        auth: NodeCredentials,
        candidates: Sequence[Candidate],
        nat: NatClass | None = None,
    ) -> None:
        """Report the candidate endpoints peers may reach this node at (the whole list) and
        the NAT classification of its tunnel port (None: not classified)."""
        ...

    async def relay_token(self, auth: NodeCredentials, relay_id: str) -> RelayToken:
        """A relay token for the relay `relay_id` of the peer map; `ControlRejected` 404 when
        control lists no such relay, 401 when the node is revoked."""
        ...

    async def reconnect(self) -> None:
        """Drop every open connection: requests in flight end with `ControlUnreachable`, the
        next one connects anew. An address of this host went away (it moved to another
        network): a connection from that address is dead, and a request on it (a parked long
        poll above all) would wait for its timeout instead of reaching control at once."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...
