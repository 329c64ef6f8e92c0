"""Admin use case: the access policy (show, replace, check).

The one rule: a policy is stored only if it parses and its own tests pass against the current
inventory; the new compiled network replaces the cache and wakes exactly the nodes whose view
changed (`changed_views`), in the unit of work that stores it. No policy stored means deny all.
"""

from __future__ import annotations

from collections.abc import Mapping

from rustynet.application.control.context import ControlContext, Net
from rustynet.application.control.guards import Guards
from rustynet.application.control.inputs import policy as parse_policy
from rustynet.application.control.projections import policy_node
from rustynet.application.control_types import AdminAuth
from rustynet.application.errors import Conflict, FieldProblem, ValidationError
from rustynet.domain.api_keys import AdminAction
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.policy import PolicyError
from rustynet.domain.policy_compile import changed_views, compile_policy
from rustynet.domain.signed import JsonValue, canonical_json, parse_canonical_json
from rustynet.ports.store import NodeStatus, StoreConflict
from rustynet.ports.wire.v1 import PolicyCheckResult, PolicyInfo


def _problems(exc: PolicyError) -> ValidationError:
    return ValidationError([FieldProblem(p.pointer, p.message) for p in exc.problems])


class AdminPolicy:
    """/v1/admin/policy."""

    def __init__(self, ctx: ControlContext, guards: Guards) -> None:
        self.ctx = ctx
        self.guards = guards

    async def get_policy(self, auth: AdminAuth) -> PolicyInfo:
        """GET /v1/admin/policy (version 0, document None: no policy, deny all)."""
        await self.guards.admin(auth, AdminAction.READ)
        async with self.ctx.store.unit_of_work() as uow:
            current = await uow.policies.current()
        if current is None:
            return PolicyInfo(0, None, None, None)
        document = parse_canonical_json(current.document.encode("utf-8"))
        return PolicyInfo(current.version, document, current.created_at, current.author)

    async def put_policy(self, auth: AdminAuth, document: Mapping[str, JsonValue]) -> PolicyInfo:
        """PUT /v1/admin/policy: validate (tests against the inventory), store, wake changed."""
        ctx = self.ctx
        admin = await self.guards.admin(auth, AdminAction.WRITE)
        now = ctx.clock.now()
        policy = parse_policy(document)
        try:
            text = canonical_json(document).decode("utf-8")
        except LocalProtocolError as exc:
            raise ValidationError.at("", f"not storable as canonical JSON: {exc}") from exc
        woken: frozenset[str] = frozenset()
        try:
            async with ctx.write() as uow:
                net = await ctx.net_state(uow)
                try:
                    policy.check(policy_node(n) for n in net.nodes.values())
                except PolicyError as exc:
                    raise _problems(exc) from exc
                stored = await uow.policies.put(
                    text, now, f"apikey:{admin.id}", expected_current=net.version or None
                )
                index = compile_policy(policy, [policy_node(n) for n in net.nodes.values()])
                woken = changed_views(net.index, index)
                ctx.net_replace(Net(policy, stored.version, index, dict(net.nodes), net.generation))
                await ctx.publish(uow, woken)
                await ctx.audit(
                    uow,
                    now,
                    f"apikey:{admin.id}",
                    "policy.updated",
                    f"policy:{stored.version}",
                    {"version": stored.version, "digest": policy.digest, "woken": len(woken)},
                )
        except StoreConflict:
            raise Conflict("the policy changed meanwhile; retry") from None
        ctx.waiters.wake(woken)
        return PolicyInfo(stored.version, document, stored.created_at, stored.author)

    async def check_policy(
        self, auth: AdminAuth, document: Mapping[str, JsonValue]
    ) -> PolicyCheckResult:
        """POST /v1/admin/policy/check: validate and run its tests; changes nothing."""
        await self.guards.admin(auth, AdminAction.READ)
        policy = parse_policy(document)
        async with self.ctx.store.unit_of_work() as uow:
            nodes = [n for n in await uow.nodes.list_all() if n.state is NodeStatus.ACTIVE]
        try:
            policy.check(policy_node(n) for n in nodes)
        except PolicyError as exc:
            raise _problems(exc) from exc
        return PolicyCheckResult(ok=True, digest=policy.digest, nodes_checked=len(nodes))
