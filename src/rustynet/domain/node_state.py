"""What a node persists between runs (besides its private keys, which live in the key store).

The one rule: the state file is plain data in one versioned, strictly parsed format; anything
that is not exactly that format raises `NodeStateCorrupt`, and the agent then refuses to run
rather than guess (an unreadable watermark must never silently become 0, which would let an
attacker replay an old peer map).

Format (canonical JSON, `version` 1)::

    {"version": 1, "node_id", "name", "overlay_addresses": ["100.64.0.1/32"],
     "control_url", "root_fingerprint": "rnfp_...", "tls_spki_sha256": "<hex>",
     "root_certificate", "signing_certificates": [...],
     "tunnel_key": "rntk_...", "tunnel_key_expires_at": "...Z",
     "peer_map_watermark": N, "last_peer_map": "<envelope text>" | null}

The control URL, root fingerprint and TLS SPKI pin come from the join token and never change;
the trust certificates come with enrollment and every peer map (the root is re-pinned against
`root_fingerprint` each time it is used). The watermark is the serial of the last accepted map,
and `last_peer_map` is that map's envelope, so a restart re-verifies and re-applies it offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.join_tokens import validate_control_url
from rustynet.domain.keys import KeyFingerprint, TunnelKey
from rustynet.domain.netmap import MalformedPeerMap, format_time, parse_time
from rustynet.domain.signed import JsonValue, canonical_json, parse_canonical_json

STATE_VERSION: Final = 1
MAX_STATE_BYTES: Final = 32 * 1024 * 1024
_KEYS: Final = frozenset(
    {
        "version",
        "node_id",
        "name",
        "overlay_addresses",
        "control_url",
        "root_fingerprint",
        "tls_spki_sha256",
        "root_certificate",
        "signing_certificates",
        "tunnel_key",
        "tunnel_key_expires_at",
        "peer_map_watermark",
        "last_peer_map",
    }
)


class NodeStateCorrupt(RemoteProtocolError):  # noqa: N818 - names the fact, like KeyNotFound
    """The stored state is not exactly the documented format (the agent refuses to start)."""


def _nonempty(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise LocalProtocolError(f"{attribute.name} is a non-empty string")


def _pin(_: object, __: attrs.Attribute[bytes], value: object) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise LocalProtocolError("the TLS SPKI pin is a 32-byte SHA-256 digest")


def _watermark(_: object, __: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or value < 0:
        raise LocalProtocolError("the peer-map watermark is a non-negative int")


@attrs.frozen
class NodeState:
    """Everything the node keeps on disk except private keys."""

    node_id: str = attrs.field(validator=_nonempty)
    name: str = attrs.field(validator=_nonempty)
    overlay_addresses: tuple[str, ...]
    control_url: str = attrs.field(validator=_nonempty)
    root_fingerprint: KeyFingerprint = attrs.field(
        validator=attrs.validators.instance_of(KeyFingerprint)
    )
    tls_spki_sha256: bytes = attrs.field(validator=_pin, repr=bytes.hex)
    root_certificate: str = attrs.field(validator=_nonempty)
    signing_certificates: tuple[str, ...]
    tunnel_key: TunnelKey = attrs.field(validator=attrs.validators.instance_of(TunnelKey))
    tunnel_key_expires_at: datetime
    peer_map_watermark: int = attrs.field(default=0, validator=_watermark)
    last_peer_map: str | None = None

    def with_peer_map(self, serial: int, envelope_text: str) -> NodeState:
        """The state after accepting the map with `serial` (the watermark only rises)."""
        if serial <= self.peer_map_watermark:
            raise LocalProtocolError("the watermark only rises")
        return attrs.evolve(self, peer_map_watermark=serial, last_peer_map=envelope_text)

    def with_trust(self, root_certificate: str, signing_certificates: tuple[str, ...]) -> NodeState:
        """The state with the certificates control sent last."""
        return attrs.evolve(
            self, root_certificate=root_certificate, signing_certificates=signing_certificates
        )

    def with_tunnel_key(self, key: TunnelKey, expires_at: datetime) -> NodeState:
        """The state after a tunnel-key rotation was accepted by control."""
        return attrs.evolve(self, tunnel_key=key, tunnel_key_expires_at=expires_at)

    def to_json(self) -> dict[str, JsonValue]:
        """The documented plain-data form."""
        return {
            "version": STATE_VERSION,
            "node_id": self.node_id,
            "name": self.name,
            "overlay_addresses": list(self.overlay_addresses),
            "control_url": self.control_url,
            "root_fingerprint": self.root_fingerprint.to_text(),
            "tls_spki_sha256": self.tls_spki_sha256.hex(),
            "root_certificate": self.root_certificate,
            "signing_certificates": list(self.signing_certificates),
            "tunnel_key": self.tunnel_key.to_text(),
            "tunnel_key_expires_at": format_time(self.tunnel_key_expires_at),
            "peer_map_watermark": self.peer_map_watermark,
            "last_peer_map": self.last_peer_map,
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes (what a state store writes)."""
        return canonical_json(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> NodeState:
        """Strict inverse of `to_bytes`; any deviation raises `NodeStateCorrupt`."""
        if not isinstance(data, bytes) or len(data) > MAX_STATE_BYTES:
            raise NodeStateCorrupt("node state is not bytes of a sane size")
        try:
            return cls.from_json(parse_canonical_json(data))
        except NodeStateCorrupt:
            raise
        except (DecodeError, LocalProtocolError, MalformedPeerMap, TypeError, ValueError) as exc:
            raise NodeStateCorrupt(f"node state is corrupt: {exc}") from exc

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> NodeState:
        """Parse the plain-data form (strict: exact keys, exact types)."""
        if not isinstance(data, Mapping) or set(data) != _KEYS:
            raise NodeStateCorrupt(f"node state must have exactly the fields {sorted(_KEYS)}")
        if type(data["version"]) is not int or data["version"] != STATE_VERSION:
            raise NodeStateCorrupt("unsupported node state version")
        last = data["last_peer_map"]
        if last is not None and not isinstance(last, str):
            raise NodeStateCorrupt("last_peer_map is a string or null")
        pin_text = _text(data["tls_spki_sha256"], "tls_spki_sha256")
        if len(pin_text) != 64 or pin_text != pin_text.lower():
            raise NodeStateCorrupt("tls_spki_sha256 is 64 lowercase hex digits")
        return cls(
            node_id=_text(data["node_id"], "node_id"),
            name=_text(data["name"], "name"),
            overlay_addresses=_texts(data["overlay_addresses"], "overlay_addresses"),
            control_url=validate_control_url(data["control_url"]),
            root_fingerprint=KeyFingerprint.from_text(
                _text(data["root_fingerprint"], "root_fingerprint")
            ),
            tls_spki_sha256=bytes.fromhex(pin_text),
            root_certificate=_text(data["root_certificate"], "root_certificate"),
            signing_certificates=_texts(data["signing_certificates"], "signing_certificates"),
            tunnel_key=TunnelKey.from_text(_text(data["tunnel_key"], "tunnel_key")),
            tunnel_key_expires_at=parse_time(data["tunnel_key_expires_at"], "expiry"),
            peer_map_watermark=_int(data["peer_map_watermark"]),
            last_peer_map=last,
        )


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise NodeStateCorrupt(f"{what} is a non-empty string")
    return value


def _texts(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise NodeStateCorrupt(f"{what} is a list of non-empty strings")
    return tuple(value)


def _int(value: object) -> int:
    if type(value) is not int or value < 0:
        raise NodeStateCorrupt("peer_map_watermark is a non-negative integer")
    return value
