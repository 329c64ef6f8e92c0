"""`ControlPlaneClient` over HTTPS: the node routes of control API v1 through the pinned client.

The one rule: this adapter only translates. Transport, TLS 1.3 and the SPKI pin check (inside
the handshake, before a byte of the request is written) belong to
`rustynet.adapters.control_client.ControlClient`, which bootstrap builds from the join token's
(or the saved node state's) URL and pin and passes in; adapters do not import each other, so
the client is typed here by the routes it must offer (`NodeRoutes`). Wire JSON becomes the
wire types of `rustynet.ports.wire.v1` through the one strict converter (unknown fields and
wrong types refused); a malformed answer is `ControlUnreachable` (the agent retries), never a
half-built value.

The server holds a long poll for up to its own limit (60 s by default) whatever `timeout` the
agent asks for; the HTTP timeout is therefore the larger of the two plus a margin, so a quiet
poll ends with 204 (None), not with a client-side timeout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final, Protocol, TypeVar

import attrs

from rustynet.domain.candidates import Candidate
from rustynet.domain.errors import DecodeError
from rustynet.domain.keys import b64decode, b64encode
from rustynet.domain.nat import NatClass
from rustynet.ports.control_api import ControlUnreachable, JsonObject, decode_answer
from rustynet.ports.control_plane import NodeCredentials, SignableChallenge
from rustynet.ports.wire.v1 import (
    AccessToken,
    Challenge,
    EnrollRequest,
    EnrollResult,
    NodeInfo,
    PeerMapDelivery,
    RelayToken,
)

SERVER_LONG_POLL: Final = 60.0
POLL_MARGIN: Final = 30.0

_W = TypeVar("_W")


class NodeRoutes(Protocol):
    """The node routes of `ControlClient` this adapter drives (JSON in, JSON out)."""

    async def enroll(
        self,
        *,
        join_secret: str,
        identity_key: str,
        tunnel_key: str,
        tunnel_key_binding: str,
        hostname: str,
        requested_tags: Sequence[str] | None = None,
    ) -> JsonObject:
        """`POST /v1/enroll`."""
        ...

    async def complete_enrollment(self, *, challenge_id: str, signature: str) -> JsonObject:
        """`POST /v1/enroll/complete`."""
        ...

    async def token_challenge(self, *, node_id: str) -> JsonObject:
        """`POST /v1/token/challenge`."""
        ...

    async def renew_token(self, *, node_id: str, challenge_id: str, signature: str) -> JsonObject:
        """`POST /v1/token`."""
        ...

    async def rotate_tunnel_key(
        self, auth: NodeCredentials, *, tunnel_key: str, tunnel_key_binding: str
    ) -> JsonObject:
        """`POST /v1/node/tunnel-key`."""
        ...

    async def put_endpoints(
        self,
        auth: NodeCredentials,
        candidates: Sequence[Mapping[str, str]],
        underlay_endpoints: Sequence[str] = (),
        nat_classification: str | None = None,
    ) -> None:
        """`PUT /v1/node/endpoints`."""
        ...

    async def peer_map(
        self,
        auth: NodeCredentials,
        *,
        after: int = 0,
        wait: int | None = None,
        timeout: float = ...,
    ) -> JsonObject | None:
        """`GET /v1/peermap?after=N[&wait=S]`."""
        ...

    async def relay_token(self, auth: NodeCredentials, *, relay_id: str) -> JsonObject:
        """`POST /v1/relay-token`."""
        ...

    async def reset(self) -> None:
        """Drop open connections; the next request connects anew."""
        ...

    async def close(self) -> None:
        """Close connections."""
        ...


def _read(route: str, answer: JsonObject | None, cls: type[_W]) -> _W:
    """`decode_answer`, and no text field of the answer (or of an object in it) is empty: an
    empty node id, token, envelope or certificate is no answer the agent can act on."""
    value = decode_answer(route, answer, cls)
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        for field in attrs.fields(type(item)):  # type: ignore[arg-type]  # wire types are attrs
            inner = getattr(item, field.name)
            if inner == "":
                raise ControlUnreachable(f"{route}: the server sent an empty {field.name!r}")
            if attrs.has(type(inner)):
                stack.append(inner)
    return value


def _challenge(route: str, answer: JsonObject) -> SignableChallenge:
    challenge = _read(route, answer, Challenge)
    try:
        return SignableChallenge(b64decode(challenge.challenge_id), challenge.expires_at)
    except DecodeError as exc:
        raise ControlUnreachable(f"{route}: the server sent a bad 'challenge_id'") from exc


class HttpControlPlane:
    """A node's control plane over HTTPS, through a pinned `ControlClient` (`NodeRoutes`)."""

    def __init__(self, client: NodeRoutes) -> None:
        self._client = client

    async def enroll(self, offer: EnrollRequest) -> SignableChallenge:
        """`POST /v1/enroll`."""
        answer = await self._client.enroll(
            join_secret=offer.join_secret,
            identity_key=offer.identity_key,
            tunnel_key=offer.tunnel_key,
            tunnel_key_binding=offer.tunnel_key_binding,
            hostname=offer.hostname,
            requested_tags=offer.requested_tags,
        )
        return _challenge("POST /v1/enroll", answer)

    async def complete_enrollment(self, challenge_id: bytes, signature: bytes) -> EnrollResult:
        """`POST /v1/enroll/complete`."""
        answer = await self._client.complete_enrollment(
            challenge_id=b64encode(challenge_id), signature=b64encode(signature)
        )
        return _read("POST /v1/enroll/complete", answer, EnrollResult)

    async def token_challenge(self, node_id: str) -> SignableChallenge:
        """`POST /v1/token/challenge`."""
        answer = await self._client.token_challenge(node_id=node_id)
        return _challenge("POST /v1/token/challenge", answer)

    async def renew_token(self, node_id: str, challenge_id: bytes, signature: bytes) -> AccessToken:
        """`POST /v1/token`."""
        answer = await self._client.renew_token(
            node_id=node_id, challenge_id=b64encode(challenge_id), signature=b64encode(signature)
        )
        return _read("POST /v1/token", answer, AccessToken)

    async def peer_map(
        self, auth: NodeCredentials, after: int, timeout: float
    ) -> PeerMapDelivery | None:
        """`GET /v1/peermap?after=N` (long poll; None when the server's poll ran out)."""
        wait = None if timeout >= SERVER_LONG_POLL else max(0, int(timeout))
        answer = await self._client.peer_map(
            auth, after=after, wait=wait, timeout=max(timeout, SERVER_LONG_POLL) + POLL_MARGIN
        )
        if answer is None:
            return None
        return _read("GET /v1/peermap", answer, PeerMapDelivery)

    async def rotate_tunnel_key(
        self, auth: NodeCredentials, tunnel_key: str, tunnel_key_binding: str
    ) -> datetime:
        """`POST /v1/node/tunnel-key`; returns the new key's expiry."""
        answer = await self._client.rotate_tunnel_key(
            auth, tunnel_key=tunnel_key, tunnel_key_binding=tunnel_key_binding
        )
        info = _read("POST /v1/node/tunnel-key", answer, NodeInfo)
        return info.tunnel_key_expires_at

    async def put_candidates(
        self,
        auth: NodeCredentials,
        candidates: Sequence[Candidate],
        nat: NatClass | None = None,
    ) -> None:
        """`PUT /v1/node/endpoints`."""
        await self._client.put_endpoints(
            auth,
            [c.to_json() for c in candidates],
            nat_classification=None if nat is None else nat.value,
        )

    async def relay_token(self, auth: NodeCredentials, relay_id: str) -> RelayToken:
        """`POST /v1/relay-token`."""
        answer = await self._client.relay_token(auth, relay_id=relay_id)
        return _read("POST /v1/relay-token", answer, RelayToken)

    async def reconnect(self) -> None:
        """Drop the client's connections (in-flight requests end as unreachable)."""
        await self._client.reset()

    async def close(self) -> None:
        """Close the client's connections; idempotent."""
        await self._client.close()


__all__ = ["HttpControlPlane", "NodeRoutes"]
