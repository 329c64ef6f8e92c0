"""Enrollment: join a mesh with a join token, once.

The one rule: the node's keys are stored before enrollment completes, and the control plane
is trusted only as far as the join token says. The token gives the control URL, the root
fingerprint and the TLS SPKI pin (the control-plane adapter is built from these by bootstrap
and refuses any other server); an identity key and a tunnel key are made and stored in the
key store BEFORE the challenge/proof exchange (a crash afterwards leaves a node that can
still prove it is the enrolled identity); the returned root certificate must match the
token's fingerprint; then the node state is saved.
"""

from __future__ import annotations

from datetime import datetime

import attrs
import structlog

from rustynet.application.node.credentials import IDENTITY_KEY, TUNNEL_KEY
from rustynet.application.node.errors import AlreadyEnrolled, JoinFailed
from rustynet.application.node.saved_state import SavedState
from rustynet.application.node.settings import AgentSettings
from rustynet.domain.enrollment import EnrollmentClient, IssueChallenge
from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.key_hierarchy import issue_tunnel_key_binding
from rustynet.domain.keys import SigningKey, TunnelKeyScheme, TunnelPrivateKey
from rustynet.domain.netmap import PeerMapTrust
from rustynet.domain.node_state import NodeState
from rustynet.ports.clock import Clock
from rustynet.ports.control_plane import ControlPlaneClient, ControlRejected
from rustynet.ports.entropy import Entropy
from rustynet.ports.keystore import Keystore
from rustynet.ports.wire.v1 import EnrollRequest

_log = structlog.get_logger(__name__)


@attrs.frozen
class Enrolled:
    """What a completed enrollment hands the credentials: the keys and the first token."""

    state: NodeState
    identity: SigningKey
    tunnel_key: TunnelPrivateKey
    access_token: str
    access_token_expires_at: datetime


@attrs.frozen
class Enrollment:
    """The ports one enrollment uses."""

    control: ControlPlaneClient
    keystore: Keystore
    saved: SavedState
    clock: Clock
    entropy: Entropy
    settings: AgentSettings

    async def join(
        self, token_text: str, hostname: str, requested_tags: tuple[str, ...] | None = None
    ) -> Enrolled:
        """Enroll with a join token; keys go to the key store, the state to the state store."""
        if self.saved.store.load() is not None:
            raise AlreadyEnrolled("this node is already enrolled (state exists)")
        try:
            token = JoinToken.parse(token_text)
        except DecodeError as exc:
            raise JoinFailed(f"not a valid join token: {exc}") from exc
        try:
            return await self._enroll(token, token_text, hostname, requested_tags)
        finally:
            token.wipe()

    async def _enroll(
        self,
        token: JoinToken,
        token_text: str,
        hostname: str,
        requested_tags: tuple[str, ...] | None,
    ) -> Enrolled:
        now = self.clock.now()
        identity = SigningKey.generate(self.entropy)
        tunnel_key = TunnelPrivateKey.generate(self.entropy, TunnelKeyScheme.X25519)
        binding = issue_tunnel_key_binding(
            identity, tunnel_key.public_key, now, self.settings.tunnel_key_lifetime
        )
        # Keys are stored before the server commits the enrollment: a crash afterwards leaves a
        # node that can still prove it is the enrolled identity.
        self.keystore.put(IDENTITY_KEY, identity.secret_text().encode("ascii"))
        self.keystore.put(TUNNEL_KEY, tunnel_key.secret_text().encode("ascii"))
        client = EnrollmentClient(identity, tunnel_key.public_key, hostname)
        client.start(token.token_id.to_text())
        offer = EnrollRequest(
            join_secret=token_text,
            identity_key=identity.public_key.to_text(),
            tunnel_key=tunnel_key.public_key.to_text(),
            tunnel_key_binding=binding.to_text(),
            hostname=hostname.lower(),
            requested_tags=requested_tags,
        )
        try:
            challenge = await self.control.enroll(offer)
            proof = client.receive(IssueChallenge(challenge.challenge_id, challenge.expires_at))
            if proof is None:
                raise JoinFailed("enrollment produced no proof")
            grant = await self.control.complete_enrollment(proof.challenge_id, proof.signature)
        except ControlRejected as exc:
            raise JoinFailed(f"enrollment refused: {exc}") from exc
        try:
            PeerMapTrust.from_texts(
                grant.trust.root_certificate,
                token.root_fingerprint,
                grant.trust.signing_certificates,
                now,
            )
        except (RemoteProtocolError, LocalProtocolError) as exc:
            _log.warning("enrollment.untrusted_root", reason=str(exc)[:200])
            raise JoinFailed("control's root certificate does not match the join token") from exc
        state = NodeState(
            node_id=grant.node_id,
            name=grant.name,
            overlay_addresses=grant.overlay_addresses,
            control_url=token.control_url,
            root_fingerprint=token.root_fingerprint,
            tls_spki_sha256=token.tls_spki_sha256,
            root_certificate=grant.trust.root_certificate,
            signing_certificates=grant.trust.signing_certificates,
            tunnel_key=tunnel_key.public_key,
            tunnel_key_expires_at=binding.validity.not_after,
        )
        self.saved.save(state)
        _log.info("node.enrolled", node=grant.node_id, node_name=grant.name)
        return Enrolled(
            state, identity, tunnel_key, grant.access_token, grant.access_token_expires_at
        )


__all__ = ["Enrolled", "Enrollment"]
