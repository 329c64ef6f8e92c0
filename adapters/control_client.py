"""HTTPS client for control API v1 that trusts the server by its SPKI pin, TLS 1.3 only.

The one rule: no request byte (and so no bearer credential) is written to a connection until
the server's public key matched the pin. The check runs INSIDE the TLS handshake: the SSL
context's `sslobject_class` is a subclass whose `do_handshake()` hashes the peer certificate's
SubjectPublicKeyInfo and raises an `ssl.SSLCertVerificationError` on a mismatch, so asyncio
(and uvloop) fail the connection before aiohttp ever gets a transport to write the request on.
Every new pooled connection goes through a handshake, so every connection is checked.

Why not aiohttp's `Fingerprint`: it pins the SHA-256 of the whole certificate (a renewal with
the same key breaks clients) and it does not let us require TLS 1.3 on the same context.
Certificate chains and host names are deliberately NOT checked (CERT_NONE): the pin is the
trust anchor, as the certificate is self-signed (`rustynet.adapters.tls_cert`).

Errors map to `rustynet.ports.control_api`: `ControlRejected` (the server said no),
`ControlUntrusted` (TLS failed or the key is not the pinned one), `ControlUnreachable`.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote, urlsplit

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rustynet.adapters.support.tls_policy import restrict_to_policy

from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.tls_pin import PinMismatch, SpkiPin
from rustynet.ports.control_api import (
    ControlRejected,
    ControlUnreachable,
    ControlUntrusted,
    JsonObject,
    JsonValue,
)
from rustynet.ports.control_plane import NodeCredentials

DEFAULT_TIMEOUT: Final = 30.0
PEERMAP_TIMEOUT: Final = 90.0  # the server holds a long-poll for up to ~60 s
MAX_RESPONSE: Final = 16 * 1024 * 1024


class PinnedKeyMismatch(ssl.SSLCertVerificationError):
    """Raised inside the handshake: the server's SPKI is not the pinned one."""


def spki_pin_of_certificate(der: bytes) -> SpkiPin:
    """SHA-256 of the DER certificate's SubjectPublicKeyInfo."""
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return SpkiPin(hashlib.sha256(spki).digest())


def pinned_ssl_context(pin: SpkiPin) -> ssl.SSLContext:
    """A client context: TLS 1.3 only with the crypto policy's groups and suites
    (`rustynet.adapters.support.tls_policy`), no CA/hostname checks, SPKI pin checked in the
    handshake."""

    class _PinnedSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            der = self.getpeercert(binary_form=True)
            if not der:
                raise PinnedKeyMismatch("the server sent no certificate")
            try:
                pin.check(spki_pin_of_certificate(der))
            except PinMismatch as exc:
                raise PinnedKeyMismatch(str(exc)) from exc
            except ValueError as exc:
                raise PinnedKeyMismatch("cannot parse the server certificate") from exc

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the pin is the trust anchor (see the module docstring)
    context.sslobject_class = _PinnedSSLObject
    restrict_to_policy(context)
    return context


# A node's access token and id for the node routes (`Bearer v4.public...`): the port's value,
# so `rustynet.adapters.control_plane_http` can drive these routes with the agent's credentials.
NodeAuth = NodeCredentials


async def _read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body, up to `limit` bytes. `read(n)` returns what has arrived (up to n), not n
    bytes: a body larger than one read (a big policy document, a peer map with many peers)
    came back cut short and failed as invalid JSON."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _redacted(path: str) -> str:
    return path.split("?", 1)[0]


