"""TLS public-key pins: the SHA-256 of a server certificate's SubjectPublicKeyInfo (SPKI).

The one rule: a pin names a KEY, not a certificate, and is compared in constant time. Pinning
the SPKI (not the whole certificate, which is what aiohttp's `Fingerprint` does) lets the
server renew its certificate with the same key without breaking clients, while a different
key under the same host name is refused.

Text form: `sha256//<standard base64>` — the form curl's `--pinnedpubkey` takes, so an
operator can check a server by hand with the pin from `admin.toml`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

import attrs

from rustynet.domain.errors import DecodeError, RemoteProtocolError
from rustynet.domain.keys import constant_time_equal

PIN_PREFIX: Final = "sha256//"
SHA256_SIZE: Final = 32


class PinMismatch(RemoteProtocolError):  # noqa: N818 - names the fact, like KeyNotFound
    """The server presented a public key other than the pinned one."""


def _digest(_: object, attribute: attrs.Attribute[bytes], value: object) -> None:
    if not isinstance(value, bytes) or len(value) != SHA256_SIZE:
        raise DecodeError(f"{attribute.name} must be {SHA256_SIZE} bytes")


@attrs.frozen
class SpkiPin:
    """SHA-256 of a DER SubjectPublicKeyInfo."""

    digest: bytes = attrs.field(validator=_digest)

    @classmethod
    def from_text(cls, text: str) -> SpkiPin:
        """Parse `sha256//<base64>`; anything else raises `DecodeError`."""
        if not isinstance(text, str) or not text.startswith(PIN_PREFIX) or not text.isascii():
            raise DecodeError(f"a TLS pin looks like {PIN_PREFIX}<base64 of 32 bytes>")
        body = text[len(PIN_PREFIX) :]
        try:
            digest = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DecodeError("the TLS pin is not valid base64") from exc
        if base64.b64encode(digest).decode("ascii") != body:
            raise DecodeError("the TLS pin is not canonical base64")
        return cls(digest)

    def to_text(self) -> str:
        """`sha256//<base64>`."""
        return PIN_PREFIX + base64.b64encode(self.digest).decode("ascii")

    def check(self, presented: SpkiPin) -> None:
        """Raise `PinMismatch` unless `presented` is this pin (constant-time compare)."""
        if not constant_time_equal(self.digest, presented.digest):
            raise PinMismatch(
                f"the server's TLS key {presented.to_text()} is not the pinned {self.to_text()}"
            )

    def __str__(self) -> str:
        return self.to_text()
