"""In-process `ControlPlaneClient`: calls the control-plane use cases directly, no HTTP.

The one rule: it behaves like the HTTPS adapter as far as the agent can tell: use-case refusals
become `ControlRejected` with the status the HTTP adapter would send, and while `reachable` is
False every call raises `ControlUnreachable` before touching the service (a control plane that
is down). The use cases take and return the wire types of `rustynet.ports.wire.v1`, as the
port does, so answers pass through; only challenge ids and signatures are (de)coded. Used by
tests and by simulated nodes in benchmarks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import TypeVar

from rustynet.application.control import ControlService
from rustynet.application.control_types import NodeAuth
from rustynet.application.errors import ApplicationError, RateLimited, status_of
from rustynet.domain.candidates import Candidate
from rustynet.domain.keys import b64decode, b64encode
from rustynet.domain.nat import NatClass
from rustynet.ports.control_api import ControlRejected, ControlUnreachable
from rustynet.ports.control_plane import NodeCredentials, SignableChallenge
from rustynet.ports.wire.v1 import (
    AccessToken,
    CandidateBody,
    Challenge,
    EndpointsRequest,
    EnrollCompleteRequest,
    EnrollRequest,
    EnrollResult,
    PeerMapDelivery,
    RelayToken,
    RelayTokenRequest,
    RotateTunnelKeyRequest,
    TokenChallengeRequest,
    TokenRenewRequest,
)

_T = TypeVar("_T")


def _signable(challenge: Challenge) -> SignableChallenge:
    return SignableChallenge(b64decode(challenge.challenge_id), challenge.expires_at)


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

    async def enroll(self, offer: EnrollRequest) -> SignableChallenge:
        """`POST /v1/enroll`."""
        answer = await self._call(self.service.enroll(offer, client_ip=self.client_ip))
        return _signable(answer)

    async def complete_enrollment(self, challenge_id: bytes, signature: bytes) -> EnrollResult:
        """`POST /v1/enroll/complete`."""
        request = EnrollCompleteRequest(b64encode(challenge_id), b64encode(signature))
        return await self._call(self.service.enroll_complete(request, client_ip=self.client_ip))

    async def token_challenge(self, node_id: str) -> SignableChallenge:
        """`POST /v1/token/challenge`."""
        answer = await self._call(
            self.service.token_challenge(TokenChallengeRequest(node_id), client_ip=self.client_ip)
        )
        return _signable(answer)

    async def renew_token(self, node_id: str, challenge_id: bytes, signature: bytes) -> AccessToken:
        """`POST /v1/token`."""
        request = TokenRenewRequest(node_id, b64encode(challenge_id), b64encode(signature))
        return await self._call(self.service.renew_token(request, client_ip=self.client_ip))

    async def peer_map(
        self, auth: NodeCredentials, after: int, timeout: float
    ) -> PeerMapDelivery | None:
        """`GET /v1/peermap?after=N` (long poll)."""
        response = await self._call(self.service.peer_map(self._auth(auth), after, timeout))
        if response is None:
            return None
        return PeerMapDelivery(response.envelope, response.trust)

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

    async def put_candidates(
        self,
        auth: NodeCredentials,
        candidates: Sequence[Candidate],
        nat: NatClass | None = None,
    ) -> None:
        """`PUT /v1/node/endpoints`."""
        bodies = tuple(CandidateBody(**c.to_json()) for c in candidates)
        request = EndpointsRequest(bodies, nat_classification=None if nat is None else nat.value)
        await self._call(self.service.set_endpoints(self._auth(auth), request))

    async def relay_token(self, auth: NodeCredentials, relay_id: str) -> RelayToken:
        """`POST /v1/relay-token`."""
        return await self._call(
            self.service.relay_token(self._auth(auth), RelayTokenRequest(relay_id))
        )

    async def reconnect(self) -> None:
        """No connection to drop."""

    async def close(self) -> None:
        """Nothing to release."""
