"""Server TLS context for the control API.

The one rule: TLS 1.3 and nothing else. Minimum and maximum protocol version are both pinned
to TLSv1_3, so a client that cannot speak 1.3 fails the handshake (no fallback, no 1.2 cipher
negotiation to audit); tests read the negotiated version off the live connection.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from rustynet.domain.errors import LocalProtocolError


class TlsConfigError(LocalProtocolError):
    """The certificate or key could not be loaded (path, format or mismatch): an operator
    mistake caught before serving."""


def server_ssl_context(cert_path: Path | str, key_path: Path | str) -> ssl.SSLContext:
    """Server context: TLS 1.3 only, certificate chain from `cert_path`, key from `key_path`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    # No session tickets to resume from: every connection does a full 1.3 handshake, and no
    # ticket key lives in process memory for the server's lifetime.
    context.options |= ssl.OP_NO_TICKET
    try:
        context.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot load TLS certificate/key: {exc.__class__.__name__}") from exc
    return context
