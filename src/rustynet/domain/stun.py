"""STUN Binding messages (RFC 8489) as the STUN service and the node's probes need them.

The one rule: a datagram is parsed under hard limits and refused (`StunError`) unless it is a
well-formed STUN message — 20-byte header, magic cookie 0x2112A442, a length that is a multiple
of 4, matches the datagram and is at most `MAX_MESSAGE` bytes, a bounded TLV walk of at most
`MAX_ATTRIBUTES` attributes, no unknown comprehension-required attribute (type < 0x8000), and a
FINGERPRINT, when present, that is last and correct. Nothing else ever escapes the parser.
A request without the magic cookie is an RFC 3489 ("classic") request, answered as RFC 8489 §12
says (MAPPED-ADDRESS, the request's cookie field copied) so that old clients such as Debian's
`stun` work; its only extra attribute, CHANGE-REQUEST, is accepted when it asks for no change.

Pure: bytes in, values out. The service answers a Binding request with a success response
carrying XOR-MAPPED-ADDRESS (IPv4 or IPv6) and, so that a client can find the second port,
RFC 5780 RESPONSE-ORIGIN and OTHER-ADDRESS. The node side is the pair `binding_request`
(a request with a fresh 96-bit transaction id from `Entropy`) and `accept_binding_response`
(the mapped endpoint only from an RFC 8489 success response with that transaction id; the
adapter also checks the source address). `answer` is the whole server decision: the response to
a datagram, or None, never more than `AMPLIFICATION` times the request's size.
FINGERPRINT is CRC-32 xor 0x5354554E: an integrity check against non-STUN traffic, not
cryptography.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
import zlib
from typing import Final

import attrs

from rustynet.domain.entropy import Entropy
from rustynet.domain.errors import DecodeError

MAGIC_COOKIE: Final = 0x2112A442
HEADER_SIZE: Final = 20
TRANSACTION_ID_SIZE: Final = 12
MAX_MESSAGE: Final = 548  # header + attributes; RFC 8489's path-MTU-safe size for IPv4
MAX_ATTRIBUTES: Final = 16
FINGERPRINT_XOR: Final = 0x5354554E

BINDING_REQUEST: Final = 0x0001
BINDING_SUCCESS: Final = 0x0101

AMPLIFICATION: Final = 2.5  # a response is at most this many times the request's bytes

ATTR_MAPPED_ADDRESS: Final = 0x0001
ATTR_CHANGE_REQUEST: Final = 0x0003
ATTR_XOR_MAPPED_ADDRESS: Final = 0x0020
ATTR_SOFTWARE: Final = 0x8022
ATTR_FINGERPRINT: Final = 0x8028
ATTR_RESPONSE_ORIGIN: Final = 0x802B
ATTR_OTHER_ADDRESS: Final = 0x802C
# Comprehension-required attributes this codec understands; CHANGE-REQUEST only with no change
# flags set (the service never answers from another address or port on request).
_KNOWN_REQUIRED: Final = frozenset(
    {ATTR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS, ATTR_CHANGE_REQUEST}
)
_FAMILY_V4: Final = 0x01
_FAMILY_V6: Final = 0x02

Endpoint = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


class StunError(DecodeError):
    """Not a well-formed STUN message (or not one this codec accepts)."""


class MessageClass(enum.Enum):
    """The message types this codec accepts."""

    BINDING_REQUEST = BINDING_REQUEST
    BINDING_SUCCESS = BINDING_SUCCESS


@attrs.frozen
class StunMessage:
    """A parsed message: type, transaction id, attributes (type, value) in order.

    `transaction_id` is 12 bytes; a `classic` (RFC 3489) message has no cookie and its
    `transaction_id` is the 16 bytes after the length.
    """

    kind: MessageClass
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...]
    classic: bool = False

    def attribute(self, attr_type: int) -> bytes | None:
        """The value of the first attribute of `attr_type` (RFC 8489: later ones are ignored)."""
        for kind, value in self.attributes:
            if kind == attr_type:
                return value
        return None


def _fingerprint(data: bytes) -> int:
    return (zlib.crc32(data) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


def _walk_attributes(data: bytes) -> list[tuple[int, bytes]]:
    """The bounded TLV walk over a message whose length was already checked."""
    attributes: list[tuple[int, bytes]] = []
    offset = HEADER_SIZE
    while offset < len(data):
        if len(attributes) >= MAX_ATTRIBUTES:
            raise StunError("too many attributes")
        if offset + 4 > len(data):
            raise StunError("truncated attribute header")
        attr_type, attr_len = struct.unpack_from("!HH", data, offset)
        end = offset + 4 + attr_len
        if end > len(data):
            raise StunError("attribute runs past the message")
        padded = end + (-attr_len % 4)
        if padded > len(data):
            raise StunError("attribute padding runs past the message")
        if attr_type < 0x8000 and attr_type not in _KNOWN_REQUIRED:
            raise StunError("unknown comprehension-required attribute")
        value = data[offset + 4 : end]
        if attr_type == ATTR_CHANGE_REQUEST and value != b"\x00" * 4:
            raise StunError("CHANGE-REQUEST asks for a change this service does not make")
        if attr_type == ATTR_FINGERPRINT:
            if attr_len != 4 or padded != len(data):
                raise StunError("FINGERPRINT must be the last attribute, 4 bytes")
            if struct.unpack("!I", value)[0] != _fingerprint(data[:offset]):
                raise StunError("wrong FINGERPRINT")
        attributes.append((attr_type, value))
        offset = padded
    return attributes


def parse(data: bytes) -> StunMessage:
    """Parse one datagram under the module's limits; anything else raises `StunError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StunError("not bytes")
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise StunError("shorter than a STUN header")
    if len(data) > MAX_MESSAGE:
        raise StunError("longer than the STUN size limit")
    msg_type, length, cookie = struct.unpack_from("!HHI", data)
    if msg_type & 0xC000:
        raise StunError("the two leading bits of a STUN message are zero")
    classic = cookie != MAGIC_COOKIE
    if length % 4 or HEADER_SIZE + length != len(data):
        raise StunError("length does not match the datagram")
    try:
        kind = MessageClass(msg_type)
    except ValueError:
        raise StunError("not a Binding request or success response") from None
    if classic and kind is not MessageClass.BINDING_REQUEST:
        raise StunError("wrong magic cookie")
    attributes = _walk_attributes(data)
    return StunMessage(
        kind=kind,
        transaction_id=data[4 if classic else 8 : HEADER_SIZE],
        attributes=tuple(attributes),
        classic=classic,
    )


