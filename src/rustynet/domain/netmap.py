"""Peer maps: the payload the control plane signs for one node, and the node's acceptance check.

The one rule: a node applies a peer map only when the chain root → signing certificate →
envelope verifies at `now`, the map is addressed to it, unexpired, and its serial is strictly
above the last one it applied; a rejected map changes nothing (the watermark stays).

Payload (canonical JSON inside a `SignedEnvelope` with `Purpose.PEER_MAP`)::

    {"version": 1, "addressee": id, "serial": N, "issued_at": "...Z", "expires_at": "...Z",
     "policy_version": N,
     "self":  {"id", "name", "overlay_addresses", "tunnel_key", "tags"},
     "peers": [{"id", "name", "overlay_addresses", "tunnel_key", "tunnel_key_expires_at",
                "candidates": [{"endpoint", "kind"}], "relays", "nat"}],
     "inbound": [{"sources": ["100.64.0.1/32"], "proto": "tcp|udp|icmp|any",
                  "ports": [[22, 22]]}],
     "relays": [{"id": "relay-1", "url": "wss://relay.example:443/v1/relay",
                 "tls_spki_sha256": "sha256//..."}],
     "stun": ["203.0.113.1:3478", "203.0.113.1:3479", "[2001:db8::1]:3478"]}

Times are RFC 3339 UTC strings with `Z`, whole seconds. Peers are sorted by id, inbound rules
keep the compiler's order; everything is in protocol-agnostic terms (tunnel keys, overlay
prefixes, underlay endpoints), the tunnel adapter translates. The top-level `relays` list is
the same for every node of a mesh (docs/relay-protocol.md): a node's home relay is the first
one, so two nodes that need a relay meet on the same one; each relay is pinned by its TLS key,
and the list is signed with the rest of the map. A peer's `relays` names relay ids from it;
its `nat` is the class of its NAT (`rustynet.domain.nat.NatClass`; absent or null: not
classified). A node from before this field refuses a map that carries it (peers are parsed
strictly), so upgrade the nodes before the control plane.
`stun` is the mesh's STUN servers (the control host's and the relays', as control.toml
`[stun].advertise` lists them), IP-literal endpoints checked by `rustynet.domain.stun`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import attrs

from rustynet.domain.candidates import Candidate, candidate_set, preferred
from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.key_hierarchy import (
    Certificate,
    SigningKeyring,
    TrustedRoot,
    verify_certificate,
)
from rustynet.domain.keys import KeyFingerprint, Purpose, TunnelKey
from rustynet.domain.nat import NatClass
from rustynet.domain.policy import Proto
from rustynet.domain.policy_compile import FilterRule
from rustynet.domain.signed import JsonObject, JsonValue, SignedEnvelope
from rustynet.domain.stun import check_servers
from rustynet.domain.tls_pin import SpkiPin
from rustynet.domain.tunnel import UnderlayEndpoint

FORMAT_VERSION: Final = 1
MAX_ISSUED_AHEAD: Final = timedelta(seconds=90)  # the node's clock may run behind ours
_TIME_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_PAYLOAD_KEYS: Final = frozenset(
    {
        "version",
        "addressee",
        "serial",
        "issued_at",
        "expires_at",
        "policy_version",
        "self",
        "peers",
        "inbound",
        "relays",
        "stun",
    }
)
_RELAY_KEYS: Final = frozenset({"id", "url", "tls_spki_sha256"})
RELAY_ID_RE: Final = re.compile(r"[a-z0-9-]{1,64}")
MAX_RELAY_URL: Final = 512
MAX_RELAYS: Final = 64
# wss://HOST[:PORT][/PATH]: a DNS name or IPv4 literal, or a bracketed IPv6 literal; no user
# info, query or fragment (a relay is named by its URL and pinned by its TLS key).
_RELAY_URL_RE: Final = re.compile(
    r"wss://(?P<host>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?(?P<path>/[A-Za-z0-9._~/-]*)?"
)
_SELF_KEYS: Final = frozenset({"id", "name", "overlay_addresses", "tunnel_key", "tags"})
_PEER_KEYS: Final = frozenset(
    {
        "id",
        "name",
        "overlay_addresses",
        "tunnel_key",
        "tunnel_key_expires_at",
        "candidates",
        "relays",
    }
)
_CANDIDATE_KEYS: Final = frozenset({"endpoint", "kind"})
_RULE_KEYS: Final = frozenset({"sources", "proto", "ports"})


class PeerMapRejected(RemoteProtocolError):  # noqa: N818 - named for the outcome
    """The peer map must not be applied (nothing changed)."""


class PeerMapSignatureError(PeerMapRejected):
    """The root, the signing certificate or the envelope signature does not verify."""


class WrongAddressee(PeerMapRejected):
    """The map is addressed to another node."""


class PeerMapExpired(PeerMapRejected):
    """The map is past `expires_at` (or issued implausibly far in the future)."""


class StaleSerial(PeerMapRejected):
    """The serial is not above the last applied one (a replay or a rollback)."""


class MalformedPeerMap(PeerMapRejected):
    """The payload does not have the documented shape."""


def format_time(when: datetime) -> str:
    """RFC 3339 UTC with `Z`, whole seconds."""
    if not isinstance(when, datetime) or when.utcoffset() != timedelta(0):
        raise LocalProtocolError("times are timezone-aware UTC datetimes")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object, what: str) -> datetime:
    """Inverse of `format_time`; anything else raises `MalformedPeerMap`."""
    if not isinstance(text, str) or not _TIME_RE.fullmatch(text):
        raise MalformedPeerMap(f"{what} is not an RFC 3339 UTC time")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise MalformedPeerMap(f"{what} is not a valid time") from exc


# --- values ----------------------------------------------------------------------------------


@attrs.frozen
class SelfEntry:
    """The addressee itself as the map describes it."""

    id: str
    name: str
    overlay_addresses: tuple[str, ...]
    tunnel_key: TunnelKey
    tags: tuple[str, ...]

    def to_json(self) -> dict[str, JsonValue]:
        """Payload form."""
        return {
            "id": self.id,
            "name": self.name,
            "overlay_addresses": list(self.overlay_addresses),
            "tunnel_key": self.tunnel_key.to_text(),
            "tags": sorted(self.tags),
        }


@attrs.frozen
class PeerEntry:
    """One visible peer."""

    id: str
    name: str
    overlay_addresses: tuple[str, ...]
    tunnel_key: TunnelKey
    tunnel_key_expires_at: datetime
    candidates: tuple[Candidate, ...] = ()
    relays: tuple[str, ...] = ()
    nat: NatClass | None = None
    # The two text forms that cost (base64, strftime), made on first use: the control plane
    # puts one entry into the maps of every node that sees the peer. Not part of eq/hash.
    _texts: tuple[str, str] | None = attrs.field(
        default=None, init=False, eq=False, hash=False, repr=False
    )

    def to_json(self) -> dict[str, JsonValue]:
        """Payload form."""
        texts = self._texts
        if texts is None:
            texts = (self.tunnel_key.to_text(), format_time(self.tunnel_key_expires_at))
            object.__setattr__(self, "_texts", texts)
        return {
            "id": self.id,
            "name": self.name,
            "overlay_addresses": list(self.overlay_addresses),
            "tunnel_key": texts[0],
            "tunnel_key_expires_at": texts[1],
            "candidates": [c.to_json() for c in self.candidates],
            "relays": list(self.relays),
            **({} if self.nat is None else {"nat": self.nat.value}),
        }

    @property
    def endpoints(self) -> tuple[UnderlayEndpoint, ...]:
        """The peer's candidate endpoints in the order to try them (`candidates.PREFERENCE`)."""
        return preferred(self.candidates)


