"""An enrolled node as the control plane registers it: `NodeRecord` and its `NodeStatus`.

The one rule: a node record holds public keys only, and `revoked_at` is set exactly for a
revoked node (a revoked node stays listed, and keeps its overlay address, until an admin
deletes it). Names are DNS labels; the underlay endpoints are a short list of distinct
`host:port` texts as the node last reported them.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from datetime import datetime
from typing import Final

import attrs

from rustynet.domain.candidates import MAX_CANDIDATES, Candidate, CandidateError, candidate_set
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.keys import TunnelKey, VerifyKey
from rustynet.domain.nat import NatClass
from rustynet.domain.record_fields import aware_utc, optional_aware_utc, text_id
from rustynet.domain.scope import Tag

MAX_NAME_LENGTH: Final = 63  # a DNS label
NODE_ID_BYTES: Final = 12  # a node id is "node_" + base64url of this many random bytes
NODE_ID_RE: Final = re.compile(r"node_[A-Za-z0-9_-]{16}")


def _name(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LENGTH:
        raise LocalProtocolError(f"{attribute.name} must be 1..{MAX_NAME_LENGTH} characters")


def _tags(_: object, attribute: attrs.Attribute[frozenset[Tag]], value: object) -> None:
    if not isinstance(value, frozenset) or not all(isinstance(t, Tag) for t in value):
        raise LocalProtocolError(f"{attribute.name} must be a frozenset of Tag")


def _candidates(
    _: object, attribute: attrs.Attribute[tuple[Candidate, ...]], value: object
) -> None:
    try:
        ok = isinstance(value, tuple) and candidate_set(value) == value
    except CandidateError:
        ok = False
    if not ok:
        raise LocalProtocolError(
            f"{attribute.name} must be a tuple of at most {MAX_CANDIDATES} distinct candidates"
        )


class NodeStatus(enum.Enum):
    """A node is active until revoked; revoked nodes stay listed (and keep their address)
    until an admin deletes them."""

    ACTIVE = "active"
    REVOKED = "revoked"


@attrs.frozen
class NodeRecord:
    """An enrolled node as the control plane stores it (public keys only)."""

    id: str = attrs.field(validator=text_id)
    name: str = attrs.field(validator=_name)
    identity_key: VerifyKey = attrs.field(validator=attrs.validators.instance_of(VerifyKey))
    tunnel_key: TunnelKey = attrs.field(validator=attrs.validators.instance_of(TunnelKey))
    tunnel_key_expires_at: datetime = attrs.field(validator=aware_utc)
    overlay_ipv4: ipaddress.IPv4Address = attrs.field(
        validator=attrs.validators.instance_of(ipaddress.IPv4Address)
    )
    tags: frozenset[Tag] = attrs.field(validator=_tags)
    created_at: datetime = attrs.field(validator=aware_utc)
    state: NodeStatus = attrs.field(
        default=NodeStatus.ACTIVE, validator=attrs.validators.instance_of(NodeStatus)
    )
    last_seen_at: datetime | None = attrs.field(default=None, validator=optional_aware_utc)
    revoked_at: datetime | None = attrs.field(default=None, validator=optional_aware_utc)
    candidates: tuple[Candidate, ...] = attrs.field(default=(), validator=_candidates)
    """Where peers can reach the node, each with how it was found, as it last reported them
    (`domain.candidates` holds the rule); kept across restarts."""
    candidates_updated_at: datetime | None = attrs.field(default=None, validator=optional_aware_utc)
    """When the node last reported a different candidate list (None: never)."""
    nat_classification: NatClass | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(NatClass))
    )
    """The NAT in front of the node's tunnel port, as it last reported (None: never)."""

    def __attrs_post_init__(self) -> None:
        if (self.state is NodeStatus.REVOKED) != (self.revoked_at is not None):
            raise LocalProtocolError("revoked_at is set exactly for revoked nodes")

    @property
    def overlay_addresses(self) -> tuple[ipaddress.IPv4Address]:
        """Every overlay address of the node (IPv4 only for now)."""
        return (self.overlay_ipv4,)
