"""Node session use cases: token renewal, tunnel-key rotation, candidate endpoints, relay tokens.

The one rule: a node request acts only for the authenticated, active node it names (`Guards`).

* Token-renewal challenges are stored nowhere: they carry their node id binding and expiry
  under a MAC every instance can check (`domain.renewal_challenge`), and their single use is the
  nonce store's insert, written only once the node's signature verified.
* Underlay endpoints a node reports are validated (`UnderlayEndpoint`, at most
  `MAX_ENDPOINTS`, canonical text) and stored on its node record, so they survive a restart.
* A relay token (docs/relay-protocol.md) is signed by the newest peer-map signing key, whose
  certificate the node already holds in its trust, so a relay verifies it offline against the
  root fingerprint; it is neither stored nor audited (nodes renew one every minute or two).
"""

from __future__ import annotations

from rustynet.application.control.context import ControlContext
from rustynet.application.control.guards import Guards
from rustynet.application.control.inputs import b64, candidates, nat_classification, parsed
from rustynet.application.control.projections import node_info
from rustynet.application.control_types import NodeAuth
from rustynet.application.errors import NotFoundError, Unauthorized, ValidationError
from rustynet.domain.errors import RemoteProtocolError
from rustynet.domain.key_hierarchy import TunnelKeyBinding, verify_tunnel_key_binding
from rustynet.domain.keys import Purpose, TunnelKey, b64encode
from rustynet.domain.renewal_challenge import (
    InvalidChallenge,
    RenewalChallenge,
    issue_renewal_challenge,
    verify_renewal_challenge,
)
from rustynet.domain.replay import NonceRecord, ReplayError
from rustynet.domain.tokens import TokenKind, issue_token, token_renewal_message
from rustynet.ports.store import NODE_ID_RE, NodeRecord, NodeStatus
from rustynet.ports.wire.v1 import (
    AccessToken,
    Challenge,
    EndpointsRequest,
    NodeInfo,
    RelayToken,
    RelayTokenRequest,
    RotateTunnelKeyRequest,
    TokenChallengeRequest,
    TokenRenewRequest,
)