def _relay_id(_: object, __: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not RELAY_ID_RE.fullmatch(value):
        raise DecodeError("a relay id is 1-64 characters of a-z, 0-9 and '-'")


def parse_relay_url(text: object) -> str:
    """A relay URL `wss://HOST[:PORT][/PATH]` as given; anything else raises `DecodeError`."""
    match = (
        _RELAY_URL_RE.fullmatch(text)
        if isinstance(text, str) and len(text) <= MAX_RELAY_URL
        else None
    )
    if match is None or not isinstance(text, str):
        raise DecodeError("a relay URL looks like wss://HOST:PORT/v1/relay")
    port = match.group("port")
    if port is not None and not 0 < int(port) <= 65535:
        raise DecodeError("a relay URL's port is 1-65535")
    return text


def _relay_url(_: object, __: attrs.Attribute[str], value: object) -> None:
    parse_relay_url(value)


@attrs.frozen
class RelayEntry:
    """One relay the mesh may use: its id (a relay token's audience), URL and TLS key pin."""

    id: str = attrs.field(validator=_relay_id)
    url: str = attrs.field(validator=_relay_url)
    tls_spki_sha256: SpkiPin = attrs.field(validator=attrs.validators.instance_of(SpkiPin))

    @classmethod
    def from_texts(cls, relay_id: str, url: str, tls_spki_sha256: str) -> RelayEntry:
        """Parse the text forms (config and payload); `DecodeError` names what is wrong."""
        return cls(relay_id, url, SpkiPin.from_text(tls_spki_sha256))

    def to_json(self) -> dict[str, JsonValue]:
        """Payload form."""
        return {"id": self.id, "url": self.url, "tls_spki_sha256": self.tls_spki_sha256.to_text()}


def check_relays(relays: Sequence[RelayEntry]) -> tuple[RelayEntry, ...]:
    """The list as given (order matters: the first is the home relay); ids must be unique."""
    items = tuple(relays)
    if not all(isinstance(r, RelayEntry) for r in items):
        raise LocalProtocolError("relays are RelayEntry values")
    if len(items) > MAX_RELAYS:
        raise DecodeError(f"at most {MAX_RELAYS} relays")
    if len({r.id for r in items}) != len(items):
        raise DecodeError("relay ids must be unique")
    return items


@attrs.frozen
class InboundRule:
    """Accept flows from `sources` (prefixes) with `proto` to `ports` (inclusive ranges)."""

    sources: tuple[str, ...]
    proto: str
    ports: tuple[tuple[int, int], ...]

    @classmethod
    def from_filter(cls, rule: FilterRule) -> InboundRule:
        """The protocol-agnostic form of one compiled filter rule (ICMP has no ports)."""
        sources = tuple(str(p) for p in sorted(rule.src_prefixes, key=lambda n: (n.version, n)))
        ports = (
            () if rule.proto is Proto.ICMP else tuple((r.first, r.last) for r in rule.port_ranges)
        )
        return cls(sources, rule.proto.value, ports)

    def to_json(self) -> dict[str, JsonValue]:
        """Payload form."""
        return {
            "sources": list(self.sources),
            "proto": self.proto,
            "ports": [[first, last] for first, last in self.ports],
        }


@attrs.frozen
class PeerMap:
    """One node's peer map (what the envelope's payload says)."""

    addressee: str
    serial: int
    issued_at: datetime
    expires_at: datetime
    policy_version: int
    self_entry: SelfEntry
    peers: tuple[PeerEntry, ...]
    inbound: tuple[InboundRule, ...]
    relays: tuple[RelayEntry, ...] = attrs.field(default=(), converter=check_relays)
    stun: tuple[str, ...] = attrs.field(default=(), converter=check_servers)

    def __attrs_post_init__(self) -> None:
        if type(self.serial) is not int or self.serial < 1:
            raise LocalProtocolError("a peer-map serial is a positive int")
        if self.expires_at <= self.issued_at:
            raise LocalProtocolError("a peer map expires after it is issued")
        if self.self_entry.id != self.addressee:
            raise LocalProtocolError("the self entry is the addressee")

    def to_payload(self) -> JsonObject:
        """The canonical-JSON-ready payload."""
        return {
            "version": FORMAT_VERSION,
            "addressee": self.addressee,
            "serial": self.serial,
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
            "policy_version": self.policy_version,
            "self": self.self_entry.to_json(),
            "peers": [p.to_json() for p in self.peers],
            "inbound": [r.to_json() for r in self.inbound],
            "relays": [r.to_json() for r in self.relays],
            "stun": list(self.stun),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, object]) -> PeerMap:
        """Strict inverse of `to_payload`; any deviation raises `MalformedPeerMap`."""
        try:
            return _parse_payload(payload)
        except (DecodeError, LocalProtocolError, TypeError, ValueError) as exc:
            raise MalformedPeerMap(f"malformed peer map: {exc}") from exc


