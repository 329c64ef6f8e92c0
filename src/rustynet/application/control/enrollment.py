"""Enrollment use case: POST /v1/enroll and POST /v1/enroll/complete.

The one rule: a join key is redeemed, the node added, its address leased, the serials of every
node whose map changes bumped and the audit entry written in ONE unit of work, and only after a
valid proof of possession of the identity key over a single-use challenge.

Enrollment drives the domain's `EnrollmentServer`; its challenges (≤ 60 s) live in the store
(`pending.py`), so one issued by any instance can be answered on any other, and their single
use is the store's conditional update. Every failure is charged to the source and to the join
key (`Guards.failed`) after the same hash compare, whatever was wrong.
"""

from __future__ import annotations

from datetime import datetime

from rustynet.application.control.context import ControlContext
from rustynet.application.control.guards import DUMMY_HASH, Guards
from rustynet.application.control.inputs import b64, parsed, tags
from rustynet.application.control.pending import (
    PendingEnrollment,
    pending_from,
    pending_payload,
)
from rustynet.application.control.projections import addresses, tag_texts
from rustynet.application.errors import (
    Conflict,
    Forbidden,
    Gone,
    RateLimited,
    Unauthorized,
    ValidationError,
)
from rustynet.domain.credentials import CredentialRejected
from rustynet.domain.enrollment import (
    CHALLENGE_BYTES,
    DEFAULT_MAX_PENDING,
    Attempt,
    Authorize,
    EnrollmentRequest,
    EnrollmentServer,
    IssueChallenge,
    ProofPresented,
    Reject,
    RejectReason,
)
from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.join_tokens import JoinSecretMismatch, JoinToken
from rustynet.domain.key_hierarchy import TunnelKeyBinding, verify_tunnel_key_binding
from rustynet.domain.keys import TunnelKey, VerifyKey, b64encode
from rustynet.domain.scope import Scope
from rustynet.ports.store import (
    MAX_NAME_LENGTH,
    NODE_ID_BYTES,
    ChallengeKind,
    ChallengeRecord,
    NodeRecord,
    NotFound,
    TooManyChallenges,
    UnitOfWork,
    UnknownCredential,
)
from rustynet.ports.wire.v1 import Challenge, EnrollCompleteRequest, EnrollRequest, EnrollResult


