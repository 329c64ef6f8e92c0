"""Corruptions of signed texts for byte-flip tests: every one must be refused by the parser."""

from __future__ import annotations

import string
from collections.abc import Iterator

B64_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def flipped_texts(text: str) -> Iterator[tuple[str, str]]:
    """Every single-byte corruption worth trying: each position, plus every bit of a few bytes.

    Each position gets (a) the next character of the base64url alphabet, the most plausible
    corruption, and (b) its bits inverted. Positions 0, the middle and the end get all 8 bit
    flips. Bytes are mapped back to text through latin-1 so any byte value reaches the parser.
    Yields (label, corrupted text).
    """
    data = text.encode("ascii")
    for i, byte in enumerate(data):
        char = chr(byte)
        if char in B64_ALPHABET:
            replacement = B64_ALPHABET[(B64_ALPHABET.index(char) + 1) % len(B64_ALPHABET)]
        else:
            replacement = chr(byte ^ 0x01)
        yield f"next-char@{i}", text[:i] + replacement + text[i + 1 :]
        yield f"invert@{i}", (data[:i] + bytes([byte ^ 0xFF]) + data[i + 1 :]).decode("latin-1")
    for i in (0, len(data) // 2, len(data) - 1):
        for bit in range(8):
            flipped = data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :]
            yield f"bit{bit}@{i}", flipped.decode("latin-1")
