"""The STUN Binding codec (rustynet.domain.stun): round trips, every malformed shape refused,
the amplification budget of `answer`, and the node's request/accept pair."""

from __future__ import annotations

import contextlib
import ipaddress
import struct
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustynet.domain import stun
from rustynet.domain.stun import (
    ATTR_CHANGE_REQUEST,
    ATTR_FINGERPRINT,
    ATTR_MAPPED_ADDRESS,
    ATTR_OTHER_ADDRESS,
    ATTR_XOR_MAPPED_ADDRESS,
    MAGIC_COOKIE,
    MessageClass,
    StunError,
    accept_binding_response,
    answer,
    binding_request,
    encode_request,
    encode_success,
    parse,
)

TID = bytes(range(12))
V4 = (ipaddress.IPv4Address("203.0.113.7"), 40000)
V6 = (ipaddress.IPv6Address("2001:db8::7"), 50000)
LOCAL = (ipaddress.IPv4Address("203.0.113.1"), 3478)
OTHER = (ipaddress.IPv4Address("203.0.113.1"), 3479)


class FixedEntropy:
    def __init__(self, value: bytes) -> None:
        self.value = value

    def token_bytes(self, n: int) -> bytes:
        return self.value[:n]


def _message(msg_type: int, body: bytes, cookie: int = MAGIC_COOKIE, tid: bytes = TID) -> bytes:
    return struct.pack("!HHI", msg_type, len(body), cookie) + tid + body


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


@pytest.mark.parametrize("mapped", [V4, V6])
def test_success_round_trips_with_every_attribute(mapped: stun.Endpoint) -> None:
    data = encode_success(TID, mapped, origin=LOCAL, other=OTHER)
    result = accept_binding_response(data, TID)
    assert result.mapped == mapped
    assert result.other == OTHER
    assert parse(data).attribute(ATTR_FINGERPRINT) is not None


def test_request_round_trips_and_has_a_fingerprint() -> None:
    message = parse(encode_request(TID))
    assert message.kind is MessageClass.BINDING_REQUEST
    assert message.transaction_id == TID
    assert not message.classic
    assert [kind for kind, _ in message.attributes] == [ATTR_FINGERPRINT]


def test_binding_request_takes_96_bits_from_entropy() -> None:
    tid, data = binding_request(FixedEntropy(b"\x55" * 12))
    assert tid == b"\x55" * 12
    assert parse(data).transaction_id == tid
    with pytest.raises(StunError):
        binding_request(FixedEntropy(b"\x55" * 11))


def test_a_classic_request_gets_a_mapped_address_with_its_cookie_copied() -> None:
    tid16 = bytes(range(16, 32))
    request = struct.pack("!HH", 1, 8) + tid16 + _attr(ATTR_CHANGE_REQUEST, b"\0" * 4)
    reply = answer(request, V4, LOCAL, OTHER)
    assert reply is not None
    assert reply[4:20] == tid16
    value = reply[24:32]
    assert struct.unpack_from("!HHH", reply, 20)[0] == ATTR_MAPPED_ADDRESS
    assert stun.decode_address(value, tid16, xor=False) == V4
    with pytest.raises(StunError):  # the node never believes a classic response
        accept_binding_response(reply, tid16[4:])