class ControlClient:
    """The routes of control API v1 over HTTPS with SPKI pinning, JSON in and JSON out.

    Typed on top: `rustynet.adapters.control_admin_http.HttpAdminApi` (the `AdminApi` port)
    and `rustynet.adapters.control_plane_http.HttpControlPlane` (the node routes) turn the
    answers into the wire types of `rustynet.ports.wire.v1`.

    The constructor does no I/O; the aiohttp session is made on first use inside the running
    loop. `api_key` (the `rnk_...` text, as bytes) authenticates the admin routes;
    `local_addr` (host, port) binds the client's source address (benchmarks spread simulated
    nodes over loopback addresses).
    """

    def __init__(
        self,
        url: str,
        pin: SpkiPin,
        *,
        api_key: bytes | bytearray | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        local_addr: tuple[str, int] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise LocalProtocolError(f"the control URL must be https://HOST[:PORT], got {url!r}")
        self._base = f"https://{parts.netloc}"
        self._pin = pin
        self._api_key = bytearray(api_key) if api_key is not None else None
        self._timeout = timeout
        self._local_addr = local_addr
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        """`https://HOST:PORT` of the server."""
        return self._base

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=pinned_ssl_context(self._pin), limit=16, local_addr=self._local_addr
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                json_serialize=json.dumps,
            )
        return self._session

    async def reset(self) -> None:
        """Close every connection (requests in flight fail as `ControlUnreachable`); the next
        request opens a new session. The API key stays."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def close(self) -> None:
        """Close connections and wipe the API key; idempotent."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._api_key is not None:
            self._api_key[:] = bytes(len(self._api_key))
            self._api_key = None

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # --- transport -----------------------------------------------------------------------

    def _admin_headers(self) -> dict[str, str]:
        if self._api_key is None:
            raise LocalProtocolError("this client has no API key for the admin routes")
        return {"Authorization": "Bearer " + self._api_key.decode("ascii")}

    @staticmethod
    def _node_headers(auth: NodeAuth) -> dict[str, str]:
        return {"Authorization": f"Bearer {auth.access_token}", "Rustynet-Node": auth.node_id}

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, JsonValue]:
        """One request; returns (status, parsed JSON or None for 204). Raises on errors."""
        session = self._ensure_session()
        kwargs: dict[str, Any] = {"headers": dict(headers or {}), "allow_redirects": False}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode("utf-8")
            kwargs["headers"]["Content-Type"] = "application/json"
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
        where = f"{method} {self._base}{_redacted(path)}"
        try:
            async with session.request(method, self._base + path, **kwargs) as response:
                raw = await _read_capped(response.content, MAX_RESPONSE + 1)
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except aiohttp.ClientSSLError as exc:
            raise ControlUntrusted(
                f"{where}: cannot trust the server ({_ssl_reason(exc)}); nothing was sent"
            ) from exc
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            raise ControlUnreachable(f"{where}: the server did not answer in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ControlUnreachable(f"{where}: cannot reach the server: {exc}") from exc
        if len(raw) > MAX_RESPONSE:
            raise ControlUnreachable(f"{where}: the response is too large")
        if status == 204 or (not raw and 200 <= status < 300):
            return status, None
        try:
            parsed: JsonValue = json.loads(raw)
        except ValueError as exc:
            if status >= 400:
                raise ControlRejected(
                    status, "unknown", f"HTTP {status} without a JSON body"
                ) from None
            raise ControlUnreachable(f"{where}: the server sent invalid JSON") from exc
        if status >= 400:
            raise _rejected(status, parsed, retry_after)
        return status, parsed

    async def _admin(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> JsonValue:
        _, parsed = await self.request(method, path, body=body, headers=self._admin_headers())
        return parsed

    async def _admin_object(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> JsonObject:
        parsed = await self._admin(method, path, body)
        if parsed is None:
            return {}
        if not isinstance(parsed, dict):
            raise ControlUnreachable(f"{method} {path}: expected a JSON object from the server")
        return parsed

    async def _admin_list(self, path: str, field: str) -> list[JsonValue]:
        parsed = await self._admin("GET", path)
        if isinstance(parsed, dict):
            parsed = parsed.get(field)
        if not isinstance(parsed, list):
            raise ControlUnreachable(f"GET {path}: expected a list of {field} from the server")
        return parsed

    # --- admin routes (raw JSON) ---------------------------------------------------------

    async def create_join_key(
        self, *, reusable: bool, uses: int | None, tags: Sequence[str], ttl_seconds: int
    ) -> JsonObject:
        """`POST /v1/admin/join-keys`."""
        body: dict[str, Any] = {"reusable": reusable, "tags": list(tags)}
        body["ttl_seconds"] = ttl_seconds
        if uses is not None:
            body["uses"] = uses
        return await self._admin_object("POST", "/v1/admin/join-keys", body)

    async def list_join_keys(self) -> list[JsonValue]:
        """`GET /v1/admin/join-keys`."""
        return await self._admin_list("/v1/admin/join-keys", "join_keys")

    async def revoke_join_key(self, key_id: str) -> JsonObject:
        """`DELETE /v1/admin/join-keys/{id}`."""
        return await self._admin_object("DELETE", f"/v1/admin/join-keys/{_seg(key_id)}")

    async def list_nodes(self) -> list[JsonValue]:
        """`GET /v1/admin/nodes`."""
        return await self._admin_list("/v1/admin/nodes", "nodes")

    async def get_node(self, node_id: str) -> JsonObject:
        """`GET /v1/admin/nodes/{id}`."""
        return await self._admin_object("GET", f"/v1/admin/nodes/{_seg(node_id)}")

    async def update_node(
        self, node_id: str, *, name: str | None = None, tags: Sequence[str] | None = None
    ) -> JsonObject:
        """`PATCH /v1/admin/nodes/{id}`."""
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if tags is not None:
            body["tags"] = list(tags)
        return await self._admin_object("PATCH", f"/v1/admin/nodes/{_seg(node_id)}", body)

    async def revoke_node(self, node_id: str) -> JsonObject:
        """`POST /v1/admin/nodes/{id}/revoke`."""
        return await self._admin_object("POST", f"/v1/admin/nodes/{_seg(node_id)}/revoke", {})

    async def delete_node(self, node_id: str) -> JsonObject:
        """`DELETE /v1/admin/nodes/{id}`."""
        return await self._admin_object("DELETE", f"/v1/admin/nodes/{_seg(node_id)}")

    async def create_api_key(
        self, *, scope: str, ttl_seconds: int | None, description: str = ""
    ) -> JsonObject:
        """`POST /v1/admin/api-keys`."""
        body: dict[str, Any] = {"scope": scope}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        if description:
            body["description"] = description
        return await self._admin_object("POST", "/v1/admin/api-keys", body)

    async def list_api_keys(self) -> list[JsonValue]:
        """`GET /v1/admin/api-keys`."""
        return await self._admin_list("/v1/admin/api-keys", "api_keys")

    async def revoke_api_key(self, key_id: str) -> JsonObject:
        """`DELETE /v1/admin/api-keys/{id}`."""
        return await self._admin_object("DELETE", f"/v1/admin/api-keys/{_seg(key_id)}")

    async def get_policy(self) -> JsonObject:
        """`GET /v1/admin/policy`."""
        return await self._admin_object("GET", "/v1/admin/policy")

    async def put_policy(self, document: JsonObject) -> JsonObject:
        """`PUT /v1/admin/policy`."""
        return await self._admin_object("PUT", "/v1/admin/policy", document)

    async def check_policy(self, document: JsonObject) -> JsonObject:
        """`POST /v1/admin/policy/check`."""
        return await self._admin_object("POST", "/v1/admin/policy/check", document)

    async def list_audit(self, *, start: int = 0, limit: int | None = None) -> JsonObject:
        """`GET /v1/admin/audit?start=&limit=`."""
        query = f"?start={int(start)}" + (f"&limit={int(limit)}" if limit is not None else "")
        return await self._admin_object("GET", "/v1/admin/audit" + query)

    async def verify_audit(self) -> JsonObject:
        """`POST /v1/admin/audit/verify`."""
        return await self._admin_object("POST", "/v1/admin/audit/verify", {})

    # --- node routes ---------------------------------------------------------------------

    async def _node_object(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        auth: NodeAuth | None = None,
    ) -> JsonObject:
        headers = self._node_headers(auth) if auth is not None else {}
        _, parsed = await self.request(method, path, body=body, headers=headers)
        if parsed is None:
            return {}
        if not isinstance(parsed, dict):
            raise ControlUnreachable(f"{method} {path}: expected a JSON object from the server")
        return parsed

    async def enroll(
        self,
        *,
        join_secret: str,
        identity_key: str,
        tunnel_key: str,
        tunnel_key_binding: str,
        hostname: str,
        requested_tags: Sequence[str] | None = None,
    ) -> JsonObject:
        """`POST /v1/enroll` → `{"challenge_id", "expires_at"}`."""
        body: dict[str, Any] = {
            "join_secret": join_secret,
            "identity_key": identity_key,
            "tunnel_key": tunnel_key,
            "tunnel_key_binding": tunnel_key_binding,
            "hostname": hostname,
        }
        if requested_tags is not None:
            body["requested_tags"] = list(requested_tags)
        return await self._node_object("POST", "/v1/enroll", body)

    async def complete_enrollment(self, *, challenge_id: str, signature: str) -> JsonObject:
        """`POST /v1/enroll/complete` → node id, addresses, access token, trust."""
        body = {"challenge_id": challenge_id, "signature": signature}
        return await self._node_object("POST", "/v1/enroll/complete", body)

    async def token_challenge(self, *, node_id: str) -> JsonObject:
        """`POST /v1/token/challenge` → `{"challenge_id", "expires_at"}`."""
        return await self._node_object("POST", "/v1/token/challenge", {"node_id": node_id})

    async def renew_token(self, *, node_id: str, challenge_id: str, signature: str) -> JsonObject:
        """`POST /v1/token` → `{"access_token", "expires_at"}`."""
        body = {"node_id": node_id, "challenge_id": challenge_id, "signature": signature}
        return await self._node_object("POST", "/v1/token", body)

    async def rotate_tunnel_key(
        self, auth: NodeAuth, *, tunnel_key: str, tunnel_key_binding: str
    ) -> JsonObject:
        """`POST /v1/node/tunnel-key` → node view."""
        body = {"tunnel_key": tunnel_key, "tunnel_key_binding": tunnel_key_binding}
        return await self._node_object("POST", "/v1/node/tunnel-key", body, auth)

    async def put_endpoints(
        self,
        auth: NodeAuth,
        candidates: Sequence[Mapping[str, str]] = (),
        underlay_endpoints: Sequence[str] = (),
        nat_classification: str | None = None,
    ) -> None:
        """`PUT /v1/node/endpoints` (204); `underlay_endpoints` is the previous version's shape."""
        body: dict[str, object] = {"candidates": [dict(c) for c in candidates]}
        if underlay_endpoints:
            body["underlay_endpoints"] = list(underlay_endpoints)
        if nat_classification is not None:
            body["nat_classification"] = nat_classification
        await self.request("PUT", "/v1/node/endpoints", body=body, headers=self._node_headers(auth))

    async def peer_map(
        self,
        auth: NodeAuth,
        *,
        after: int = 0,
        wait: int | None = None,
        timeout: float = PEERMAP_TIMEOUT,
    ) -> JsonObject | None:
        """`GET /v1/peermap?after=N[&wait=S]`: `{"envelope", "trust"}`, or None when the poll ran
        out (after the server's long-poll time, or `wait` seconds when shorter)."""
        query = f"after={int(after)}" + ("" if wait is None else f"&wait={int(wait)}")
        _, parsed = await self.request(
            "GET",
            f"/v1/peermap?{query}",
            headers=self._node_headers(auth),
            timeout=timeout,
        )
        if parsed is None:
            return None
        if not isinstance(parsed, dict):
            raise ControlUnreachable("GET /v1/peermap: expected a JSON object from the server")
        return parsed

    async def relay_token(self, auth: NodeAuth, *, relay_id: str) -> JsonObject:
        """`POST /v1/relay-token` → `{"token", "expires_at"}` (404 for an unknown relay)."""
        return await self._node_object("POST", "/v1/relay-token", {"relay_id": relay_id}, auth)

    async def healthz(self) -> JsonObject:
        """`GET /healthz`."""
        return await self._node_object("GET", "/healthz", None)


def _seg(text: str) -> str:
    return quote(text, safe="")


def _ssl_reason(exc: aiohttp.ClientSSLError) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, PinnedKeyMismatch):
            return str(cause.args[0]) if cause.args else "the TLS key is not the pinned one"
        cause = cause.__cause__ or cause.__context__ or getattr(cause, "os_error", None)
        if cause is exc:
            break
    return str(exc)


def _rejected(status: int, parsed: JsonValue, retry_after: str | None) -> ControlRejected:
    code, detail, pointer = "unknown", f"HTTP {status}", None
    if isinstance(parsed, dict):
        code = str(parsed.get("error", code))
        detail = str(parsed.get("detail", detail))
        raw_pointer = parsed.get("pointer")
        pointer = raw_pointer if isinstance(raw_pointer, str) else None
    seconds = int(retry_after) if retry_after is not None and retry_after.isdigit() else None
    return ControlRejected(status, code, detail, pointer=pointer, retry_after=seconds)


__all__ = [
    "ControlClient",
    "NodeAuth",
    "PinnedKeyMismatch",
    "pinned_ssl_context",
    "spki_pin_of_certificate",
]
