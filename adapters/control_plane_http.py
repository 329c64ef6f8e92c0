"""`ControlPlaneClient` over HTTPS: the node routes of control API v1 through the pinned client.

The one rule: this adapter only translates. Transport, TLS 1.3 and the SPKI pin check (inside
the handshake, before a byte of the request is written) belong to
`rustynet.adapters.control_client.ControlClient`, which bootstrap builds from the join token's
(or the saved node state's) URL and pin and passes in; adapters do not import each other, so
the client is typed here by the routes it must offer (`NodeRoutes`). Wire JSON becomes the
port's typed values; a malformed answer is `ControlUnreachable` (the agent retries), never a
half-built value.

The server holds a long poll for up to its own limit (60 s by default) whatever `timeout` the
agent asks for; the HTTP timeout is therefore the larger of the two plus a margin, so a quiet
poll ends with 204 (None), not with a client-side timeout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Final, Protocol

from rustynet.domain.errors import DecodeError
from rustynet.domain.keys import b64decode, b64encode
from rustynet.ports.control_api import ControlUnreachable, JsonObject, JsonValue
from rustynet.ports.control_plane import (
    AccessGrant,
    Challenge,
    EnrollmentGrant,
    EnrollmentOffer,
    NodeCredentials,
    PeerMapDelivery,
    RelayGrant,
    TrustTexts,
)

SERVER_LONG_POLL: Final = 60.0
POLL_MARGIN: Final = 30.0


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

    async def put_endpoints(self, auth: NodeCredentials, endpoints: Sequence[str]) -> None:
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

    async def close(self) -> None:
        """Close connections."""
        ...


class _Fields:
    """Typed reads from one answer; any surprise is `ControlUnreachable` naming the route."""

    def __init__(self, route: str, document: Mapping[str, JsonValue]) -> None:
        self.route, self.document = route, document

    def _bad(self, key: str, problem: str) -> ControlUnreachable:
        return ControlUnreachable(f"{self.route}: the server sent a bad {key!r}: {problem}")

    def text(self, key: str) -> str:
        value = self.document.get(key)
        if not isinstance(value, str) or not value:
            raise self._bad(key, "expected a non-empty string")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self.document.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(key, "expected a list of strings")
        return tuple(str(v) for v in value)

    def time(self, key: str) -> datetime:
        text = self.text(key)
        try:
            when = datetime.fromisoformat(text)  # 3.11+ reads the `Z` suffix
        except ValueError as exc:
            raise self._bad(key, "not an RFC 3339 time") from exc
        if when.tzinfo is None:
            raise self._bad(key, "a time without a zone")
        return when

    def binary(self, key: str) -> bytes:
        try:
            return b64decode(self.text(key))
        except DecodeError as exc:
            raise self._bad(key, "not base64url") from exc

    def sub(self, key: str) -> _Fields:
        value = self.document.get(key)
        if not isinstance(value, dict):
            raise self._bad(key, "expected an object")
        return _Fields(self.route, value)


def _trust(fields: _Fields) -> TrustTexts:
    trust = fields.sub("trust")
    return TrustTexts(trust.text("root_certificate"), trust.texts("signing_certificates"))


def _challenge(route: str, answer: JsonObject) -> Challenge:
    fields = _Fields(route, answer)
    return Challenge(fields.binary("challenge_id"), fields.time("expires_at"))


class HttpControlPlane:
    """A node's control plane over HTTPS, through a pinned `ControlClient` (`NodeRoutes`)."""

    def __init__(self, client: NodeRoutes) -> None:
        self._client = client

    async def enroll(self, offer: EnrollmentOffer) -> Challenge:
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

    async def complete_enrollment(self, challenge_id: bytes, signature: bytes) -> EnrollmentGrant:
        """`POST /v1/enroll/complete`."""
        answer = await self._client.complete_enrollment(
            challenge_id=b64encode(challenge_id), signature=b64encode(signature)
        )
        fields = _Fields("POST /v1/enroll/complete", answer)
        return EnrollmentGrant(
            node_id=fields.text("node_id"),
            name=fields.text("name"),
            overlay_addresses=fields.texts("overlay_addresses"),
            access_token=fields.text("access_token"),
            access_token_expires_at=fields.time("access_token_expires_at"),
            trust=_trust(fields),
        )

    async def token_challenge(self, node_id: str) -> Challenge:
        """`POST /v1/token/challenge`."""
        answer = await self._client.token_challenge(node_id=node_id)
        return _challenge("POST /v1/token/challenge", answer)

    async def renew_token(self, node_id: str, challenge_id: bytes, signature: bytes) -> AccessGrant:
        """`POST /v1/token`."""
        answer = await self._client.renew_token(
            node_id=node_id, challenge_id=b64encode(challenge_id), signature=b64encode(signature)
        )
        fields = _Fields("POST /v1/token", answer)
        return AccessGrant(fields.text("access_token"), fields.time("expires_at"))

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
        fields = _Fields("GET /v1/peermap", answer)
        return PeerMapDelivery(fields.text("envelope"), _trust(fields))

    async def rotate_tunnel_key(
        self, auth: NodeCredentials, tunnel_key: str, tunnel_key_binding: str
    ) -> datetime:
        """`POST /v1/node/tunnel-key`; returns the new key's expiry."""
        answer = await self._client.rotate_tunnel_key(
            auth, tunnel_key=tunnel_key, tunnel_key_binding=tunnel_key_binding
        )
        return _Fields("POST /v1/node/tunnel-key", answer).time("tunnel_key_expires_at")

    async def put_endpoints(self, auth: NodeCredentials, endpoints: Sequence[str]) -> None:
        """`PUT /v1/node/endpoints`."""
        await self._client.put_endpoints(auth, list(endpoints))

    async def relay_token(self, auth: NodeCredentials, relay_id: str) -> RelayGrant:
        """`POST /v1/relay-token`."""
        answer = await self._client.relay_token(auth, relay_id=relay_id)
        fields = _Fields("POST /v1/relay-token", answer)
        return RelayGrant(fields.text("token"), fields.time("expires_at"))

    async def close(self) -> None:
        """Close the client's connections; idempotent."""
        await self._client.close()


__all__ = ["HttpControlPlane", "NodeRoutes"]