def build_peer_map(
    *,
    self_entry: SelfEntry,
    peers: Iterable[PeerEntry],
    inbound: Iterable[FilterRule],
    serial: int,
    policy_version: int,
    now: datetime,
    ttl: timedelta,
    relays: Sequence[RelayEntry] = (),
    stun: Sequence[str] = (),
) -> PeerMap:
    """Assemble a node's map (peers sorted by id) valid from `now` for `ttl`; `relays` keeps
    its order (the first is every node's home relay), so does `stun`."""
    issued = now.astimezone(UTC).replace(microsecond=0)
    return PeerMap(
        addressee=self_entry.id,
        serial=serial,
        issued_at=issued,
        expires_at=issued + ttl,
        policy_version=policy_version,
        self_entry=self_entry,
        peers=tuple(sorted(peers, key=lambda p: p.id)),
        inbound=tuple(InboundRule.from_filter(r) for r in inbound),
        relays=tuple(relays),
        stun=tuple(stun),
    )


def seal_peer_map(keyring: SigningKeyring, peer_map: PeerMap, now: datetime) -> SignedEnvelope:
    """Sign the map with the keyring's newest live peer-map key."""
    return keyring.seal(Purpose.PEER_MAP, peer_map.to_payload(), now)


# --- node side -------------------------------------------------------------------------------


