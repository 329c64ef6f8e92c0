"""The node's credentials: its identity key, its tunnel key and its access token.

The one rule: keys live in the key store and are never made up at start: an enrolled node
whose identity or tunnel key is missing refuses to start (`load_or_create(..., must_exist=
True)`), and a stored tunnel key that does not match the saved state is refused too. The
access token is kept in memory only and renewed on demand by proving the identity key (a 401
on renewal means the node was revoked: `AgentRevoked`).

Tunnel-key rotation: the tunnel protocol holds ONE private key per interface, so rotation is
a cut-over, not an overlap: the new key is stored as `node.tunnel.next`, bound by the identity
key and published to control (which bumps every peer's map) by `publish_next_key`; then the
agent sets it on the interface (peers stay configured) and `promote` makes it `node.tunnel`.
Until a peer applies its new map it still holds our old public key, so handshakes fail for
that short window (one long-poll round trip, well under a second with control up) and then
re-handshake; established data keeps flowing on the old session keys meanwhile, so
connectivity survives with at most a brief stall. Rotation starts `rotate_before` the expiry,
long before peers would drop us.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Final

import attrs
import structlog

from rustynet.application.node.errors import AgentError, AgentRevoked, NotEnrolled
from rustynet.application.node.saved_state import SavedState
from rustynet.application.node.settings import AgentSettings
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.key_hierarchy import issue_tunnel_key_binding
from rustynet.domain.keys import Purpose, SigningKey, TunnelKeyScheme, TunnelPrivateKey
from rustynet.domain.node_state import NodeState
from rustynet.domain.tokens import token_renewal_message
from rustynet.ports.clock import Clock
from rustynet.ports.control_plane import (
    ControlPlaneClient,
    ControlRejected,
    NodeCredentials,
    is_revocation,
)
from rustynet.ports.entropy import Entropy
from rustynet.ports.keystore import KeyNotFound, Keystore, load_or_create

_log = structlog.get_logger(__name__)

IDENTITY_KEY: Final = "node.identity"
TUNNEL_KEY: Final = "node.tunnel"
NEXT_TUNNEL_KEY: Final = "node.tunnel.next"


@attrs.define
class Contact:
    """Whether control answered lately (`status`'s `connected`): set by every signed answer,
    cleared by the agent's loop when control cannot be reached."""

    connected: bool = False


@attrs.define
class CredentialState:
    """The keys in use and the access token (None until enrolled or loaded)."""

    identity: SigningKey | None = None
    tunnel_key: TunnelPrivateKey | None = None
    token: str | None = None
    token_expires: datetime | None = None


class Credentials:
    """Owns `CredentialState`: loads the keys, renews the token, rotates the tunnel key."""

    def __init__(
        self,
        *,
        control: ControlPlaneClient,
        keystore: Keystore,
        saved: SavedState,
        clock: Clock,
        entropy: Entropy,
        settings: AgentSettings,
        contact: Contact,
    ) -> None:
        self.control, self.keystore, self.saved = control, keystore, saved
        self.clock, self.entropy, self.settings = clock, entropy, settings
        self.contact = contact
        self.state = CredentialState()

    def load(self, node: NodeState) -> TunnelPrivateKey:
        """At start: read the keys an enrolled node must have (none is ever created); returns
        the tunnel key for the interface."""
        s = self.state
        if s.identity is None:
            seed = load_or_create(self.keystore, IDENTITY_KEY, bytearray, must_exist=True)
            s.identity = SigningKey.from_secret_text(seed.decode("ascii"))
            seed[:] = bytes(len(seed))
        if s.tunnel_key is None:
            secret = load_or_create(self.keystore, TUNNEL_KEY, bytearray, must_exist=True)
            s.tunnel_key = TunnelPrivateKey.from_secret_text(secret.decode("ascii"))
            secret[:] = bytes(len(secret))
        if s.tunnel_key.public_key != node.tunnel_key:
            raise AgentError("the stored tunnel key does not match the node state")
        return s.tunnel_key

    def adopt(
        self, identity: SigningKey, tunnel_key: TunnelPrivateKey, token: str, expires: datetime
    ) -> None:
        """After enrollment: the new keys and the first access token."""
        self.state = CredentialState(identity, tunnel_key, token, expires)

    def identity(self) -> SigningKey:
        """The identity key (`NotEnrolled` before `join` or `start`)."""
        if self.state.identity is None:
            raise NotEnrolled("start the agent first")
        return self.state.identity

    @property
    def tunnel_key(self) -> TunnelPrivateKey | None:
        """The tunnel key on the interface now."""
        return self.state.tunnel_key

    def node_credentials(self) -> NodeCredentials:
        """The node id and the access token for a node route (no token: a local error)."""
        node, token = self.saved.current, self.state.token
        if node is None or token is None:
            raise LocalProtocolError("no access token")
        return NodeCredentials(node.node_id, token)

    async def renew_token(self) -> None:
        """Challenge → identity-key signature → fresh access token; 401 means revoked."""
        node, identity = self.saved.current, self.state.identity
        if node is None or identity is None:
            raise NotEnrolled("start the agent first")
        node_id = node.node_id
        try:
            challenge = await self.control.token_challenge(node_id)
            signature = identity.sign(
                Purpose.TOKEN_RENEWAL, token_renewal_message(challenge.challenge_id, node_id)
            )
            grant = await self.control.renew_token(node_id, challenge.challenge_id, signature)
        except ControlRejected as exc:
            if is_revocation(exc):
                raise AgentRevoked("control refused this node's identity") from exc
            raise
        self.state.token, self.state.token_expires = grant.access_token, grant.expires_at
        self.contact.connected = True  # control answered a signed request: we are in touch

    async def ensure_token(self) -> None:
        """Renew the token when there is none or it expires within `renew_before`."""
        expires = self.state.token_expires
        if (
            self.state.token is None
            or expires is None
            or expires - self.clock.now() <= self.settings.renew_before
        ):
            await self.renew_token()

    async def fresh(self) -> NodeCredentials:
        """Credentials with a token that is not about to expire (the relay link asks)."""
        await self.ensure_token()
        return self.node_credentials()

    def rotation_due(self) -> bool:
        """True once the tunnel key is within `rotate_before` of its expiry."""
        node = self.saved.current
        if node is None:
            return False
        return self.clock.now() >= node.tunnel_key_expires_at - self.settings.rotate_before

    async def publish_next_key(self) -> tuple[TunnelPrivateKey, datetime]:
        """Make, store (as `node.tunnel.next`), bind and publish a new tunnel key.

        Returns the key and its expiry as control recorded it; the caller sets it on the
        interface and then calls `promote`."""
        identity = self.state.identity
        if self.saved.current is None or identity is None or self.state.tunnel_key is None:
            raise NotEnrolled("start the agent first")
        new_key = TunnelPrivateKey.generate(self.entropy, TunnelKeyScheme.X25519)
        self.keystore.put(NEXT_TUNNEL_KEY, new_key.secret_text().encode("ascii"))
        binding = issue_tunnel_key_binding(
            identity, new_key.public_key, self.clock.now(), self.settings.tunnel_key_lifetime
        )
        await self.ensure_token()
        expires = await self.control.rotate_tunnel_key(
            self.node_credentials(), new_key.public_key.to_text(), binding.to_text()
        )
        return new_key, expires

    def promote(self, new_key: TunnelPrivateKey, expires: datetime, before: NodeState) -> None:
        """`new_key` is on the interface: it becomes `node.tunnel`; the old key is wiped.

        `before`: the state when the rotation began (used if none is current any more); a
        map applied meanwhile is kept, its watermark too."""
        self.keystore.put(TUNNEL_KEY, new_key.secret_text().encode("ascii"))
        current = self.saved.current if self.saved.current is not None else before
        self.saved.save(current.with_tunnel_key(new_key.public_key, expires))
        with contextlib.suppress(KeyNotFound):
            self.keystore.delete(NEXT_TUNNEL_KEY)
        old, self.state.tunnel_key = self.state.tunnel_key, new_key
        if old is not None:
            old.wipe()


__all__ = [
    "IDENTITY_KEY",
    "NEXT_TUNNEL_KEY",
    "TUNNEL_KEY",
    "Contact",
    "CredentialState",
    "Credentials",
]
