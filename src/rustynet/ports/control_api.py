"""Control API client port: what the admin CLI (and later the node daemon) calls on the server.

The one rule: a failure says whose fault it is in a way the CLI can map to one exit code —
`ControlRejected` (the server answered and said no: 4xx/5xx with its JSON error),
`ControlUnreachable` (no answer: connection refused, timeout, TLS failure) and its subclass
`ControlUntrusted` (an answer from a server whose TLS key is not the pinned one: nothing was
sent to it). Implemented by `rustynet.adapters.control_client.ControlClient`; the composition
root builds it from `admin.toml`.

Every admin method returns the server's JSON (`JsonObject`) as documented in
`docs/control-api.md`; the CLI formats it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeAlias

from rustynet.domain.errors import RustynetError

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
JsonObject: TypeAlias = "dict[str, JsonValue]"


class ControlApiError(RustynetError):
    """A control API call failed; the message is for the operator (never holds a secret)."""


class ControlRejected(ControlApiError):  # noqa: N818 - names the outcome, like CredentialRejected
    """The server answered with an error document (`{"error", "detail", "pointer"?}`)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        pointer: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        where = f" at {pointer}" if pointer else ""
        super().__init__(f"server refused ({status} {code}){where}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.pointer = pointer
        self.retry_after = retry_after


class ControlUnreachable(ControlApiError):  # noqa: N818 - names the state, like StoreUnavailable
    """No usable answer: connection refused, DNS, timeout, TLS handshake failure, bad JSON."""


class ControlUntrusted(ControlUnreachable):
    """The server's TLS key is not the pinned one; the request was never sent."""


class AdminApi(Protocol):
    """The admin routes of control API v1 (`/v1/admin/...`), authenticated by an API key.

    Contract: each call is one HTTPS request on a connection whose server SPKI was checked
    against the pin before any request byte was written; failures raise the errors above.
    """

    async def create_join_key(
        self, *, reusable: bool, uses: int | None, tags: Sequence[str], ttl_seconds: int
    ) -> JsonObject:
        """`POST /v1/admin/join-keys` → `{"id", "token", "expires_at", ...}`."""
        ...

    async def list_join_keys(self) -> list[JsonValue]:
        """`GET /v1/admin/join-keys` (no secrets)."""
        ...

    async def revoke_join_key(self, key_id: str) -> JsonObject:
        """`DELETE /v1/admin/join-keys/{id}`."""
        ...

    async def list_nodes(self) -> list[JsonValue]:
        """`GET /v1/admin/nodes`."""
        ...

    async def get_node(self, node_id: str) -> JsonObject:
        """`GET /v1/admin/nodes/{id}`."""
        ...

    async def update_node(
        self, node_id: str, *, name: str | None = None, tags: Sequence[str] | None = None
    ) -> JsonObject:
        """`PATCH /v1/admin/nodes/{id}`."""
        ...

    async def revoke_node(self, node_id: str) -> JsonObject:
        """`POST /v1/admin/nodes/{id}/revoke`."""
        ...

    async def delete_node(self, node_id: str) -> JsonObject:
        """`DELETE /v1/admin/nodes/{id}`."""
        ...

    async def create_api_key(self, *, scope: str, ttl_seconds: int | None) -> JsonObject:
        """`POST /v1/admin/api-keys` → `{"id", "key", ...}` (the key is shown once)."""
        ...

    async def list_api_keys(self) -> list[JsonValue]:
        """`GET /v1/admin/api-keys`."""
        ...

    async def revoke_api_key(self, key_id: str) -> JsonObject:
        """`DELETE /v1/admin/api-keys/{id}`."""
        ...

    async def get_policy(self) -> JsonObject:
        """`GET /v1/admin/policy`."""
        ...

    async def put_policy(self, document: JsonObject) -> JsonObject:
        """`PUT /v1/admin/policy`."""
        ...

    async def check_policy(self, document: JsonObject) -> JsonObject:
        """`POST /v1/admin/policy/check`."""
        ...

    async def list_audit(self, *, start: int = 0, limit: int | None = None) -> JsonObject:
        """`GET /v1/admin/audit?start=&limit=`."""
        ...

    async def verify_audit(self) -> JsonObject:
        """`POST /v1/admin/audit/verify`."""
        ...

    async def close(self) -> None:
        """Close connections; idempotent."""
        ...