@attrs.frozen
class PeerMapTrust:
    """What a node trusts peer maps by: the pinned root and the signing certificates."""

    root: TrustedRoot
    signing_certificates: tuple[Certificate, ...]

    @classmethod
    def from_texts(
        cls,
        root_certificate: str,
        pin: KeyFingerprint,
        signing_certificates: Sequence[str],
        now: datetime,
    ) -> PeerMapTrust:
        """Pin the root (fingerprint from the join token) and parse the certificates."""
        root = TrustedRoot.pinned(Certificate.from_text(root_certificate), pin, now)
        return cls(root, tuple(Certificate.from_text(t) for t in signing_certificates))

    def certificate_for(self, key_id: KeyFingerprint) -> Certificate:
        """The signing certificate of `key_id` (`PeerMapSignatureError` if none)."""
        for cert in self.signing_certificates:
            if cert.key_id == key_id:
                return cert
        raise PeerMapSignatureError(f"no signing certificate for key {key_id}")


def accept_peer_map(
    envelope_text: str,
    trust: PeerMapTrust,
    addressee: str,
    watermark: int,
    now: datetime,
) -> PeerMap:
    """Verify and parse a peer map for `addressee` whose last applied serial is `watermark`."""
    try:
        envelope = SignedEnvelope.from_text(envelope_text)
    except DecodeError as exc:
        raise MalformedPeerMap(f"not a signed envelope: {exc}") from exc
    cert = trust.certificate_for(envelope.key_id)
    try:
        verify_certificate(cert, trust.root, now)
        if Purpose.PEER_MAP not in cert.scope:
            raise PeerMapSignatureError("the certificate does not cover peer maps")
        payload = envelope.open(cert.subject, Purpose.PEER_MAP)
    except PeerMapRejected:
        raise
    except RemoteProtocolError as exc:
        raise PeerMapSignatureError(f"peer map does not verify: {exc}") from exc
    peer_map = PeerMap.from_payload(payload)
    if peer_map.addressee != addressee:
        raise WrongAddressee("the peer map is addressed to another node")
    if now >= peer_map.expires_at:
        raise PeerMapExpired("the peer map has expired")
    if peer_map.issued_at > now + MAX_ISSUED_AHEAD:
        raise PeerMapExpired("the peer map was issued in the future")
    if peer_map.serial <= watermark:
        raise StaleSerial(f"serial {peer_map.serial} is not above {watermark}")
    return peer_map


class PeerMapAcceptor:
    """A node's acceptance state: trust, its own id and the serial watermark."""

    def __init__(self, trust: PeerMapTrust, addressee: str, watermark: int = 0) -> None:
        self.trust = trust
        self.addressee = addressee
        self.watermark = watermark

    def accept(self, envelope_text: str, now: datetime) -> PeerMap:
        """Verify, then raise the watermark; a rejection raises and changes nothing."""
        peer_map = accept_peer_map(envelope_text, self.trust, self.addressee, self.watermark, now)
        self.watermark = peer_map.serial
        return peer_map


# --- strict payload parsing ------------------------------------------------------------------


def _exact(value: object, keys: frozenset[str], what: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping) or set(value) != keys:
        raise MalformedPeerMap(f"{what} must have exactly the fields {sorted(keys)}")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedPeerMap(f"{what} must be a non-empty string")
    return value


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise MalformedPeerMap(f"{what} must be a non-negative integer")
    return value


def _strs(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedPeerMap(f"{what} must be a list of strings")
    return tuple(value)


def _prefixes(value: object, what: str) -> tuple[str, ...]:
    items = _strs(value, what)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=True)
        except ValueError as exc:
            raise MalformedPeerMap(f"{what}: {item!r} is not a prefix") from exc
    return items


