"""In-process `ControlPlaneClient`: calls the control-plane use cases directly, no HTTP.

The one rule: it behaves like the HTTPS adapter as far as the agent can tell: use-case refusals
become `ControlRejected` with the status the HTTP adapter would send, and while `reachable` is
False every call raises `ControlUnreachable` before touching the service (a control plane that
is down). Used by tests and by simulated nodes in benchmarks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import TypeVar

from rustynet.application.control import ControlService
from rustynet.application.control_types import (
    EndpointsRequest,
    EnrollCompleteRequest,
    EnrollRequest,
    NodeAuth,
    RelayTokenRequest,
    RotateTunnelKeyRequest,
    TokenChallengeRequest,
    TokenRenewRequest,
    Trust,
)
from rustynet.application.errors import ApplicationError, RateLimited, status_of
from rustynet.domain.keys import b64decode, b64encode
from rustynet.ports.control_api import ControlRejected, ControlUnreachable
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

_T = TypeVar("_T")


def _trust(trust: Trust) -> TrustTexts:
    return TrustTexts(trust.root_certificate, tuple(trust.signing_certificates))


class LocalControlPlane:
    """A node's view of an in-process `ControlService` (as client `client_ip`)."""

    def __init__(self, service: ControlService, client_ip: str = "198.51.100.10") -> None:
        self.service = service
        self.client_ip = client_ip
        self.reachable = True
        self.calls = 0

    async def _call(self, awaitable: Awaitable[_T]) -> _T:
        self.calls += 1
        if not self.reachable:
            close = getattr(awaitable, "close", None)
            if close is not None:
                close()  # never started: silence the "never awaited" warning
            raise ControlUnreachable("control plane is unreachable")
        try:
            return await awaitable
        except ApplicationError as exc:
            retry = exc.retry_after if isinstance(exc, RateLimited) else None
            raise ControlRejected(status_of(exc), exc.code, exc.detail, retry_after=retry) from exc

    def _auth(self, auth: NodeCredentials) -> NodeAuth:
        return NodeAuth(auth.node_id, auth.access_token, self.client_ip)

    async def enroll(self, offer: EnrollmentOffer) -> Challenge:
        """`POST /v1/enroll`."""
        request = EnrollRequest(
            join_secret=offer.join_secret,
            identity_key=offer.identity_key,
            tunnel_key=offer.tunnel_key,
            tunnel_key_binding=offer.tunnel_key_binding,
            hostname=offer.hostname,
            requested_tags=offer.requested_tags,
        )
        answer = await self._call(self.service.enroll(request, client_ip=self.client_ip))
        return Challenge(b64decode(answer.challenge_id), answer.expires_at)

    async def complete_enrollment(self, challenge_id: bytes, signature: bytes) -> EnrollmentGrant:
        """`POST /v1/enroll/complete`."""
        request = EnrollCompleteRequest(b64encode(challenge_id), b64encode(signature))
        result = await self._call(self.service.enroll_complete(request, client_ip=self.client_ip))
        return EnrollmentGrant(
            node_id=result.node_id,
            name=result.name,
            overlay_addresses=tuple(result.overlay_addresses),
            access_token=result.access_token,
            access_token_expires_at=result.access_token_expires_at,
            trust=_trust(result.trust),
        )

    async def token_challenge(self, node_id: str) -> Challenge:
        """`POST /v1/token/challenge`."""
        answer = await self._call(
            self.service.token_challenge(TokenChallengeRequest(node_id), client_ip=self.client_ip)
        )
        return Challenge(b64decode(answer.challenge_id), answer.expires_at)

    async def renew_token(self, node_id: str, challenge_id: bytes, signature: bytes) -> AccessGrant:
        """`POST /v1/token`."""
        request = TokenRenewRequest(node_id, b64encode(challenge_id), b64encode(signature))
        token = await self._call(self.service.renew_token(request, client_ip=self.client_ip))
        return AccessGrant(token.access_token, token.expires_at)

    async def peer_map(
        self, auth: NodeCredentials, after: int, timeout: float
    ) -> PeerMapDelivery | None:
        """`GET /v1/peermap?after=N` (long poll)."""
        response = await self._call(self.service.peer_map(self._auth(auth), after, timeout))
        if response is None:
            return None
        return PeerMapDelivery(response.envelope, _trust(response.trust))

    async def rotate_tunnel_key(
        self, auth: NodeCredentials, tunnel_key: str, tunnel_key_binding: str
    ) -> datetime:
        """`POST /v1/node/tunnel-key`."""
        info = await self._call(
            self.service.rotate_tunnel_key(
                self._auth(auth), RotateTunnelKeyRequest(tunnel_key, tunnel_key_binding)
            )
        )
        return info.tunnel_key_expires_at

    async def put_endpoints(self, auth: NodeCredentials, endpoints: Sequence[str]) -> None:
        """`PUT /v1/node/endpoints`."""
        await self._call(
            self.service.set_endpoints(self._auth(auth), EndpointsRequest(tuple(endpoints)))
        )

    async def relay_token(self, auth: NodeCredentials, relay_id: str) -> RelayGrant:
        """`POST /v1/relay-token`."""
        token = await self._call(
            self.service.relay_token(self._auth(auth), RelayTokenRequest(relay_id))
        )
        return RelayGrant(token.token, token.expires_at)

    async def close(self) -> None:
        """Nothing to release."""