class _ProofRefused(Exception):  # noqa: N818 - internal signal, never leaves this module
    """A proof of possession that did not authorize: ends the unit of work, then recorded."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Enrollment:
    """Join secret → challenge → proof → node."""

    def __init__(self, ctx: ControlContext, guards: Guards) -> None:
        self.ctx = ctx
        self.guards = guards

    async def enroll(self, request: EnrollRequest, *, client_ip: str) -> Challenge:
        """POST /v1/enroll: check the join secret, answer a single-use challenge (≤ 60 s).

        Two units of work: the abuse limits (IP, identity and the join key's backoff) commit
        first, whatever follows; then the credential is read, the secret and binding checked
        and the challenge stored in one unit (a refusal there has written nothing)."""
        now = self.ctx.clock.now()
        identity: VerifyKey = parsed(
            VerifyKey.from_text, request.identity_key, "/identity_key", "identity key"
        )
        tunnel_key: TunnelKey = parsed(
            TunnelKey.from_text, request.tunnel_key, "/tunnel_key", "tunnel key"
        )
        binding: TunnelKeyBinding = parsed(
            TunnelKeyBinding.from_text, request.tunnel_key_binding, "/tunnel_key_binding", "binding"
        )
        requested = None
        if request.requested_tags is not None:
            requested = Scope(tags(request.requested_tags, "/requested_tags"))
        await self.ctx.guard.admit(client_ip)  # a source out of failures: 429 before any write
        try:
            token: JoinToken | None = JoinToken.parse(request.join_secret)
        except DecodeError:
            token = None
        try:
            credential_key = None if token is None else f"join:{token.token_id.to_text()}"
            await self.guards.limit(
                ip=client_ip, identity=f"identity:{identity.to_text()}", credential=credential_key
            )
            if token is None or credential_key is None:
                await self.guards.failed(
                    ip=client_ip, credential=None, action="enroll.failed", target="-"
                )
                raise Unauthorized
            challenge = await self._issue_challenge(
                token, identity, tunnel_key, binding, request.hostname, requested, now
            )
        finally:
            if token is not None:
                token.wipe()
        if challenge is None:
            await self.guards.failed(
                ip=client_ip,
                credential=credential_key,
                action="enroll.failed",
                target=token.token_id.to_text(),
            )
            raise Unauthorized
        return challenge

    async def _issue_challenge(  # noqa: PLR0917 - the checked request, in order
        self,
        token: JoinToken,
        identity: VerifyKey,
        tunnel_key: TunnelKey,
        binding: TunnelKeyBinding,
        hostname: str,
        requested: Scope | None,
        now: datetime,
    ) -> Challenge | None:
        """In one unit of work: the credential the token names, its secret (uniform failure:
        None), then the checks and the stored challenge. Raises for a refusal after the secret
        matched (Gone, Conflict, ValidationError, Forbidden, RateLimited)."""
        try:
            async with self.ctx.store.unit_of_work() as uow:
                credential = await uow.credentials.get(token.token_id)
                ok = credential is not None and token.root_fingerprint == self.ctx.keys.root.key_id
                try:
                    token.verify_secret(credential.secret_hash if credential else DUMMY_HASH)
                except JoinSecretMismatch:
                    ok = False
                if not ok or credential is None:
                    return None
                try:
                    credential.check_redeemable(now)
                except CredentialRejected:
                    raise Gone from None
                if await uow.nodes.get_by_identity(identity) is not None:
                    raise Conflict("this identity key is already enrolled")
                try:
                    bound = verify_tunnel_key_binding(binding, identity, now)
                except RemoteProtocolError as exc:
                    raise ValidationError.at(
                        "/tunnel_key_binding", f"binding rejected: {exc}"
                    ) from exc
                if bound != tunnel_key:
                    raise ValidationError.at("/tunnel_key_binding", "binds a different tunnel key")
                try:
                    enrollment = EnrollmentRequest(
                        token_id=credential.id.to_text(),
                        identity_key=identity,
                        tunnel_key=tunnel_key,
                        hostname=hostname,
                        requested_scope=requested,
                    )
                except DecodeError as exc:
                    raise ValidationError.at("/hostname", str(exc)) from exc
                presented = enrollment.presented(credential.scope)
                # A fresh server per request: the challenge lives in the store, not here.
                effect = EnrollmentServer(self.ctx.entropy).handle(presented, now)
                if isinstance(effect, Reject):
                    if effect.reason is RejectReason.SCOPE_NOT_GRANTED:
                        raise Forbidden("requested tags are not granted by the join key")
                    raise LocalProtocolError(
                        f"unexpected enrollment rejection {effect.reason.value}"
                    )
                if not isinstance(effect, IssueChallenge):
                    raise LocalProtocolError(
                        f"unexpected enrollment effect {type(effect).__name__}"
                    )
                pending = PendingEnrollment(
                    credential.id, binding.validity.not_after, f"join:{credential.id.to_text()}"
                )
                await uow.challenges.issue(
                    ChallengeRecord(
                        id=effect.challenge_id,
                        kind=ChallengeKind.ENROLLMENT,
                        subject=credential.id.to_text(),
                        payload=pending_payload(presented, pending),
                        expires_at=effect.expires_at,
                    ),
                    now,
                    DEFAULT_MAX_PENDING,
                )
        except TooManyChallenges:
            raise RateLimited(5, "too many enrollments in progress") from None
        return Challenge(b64encode(effect.challenge_id), effect.expires_at)

    async def enroll_complete(
        self, request: EnrollCompleteRequest, *, client_ip: str
    ) -> EnrollResult:
        """POST /v1/enroll/complete: verify the proof, redeem, register the node, issue a token."""
        ctx = self.ctx
        await ctx.guard.admit(client_ip)
        await self.guards.limit(ip=client_ip)
        now = ctx.clock.now()
        challenge_id = b64(request.challenge_id, "/challenge_id")
        signature = b64(request.signature, "/signature")
        woken: frozenset[str] = frozenset()
        pending: PendingEnrollment | None = None
        try:
            # One unit of work from reading the challenge to the new node: a refused proof
            # has written nothing when it leaves (its failure is recorded after).
            async with ctx.write() as uow:
                attempts, pending = await self._stored(uow, challenge_id)
                effect, pending = self._authorize(attempts, pending, challenge_id, signature, now)
                # Single use across instances: exactly one consume of a challenge commits.
                await uow.challenges.consume(ChallengeKind.ENROLLMENT, challenge_id, now)
                credential = await uow.credentials.redeem(pending.credential_id, now)
                if await uow.nodes.get_by_identity(effect.identity_key) is not None:
                    raise Conflict("this identity key is already enrolled")
                node_id = "node_" + b64encode(ctx.entropy.token_bytes(NODE_ID_BYTES))
                name = await _free_name(uow, effect.hostname)
                address = await uow.ipam.allocate(node_id)
                node = NodeRecord(
                    id=node_id,
                    name=name,
                    identity_key=effect.identity_key,
                    tunnel_key=effect.tunnel_key,
                    tunnel_key_expires_at=pending.binding_expires_at,
                    overlay_ipv4=address,
                    tags=effect.scope.tags,
                    created_at=now,
                )
                await uow.nodes.add(node)
                woken = await ctx.net_put(uow, node)
                await ctx.publish(uow, woken)
                await uow.limiter.record_success(pending.credential_key)
                await ctx.audit(
                    uow,
                    now,
                    f"node:{node_id}",
                    "node.enrolled",
                    node_id,
                    {
                        "join_key_id": credential.id.to_text(),
                        "join_key_state": credential.state.value,
                        "join_key_uses": credential.uses,
                        "name": name,
                        "address": str(address),
                        "tags": list(tag_texts(node)),
                        "identity_fingerprint": node.identity_key.fingerprint().to_text(),
                    },
                )
        except _ProofRefused as refused:
            await self._proof_failed(pending, client_ip, refused.reason)
            raise Unauthorized from None
        except NotFound:  # the challenge was used meanwhile (here or on another instance)
            await self._proof_failed(pending, client_ip, RejectReason.CHALLENGE_USED.value)
            raise Unauthorized from None
        except UnknownCredential:
            raise Unauthorized from None
        except CredentialRejected:
            raise Gone from None
        ctx.waiters.wake(woken)
        ctx.enrollments += 1
        token, expires_at = self.guards.issue_token(node, now)
        return EnrollResult(
            node_id=node.id,
            name=node.name,
            overlay_addresses=addresses(node),
            tags=tag_texts(node),
            access_token=token,
            access_token_expires_at=expires_at,
            trust=ctx.trust(),
        )

    def _authorize(
        self,
        attempts: dict[bytes, Attempt],
        pending: PendingEnrollment | None,
        challenge_id: bytes,
        signature: bytes,
        now: datetime,
    ) -> tuple[Authorize, PendingEnrollment]:
        """The domain's verdict on the proof and its pending enrollment; `_ProofRefused` (with
        the reason) unless it authorizes a stored one."""
        effect: object
        try:
            server = EnrollmentServer.resume(self.ctx.entropy, attempts)
            effect = server.handle(ProofPresented(challenge_id, signature), now)
        except DecodeError:
            effect = Reject(RejectReason.UNKNOWN_CHALLENGE)
        if not isinstance(effect, Authorize) or pending is None:
            raise _ProofRefused(effect.reason.value if isinstance(effect, Reject) else "no-pending")
        return effect, pending

    @staticmethod
    async def _stored(
        uow: UnitOfWork, challenge_id: bytes
    ) -> tuple[dict[bytes, Attempt], PendingEnrollment | None]:
        """The stored challenge as the domain's attempt (issued by any instance), if any."""
        if len(challenge_id) != CHALLENGE_BYTES:
            return {}, None
        stored = await uow.challenges.get(ChallengeKind.ENROLLMENT, challenge_id)
        if stored is None:
            return {}, None
        attempt, pending = pending_from(stored)
        return {challenge_id: attempt}, pending

    async def _proof_failed(self, pending: PendingEnrollment | None, ip: str, reason: str) -> None:
        await self.guards.failed(
            ip=ip,
            credential=pending.credential_key if pending else None,
            action="enroll.proof_failed",
            target=pending.credential_id.to_text() if pending else "-",
            details={"reason": reason},
        )


async def _free_name(uow: UnitOfWork, hostname: str) -> str:
    # The usual case, a name nobody has, is one lookup on the unique index. Otherwise every
    # candidate starts with this prefix (suffixes are at most "-9999"), so one names-only
    # query answers all of them (it reads every name: neither database indexes a prefix).
    if await uow.nodes.get_by_name(hostname) is None:
        return hostname
    taken = await uow.nodes.names_starting_with(hostname[: MAX_NAME_LENGTH - 5])
    for n in range(2, 10_000):
        suffix = f"-{n}"
        candidate = hostname[: MAX_NAME_LENGTH - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
    raise Conflict("no free node name for this hostname")
