"""canonical_json (orjson since the control-plane fan-out work) writes exactly the bytes of the
reference encoder it replaced: json.dumps(sort_keys, compact, ensure_ascii=False) as UTF-8.

Signed payloads are re-encoded and compared byte for byte by every reader, so a difference in
key order, escaping or number form would break verification between versions. The property
runs over arbitrary JSON values (any Unicode text incl. control characters and astral code
points as keys and strings, 64-bit integers, nesting); a broken encoder (unsorted keys) must be
caught.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.signed import INT_MAX, INT_MIN, canonical_json
from tests.property.broken import assert_property_catches, broken_settings

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)  # no lone surrogates
SCALARS = st.none() | st.booleans() | st.integers(INT_MIN, INT_MAX) | TEXT
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=30,
)
PAYLOADS = st.dictionaries(TEXT, VALUES, max_size=6)


def reference(payload: dict[str, Any]) -> bytes:
    """The encoder canonical_json used before (the byte format pinned by the audit KAT)."""
    text = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def check_against(encode: Callable[[dict[str, Any]], bytes]) -> Callable[[], None]:
    @given(PAYLOADS)
    def test(payload: dict[str, Any]) -> None:
        assert encode(payload) == reference(payload)

    return test


def test_canonical_json_writes_the_reference_bytes_for_any_json_object() -> None:
    """Byte-identical to json.dumps(sort_keys, compact, ensure_ascii=False) for any payload."""
    check_against(canonical_json)()


def test_a_tuple_is_written_as_the_list_it_stands_for() -> None:
    """Tuples (value objects keep them) encode as arrays, like the reference did."""
    assert canonical_json({"a": ("x", 1, ())}) == reference({"a": ["x", 1, []]})


def test_a_lone_surrogate_is_refused_as_before() -> None:
    """A string that is not valid UTF-8 is a LocalProtocolError (no bytes are produced)."""
    with pytest.raises(LocalProtocolError):
        canonical_json({"a": "\ud800"})


def test_the_property_catches_an_encoder_that_does_not_sort_keys() -> None:
    """Negative control: an encoder keeping insertion order fails the property."""

    def unsorted(payload: dict[str, Any]) -> bytes:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    assert_property_catches(broken_settings(max_examples=300)(check_against(unsorted)))