class NodeSession:
    """What an enrolled node does between enrollment and revocation."""

    def __init__(self, ctx: ControlContext, guards: Guards) -> None:
        self.ctx = ctx
        self.guards = guards

    async def token_challenge(self, request: TokenChallengeRequest, *, client_ip: str) -> Challenge:
        """POST /v1/token/challenge: a single-use challenge, answered for any node id alike and
        stored nowhere (`domain.renewal_challenge`): asking costs the server no row."""
        await self.guards.limit(ip=client_ip)
        node_id = request.node_id
        if not isinstance(node_id, str) or not NODE_ID_RE.fullmatch(node_id):
            raise ValidationError.at("/node_id", "not a node id (node_ + 16 base64url characters)")
        challenge = issue_renewal_challenge(
            self.ctx.keys.renewal_mac_key, node_id, self.ctx.clock.now(), self.ctx.entropy
        )
        return Challenge(b64encode(challenge.id), challenge.expires_at)

    async def renew_token(self, request: TokenRenewRequest, *, client_ip: str) -> AccessToken:
        """POST /v1/token: identity-key signature over a single-use challenge → access token.

        The challenge must be one this control plane issued for this node id and still live
        (checked without the store); then the node's signature; then its single use, which is
        the nonce store's atomic insert, the only row a renewal writes."""
        ctx = self.ctx
        credential = f"node:{request.node_id}"
        await ctx.guard.admit(client_ip)  # a source out of failures: 429 before any write
        await self.guards.limit(ip=client_ip, identity=credential, credential=credential)
        now = ctx.clock.now()
        challenge_id = b64(request.challenge_id, "/challenge_id")
        signature = b64(request.signature, "/signature")
        challenge: RenewalChallenge | None = None
        node: NodeRecord | None = None
        if isinstance(request.node_id, str) and NODE_ID_RE.fullmatch(request.node_id):
            try:
                challenge = verify_renewal_challenge(
                    ctx.keys.renewal_mac_key, challenge_id, request.node_id, now
                )
            except InvalidChallenge:
                challenge = None
            async with ctx.store.unit_of_work() as uow:
                node = await uow.nodes.get(request.node_id)
        ok = False
        if node is not None and challenge is not None:
            try:
                node.identity_key.verify(
                    Purpose.TOKEN_RENEWAL, token_renewal_message(challenge.id, node.id), signature
                )
                ok = node.state is NodeStatus.ACTIVE
            except RemoteProtocolError:
                ok = False
        if ok and node is not None and challenge is not None:
            try:  # single use across instances: one insert of the challenge commits
                async with ctx.write() as uow:
                    await uow.nonces.insert(
                        NonceRecord(challenge.id, challenge.remember_until),
                        now,
                        ctx.settings.nonce_capacity,
                    )
                    await uow.nodes.touch(node.id, now)
                    await uow.limiter.record_success(credential)
            except ReplayError:
                ok = False
        if not ok or node is None:
            await self.guards.failed(  # an unknown id is not recorded: it is the caller's text
                ip=client_ip,
                credential=credential,
                action="token.renewal_failed",
                target=node.id if node is not None else "unknown-node",
            )
            raise Unauthorized
        token, expires_at = self.guards.issue_token(node, now)
        return AccessToken(token, expires_at)

    async def rotate_tunnel_key(self, auth: NodeAuth, request: RotateTunnelKeyRequest) -> NodeInfo:
        """POST /v1/node/tunnel-key: a new tunnel key bound by the node's identity key."""
        ctx = self.ctx
        node = await self.guards.node(auth)
        now = ctx.clock.now()
        tunnel_key: TunnelKey = parsed(
            TunnelKey.from_text, request.tunnel_key, "/tunnel_key", "tunnel key"
        )
        binding: TunnelKeyBinding = parsed(
            TunnelKeyBinding.from_text, request.tunnel_key_binding, "/tunnel_key_binding", "binding"
        )
        try:
            bound = verify_tunnel_key_binding(binding, node.identity_key, now)
        except RemoteProtocolError as exc:
            raise ValidationError.at("/tunnel_key_binding", f"binding rejected: {exc}") from exc
        if bound != tunnel_key:
            raise ValidationError.at("/tunnel_key_binding", "binds a different tunnel key")
        async with ctx.write() as uow:
            updated = await uow.nodes.set_tunnel_key(
                node.id, tunnel_key, binding.validity.not_after
            )
            woken = await ctx.net_put(uow, updated)
            woken |= (await ctx.net_state(uow)).index.view(node.id).visible_peers
            await ctx.publish(uow, woken)
            await ctx.audit(
                uow,
                now,
                f"node:{node.id}",
                "node.tunnel_key_rotated",
                node.id,
                {"tunnel_key_fingerprint": tunnel_key.fingerprint().to_text()},
            )
        ctx.waiters.wake(woken)
        return node_info(updated)

    async def set_endpoints(self, auth: NodeAuth, request: EndpointsRequest) -> None:
        """PUT /v1/node/endpoints: where peers can reach the node (wakes the nodes that see it)."""
        ctx = self.ctx
        node = await self.guards.node(auth)
        checked = candidates(request)
        nat = nat_classification(request)
        if node.candidates == checked and node.nat_classification is nat:
            return
        now = ctx.clock.now()
        async with ctx.write() as uow:
            updated = await uow.nodes.set_candidates(node.id, checked, now, nat)
            await uow.nodes.touch(node.id, now)
            woken = await ctx.net_refresh(uow, updated)
            await ctx.publish(uow, woken)
        ctx.waiters.wake(woken)

    async def relay_token(self, auth: NodeAuth, request: RelayTokenRequest) -> RelayToken:
        """POST /v1/relay-token: a token (≤ 120 s) for one configured relay, bound to the node."""
        ctx = self.ctx
        node = await self.guards.node(auth)
        settings = ctx.settings
        relay = next((r for r in settings.relays if r.id == request.relay_id), None)
        if relay is None:
            raise NotFoundError("no such relay")
        now = ctx.clock.now()
        lifetime = settings.relay_token_lifetime
        token = ctx.keys.signing.sign_with(
            Purpose.PEER_MAP,
            now,
            lambda key: issue_token(
                key,
                kind=TokenKind.RELAY,
                issuer=settings.control_url,
                subject=node.id,
                audience=relay.id,
                bound_identity=node.identity_key,
                now=now,
                lifetime=lifetime,
                entropy=ctx.entropy,
            ),
        )
        return RelayToken(token, now.replace(microsecond=0) + lifetime)
