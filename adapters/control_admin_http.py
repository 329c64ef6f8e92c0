"""`AdminApi` over HTTPS: the admin routes of control API v1, typed, through the pinned client.

The one rule: this adapter only translates. Transport, TLS 1.3, the SPKI pin check and the API
key belong to `rustynet.adapters.control_client.ControlClient`, which bootstrap builds from
`admin.toml` and passes in; adapters do not import each other, so the client is typed here by
the routes it must offer (`AdminRoutes`, JSON in and out). Every answer becomes its wire type
of `rustynet.ports.wire.v1` through the one strict converter (`decode_answer`): an answer of
another shape is `ControlUnreachable`, never a half-read dictionary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from rustynet.ports.control_api import JsonObject, JsonValue, decode_answer
from rustynet.ports.wire.v1 import (
    ApiKeyInfo,
    ApiKeyList,
    AuditEntryInfo,
    AuditList,
    AuditVerifyResult,
    CreateApiKeyRequest,
    CreatedApiKey,
    CreatedJoinKey,
    CreateJoinKeyRequest,
    JoinKeyInfo,
    JoinKeyList,
    NodeInfo,
    NodeList,
    PolicyCheckResult,
    PolicyInfo,
    UpdateNodeRequest,
)

_W = TypeVar("_W")


class AdminRoutes(Protocol):
    """The admin routes of `ControlClient` this adapter drives (JSON in, JSON out)."""

    async def create_join_key(
        self, *, reusable: bool, uses: int | None, tags: Sequence[str], ttl_seconds: int
    ) -> JsonObject: ...
    async def list_join_keys(self) -> list[JsonValue]: ...
    async def revoke_join_key(self, key_id: str) -> JsonObject: ...
    async def list_nodes(self) -> list[JsonValue]: ...
    async def get_node(self, node_id: str) -> JsonObject: ...
    async def update_node(
        self, node_id: str, *, name: str | None = None, tags: Sequence[str] | None = None
    ) -> JsonObject: ...
    async def revoke_node(self, node_id: str) -> JsonObject: ...
    async def delete_node(self, node_id: str) -> JsonObject: ...
    async def create_api_key(
        self, *, scope: str, ttl_seconds: int | None, description: str = ""
    ) -> JsonObject: ...
    async def list_api_keys(self) -> list[JsonValue]: ...
    async def revoke_api_key(self, key_id: str) -> JsonObject: ...
    async def get_policy(self) -> JsonObject: ...
    async def put_policy(self, document: JsonObject) -> JsonObject: ...
    async def check_policy(self, document: JsonObject) -> JsonObject: ...
    async def list_audit(self, *, start: int = 0, limit: int | None = None) -> JsonObject: ...
    async def verify_audit(self) -> JsonObject: ...
    async def close(self) -> None: ...


def _listed(route: str, field: str, items: list[JsonValue], cls: type[_W]) -> _W:
    """A listing answer (`{field: [...]}`, of which the client returns the list) as `cls`."""
    return decode_answer(route, {field: items}, cls)


class HttpAdminApi:
    """`AdminApi` over a pinned `ControlClient` (`AdminRoutes`): typed requests and answers."""

    def __init__(self, client: AdminRoutes) -> None:
        self._client = client

    async def create_join_key(self, request: CreateJoinKeyRequest) -> CreatedJoinKey:
        """`POST /v1/admin/join-keys`."""
        answer = await self._client.create_join_key(
            reusable=request.reusable,
            uses=request.uses,
            tags=request.tags,
            ttl_seconds=request.ttl_seconds,
        )
        return decode_answer("POST /v1/admin/join-keys", answer, CreatedJoinKey)

    async def list_join_keys(self) -> tuple[JoinKeyInfo, ...]:
        """`GET /v1/admin/join-keys`."""
        items = await self._client.list_join_keys()
        return _listed("GET /v1/admin/join-keys", "join_keys", items, JoinKeyList).join_keys

    async def revoke_join_key(self, key_id: str) -> JoinKeyInfo:
        """`DELETE /v1/admin/join-keys/{id}`."""
        answer = await self._client.revoke_join_key(key_id)
        return decode_answer("DELETE /v1/admin/join-keys/{id}", answer, JoinKeyInfo)

    async def list_nodes(self) -> tuple[NodeInfo, ...]:
        """`GET /v1/admin/nodes`."""
        items = await self._client.list_nodes()
        return _listed("GET /v1/admin/nodes", "nodes", items, NodeList).nodes

    async def get_node(self, node_id: str) -> NodeInfo:
        """`GET /v1/admin/nodes/{id}`."""
        answer = await self._client.get_node(node_id)
        return decode_answer("GET /v1/admin/nodes/{id}", answer, NodeInfo)

    async def update_node(self, node_id: str, request: UpdateNodeRequest) -> NodeInfo:
        """`PATCH /v1/admin/nodes/{id}`."""
        answer = await self._client.update_node(node_id, name=request.name, tags=request.tags)
        return decode_answer("PATCH /v1/admin/nodes/{id}", answer, NodeInfo)

    async def revoke_node(self, node_id: str) -> NodeInfo:
        """`POST /v1/admin/nodes/{id}/revoke`."""
        answer = await self._client.revoke_node(node_id)
        return decode_answer("POST /v1/admin/nodes/{id}/revoke", answer, NodeInfo)

    async def delete_node(self, node_id: str) -> None:
        """`DELETE /v1/admin/nodes/{id}` (204, no body)."""
        await self._client.delete_node(node_id)

    async def create_api_key(self, request: CreateApiKeyRequest) -> CreatedApiKey:
        """`POST /v1/admin/api-keys`."""
        answer = await self._client.create_api_key(
            scope=request.scope, ttl_seconds=request.ttl_seconds, description=request.description
        )
        return decode_answer("POST /v1/admin/api-keys", answer, CreatedApiKey)

    async def list_api_keys(self) -> tuple[ApiKeyInfo, ...]:
        """`GET /v1/admin/api-keys`."""
        items = await self._client.list_api_keys()
        return _listed("GET /v1/admin/api-keys", "api_keys", items, ApiKeyList).api_keys

    async def revoke_api_key(self, key_id: str) -> ApiKeyInfo:
        """`DELETE /v1/admin/api-keys/{id}`."""
        answer = await self._client.revoke_api_key(key_id)
        return decode_answer("DELETE /v1/admin/api-keys/{id}", answer, ApiKeyInfo)

    async def get_policy(self) -> PolicyInfo:
        """`GET /v1/admin/policy`."""
        answer = await self._client.get_policy()
        return decode_answer("GET /v1/admin/policy", answer, PolicyInfo)

    async def put_policy(self, document: JsonObject) -> PolicyInfo:
        """`PUT /v1/admin/policy`."""
        answer = await self._client.put_policy(document)
        return decode_answer("PUT /v1/admin/policy", answer, PolicyInfo)

    async def check_policy(self, document: JsonObject) -> PolicyCheckResult:
        """`POST /v1/admin/policy/check`."""
        answer = await self._client.check_policy(document)
        return decode_answer("POST /v1/admin/policy/check", answer, PolicyCheckResult)

    async def list_audit(
        self, *, start: int = 0, limit: int | None = None
    ) -> tuple[AuditEntryInfo, ...]:
        """`GET /v1/admin/audit?start=&limit=`."""
        answer = await self._client.list_audit(start=start, limit=limit)
        return decode_answer("GET /v1/admin/audit", answer, AuditList).entries

    async def verify_audit(self) -> AuditVerifyResult:
        """`POST /v1/admin/audit/verify`."""
        answer = await self._client.verify_audit()
        return decode_answer("POST /v1/admin/audit/verify", answer, AuditVerifyResult)

    async def close(self) -> None:
        """Close the client's connections and wipe its API key; idempotent."""
        await self._client.close()


__all__ = ["AdminRoutes", "HttpAdminApi"]