def _attribute(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + b"\x00" * (-len(value) % 4)


def _encode(msg_type: int, transaction_id: bytes, body: bytes, fingerprint: bool) -> bytes:
    if len(transaction_id) == TRANSACTION_ID_SIZE:
        transaction_id = struct.pack("!I", MAGIC_COOKIE) + transaction_id
    elif len(transaction_id) != 16:
        raise StunError("a transaction id is 12 bytes (16 for RFC 3489)")
    extra = 8 if fingerprint else 0
    head = struct.pack("!HH", msg_type, len(body) + extra) + transaction_id
    message = head + body
    if fingerprint:
        message += _attribute(ATTR_FINGERPRINT, struct.pack("!I", _fingerprint(message)))
    return message


def _address(endpoint: Endpoint, transaction_id: bytes, xor: bool) -> bytes:
    ip, port = endpoint
    raw = ip.packed
    if xor:
        port ^= MAGIC_COOKIE >> 16
        mask = struct.pack("!I", MAGIC_COOKIE) + transaction_id
        raw = bytes(a ^ b for a, b in zip(raw, mask, strict=False))
    family = _FAMILY_V4 if ip.version == 4 else _FAMILY_V6
    return struct.pack("!BBH", 0, family, port) + raw


def decode_address(value: bytes, transaction_id: bytes, xor: bool) -> Endpoint:
    """An (XOR-)MAPPED-ADDRESS-shaped value as (ip, port); malformed raises `StunError`."""
    if len(value) not in (8, 20):
        raise StunError("an address attribute is 8 (IPv4) or 20 (IPv6) bytes")
    _, family, port = struct.unpack_from("!BBH", value)
    raw = value[4:]
    if (family, len(raw)) not in ((_FAMILY_V4, 4), (_FAMILY_V6, 16)):
        raise StunError("address family does not match its length")
    if xor:
        port ^= MAGIC_COOKIE >> 16
        mask = struct.pack("!I", MAGIC_COOKIE) + transaction_id
        raw = bytes(a ^ b for a, b in zip(raw, mask, strict=False))
    ip = ipaddress.IPv4Address(raw) if family == _FAMILY_V4 else ipaddress.IPv6Address(raw)
    return ip, port


def encode_request(transaction_id: bytes, fingerprint: bool = True) -> bytes:
    """A Binding request with no attributes but (by default) FINGERPRINT."""
    return _encode(BINDING_REQUEST, transaction_id, b"", fingerprint)


def encode_success(
    transaction_id: bytes,
    mapped: Endpoint,
    origin: Endpoint | None = None,
    other: Endpoint | None = None,
    fingerprint: bool = True,
) -> bytes:
    """A Binding success: XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS, FINGERPRINT.

    A 16-byte (RFC 3489) transaction id gets MAPPED-ADDRESS instead (RFC 8489 §12.2).
    """
    if len(transaction_id) == 16:
        body = _attribute(ATTR_MAPPED_ADDRESS, _address(mapped, transaction_id, xor=False))
    else:
        body = _attribute(ATTR_XOR_MAPPED_ADDRESS, _address(mapped, transaction_id, xor=True))
    if origin is not None:
        body += _attribute(ATTR_RESPONSE_ORIGIN, _address(origin, transaction_id, xor=False))
    if other is not None:
        body += _attribute(ATTR_OTHER_ADDRESS, _address(other, transaction_id, xor=False))
    return _encode(BINDING_SUCCESS, transaction_id, body, fingerprint)


def answer(
    data: bytes, source: Endpoint, local: Endpoint | None, other: Endpoint | None
) -> bytes | None:
    """The service's reply to `data` from `source`, or None (drop silently).

    Only a well-formed Binding request is answered, with the richest response that is at most
    `AMPLIFICATION` times the request's size: all attributes, then without RESPONSE-ORIGIN and
    OTHER-ADDRESS, then without FINGERPRINT; if even that is too big, no answer.
    """
    try:
        request = parse(data)
    except StunError:
        return None
    if request.kind is not MessageClass.BINDING_REQUEST:
        return None
    budget = int(len(data) * AMPLIFICATION)
    tid = request.transaction_id
    for extras, fingerprint in ((True, True), (False, True), (False, False)):
        if request.classic and fingerprint:
            continue  # RFC 3489 clients know neither FINGERPRINT nor the RFC 5780 attributes
        response = encode_success(
            tid,
            source,
            origin=local if extras else None,
            other=other if extras else None,
            fingerprint=fingerprint,
        )
        if len(response) <= budget:
            return response
    return None


def binding_request(entropy: Entropy) -> tuple[bytes, bytes]:
    """A fresh Binding request: (transaction id, datagram). The id is 96 random bits."""
    transaction_id = entropy.token_bytes(TRANSACTION_ID_SIZE)
    if len(transaction_id) != TRANSACTION_ID_SIZE:
        raise StunError("entropy returned the wrong number of bytes")
    return transaction_id, encode_request(transaction_id)


@attrs.frozen
class BindingResult:
    """What a success response says: the mapped endpoint and, if sent, the server's other one."""

    mapped: Endpoint
    other: Endpoint | None = None


def accept_binding_response(data: bytes, transaction_id: bytes) -> BindingResult:
    """The mapped endpoint of a success response to `transaction_id`; anything else raises.

    A wrong transaction id, a request, or a response with no usable address is refused: the
    caller counts it and keeps waiting (the source-address check is the adapter's, which knows
    where it sent the request).
    """
    message = parse(data)
    if message.kind is not MessageClass.BINDING_SUCCESS or message.classic:
        raise StunError("not a Binding success response")
    if len(transaction_id) != TRANSACTION_ID_SIZE or message.transaction_id != transaction_id:
        raise StunError("transaction id does not match the request")
    xor_value = message.attribute(ATTR_XOR_MAPPED_ADDRESS)
    if xor_value is not None:
        mapped = decode_address(xor_value, transaction_id, xor=True)
    else:
        plain = message.attribute(ATTR_MAPPED_ADDRESS)
        if plain is None:
            raise StunError("a success response carries a mapped address")
        mapped = decode_address(plain, transaction_id, xor=False)
    other_value = message.attribute(ATTR_OTHER_ADDRESS)
    other = None if other_value is None else decode_address(other_value, transaction_id, False)
    return BindingResult(mapped=mapped, other=other)


MAX_STUN_SERVERS: Final = 16


def parse_server(text: object) -> Endpoint:
    """A STUN server as written in the peer map and config: `IPv4:PORT` or `[IPv6]:PORT`, an IP
    literal (nodes never resolve names for discovery), port 1-65535, canonical form only."""
    if not isinstance(text, str):
        raise DecodeError("a STUN server is an ADDRESS:PORT string")
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise DecodeError(f"not ADDRESS:PORT: {text!r}")
    try:
        ip = ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        raise DecodeError(f"a STUN server is an IP literal: {text!r}") from None
    if format_server((ip, int(port_text))) != text:
        raise DecodeError(f"not in canonical form: {text!r}")
    if ip.is_unspecified or ip.is_multicast:
        raise DecodeError(f"not a usable STUN address: {text!r}")
    return ip, int(port_text)


def format_server(endpoint: Endpoint) -> str:
    """`IPv4:PORT` or `[IPv6]:PORT`."""
    ip, port = endpoint
    return f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"


def check_servers(servers: object) -> tuple[str, ...]:
    """A STUN server list: at most `MAX_STUN_SERVERS`, each canonical (`parse_server`), unique;
    order kept (a node tries them in order)."""
    if not isinstance(servers, list | tuple):
        raise DecodeError("the STUN servers are a list")
    items = tuple(servers)
    if len(items) > MAX_STUN_SERVERS:
        raise DecodeError(f"at most {MAX_STUN_SERVERS} STUN servers")
    for item in items:
        parse_server(item)
    if len(set(items)) != len(items):
        raise DecodeError("a STUN server is listed twice")
    return items