def _rule(value: object) -> InboundRule:
    r = _exact(value, _RULE_KEYS, "inbound rule")
    proto = Proto(_str(r["proto"], "proto")).value
    ports_value = r["ports"]
    if not isinstance(ports_value, list):
        raise MalformedPeerMap("ports must be a list of [first, last]")
    ports: list[tuple[int, int]] = []
    for pair in ports_value:
        if not isinstance(pair, list) or len(pair) != 2:
            raise MalformedPeerMap("ports must be a list of [first, last]")
        first, last = _int(pair[0], "port"), _int(pair[1], "port")
        if not first <= last <= 65535:
            raise MalformedPeerMap("a port range is first <= last <= 65535")
        ports.append((first, last))
    return InboundRule(_prefixes(r["sources"], "sources"), proto, tuple(ports))


def _peer(value: object) -> PeerEntry:
    with_nat = isinstance(value, Mapping) and "nat" in value
    p = _exact(value, _PEER_KEYS | {"nat"} if with_nat else _PEER_KEYS, "peer")
    return PeerEntry(
        id=_str(p["id"], "peer id"),
        name=_str(p["name"], "peer name"),
        overlay_addresses=_prefixes(p["overlay_addresses"], "overlay_addresses"),
        tunnel_key=TunnelKey.from_text(_str(p["tunnel_key"], "tunnel_key")),
        tunnel_key_expires_at=parse_time(p["tunnel_key_expires_at"], "tunnel_key_expires_at"),
        candidates=_candidates(p["candidates"]),
        relays=_strs(p["relays"], "relays"),
        nat=_nat(p.get("nat")),
    )


def _nat(value: object) -> NatClass | None:
    if value is None:
        return None
    try:
        return NatClass(value)
    except ValueError:
        raise MalformedPeerMap("a peer's nat is null or a NAT class") from None


def _candidates(value: object) -> tuple[Candidate, ...]:
    if not isinstance(value, list):
        raise MalformedPeerMap("candidates must be a list")
    try:
        found = tuple(
            Candidate.parse(c["endpoint"], c["kind"])
            for c in (_exact(item, _CANDIDATE_KEYS, "candidate") for item in value)
        )
        checked = candidate_set(found)
    except DecodeError as exc:
        raise MalformedPeerMap(f"bad candidate: {exc}") from exc
    if checked != found:
        raise MalformedPeerMap("a peer lists a candidate endpoint twice")
    return checked


def _relay(value: object) -> RelayEntry:
    r = _exact(value, _RELAY_KEYS, "relay")
    return RelayEntry.from_texts(
        _str(r["id"], "relay id"),
        _str(r["url"], "relay url"),
        _str(r["tls_spki_sha256"], "relay tls_spki_sha256"),
    )


def _parse_payload(payload: Mapping[str, object]) -> PeerMap:
    d = _exact(payload, _PAYLOAD_KEYS, "peer map")
    if type(d["version"]) is not int or d["version"] != FORMAT_VERSION:
        raise MalformedPeerMap("unsupported peer map version")
    s = _exact(d["self"], _SELF_KEYS, "self")
    self_entry = SelfEntry(
        id=_str(s["id"], "self id"),
        name=_str(s["name"], "self name"),
        overlay_addresses=_prefixes(s["overlay_addresses"], "overlay_addresses"),
        tunnel_key=TunnelKey.from_text(_str(s["tunnel_key"], "tunnel_key")),
        tags=_strs(s["tags"], "tags"),
    )
    peers, inbound, relays = d["peers"], d["inbound"], d["relays"]
    if not isinstance(peers, list) or not isinstance(inbound, list) or not isinstance(relays, list):
        raise MalformedPeerMap("peers, inbound and relays are lists")
    serial = _int(d["serial"], "serial")
    if serial < 1:
        raise MalformedPeerMap("serial must be positive")
    issued_at = parse_time(d["issued_at"], "issued_at")
    expires_at = parse_time(d["expires_at"], "expires_at")
    if expires_at <= issued_at:
        raise MalformedPeerMap("expires_at must come after issued_at")
    return PeerMap(
        addressee=_str(d["addressee"], "addressee"),
        serial=serial,
        issued_at=issued_at,
        expires_at=expires_at,
        policy_version=_int(d["policy_version"], "policy_version"),
        self_entry=self_entry,
        peers=tuple(_peer(p) for p in peers),
        inbound=tuple(_rule(r) for r in inbound),
        relays=tuple(_relay(r) for r in relays),
        stun=check_servers(d["stun"]) if isinstance(d["stun"], list) else _not_list("stun"),
    )


def _not_list(what: str) -> tuple[str, ...]:
    raise MalformedPeerMap(f"{what} is a list")
