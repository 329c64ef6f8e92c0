"""Server TLS context for the control API and the relay.

The one rule: TLS 1.3 and nothing else. Minimum and maximum protocol version are both pinned
to TLSv1_3, so a client that cannot speak 1.3 fails the handshake (no fallback, no 1.2 cipher
negotiation to audit); tests read the negotiated version off the live connection. Key exchange
groups and TLS 1.3 suites are only those of the crypto policy
(`rustynet.adapters.support.tls_policy.restrict_to_policy`).

A refused handshake is answered with its TLS alert. asyncio's (and uvloop's) SSL protocol
closes the transport as soon as `do_handshake()` raises, before it writes what OpenSSL queued
in the outgoing buffer, so a TLS 1.2 client saw a bare EOF instead of `protocol_version`, and a
client with no common group saw EOF instead of `handshake_failure`. `_AlertingSSLObject` turns
the first failure into "want read" while an alert is queued: the protocol then flushes the
alert to the client, and the next call (the client's next bytes or its close) raises the real
error. A client that neither answers nor closes is dropped by the TLS handshake timeout, as any
client that stalls in the handshake is.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from rustynet.adapters.support.tls_policy import restrict_to_policy

from rustynet.domain.errors import LocalProtocolError


class TlsConfigError(LocalProtocolError):
    """The certificate or key could not be loaded (path, format or mismatch): an operator
    mistake caught before serving."""


class _AlertingSSLObject(ssl.SSLObject):
    """Flushes the alert of a refused handshake before the refusal closes the connection."""

    _outgoing: ssl.MemoryBIO | None = None
    _refusal: ssl.SSLError | None = None

    def do_handshake(self) -> None:
        if self._refusal is not None:
            raise self._refusal
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            if self._outgoing is None or not self._outgoing.pending:
                raise
            self._refusal = exc
            raise ssl.SSLWantReadError("handshake refused; sending the alert first") from exc


class _ServerContext(ssl.SSLContext):
    """An `SSLContext` whose SSL objects know their outgoing buffer (see the module doc)."""

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        sslobj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        if isinstance(sslobj, _AlertingSSLObject):
            sslobj._outgoing = outgoing
        return sslobj


def server_ssl_context(cert_path: Path | str, key_path: Path | str) -> ssl.SSLContext:
    """Server context: TLS 1.3 only, the policy's groups and suites, certificate chain from
    `cert_path`, key from `key_path`. Raises `TlsConfigError` for an unloadable certificate or
    key, `rustynet.adapters.support.tls_policy.TlsPolicyError` if the policy cannot be applied."""
    context = _ServerContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    # No session tickets to resume from: every connection does a full 1.3 handshake, and no
    # ticket key lives in process memory for the server's lifetime.
    context.options |= ssl.OP_NO_TICKET
    context.sslobject_class = _AlertingSSLObject
    restrict_to_policy(context)
    try:
        context.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot load TLS certificate/key: {exc.__class__.__name__}") from exc
    return context
