"""Re-enrolling a revoked node: discard the revoked credential, keep the node's configuration.

The one rule: only a node the control plane has revoked (or forgotten) may be re-enrolled, and
the revoked identity never comes back. What is discarded: the node state (node id, access
token, trust, peer-map watermark and the last map) and every node key in the key store (the
identity key, the tunnel key and a pending next tunnel key), because a revoked identity key
must not be presented again. What is kept: rustynetd.toml, the key store itself (its kind,
directory and passphrase), and the node's name, which is asked for again unless a new one is
given. The new join token is checked for form before anything is discarded, so a mistyped
token leaves the revoked node as it was (docs/control-plane.md, "Re-enrolling a node").
"""

from __future__ import annotations

from typing import Final

import attrs

from rustynet.application.node.credentials import IDENTITY_KEY, NEXT_TUNNEL_KEY, TUNNEL_KEY
from rustynet.application.node.errors import JoinFailed, NotEnrolled
from rustynet.application.node.lifecycle import DaemonState
from rustynet.domain.errors import DecodeError, RustynetError
from rustynet.domain.join_tokens import JoinToken
from rustynet.ports.keystore import Keystore
from rustynet.ports.node_state_store import NodeStateStore

NODE_KEYS: Final = (IDENTITY_KEY, TUNNEL_KEY, NEXT_TUNNEL_KEY)


class NotRevoked(RustynetError):  # noqa: N818 - names the state that forbids it
    """Re-enrollment asked for a node that control has not revoked."""


@attrs.frozen
class Discarded:
    """What `discard_revoked` removed: the old node's id and name (the name is reused)."""

    node_id: str
    name: str


def check_reenroll(lifecycle: DaemonState, state_store: NodeStateStore, token: str) -> None:
    """Refuse unless the node is enrolled, revoked, and `token` is a join token (in form)."""
    state = state_store.load()
    if state is None:
        raise NotEnrolled("this node is not enrolled: rustynet up --token-file FILE")
    if lifecycle is not DaemonState.REVOKED:
        raise NotRevoked(
            f"{state.name} ({state.node_id}) is {lifecycle}, not revoked: re-enrolling would "
            "throw a working identity away (revoke it first: rustynet admin nodes revoke)"
        )
    try:
        JoinToken.parse(token).wipe()
    except DecodeError as exc:
        raise JoinFailed(f"not a valid join token: {exc}") from None


def discard_revoked(state_store: NodeStateStore, keystore: Keystore) -> Discarded:
    """Remove the revoked node's keys and state (keys first: no state without them)."""
    state = state_store.load()
    if state is None:
        raise NotEnrolled("this node is not enrolled")
    for name in NODE_KEYS:
        if keystore.exists(name):
            keystore.delete(name)
    state_store.clear()
    return Discarded(state.node_id, state.name)


__all__ = ["NODE_KEYS", "Discarded", "NotRevoked", "check_reenroll", "discard_revoked"]
