"""Relay data frames: strict codec (round trip, every malformed shape rejected), challenge bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rustynet.domain.errors import DecodeError, LocalProtocolError
from rustynet.domain.relay import (
    BATCH,
    FROM_RELAY,
    TO_RELAY,
    FrameError,
    challenge_message,
    decode_frame,
    decode_header,
    encode_batch,
    encode_frame,
    frame_header,
    split_batch,
)

node_ids = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255
)
frame_types = st.sampled_from([TO_RELAY, FROM_RELAY])


@given(frame_types, node_ids, st.binary(max_size=2048))
def test_frame_round_trips(frame_type: int, node_id: str, packet: bytes) -> None:
    """decode(encode(x)) == x for every type, id and payload (payload bytes untouched)."""
    frame = encode_frame(frame_type, node_id, packet)
    assert decode_frame(frame, frame_type) == (node_id, packet)
    assert decode_header(memoryview(frame), frame_type)[1] == 2 + len(node_id)


@given(frame_types, node_ids, st.binary(max_size=64))
def test_frame_of_the_other_type_is_rejected(frame_type: int, node_id: str, packet: bytes) -> None:
    """A relay->node frame never parses as node->relay and vice versa."""
    other = FROM_RELAY if frame_type == TO_RELAY else TO_RELAY
    with pytest.raises(FrameError):
        decode_frame(encode_frame(frame_type, node_id, packet), other)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    """Garbage never crashes the decoder: it parses consistently or raises FrameError."""
    try:
        node_id, packet = decode_frame(data, TO_RELAY)
    except FrameError:
        return
    assert encode_frame(TO_RELAY, node_id, packet) == data


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x01",
        b"\x01\x00",
        b"\x01\x00payload",  # empty node id
        b"\x01\x05abc",  # id longer than the frame
        b"\x03\x01a",  # unknown type
        b"\x01\x02\xff\xfe",  # non-ASCII id
    ],
)
def test_malformed_frames_are_rejected(frame: bytes) -> None:
    """Every malformed header raises FrameError (a DecodeError)."""
    with pytest.raises(DecodeError):
        decode_header(frame, TO_RELAY)


def test_header_refuses_ids_that_do_not_fit_one_length_byte() -> None:
    """Our own misuse (a 256-byte or non-ASCII id) is a LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        frame_header(TO_RELAY, "n" * 256)
    with pytest.raises(LocalProtocolError):
        frame_header(TO_RELAY, "nödé")
    with pytest.raises(LocalProtocolError):
        frame_header(0x07, "node")


def test_challenge_message_is_nonce_then_relay_id() -> None:
    """The signed challenge is exactly nonce || relay id; bad nonces and ids are refused."""
    nonce = bytes(range(32))
    assert challenge_message(nonce, "relay-1") == nonce + b"relay-1"
    with pytest.raises(LocalProtocolError):
        challenge_message(nonce[:31], "relay-1")
    with pytest.raises(DecodeError):
        challenge_message(nonce, "Relay_1")


_FRAMES = st.binary(min_size=1, max_size=2000).filter(lambda frame: frame[0] != BATCH)


@given(st.lists(_FRAMES, min_size=1, max_size=20))
def test_batch_round_trips_frame_by_frame(frames: list[bytes]) -> None:
    """A batch splits back into exactly its frames, in order; one frame is sent as itself."""
    message = encode_batch(frames)
    assert [bytes(f) for f in split_batch(message)] == frames
    if len(frames) == 1:
        assert message == frames[0]


@pytest.mark.parametrize("count", [1, 3])
def test_a_frame_starting_with_the_batch_byte_is_refused(count: int) -> None:
    """Alone it would be read back as a batch (Hypothesis found `03 ...` split into garbage);
    inside a batch it would nest one. Either way the encoder refuses it."""
    frames = [bytes((BATCH, 0, 1, 0x41))] + [b"\x01frame"] * (count - 1)
    with pytest.raises(LocalProtocolError):
        encode_batch(frames)


@given(st.binary(max_size=300))
def test_arbitrary_batch_bytes_split_or_raise_frame_error(tail: bytes) -> None:
    """Garbage after the batch byte either splits into in-bounds views or raises FrameError."""
    message = bytes((BATCH,)) + tail
    try:
        frames = split_batch(message)
    except FrameError:
        return
    assert sum(len(f) + 2 for f in frames) == len(tail)


@pytest.mark.parametrize(
    "message",
    [bytes((BATCH,)), bytes((BATCH, 0)), bytes((BATCH, 0, 5, 1, 2)), bytes((BATCH, 0, 0))],
)
def test_truncated_or_empty_batches_are_rejected(message: bytes) -> None:
    """An empty batch, a cut length, an entry past the end or a zero-length entry: FrameError."""
    with pytest.raises(FrameError):
        split_batch(message)