MALFORMED = {
    "short": b"\0\1\0\0" + b"\0" * 10,
    "leading bits": _message(0xC001, b""),
    "length not multiple of 4": _message(1, b"")[:2] + b"\0\3" + _message(1, b"")[4:] + b"abc",
    "length mismatch": _message(1, b"")[:2] + b"\0\x08" + _message(1, b"")[4:],
    "oversized": _message(1, _attr(0x8022, b"x" * 540)),
    "indication": _message(0x0011, b""),
    "error response": _message(0x0111, b""),
    "allocate": _message(0x0003, b""),
    "unknown required attribute": _message(1, _attr(0x0006, b"user")),
    "change request with flags": _message(1, _attr(ATTR_CHANGE_REQUEST, b"\0\0\0\6")),
    "attribute past the end": _message(1, b"")[:2]
    + b"\0\4"
    + _message(1, b"")[4:]
    + struct.pack("!HH", 0x8022, 8),
    "too many attributes": _message(1, _attr(0x8022, b"") * 17),
    "fingerprint wrong": _message(1, _attr(ATTR_FINGERPRINT, b"\0\0\0\0")),
    "fingerprint not last": _message(
        1,
        _attr(ATTR_FINGERPRINT, struct.pack("!I", zlib.crc32(b"") ^ 0x5354554E))
        + _attr(0x8022, b"x"),
    ),
    "classic success": _message(0x0101, b"", cookie=0x01020304),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_messages_are_refused_and_never_answered(name: str) -> None:
    data = MALFORMED[name]
    with pytest.raises(StunError):
        parse(data)
    assert answer(data, V4, LOCAL, OTHER) is None


def test_a_response_is_not_answered() -> None:
    assert answer(encode_success(TID, V4), V4, LOCAL, OTHER) is None


@pytest.mark.parametrize("mapped", [V4, V6])
@pytest.mark.parametrize("fingerprint", [True, False])
def test_answers_stay_within_the_amplification_budget(
    mapped: stun.Endpoint, fingerprint: bool
) -> None:
    request = encode_request(TID, fingerprint=fingerprint)
    reply = answer(request, mapped, LOCAL, OTHER)
    assert reply is not None
    assert len(reply) <= len(request) * stun.AMPLIFICATION
    assert accept_binding_response(reply, TID).mapped == mapped


def test_a_request_too_small_for_any_answer_gets_none() -> None:
    # 20 bytes in, an IPv6 answer without extras or FINGERPRINT is 44 bytes: 2.2x, allowed;
    # shrinking the budget below that leaves no acceptable answer.
    request = encode_request(TID, fingerprint=False)
    assert answer(request, V6, LOCAL, OTHER) is not None
    original = stun.AMPLIFICATION
    try:
        stun.AMPLIFICATION = 2.0  # type: ignore[misc]
        assert answer(request, V6, LOCAL, OTHER) is None
    finally:
        stun.AMPLIFICATION = original  # type: ignore[misc]


def test_accept_refuses_wrong_transaction_requests_and_addressless_responses() -> None:
    good = encode_success(TID, V4)
    with pytest.raises(StunError, match="transaction id"):
        accept_binding_response(good, b"\1" * 12)
    with pytest.raises(StunError):
        accept_binding_response(encode_request(TID), TID)
    with pytest.raises(StunError, match="mapped address"):
        accept_binding_response(_message(0x0101, b""), TID)
    bad_family = _message(0x0101, _attr(ATTR_XOR_MAPPED_ADDRESS, b"\0\3\0\1" + b"\0" * 4))
    with pytest.raises(StunError):
        accept_binding_response(bad_family, TID)
    bad_other = _message(
        0x0101,
        _attr(ATTR_XOR_MAPPED_ADDRESS, b"\0\1\0\1" + b"\0" * 4) + _attr(ATTR_OTHER_ADDRESS, b"x"),
    )
    with pytest.raises(StunError):
        accept_binding_response(bad_other, TID)


def test_plain_mapped_address_is_accepted_when_no_xor_form_is_sent() -> None:
    body = _attr(ATTR_MAPPED_ADDRESS, b"\0\1" + struct.pack("!H", 9) + bytes([203, 0, 113, 9]))
    result = accept_binding_response(_message(0x0101, body), TID)
    assert result.mapped == (ipaddress.IPv4Address("203.0.113.9"), 9)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=700))
def test_fuzz_parse_raises_only_stun_error(data: bytes) -> None:
    start = time.perf_counter()
    with contextlib.suppress(StunError):
        parse(data)
    assert answer(data, V4, LOCAL, OTHER) in (None,) or data[:2] == b"\0\1"
    assert time.perf_counter() - start < 0.05


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=20),
    st.sampled_from([0x0001, 0x0101, 0x0011]),
    st.booleans(),
)
def test_fuzz_structured_messages(
    attrs_: list[tuple[int, bytes]], msg_type: int, classic: bool
) -> None:
    body = b"".join(_attr(kind, value) for kind, value in attrs_)
    data = _message(msg_type, body, cookie=0x01020304 if classic else MAGIC_COOKIE)
    try:
        message = parse(data)
    except StunError:
        assert answer(data, V4, LOCAL, OTHER) is None
        return
    reply = answer(data, V6, LOCAL, OTHER)
    if message.kind is MessageClass.BINDING_REQUEST:
        assert reply is None or len(reply) <= len(data) * stun.AMPLIFICATION
        if reply is not None and not classic:
            assert accept_binding_response(reply, TID).mapped == V6
    else:
        assert reply is None
