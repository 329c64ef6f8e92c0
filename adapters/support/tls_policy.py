"""The TLS 1.3 key exchange groups and cipher suites Rustynet offers, held to the crypto policy.

Every TLS context Rustynet makes (the control and relay servers,
`rustynet.adapters.http_api.tls.server_ssl_context`; the pinned client,
`rustynet.adapters.control_client.pinned_ssl_context`) goes through `restrict_to_policy`, which
sets exactly `GROUPS` and `CIPHERSUITES`. OpenSSL's defaults offer more: ffdhe2048 (DH-2048 is
denied by the policy), ffdhe3072-8192, X448, P-384 and P-521, and TLS_AES_128_GCM_SHA256.

How: Python 3.11's `ssl` sets one group (`set_ecdh_curve`) and no TLS 1.3 suites, so the two
OpenSSL calls are made through `ctypes` on the context's `SSL_CTX`:
`SSL_CTX_set1_groups_list` (the macro `SSL_CTX_ctrl(ctx, SSL_CTRL_SET_GROUPS_LIST, ...)`) and
`SSL_CTX_set_ciphersuites`. The symbols are looked up through the `_ssl` extension's own handle,
so they come from the very libssl that `ssl` is linked against. The `SSL_CTX *` is the first
field after the object header of CPython's `PySSLContext` (unchanged since 3.2); before using
it the pointer is checked against values read through the `ssl` API (the options word and the
minimum protocol version must match what OpenSSL returns for it), and after setting, the
suites are read back with `get_ciphers()`. Anything unexpected (not CPython, symbols missing,
a mismatch, OpenSSL refusing a name) raises `TlsPolicyError`: the program refuses to start
rather than offer OpenSSL's defaults.

Why not an OpenSSL configuration file (`OPENSSL_CONF` with `Groups`/`Ciphersuites` in a
`system_default` section): OpenSSL reads it once, at its first initialisation in the process,
so it only works if every entry point sets the variable before anything (`hashlib`, `ssl`, a
test runner) touches OpenSSL; set too late it is silently ignored and the defaults come back
(fail open). It also replaces the distribution's configuration, is inherited by child
processes, and applies to every context in the process. `ctypes` acts on exactly the contexts
Rustynet makes and fails closed.
"""

from __future__ import annotations

import _ssl
import ctypes
import ssl
import sys
from collections.abc import Mapping
from typing import Final

from rustynet.domain.crypto_policy import AlgorithmUse, Use
from rustynet.domain.errors import LocalProtocolError

# OpenSSL group name -> the crypto-policy algorithm it is (key agreement). Order = preference.
GROUPS: Final[Mapping[str, str]] = {"X25519": "X25519", "P-256": "ECDH-P256"}
# Curve short names (`ssl.SSLContext.set_ecdh_curve`, OpenSSL's OBJ names) of the same groups.
GROUP_SHORT_NAMES: Final[Mapping[str, str]] = {"X25519": "X25519", "prime256v1": "P-256"}
# TLS 1.3 suite -> (AEAD, key-schedule KDF, transcript hash), as the policy names them.
CIPHERSUITES: Final[Mapping[str, tuple[str, str, str]]] = {
    "TLS_AES_256_GCM_SHA384": ("AES-256-GCM", "HKDF-SHA-384", "SHA-384"),
    "TLS_CHACHA20_POLY1305_SHA256": ("ChaCha20-Poly1305", "HKDF-SHA-256", "SHA-256"),
}

_SSL_CTRL_SET_GROUPS_LIST: Final = 92
_SSL_CTRL_GET_MIN_PROTO_VERSION: Final = 130
_TLS1_3_VERSION: Final = 0x0304


class TlsPolicyError(LocalProtocolError):
    """The TLS context could not be held to the crypto policy; nothing is served with it."""


def group_uses(group: str) -> tuple[AlgorithmUse, ...]:
    """The policy uses behind an OpenSSL group name; KeyError for a group we do not offer."""
    return (AlgorithmUse(GROUPS[group], Use.KEY_AGREEMENT, f"TLS 1.3 group {group}"),)


def suite_uses(suite: str) -> tuple[AlgorithmUse, ...]:
    """The policy uses behind a TLS 1.3 suite; KeyError for a suite we do not offer."""
    aead, kdf, digest = CIPHERSUITES[suite]
    where = f"TLS 1.3 suite {suite}"
    return (
        AlgorithmUse(aead, Use.ENCRYPT, where),
        AlgorithmUse(aead, Use.DECRYPT, where),
        AlgorithmUse(kdf, Use.KDF, where),
        AlgorithmUse(digest, Use.HASH, where),
    )


def offered_suites(context: ssl.SSLContext) -> frozenset[str]:
    """The TLS 1.3 suites `context` offers, read from OpenSSL."""
    return frozenset(c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.3")


class _Libssl:
    """The three libssl functions, from the library the `_ssl` extension is linked against."""

    def __init__(self) -> None:
        if sys.implementation.name != "cpython":
            raise TlsPolicyError(f"cannot set TLS groups on {sys.implementation.name}")
        try:
            lib = ctypes.CDLL(_ssl.__file__)
            self.ctrl = lib.SSL_CTX_ctrl
            self.get_options = lib.SSL_CTX_get_options
            self.set_ciphersuites = lib.SSL_CTX_set_ciphersuites
        except (OSError, AttributeError) as exc:
            raise TlsPolicyError(f"cannot reach libssl to set TLS groups: {exc}") from exc
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.ctrl.restype = ctypes.c_long
        self.get_options.argtypes = [ctypes.c_void_p]
        self.get_options.restype = ctypes.c_uint64
        self.set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.set_ciphersuites.restype = ctypes.c_int

    def ssl_ctx(self, context: ssl.SSLContext) -> int:
        """The `SSL_CTX *` of `context`, checked against what `ssl` reports for it."""
        if context.minimum_version != ssl.TLSVersion.TLSv1_3:
            raise TlsPolicyError("restrict_to_policy expects a TLS 1.3-only context")
        pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
        if not pointer:
            raise TlsPolicyError("the TLS context has no SSL_CTX")
        if (
            self.get_options(pointer) != context.options
            or self.ctrl(pointer, _SSL_CTRL_GET_MIN_PROTO_VERSION, 0, None) != _TLS1_3_VERSION
        ):
            raise TlsPolicyError("the TLS context's SSL_CTX does not match; not using it")
        return pointer


_LIBSSL: _Libssl | None = None


def restrict_to_policy(context: ssl.SSLContext) -> None:
    """Make `context` offer only `GROUPS` and `CIPHERSUITES`; TlsPolicyError if it cannot."""
    global _LIBSSL  # noqa: PLW0603 - one lookup per process
    if _LIBSSL is None:
        _LIBSSL = _Libssl()
    lib = _LIBSSL
    pointer = lib.ssl_ctx(context)
    groups = ctypes.c_char_p(":".join(GROUPS).encode("ascii"))
    if lib.ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups) != 1:
        raise TlsPolicyError(f"OpenSSL refused the TLS groups {':'.join(GROUPS)}")
    if lib.set_ciphersuites(pointer, ":".join(CIPHERSUITES).encode("ascii")) != 1:
        raise TlsPolicyError(f"OpenSSL refused the TLS 1.3 suites {':'.join(CIPHERSUITES)}")
    if offered_suites(context) != frozenset(CIPHERSUITES):
        raise TlsPolicyError("the TLS context offers other TLS 1.3 suites than the policy's")
