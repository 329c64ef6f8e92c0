"""Control API client port: what the admin CLI (and later the node daemon) calls on the server.

The one rule: a failure says whose fault it is in a way the CLI can map to one exit code —
`ControlRejected` (the server answered and said no: 4xx/5xx with its JSON error),
`ControlUnreachable` (no answer: connection refused, timeout, TLS failure) and its subclass
`ControlUntrusted` (an answer from a server whose TLS key is not the pinned one: nothing was
sent to it). Implemented by `rustynet.adapters.control_client.ControlClient`; the composition
root builds it from `admin.toml`.

Every admin method takes and returns the typed wire bodies of `rustynet.ports.wire.v1`
(documented in `docs/control-api.md`); the CLI formats them.
"""

from __future__ import annotations

from typing import Protocol, TypeAlias, TypeVar

from rustynet.domain.errors import RustynetError
from rustynet.ports.wire.codec import WireError, decode
from rustynet.ports.wire.v1 import (
    ApiKeyInfo,
    AuditEntryInfo,
    AuditVerifyResult,
    CreateApiKeyRequest,
    CreatedApiKey,
    CreatedJoinKey,
    CreateJoinKeyRequest,
    JoinKeyInfo,
    NodeInfo,
    PolicyCheckResult,
    PolicyInfo,
    UpdateNodeRequest,
)

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"
JsonObject: TypeAlias = "dict[str, JsonValue]"
_W = TypeVar("_W")


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


def decode_answer(route: str, answer: object, cls: type[_W]) -> _W:
    """A server's answer as its wire type `cls` (the one strict converter). Anything else is
    `ControlUnreachable` naming the route and the fields, never a half-built value: a client
    cannot act on an answer it does not understand, and may retry."""
    try:
        return decode(answer, cls)
    except WireError as exc:
        raise ControlUnreachable(f"{route}: the server sent a bad answer: {exc.detail}") from exc


class AdminApi(Protocol):
    """The admin routes of control API v1 (`/v1/admin/...`), authenticated by an API key.

    Contract: each call is one HTTPS request on a connection whose server SPKI was checked
    against the pin before any request byte was written; it takes and returns the wire types
    of `rustynet.ports.wire.v1` (an answer that is not exactly that type is
    `ControlUnreachable`); failures raise the errors above.
    """

    async def create_join_key(self, request: CreateJoinKeyRequest) -> CreatedJoinKey:
        """`POST /v1/admin/join-keys` (the token is in this answer only)."""
        ...

    async def list_join_keys(self) -> tuple[JoinKeyInfo, ...]:
        """`GET /v1/admin/join-keys` (no secrets)."""
        ...

    async def revoke_join_key(self, key_id: str) -> JoinKeyInfo:
        """`DELETE /v1/admin/join-keys/{id}`."""
        ...

    async def list_nodes(self) -> tuple[NodeInfo, ...]:
        """`GET /v1/admin/nodes`."""
        ...

    async def get_node(self, node_id: str) -> NodeInfo:
        """`GET /v1/admin/nodes/{id}`."""
        ...

    async def update_node(self, node_id: str, request: UpdateNodeRequest) -> NodeInfo:
        """`PATCH /v1/admin/nodes/{id}` (absent fields stay as they are)."""
        ...

    async def revoke_node(self, node_id: str) -> NodeInfo:
        """`POST /v1/admin/nodes/{id}/revoke`."""
        ...

    async def delete_node(self, node_id: str) -> None:
        """`DELETE /v1/admin/nodes/{id}` (204)."""
        ...

    async def create_api_key(self, request: CreateApiKeyRequest) -> CreatedApiKey:
        """`POST /v1/admin/api-keys` (the key is in this answer only)."""
        ...

    async def list_api_keys(self) -> tuple[ApiKeyInfo, ...]:
        """`GET /v1/admin/api-keys`."""
        ...

    async def revoke_api_key(self, key_id: str) -> ApiKeyInfo:
        """`DELETE /v1/admin/api-keys/{id}`."""
        ...

    async def get_policy(self) -> PolicyInfo:
        """`GET /v1/admin/policy`."""
        ...

    async def put_policy(self, document: JsonObject) -> PolicyInfo:
        """`PUT /v1/admin/policy`."""
        ...

    async def check_policy(self, document: JsonObject) -> PolicyCheckResult:
        """`POST /v1/admin/policy/check`."""
        ...

    async def list_audit(
        self, *, start: int = 0, limit: int | None = None
    ) -> tuple[AuditEntryInfo, ...]:
        """`GET /v1/admin/audit?start=&limit=`."""
        ...

    async def verify_audit(self) -> AuditVerifyResult:
        """`POST /v1/admin/audit/verify`."""
        ...

    async def close(self) -> None:
        """Close connections; idempotent."""
        ...
