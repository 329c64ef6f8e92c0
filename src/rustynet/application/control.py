"""Control-plane use cases: one async method per route of docs/control-api.md.

The one rule: every decision about a request is made here (or in the domain it drives), never in
the HTTP handler; each state change, the serial bumps it causes and its audit entry commit in
ONE unit of work, and success is returned (and waiters are woken) only after that commit.

Theory of operation.

* Abuse controls run before any secret is looked at: a per-IP bucket (and a per-identity bucket
  for enrollment and token renewal) is taken in its own unit of work, then the failure record
  of the presented credential (join key id, node id, API key id) is checked for backoff and
  lockout. Unknown and wrong credentials fail the same way after the same hash compare, and
  every failure is counted and audited.
* Enrollment drives `EnrollmentServer`; its challenges (≤ 60 s) live in the store
  (`uow.challenges`), so one issued by any instance can be answered on any other, and their
  single use is the store's conditional update. Token-renewal challenges are stored nowhere:
  they carry their node id binding and expiry under a MAC every instance can check
  (`domain.renewal_challenge`), and their single use is the nonce store's insert, written
  only once the node's signature verified. A valid enrollment proof consumes the
  challenge, redeems the credential with the store's atomic conditional update, leases the
  address, adds the node, bumps the serials of every node whose map changes and writes the
  audit entry, all in one unit of work.
* Peer maps come from a compiled `PolicyIndex` cached in memory with the active nodes. Every
  change updates it one node at a time (`put`/`remove` return the nodes to wake); a policy
  change recompiles and wakes `changed_views`. A unit of work that fails after touching the
  cache drops it, and it is rebuilt from the store on next use; it is also rebuilt when the
  stored network generation (`serials.generation()`) or policy version moved (another instance
  changed it).
* Long polls subscribe to `PeerMapWaiters` before reading their serial, so no wake-up is lost.

Several instances on one database (scale-out.md): every write that may touch the network
runs under `uow.lock_writers()` (one writer at a time across instances, like SQLite's write
lock), validates the cache against the generation inside that lock, bumps the generation when
it changed the network, and `announce`s the nodes it wakes, so the store tells the other
instances on commit; `start()` subscribes the `ChangeFeed` that carries their announcements to
this instance's waiters. Nonces, enrollment challenges, limiter records and serials all live
in the store.

* Underlay endpoints a node reports are validated here (IP literal and port, at most
  `MAX_ENDPOINTS`, canonical text) and stored on its node record, so they survive a restart.
* Relays come from the settings (control.toml) and go into every peer map, in order. A relay
  token (docs/relay-protocol.md) is signed by the newest peer-map signing key, whose
  certificate the node already holds in its trust, so a relay verifies it offline against the
  root fingerprint; it is neither stored nor audited (nodes renew one every minute or two).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final, TypeVar

import attrs

from rustynet.application.audit_writer import AuditWriter
from rustynet.application.auth_guard import AuthGuard
from rustynet.application.control_keys import ControlKeys
from rustynet.application.control_types import (
    AccessToken,
    AdminAuth,
    ApiKeyInfo,
    AuditEntryInfo,
    AuditVerifyResult,
    ControlStats,
    CreateApiKeyRequest,
    CreatedApiKey,
    CreatedJoinKey,
    CreateJoinKeyRequest,
    EndpointsRequest,
    EnrollChallenge,
    EnrollCompleteRequest,
    EnrollRequest,
    EnrollResult,
    JoinKeyInfo,
    NodeAuth,
    NodeInfo,
    PeerMapResponse,
    PolicyCheckResult,
    PolicyInfo,
    RelayToken,
    RelayTokenRequest,
    RotateTunnelKeyRequest,
    TokenChallenge,
    TokenChallengeRequest,
    TokenRenewRequest,
    Trust,
    UpdateNodeRequest,
)
from rustynet.application.errors import (
    Conflict,
    FieldProblem,
    Forbidden,
    Gone,
    NotFoundError,
    RateLimited,
    Unauthorized,
    ValidationError,
)
from rustynet.application.lifetimes import (
    API_KEY_MAX_TTL_SECONDS,
    JOIN_KEY_MAX_TTL_SECONDS,
    requested_ttl,
)
from rustynet.application.peer_maps import DEFAULT_SLICE as PEER_MAP_SLICE
from rustynet.application.peer_maps import MapAssembler, PeerMapBatcher
from rustynet.application.waiters import PeerMapWaiters, TooManyWaiters
from rustynet.domain import api_keys
from rustynet.domain.api_keys import AdminAction, ApiKey, ApiKeyMismatch
from rustynet.domain.audit import AuditChain, AuditEntry, verify_chain
from rustynet.domain.audit_fold import DEFAULT_FOLD_WINDOW, AuditFolder
from rustynet.domain.credentials import (
    Credential,
    CredentialId,
    CredentialParameterError,
    CredentialRejected,
    CredentialTransitionError,
)
from rustynet.domain.enrollment import (
    CHALLENGE_BYTES,
    DEFAULT_MAX_PENDING,
    Attempt,
    AttemptState,
    Authorize,
    EnrollmentRequest,
    EnrollmentServer,
    IssueChallenge,
    ProofPresented,
    Reject,
    RejectReason,
    TokenPresented,
)
from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.join_tokens import JoinSecretMismatch, JoinToken
from rustynet.domain.key_hierarchy import TunnelKeyBinding, verify_tunnel_key_binding
from rustynet.domain.keys import (
    Purpose,
    TunnelKey,
    VerifyKey,
    b64decode,
    b64encode,
)
from rustynet.domain.limits import BucketPolicy, LimitPolicy, ip_key
from rustynet.domain.netmap import (
    RelayEntry,
    check_relays,
    seal_peer_map,
)
from rustynet.domain.policy import Policy, PolicyError, PolicyNode
from rustynet.domain.policy_compile import PolicyIndex, changed_views, compile_policy
from rustynet.domain.renewal_challenge import (
    InvalidChallenge,
    RenewalChallenge,
    issue_renewal_challenge,
    verify_renewal_challenge,
)
from rustynet.domain.replay import DEFAULT_CAPACITY, NonceRecord, ReplayError
from rustynet.domain.scope import Scope, Tag
from rustynet.domain.signed import JsonValue, canonical_json, parse_canonical_json
from rustynet.domain.tokens import (
    InvalidToken,
    TokenKind,
    issue_token,
    key_allowlist,
    token_renewal_message,
    verify_token,
)
from rustynet.ports.change_feed import ChangeFeed
from rustynet.ports.clock import Clock
from rustynet.ports.entropy import Entropy
from rustynet.ports.store import (
    MAX_ENDPOINTS,
    MAX_NAME_LENGTH,
    NODE_ID_BYTES,
    NODE_ID_RE,
    AlreadyExists,
    ApiKeyRecord,
    ApiKeyScope,
    BucketTable,
    ChallengeKind,
    ChallengeRecord,
    NodeRecord,
    NodeStatus,
    NotFound,
    Store,
    StoreConflict,
    StoreError,
    TooManyChallenges,
    UnitOfWork,
    UnknownCredential,
)

ACCESS_TOKEN_LIFETIME: Final = timedelta(seconds=300)
RELAY_TOKEN_LIFETIME: Final = timedelta(seconds=120)
DEFAULT_PEER_MAP_TTL: Final = timedelta(hours=24)
DEFAULT_LONG_POLL: Final = timedelta(seconds=60)
MAX_AUDIT_PAGE: Final = 1000
_T = TypeVar("_T")
DEFAULT_ADMIN_PER_IP: Final = BucketPolicy(burst=120, refill=60, per=timedelta(minutes=1))
_DUMMY_HASH: Final = bytes(32)
_HOSTNAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


@attrs.frozen
class ControlSettings:
    """Deployment settings the use cases need (W3 fills them from control.toml)."""

    control_url: str
    tls_spki_sha256: bytes = attrs.field(repr=bytes.hex)
    relays: tuple[RelayEntry, ...] = attrs.field(default=(), converter=check_relays)
    limits: LimitPolicy = attrs.field(factory=LimitPolicy)
    admin_per_ip: BucketPolicy = DEFAULT_ADMIN_PER_IP  # authenticated admin calls only
    audit_fold_window: timedelta = DEFAULT_FOLD_WINDOW
    peer_map_ttl: timedelta = DEFAULT_PEER_MAP_TTL
    long_poll_timeout: timedelta = DEFAULT_LONG_POLL
    access_token_lifetime: timedelta = ACCESS_TOKEN_LIFETIME
    relay_token_lifetime: timedelta = RELAY_TOKEN_LIFETIME
    nonce_capacity: int = DEFAULT_CAPACITY


@attrs.define
class _Net:
    """The cached compiled policy and the active nodes it was compiled over."""

    policy: Policy
    version: int
    index: PolicyIndex
    nodes: dict[str, NodeRecord]
    generation: int


class _ProofRefused(Exception):  # noqa: N818 - internal signal, never leaves this module
    """A proof of possession that did not authorize: ends the unit of work, then recorded."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class _PendingEnrollment:
    credential_id: CredentialId
    binding_expires_at: datetime
    credential_key: str


def _pending_payload(request: TokenPresented, pending: _PendingEnrollment) -> str:
    """What a stored enrollment challenge keeps (public values only) as JSON text."""
    requested = request.requested_scope
    return json.dumps(
        {
            "token_id": request.token_id,
            "token_scope": list(request.token_scope.as_strings()),
            "identity_key": request.identity_key.to_text(),
            "tunnel_key": request.tunnel_key.to_text(),
            "hostname": request.hostname,
            "requested_scope": None if requested is None else list(requested.as_strings()),
            "credential_id": pending.credential_id.to_text(),
            "binding_expires_at": pending.binding_expires_at.isoformat(),
            "credential_key": pending.credential_key,
        },
        separators=(",", ":"),
    )


def _pending_from(record: ChallengeRecord) -> tuple[Attempt, _PendingEnrollment]:
    """Inverse of `_pending_payload` (LocalProtocolError: the stored row is damaged)."""
    try:
        data = json.loads(record.payload)
        requested = data["requested_scope"]
        request = TokenPresented(
            token_id=data["token_id"],
            token_scope=Scope(frozenset(Tag(t) for t in data["token_scope"])),
            identity_key=VerifyKey.from_text(data["identity_key"]),
            tunnel_key=TunnelKey.from_text(data["tunnel_key"]),
            hostname=data["hostname"],
            requested_scope=None
            if requested is None
            else Scope(frozenset(Tag(t) for t in requested)),
        )
        pending = _PendingEnrollment(
            CredentialId.from_text(data["credential_id"]),
            datetime.fromisoformat(data["binding_expires_at"]),
            str(data["credential_key"]),
        )
    except (ValueError, KeyError, TypeError, DecodeError) as exc:
        raise LocalProtocolError("a stored enrollment challenge is damaged") from exc
    state = AttemptState.AUTHORIZED if record.used else AttemptState.CHALLENGED
    return Attempt(request, record.expires_at, state), pending


def _policy_node(node: NodeRecord) -> PolicyNode:
    return PolicyNode(
        id=node.id,
        name=node.name,
        tags=node.tags,
        addresses=tuple(ipaddress.ip_network(f"{a}/32") for a in node.overlay_addresses),
    )


def _addresses(node: NodeRecord) -> tuple[str, ...]:
    return tuple(f"{a}/32" for a in node.overlay_addresses)


def _node_info(node: NodeRecord) -> NodeInfo:
    return NodeInfo(
        id=node.id,
        name=node.name,
        state=node.state.value,
        overlay_addresses=_addresses(node),
        tags=tuple(sorted(t.value for t in node.tags)),
        identity_key=node.identity_key.to_text(),
        tunnel_key=node.tunnel_key.to_text(),
        tunnel_key_expires_at=node.tunnel_key_expires_at,
        created_at=node.created_at,
        last_seen_at=node.last_seen_at,
        revoked_at=node.revoked_at,
    )


def _join_key_info(credential: Credential) -> JoinKeyInfo:
    return JoinKeyInfo(
        id=credential.id.to_text(),
        kind=credential.kind.value,
        state=credential.state.value,
        tags=tuple(credential.scope.as_strings()),
        uses=credential.uses,
        max_uses=credential.max_uses,
        created_at=credential.created_at,
        expires_at=credential.expires_at,
        last_used_at=credential.last_used_at,
        ended_at=credential.ended_at,
    )


def _api_key_info(record: ApiKeyRecord) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=record.id,
        scope=record.scope.value,
        description=record.description,
        created_at=record.created_at,
        expires_at=record.expires_at,
        revoked_at=record.revoked_at,
        last_used_at=record.last_used_at,
    )


def _audit_info(entry: AuditEntry) -> AuditEntryInfo:
    return AuditEntryInfo(
        index=entry.index,
        time=entry.time,
        actor=entry.actor,
        action=entry.action,
        target=entry.target,
        details=entry.details,
        entry_hash=entry.entry_hash.hex(),
    )


def _tags(values: Iterable[str], where: str) -> frozenset[Tag]:
    problems = []
    tags = set()
    for i, value in enumerate(values):
        try:
            tags.add(Tag(value))
        except (DecodeError, TypeError):
            problems.append(FieldProblem(f"{where}/{i}", "not a tag (tag:lowercase-name)"))
    if problems:
        raise ValidationError(problems)
    return frozenset(tags)


def _parse(parse: Callable[[str], _T], text: str, where: str, what: str) -> _T:
    try:
        return parse(text)
    except (DecodeError, TypeError, ValueError) as exc:
        raise ValidationError.at(where, f"not a valid {what}") from exc


def _endpoint(text: object, where: str) -> str:
    """`IPv4:port` or `[IPv6]:port` (port 1-65535, no zone id) in canonical text form."""
    canonical = None
    if isinstance(text, str) and text.isascii() and len(text) <= 64:
        host, sep, port = text.rpartition(":")
        if sep and port.isdigit() and len(port) <= 5 and 0 < int(port) <= 65535:
            try:
                if host.startswith("[") and host.endswith("]") and "%" not in host:
                    canonical = f"[{ipaddress.IPv6Address(host[1:-1])}]:{int(port)}"
                else:
                    canonical = f"{ipaddress.IPv4Address(host)}:{int(port)}"
            except ValueError:
                canonical = None
    if canonical is None:
        raise ValidationError.at(where, "expected 198.51.100.2:41641 or [2001:db8::1]:41641")
    return canonical


def _b64(text: str, where: str) -> bytes:
    try:
        return b64decode(text)
    except DecodeError as exc:
        raise ValidationError.at(where, "not unpadded base64url") from exc


def _policy_from(document: object) -> Policy:
    try:
        return Policy.parse(document)
    except PolicyError as exc:
        raise ValidationError([FieldProblem(p.pointer, p.message) for p in exc.problems]) from exc


class ControlService:
    """The use cases. Construct once per process (bootstrap) and share."""

    def __init__(
        self,
        store: Store,
        keys: ControlKeys,
        clock: Clock,
        entropy: Entropy,
        settings: ControlSettings,
        *,
        waiters: PeerMapWaiters | None = None,
        changes: ChangeFeed | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock
        self.entropy = entropy
        self.settings = settings
        self.waiters = waiters if waiters is not None else PeerMapWaiters()
        self.changes = changes
        self._pending_enrollments = 0
        self._token_keys = key_allowlist([keys.token_key.public_key])
        self._lock = asyncio.Lock()
        self._net: _Net | None = None
        self._net_touched = False
        self._peer_maps = PeerMapBatcher(self._peer_maps_after)
        self._audit_writer = AuditWriter(keys)
        self._guard = AuthGuard(
            store,
            clock=clock,
            audit=self._audit_writer,
            write=self._write,
            policy=settings.limits,
            admin_bucket=settings.admin_per_ip,
            folder=AuditFolder(settings.audit_fold_window),
        )
        self._enrollments = 0

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Hear the other instances' changes (the `ChangeFeed`, if any) until `close`."""
        if self.changes is not None:
            await self.changes.subscribe(self._on_remote_change)

    async def close(self) -> None:
        """Write the folded audit summaries still open, stop hearing other instances;
        idempotent."""
        await self.flush_audit()
        if self.changes is not None:
            await self.changes.close()

    async def flush_audit(self) -> None:
        """Graceful shutdown: every counted authentication failure reaches the audit log."""
        await self._guard.flush()

    def _on_remote_change(self, node_ids: frozenset[str] | None) -> None:
        # A hint only: the woken long polls re-read serials and the network generation.
        if node_ids is None:
            self.waiters.wake_all()
        else:
            self.waiters.wake(node_ids)

    # --- plumbing ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[UnitOfWork]:
        """One unit of work, serialized with every other writer on every instance, that may
        touch the cached index and the audit chain; it bumps the network generation when it
        changed the cached network."""
        async with self._lock:
            self._net_touched = False
            generation: int | None = None
            try:
                async with self.store.unit_of_work() as uow:
                    await uow.lock_writers()
                    yield uow
                    if self._net_touched:
                        generation = await uow.serials.bump_generation()
            except BaseException:
                if self._net_touched:
                    self._net = None  # the cache may hold an uncommitted change
                raise
            if generation is not None and self._net is not None:
                self._net.generation = generation  # the cache is exactly the committed state

    async def _net_state(self, uow: UnitOfWork) -> _Net:
        current = await uow.policies.current()
        version = 0 if current is None else current.version
        generation = await uow.serials.generation()
        if (
            self._net is not None
            and self._net.version == version
            and self._net.generation == generation
        ):
            return self._net
        policy = (
            Policy.deny_all()
            if current is None
            else Policy.parse(parse_canonical_json(current.document.encode("utf-8")))
        )
        nodes = {n.id: n for n in await uow.nodes.list_all() if n.state is NodeStatus.ACTIVE}
        index = compile_policy(policy, [_policy_node(n) for n in nodes.values()])
        self._net = _Net(policy, version, index, nodes, generation)
        return self._net

    async def _net_put(self, uow: UnitOfWork, node: NodeRecord) -> frozenset[str]:
        net = await self._net_state(uow)
        self._net_touched = True
        net.nodes[node.id] = node
        return net.index.put(_policy_node(node)) | {node.id}

    async def _net_remove(self, uow: UnitOfWork, node_id: str) -> frozenset[str]:
        net = await self._net_state(uow)
        if node_id not in net.index:
            return frozenset({node_id})
        self._net_touched = True
        net.nodes.pop(node_id, None)
        return net.index.remove(node_id) | {node_id}

    async def _audit(  # noqa: PLR0917 - the audit fields, in entry order
        self,
        uow: UnitOfWork,
        now: datetime,
        actor: str,
        action: str,
        target: str,
        details: Mapping[str, JsonValue] | None = None,
    ) -> None:
        """Append one audit entry (and a checkpoint when due) in `uow`; call under `_write`."""
        await self._audit_writer.append(uow, now, actor, action, target, details)

    async def _limit(
        self,
        *,
        ip: str | None = None,
        ip_bucket: BucketPolicy | None = None,
        identity: str | None = None,
        credential: str | None = None,
    ) -> None:
        """Take from the buckets and check the credential's backoff; RateLimited on a deny."""
        policy = self.settings.limits
        now = self.clock.now()
        try:
            async with self.store.unit_of_work() as uow:
                retry = await self._decide(uow, now, ip, ip_bucket, identity, credential)
        except (StoreError, LocalProtocolError):
            retry = policy.unavailable_retry_after  # cannot decide: deny
        if retry is not None:
            raise RateLimited(int(-(-retry.total_seconds() // 1)))

    async def _locked_out(self, credential: str) -> bool:
        """True when `credential` is disabled after too many failures (until an admin reset);
        RateLimited when the store cannot tell (fail closed)."""
        try:
            async with self.store.unit_of_work() as uow:
                return (await uow.limiter.failures(credential)).disabled
        except (StoreError, LocalProtocolError):
            retry = self.settings.limits.unavailable_retry_after
            raise RateLimited(int(-(-retry.total_seconds() // 1))) from None

    async def _decide(  # noqa: PLR0917 - one argument per limiter key
        self,
        uow: UnitOfWork,
        now: datetime,
        ip: str | None,
        ip_bucket: BucketPolicy | None,
        identity: str | None,
        credential: str | None,
    ) -> timedelta | None:
        """How long to wait, or None to allow; a bucket earlier in line keeps its take."""
        policy = self.settings.limits
        if credential is not None:
            record = await uow.limiter.failures(credential)
            if record.disabled:
                return policy.backoff_max
            if record.blocked_until is not None and now < record.blocked_until:
                return record.blocked_until - now
        takes = []
        if ip is not None:
            takes.append((BucketTable.IP, ip_key(ip, policy), ip_bucket or policy.per_ip))
        if identity is not None:
            takes.append((BucketTable.IDENTITY, identity, policy.per_identity))
        for table, key, bucket in takes:
            outcome = await uow.limiter.take(table, key, now, bucket)
            if not outcome.allowed:
                return outcome.retry_after or policy.unavailable_retry_after
        return None

    async def _failed(
        self,
        *,
        ip: str,
        credential: str | None,
        action: str,
        target: str,
        details: Mapping[str, JsonValue] | None = None,
    ) -> None:
        """Charge an authentication failure to the source and `credential`; audit it (folded).
        RateLimited when the source's failure budget ran out meanwhile (nothing written)."""
        await self._guard.failed(
            ip=ip,
            credential=credential,
            actor=f"ip:{ip}",
            action=action,
            target=target,
            details=details,
        )

    def _issue_token(self, node: NodeRecord, now: datetime) -> tuple[str, datetime]:
        lifetime = self.settings.access_token_lifetime
        token = issue_token(
            self.keys.token_key,
            kind=TokenKind.ACCESS,
            issuer=self.settings.control_url,
            subject=node.id,
            audience=self.settings.control_url,
            bound_identity=node.identity_key,
            now=now,
            lifetime=lifetime,
            entropy=self.entropy,
        )
        return token, now.replace(microsecond=0) + lifetime

    def _trust(self) -> Trust:
        return Trust(
            root_certificate=self.keys.root_certificate_text,
            signing_certificates=self.keys.signing_certificate_texts(),
        )

    async def _node(self, auth: NodeAuth) -> NodeRecord:
        """The authenticated, active node of a node request (revocation bites at once)."""
        now = self.clock.now()
        node: NodeRecord | None = None
        async with self.store.unit_of_work() as uow:
            await self._guard.check(uow, auth.client_ip, now)  # 429 before any other work
            if isinstance(auth.node_id, str) and 0 < len(auth.node_id) <= 128:
                node = await uow.nodes.get(auth.node_id)
        try:
            self._verify_node_token(auth, node, now)
        except InvalidToken as exc:
            target = auth.node_id if node is not None else "unknown-node"
            await self._failed(
                ip=auth.client_ip,
                credential=None,
                action="node.auth_failed",
                target=target,
                details={"reason": exc.reason[:80]},
            )
            raise Unauthorized from None
        if node is None:  # unreachable: the token check refused it
            raise Unauthorized
        return node

    def _verify_node_token(self, auth: NodeAuth, node: NodeRecord | None, now: datetime) -> None:
        if node is None or node.state is not NodeStatus.ACTIVE:
            raise InvalidToken("unknown or revoked node")
        claims = verify_token(
            auth.access_token,
            keys=self._token_keys,
            audience=self.settings.control_url,
            issuer=self.settings.control_url,
            bound_identity=node.identity_key,
            now=now,
            kind=TokenKind.ACCESS,
        )
        if claims.subject != node.id:
            raise InvalidToken("token issued to another node")

    async def authenticate(self, auth: AdminAuth | NodeAuth) -> None:
        """The credential check alone, before a body is read; writes nothing on success."""
        if isinstance(auth, NodeAuth):
            await self._node(auth)
        else:
            await self._admin_key(auth)

    async def _admin(self, auth: AdminAuth, action: AdminAction) -> ApiKeyRecord:
        """The API key record of an admin request allowed to perform `action`."""
        record = await self._admin_key(auth)
        ip, now, credential = auth.client_ip, self.clock.now(), f"apikey:{record.id}"
        async with self.store.unit_of_work() as uow:  # authenticated: its own, larger bucket
            await self._guard.authenticated_admin(uow, ip, now)
        if not api_keys.permits(record.scope.value, action):
            async with self._write() as uow:
                details: dict[str, JsonValue] = {"scope": record.scope.value}
                await self._audit(uow, now, credential, "admin.forbidden", action.value, details)
            raise Forbidden
        async with self.store.unit_of_work() as uow:
            await uow.api_keys.touch(record.id, now)
            await uow.limiter.record_success(credential)
        return record

    async def _admin_key(self, auth: AdminAuth) -> ApiKeyRecord:
        """The usable API key record `auth` presents; Unauthorized (charged) otherwise."""
        ip = auth.client_ip
        await self._guard.admit(ip)  # a source out of failures: 429 before any other work
        try:
            key = ApiKey.parse(auth.api_key)
        except ApiKeyMismatch:
            api_keys.burn_compare()
            await self._failed(ip=ip, credential=None, action="admin.auth_failed", target="-")
            raise Unauthorized from None
        credential = f"apikey:{key.key_id}"
        # A locked-out key fails like a wrong one (waiting would not help, so no Retry-After),
        # after the same hash compare; only the audit entry says why.
        locked_out = await self._locked_out(credential)
        if not locked_out:
            await self._limit(credential=credential)
        now = self.clock.now()
        async with self.store.unit_of_work() as uow:
            record = await uow.api_keys.get(key.key_id)
        ok = False
        try:
            key.verify(record.secret_hash if record is not None else _DUMMY_HASH)
            ok = record is not None and record.usable_at(now) and not locked_out
        except ApiKeyMismatch:
            ok = False
        finally:
            key.wipe()
        if not ok or record is None:
            await self._failed(
                ip=ip,
                credential=credential,
                action="admin.auth_failed",
                target=f"apikey:{key.key_id}",
                details={"reason": "locked-out"} if locked_out else None,
            )
            raise Unauthorized
        return record

    # --- node routes ---------------------------------------------------------------------------

    async def enroll(self, request: EnrollRequest, *, client_ip: str) -> EnrollChallenge:
        """POST /v1/enroll: check the join secret, answer a single-use challenge (≤ 60 s).

        Two units of work: the abuse limits (IP, identity and the join key's backoff) commit
        first, whatever follows; then the credential is read, the secret and binding checked
        and the challenge stored in one unit (a refusal there has written nothing)."""
        now = self.clock.now()
        identity: VerifyKey = _parse(
            VerifyKey.from_text, request.identity_key, "/identity_key", "identity key"
        )
        tunnel_key: TunnelKey = _parse(
            TunnelKey.from_text, request.tunnel_key, "/tunnel_key", "tunnel key"
        )
        binding: TunnelKeyBinding = _parse(
            TunnelKeyBinding.from_text, request.tunnel_key_binding, "/tunnel_key_binding", "binding"
        )
        requested = None
        if request.requested_tags is not None:
            requested = Scope(_tags(request.requested_tags, "/requested_tags"))
        await self._guard.admit(client_ip)  # a source out of failures: 429 before any write
        try:
            token: JoinToken | None = JoinToken.parse(request.join_secret)
        except DecodeError:
            token = None
        try:
            credential_key = None if token is None else f"join:{token.token_id.to_text()}"
            await self._limit(
                ip=client_ip, identity=f"identity:{identity.to_text()}", credential=credential_key
            )
            if token is None or credential_key is None:
                await self._failed(
                    ip=client_ip, credential=None, action="enroll.failed", target="-"
                )
                raise Unauthorized
            challenge = await self._issue_enrollment_challenge(
                token, identity, tunnel_key, binding, request.hostname, requested, now
            )
        finally:
            if token is not None:
                token.wipe()
        if challenge is None:
            await self._failed(
                ip=client_ip,
                credential=credential_key,
                action="enroll.failed",
                target=token.token_id.to_text(),
            )
            raise Unauthorized
        return challenge

    async def _issue_enrollment_challenge(  # noqa: PLR0917 - the checked request, in order
        self,
        token: JoinToken,
        identity: VerifyKey,
        tunnel_key: TunnelKey,
        binding: TunnelKeyBinding,
        hostname: str,
        requested: Scope | None,
        now: datetime,
    ) -> EnrollChallenge | None:
        """In one unit of work: the credential the token names, its secret (uniform failure:
        None), then the checks and the stored challenge. Raises for a refusal after the secret
        matched (Gone, Conflict, ValidationError, Forbidden, RateLimited)."""
        try:
            async with self.store.unit_of_work() as uow:
                credential = await uow.credentials.get(token.token_id)
                ok = credential is not None and token.root_fingerprint == self.keys.root.key_id
                try:
                    token.verify_secret(credential.secret_hash if credential else _DUMMY_HASH)
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
                effect = EnrollmentServer(self.entropy).handle(presented, now)
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
                pending = _PendingEnrollment(
                    credential.id, binding.validity.not_after, f"join:{credential.id.to_text()}"
                )
                await uow.challenges.issue(
                    ChallengeRecord(
                        id=effect.challenge_id,
                        kind=ChallengeKind.ENROLLMENT,
                        subject=credential.id.to_text(),
                        payload=_pending_payload(presented, pending),
                        expires_at=effect.expires_at,
                    ),
                    now,
                    DEFAULT_MAX_PENDING,
                )
        except TooManyChallenges:
            raise RateLimited(5, "too many enrollments in progress") from None
        return EnrollChallenge(b64encode(effect.challenge_id), effect.expires_at)

    async def enroll_complete(
        self, request: EnrollCompleteRequest, *, client_ip: str
    ) -> EnrollResult:
        """POST /v1/enroll/complete: verify the proof, redeem, register the node, issue a token."""
        await self._guard.admit(client_ip)
        await self._limit(ip=client_ip)
        now = self.clock.now()
        challenge_id = _b64(request.challenge_id, "/challenge_id")
        signature = _b64(request.signature, "/signature")
        woken: frozenset[str] = frozenset()
        pending: _PendingEnrollment | None = None
        try:
            # One unit of work from reading the challenge to the new node: a refused proof
            # has written nothing when it leaves (its failure is recorded after).
            async with self._write() as uow:
                attempts, pending = await self._stored_enrollment(uow, challenge_id)
                effect, pending = self._authorize(attempts, pending, challenge_id, signature, now)
                # Single use across instances: exactly one consume of a challenge commits.
                await uow.challenges.consume(ChallengeKind.ENROLLMENT, challenge_id, now)
                credential = await uow.credentials.redeem(pending.credential_id, now)
                if await uow.nodes.get_by_identity(effect.identity_key) is not None:
                    raise Conflict("this identity key is already enrolled")
                node_id = "node_" + b64encode(self.entropy.token_bytes(NODE_ID_BYTES))
                name = await self._free_name(uow, effect.hostname)
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
                woken = await self._net_put(uow, node)
                await uow.serials.bump(sorted(woken))
                await uow.announce(woken)
                await uow.limiter.record_success(pending.credential_key)
                await self._audit(
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
                        "tags": sorted(t.value for t in node.tags),
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
        self.waiters.wake(woken)
        self._enrollments += 1
        token, expires_at = self._issue_token(node, now)
        return EnrollResult(
            node_id=node.id,
            name=node.name,
            overlay_addresses=_addresses(node),
            tags=tuple(sorted(t.value for t in node.tags)),
            access_token=token,
            access_token_expires_at=expires_at,
            trust=self._trust(),
        )

    def _authorize(
        self,
        attempts: dict[bytes, Attempt],
        pending: _PendingEnrollment | None,
        challenge_id: bytes,
        signature: bytes,
        now: datetime,
    ) -> tuple[Authorize, _PendingEnrollment]:
        """The domain's verdict on the proof and its pending enrollment; `_ProofRefused` (with
        the reason) unless it authorizes a stored one."""
        effect: object
        try:
            server = EnrollmentServer.resume(self.entropy, attempts)
            effect = server.handle(ProofPresented(challenge_id, signature), now)
        except DecodeError:
            effect = Reject(RejectReason.UNKNOWN_CHALLENGE)
        if not isinstance(effect, Authorize) or pending is None:
            raise _ProofRefused(effect.reason.value if isinstance(effect, Reject) else "no-pending")
        return effect, pending

    @staticmethod
    async def _stored_enrollment(
        uow: UnitOfWork, challenge_id: bytes
    ) -> tuple[dict[bytes, Attempt], _PendingEnrollment | None]:
        """The stored challenge as the domain's attempt (issued by any instance), if any."""
        if len(challenge_id) != CHALLENGE_BYTES:
            return {}, None
        stored = await uow.challenges.get(ChallengeKind.ENROLLMENT, challenge_id)
        if stored is None:
            return {}, None
        attempt, pending = _pending_from(stored)
        return {challenge_id: attempt}, pending

    async def _proof_failed(self, pending: _PendingEnrollment | None, ip: str, reason: str) -> None:
        await self._failed(
            ip=ip,
            credential=pending.credential_key if pending else None,
            action="enroll.proof_failed",
            target=pending.credential_id.to_text() if pending else "-",
            details={"reason": reason},
        )

    async def _free_name(self, uow: UnitOfWork, hostname: str) -> str:
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

    async def token_challenge(
        self, request: TokenChallengeRequest, *, client_ip: str
    ) -> TokenChallenge:
        """POST /v1/token/challenge: a single-use challenge, answered for any node id alike and
        stored nowhere (`domain.renewal_challenge`): asking costs the server no row."""
        await self._limit(ip=client_ip)
        node_id = request.node_id
        if not isinstance(node_id, str) or not NODE_ID_RE.fullmatch(node_id):
            raise ValidationError.at("/node_id", "not a node id (node_ + 16 base64url characters)")
        challenge = issue_renewal_challenge(
            self.keys.renewal_mac_key, node_id, self.clock.now(), self.entropy
        )
        return TokenChallenge(b64encode(challenge.id), challenge.expires_at)

    async def renew_token(self, request: TokenRenewRequest, *, client_ip: str) -> AccessToken:
        """POST /v1/token: identity-key signature over a single-use challenge → access token.

        The challenge must be one this control plane issued for this node id and still live
        (checked without the store); then the node's signature; then its single use, which is
        the nonce store's atomic insert, the only row a renewal writes."""
        credential = f"node:{request.node_id}"
        await self._guard.admit(client_ip)  # a source out of failures: 429 before any write
        await self._limit(ip=client_ip, identity=credential, credential=credential)
        now = self.clock.now()
        challenge_id = _b64(request.challenge_id, "/challenge_id")
        signature = _b64(request.signature, "/signature")
        challenge: RenewalChallenge | None = None
        node: NodeRecord | None = None
        if isinstance(request.node_id, str) and NODE_ID_RE.fullmatch(request.node_id):
            try:
                challenge = verify_renewal_challenge(
                    self.keys.renewal_mac_key, challenge_id, request.node_id, now
                )
            except InvalidChallenge:
                challenge = None
            async with self.store.unit_of_work() as uow:
                node = await uow.nodes.get(request.node_id)
        ok = False
        if node is not None and challenge is not None:
            try:
                node.identity_key.verify(
                    Purpose.TOKEN_RENEWAL, token_renewal_message(challenge.id, node.id), signature
                )
                ok = node.state is NodeStatus.ACTIVE
            except RemoteProtocolError:
                ok = False
        if ok and node is not None and challenge is not None:
            try:  # single use across instances: one insert of the challenge commits
                async with self._write() as uow:
                    await uow.nonces.insert(
                        NonceRecord(challenge.id, challenge.remember_until),
                        now,
                        self.settings.nonce_capacity,
                    )
                    await uow.nodes.touch(node.id, now)
                    await uow.limiter.record_success(credential)
            except ReplayError:
                ok = False
        if not ok or node is None:
            await self._failed(  # an unknown id is not recorded: it is the caller's text
                ip=client_ip,
                credential=credential,
                action="token.renewal_failed",
                target=node.id if node is not None else "unknown-node",
            )
            raise Unauthorized
        token, expires_at = self._issue_token(node, now)
        return AccessToken(token, expires_at)

    async def rotate_tunnel_key(self, auth: NodeAuth, request: RotateTunnelKeyRequest) -> NodeInfo:
        """POST /v1/node/tunnel-key: a new tunnel key bound by the node's identity key."""
        node = await self._node(auth)
        now = self.clock.now()
        tunnel_key: TunnelKey = _parse(
            TunnelKey.from_text, request.tunnel_key, "/tunnel_key", "tunnel key"
        )
        binding: TunnelKeyBinding = _parse(
            TunnelKeyBinding.from_text, request.tunnel_key_binding, "/tunnel_key_binding", "binding"
        )
        try:
            bound = verify_tunnel_key_binding(binding, node.identity_key, now)
        except RemoteProtocolError as exc:
            raise ValidationError.at("/tunnel_key_binding", f"binding rejected: {exc}") from exc
        if bound != tunnel_key:
            raise ValidationError.at("/tunnel_key_binding", "binds a different tunnel key")
        async with self._write() as uow:
            updated = await uow.nodes.set_tunnel_key(
                node.id, tunnel_key, binding.validity.not_after
            )
            woken = await self._net_put(uow, updated)
            woken |= (await self._net_state(uow)).index.view(node.id).visible_peers
            await uow.serials.bump(sorted(woken))
            await uow.announce(woken)
            await self._audit(
                uow,
                now,
                f"node:{node.id}",
                "node.tunnel_key_rotated",
                node.id,
                {"tunnel_key_fingerprint": tunnel_key.fingerprint().to_text()},
            )
        self.waiters.wake(woken)
        return _node_info(updated)

    async def set_endpoints(self, auth: NodeAuth, request: EndpointsRequest) -> None:
        """PUT /v1/node/endpoints: where peers can reach the node (wakes the nodes that see it)."""
        node = await self._node(auth)
        endpoints = request.underlay_endpoints
        if not isinstance(endpoints, tuple | list):
            raise ValidationError.at("/underlay_endpoints", "a list of endpoints")
        if len(endpoints) > MAX_ENDPOINTS:
            raise ValidationError.at("/underlay_endpoints", f"at most {MAX_ENDPOINTS} endpoints")
        checked = tuple(
            dict.fromkeys(_endpoint(e, f"/underlay_endpoints/{i}") for i, e in enumerate(endpoints))
        )
        if node.underlay_endpoints == checked:
            return
        async with self._write() as uow:
            updated = await uow.nodes.set_endpoints(node.id, checked)
            await uow.nodes.touch(node.id, self.clock.now())
            net = await self._net_state(uow)
            woken: frozenset[str] = frozenset()
            if node.id in net.index:
                self._net_touched = True
                net.nodes[node.id] = updated
                woken = net.index.view(node.id).visible_peers
            if woken:
                await uow.serials.bump(sorted(woken))
                await uow.announce(woken)
        self.waiters.wake(woken)

    async def peer_map(
        self, auth: NodeAuth, after: int, timeout: float | None = None
    ) -> PeerMapResponse | None:
        """GET /v1/peermap?after=N: at once if the serial is above N, else wait; None means 204."""
        if type(after) is not int or after < 0:
            raise ValidationError.at("/after", "a non-negative integer")
        node = await self._node(auth)
        wait = self.settings.long_poll_timeout.total_seconds() if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait)
        try:
            subscription = self.waiters.subscribe(node.id)
        except TooManyWaiters:
            raise RateLimited(5, "too many peer-map requests are waiting") from None
        with subscription:
            while True:
                response = await self._peer_map_after(node.id, after)
                if response is not None:
                    return response
                remaining = deadline - loop.time()
                if remaining <= 0 or not await subscription.wait(remaining):
                    return None
                subscription.event.clear()

    async def _peer_map_after(self, node_id: str, after: int) -> PeerMapResponse | None:
        # Through the batcher: requests woken together share one store read and one assembly
        # pass (application/peer_maps.py); each still gets exactly its own answer.
        response = await self._peer_maps.read(node_id, after)
        if response is not None and not isinstance(response, PeerMapResponse):
            raise LocalProtocolError("the peer-map batch answered something else")
        return response

    async def _peer_maps_after(
        self, requests: Sequence[tuple[str, int]]
    ) -> AsyncGenerator[list[object], None]:
        """One batch, in slices: for each (node, after) its map, None (not newer) or
        Unauthorized. Holds the service lock until the last slice (one consistent network)."""
        now = self.clock.now()
        async with self._lock:
            async with self.store.unit_of_work() as uow:
                # The store decides, for the whole batch in one read: is the node active, and
                # what is its serial; then the cached network, validated in the same unit.
                serials = await uow.serials.get_active([node_id for node_id, _ in requests])
                net = await self._net_state(uow)
                fresh = {
                    node_id: await uow.nodes.get(node_id)
                    for node_id in serials
                    if node_id not in net.nodes
                }
            assembler = MapAssembler(
                net.nodes, self.settings.relays, now, self.settings.peer_map_ttl
            )
            trust = self._trust()
            done: dict[str, PeerMapResponse] = {}
            out: list[object] = []
            for node_id, after in requests:
                serial = serials.get(node_id)
                node = net.nodes.get(node_id) or fresh.get(node_id)
                if serial is None or node is None or node.state is not NodeStatus.ACTIVE:
                    out.append(Unauthorized())
                    continue
                if serial <= after:
                    out.append(None)
                    continue
                response = done.get(node_id)
                if response is None:
                    view = net.index.view(node_id)
                    peer_map = assembler.build(
                        node, view.visible_peers, view.inbound, serial, net.version
                    )
                    envelope = seal_peer_map(self.keys.signing, peer_map, now)
                    response = done[node_id] = PeerMapResponse(envelope.to_text(), trust, serial)
                    if len(done) % PEER_MAP_SLICE == 0:
                        yield out
                        out = []
                out.append(response)
            yield out

    async def relay_token(self, auth: NodeAuth, request: RelayTokenRequest) -> RelayToken:
        """POST /v1/relay-token: a token (≤ 120 s) for one configured relay, bound to the node."""
        node = await self._node(auth)
        relay = next((r for r in self.settings.relays if r.id == request.relay_id), None)
        if relay is None:
            raise NotFoundError("no such relay")
        now = self.clock.now()
        lifetime = self.settings.relay_token_lifetime
        token = self.keys.signing.sign_with(
            Purpose.PEER_MAP,
            now,
            lambda key: issue_token(
                key,
                kind=TokenKind.RELAY,
                issuer=self.settings.control_url,
                subject=node.id,
                audience=relay.id,
                bound_identity=node.identity_key,
                now=now,
                lifetime=lifetime,
                entropy=self.entropy,
            ),
        )
        return RelayToken(token, now.replace(microsecond=0) + lifetime)

    # --- admin: join keys ----------------------------------------------------------------------

    async def create_join_key(
        self, auth: AdminAuth, request: CreateJoinKeyRequest
    ) -> CreatedJoinKey:
        """POST /v1/admin/join-keys: the token text is returned once, only its hash is stored."""
        admin = await self._admin(auth, AdminAction.CREATE_JOIN_KEY)
        now = self.clock.now()
        scope = Scope(_tags(request.tags, "/tags"))
        ttl = requested_ttl(request.ttl_seconds, JOIN_KEY_MAX_TTL_SECONDS)
        token = JoinToken.create(
            control_url=self.settings.control_url,
            root_fingerprint=self.keys.root.key_id,
            tls_spki_sha256=self.settings.tls_spki_sha256,
            entropy=self.entropy,
        )
        try:
            try:
                credential = Credential.create(
                    id=token.token_id,
                    secret_hash=token.secret_hash(),
                    scope=scope,
                    now=now,
                    ttl=ttl,
                    reusable=request.reusable,
                    max_uses=request.uses,
                )
            except CredentialParameterError as exc:
                raise ValidationError.at("", str(exc)) from exc
            async with self._write() as uow:
                await uow.credentials.add(credential)
                await self._audit(
                    uow,
                    now,
                    f"apikey:{admin.id}",
                    "join_key.created",
                    credential.id.to_text(),
                    {
                        "kind": credential.kind.value,
                        "tags": credential.scope.as_strings(),
                        "max_uses": credential.max_uses,
                        "expires_at": credential.expires_at.isoformat(),
                    },
                )
            text = token.to_text()
        finally:
            token.wipe()
        return CreatedJoinKey(
            credential.id.to_text(), text, credential.expires_at, _join_key_info(credential)
        )

    async def list_join_keys(self, auth: AdminAuth) -> tuple[JoinKeyInfo, ...]:
        """GET /v1/admin/join-keys (no secrets)."""
        await self._admin(auth, AdminAction.READ)
        async with self.store.unit_of_work() as uow:
            return tuple(_join_key_info(c) for c in await uow.credentials.list_all())

    async def revoke_join_key(self, auth: AdminAuth, key_id: str) -> JoinKeyInfo:
        """DELETE /v1/admin/join-keys/{id}."""
        admin = await self._admin(auth, AdminAction.WRITE)
        now = self.clock.now()
        try:
            credential_id = CredentialId.from_text(key_id)
        except DecodeError:
            raise NotFoundError("no such join key") from None
        try:
            async with self._write() as uow:
                credential = await uow.credentials.revoke(credential_id, now)
                await self._audit(
                    uow, now, f"apikey:{admin.id}", "join_key.revoked", credential.id.to_text()
                )
        except NotFound:
            raise NotFoundError("no such join key") from None
        except CredentialTransitionError:
            raise Conflict("the join key has already ended") from None
        return _join_key_info(credential)

    # --- admin: nodes --------------------------------------------------------------------------

    async def list_nodes(self, auth: AdminAuth) -> tuple[NodeInfo, ...]:
        """GET /v1/admin/nodes."""
        await self._admin(auth, AdminAction.READ)
        async with self.store.unit_of_work() as uow:
            return tuple(_node_info(n) for n in await uow.nodes.list_all())

    async def get_node(self, auth: AdminAuth, node_id: str) -> NodeInfo:
        """GET /v1/admin/nodes/{id}."""
        await self._admin(auth, AdminAction.READ)
        async with self.store.unit_of_work() as uow:
            node = await uow.nodes.get(node_id)
        if node is None:
            raise NotFoundError("no such node")
        return _node_info(node)

    async def update_node(
        self, auth: AdminAuth, node_id: str, request: UpdateNodeRequest
    ) -> NodeInfo:
        """PATCH /v1/admin/nodes/{id}: rename and/or set tags (wakes affected nodes)."""
        admin = await self._admin(auth, AdminAction.WRITE)
        now = self.clock.now()
        tags = None if request.tags is None else _tags(request.tags, "/tags")
        name = request.name
        if name is not None and (
            not 0 < len(name) <= MAX_NAME_LENGTH
            or not set(name) <= _HOSTNAME_CHARS
            or name.startswith("-")
            or name.endswith("-")
        ):
            raise ValidationError.at("/name", "one lowercase DNS label (a-z, 0-9, '-', ≤ 63)")
        woken: frozenset[str] = frozenset()
        try:
            async with self._write() as uow:
                node = await uow.nodes.get(node_id)
                if node is None:
                    raise NotFoundError("no such node")
                if name is not None and name != node.name:
                    node = await uow.nodes.rename(node_id, name)
                if tags is not None and tags != node.tags:
                    node = await uow.nodes.set_tags(node_id, tags)
                if node.state is NodeStatus.ACTIVE:
                    woken = await self._net_put(uow, node)
                    await uow.serials.bump(sorted(woken))
                    await uow.announce(woken)
                await self._audit(
                    uow,
                    now,
                    f"apikey:{admin.id}",
                    "node.updated",
                    node_id,
                    {"name": node.name, "tags": sorted(t.value for t in node.tags)},
                )
        except AlreadyExists:
            raise Conflict("another node has this name") from None
        self.waiters.wake(woken)
        return _node_info(node)

    async def _revoke(
        self, uow: UnitOfWork, node_id: str, now: datetime
    ) -> tuple[NodeRecord, frozenset[str]]:
        node = await uow.nodes.get(node_id)
        if node is None:
            raise NotFoundError("no such node")
        woken: frozenset[str] = frozenset()
        if node.state is NodeStatus.ACTIVE:
            node = await uow.nodes.revoke(node_id, now)
            woken = await self._net_remove(uow, node_id)
            others = sorted(woken - {node_id})
            if others:
                await uow.serials.bump(others)
        return node, woken

    async def revoke_node(self, auth: AdminAuth, node_id: str) -> NodeInfo:
        """POST /v1/admin/nodes/{id}/revoke: tokens stop working, it leaves every peer map."""
        admin = await self._admin(auth, AdminAction.WRITE)
        now = self.clock.now()
        async with self._write() as uow:
            node, woken = await self._revoke(uow, node_id, now)
            await uow.announce(woken | {node_id})
            await self._audit(uow, now, f"apikey:{admin.id}", "node.revoked", node_id)
        self.waiters.wake(woken | {node_id})
        return _node_info(node)

    async def delete_node(self, auth: AdminAuth, node_id: str) -> None:
        """DELETE /v1/admin/nodes/{id}: revoke if needed, then drop it and release its address."""
        admin = await self._admin(auth, AdminAction.WRITE)
        now = self.clock.now()
        async with self._write() as uow:
            _, woken = await self._revoke(uow, node_id, now)
            await uow.nodes.delete(node_id)
            await uow.announce(woken | {node_id})
            await self._audit(uow, now, f"apikey:{admin.id}", "node.deleted", node_id)
        self.waiters.wake(woken | {node_id})

    # --- admin: API keys -----------------------------------------------------------------------

    async def create_api_key(self, auth: AdminAuth, request: CreateApiKeyRequest) -> CreatedApiKey:
        """POST /v1/admin/api-keys: the key text is returned once, only its hash is stored."""
        admin = await self._admin(auth, AdminAction.WRITE)
        now = self.clock.now()
        async with self._write() as uow:
            created = await _add_api_key(uow, request, now, self.entropy)
            await self._audit(
                uow,
                now,
                f"apikey:{admin.id}",
                "api_key.created",
                created.id,
                {"scope": created.info.scope, "expires_at": created.info.expires_at.isoformat()},
            )
        return created

    async def list_api_keys(self, auth: AdminAuth) -> tuple[ApiKeyInfo, ...]:
        """GET /v1/admin/api-keys (no secrets)."""
        await self._admin(auth, AdminAction.READ)
        async with self.store.unit_of_work() as uow:
            return tuple(_api_key_info(k) for k in await uow.api_keys.list_all())

    async def revoke_api_key(self, auth: AdminAuth, key_id: str) -> ApiKeyInfo:
        """DELETE /v1/admin/api-keys/{id}."""
        admin = await self._admin(auth, AdminAction.WRITE)
        now = self.clock.now()
        try:
            async with self._write() as uow:
                record = await uow.api_keys.revoke(key_id, now)
                await self._audit(uow, now, f"apikey:{admin.id}", "api_key.revoked", key_id)
        except NotFound:
            raise NotFoundError("no such API key") from None
        return _api_key_info(record)

    # --- admin: policy -------------------------------------------------------------------------

    async def get_policy(self, auth: AdminAuth) -> PolicyInfo:
        """GET /v1/admin/policy (version 0, document None: no policy, deny all)."""
        await self._admin(auth, AdminAction.READ)
        async with self.store.unit_of_work() as uow:
            current = await uow.policies.current()
        if current is None:
            return PolicyInfo(0, None, None, None)
        document = parse_canonical_json(current.document.encode("utf-8"))
        return PolicyInfo(current.version, document, current.created_at, current.author)

    async def put_policy(self, auth: AdminAuth, document: Mapping[str, JsonValue]) -> PolicyInfo:
        """PUT /v1/admin/policy: validate (tests against the inventory), store, wake changed."""
        admin = await self._admin(auth, AdminAction.WRITE)
        now = self.clock.now()
        policy = _policy_from(document)
        try:
            text = canonical_json(document).decode("utf-8")
        except LocalProtocolError as exc:
            raise ValidationError.at("", f"not storable as canonical JSON: {exc}") from exc
        woken: frozenset[str] = frozenset()
        try:
            async with self._write() as uow:
                net = await self._net_state(uow)
                try:
                    policy.check(_policy_node(n) for n in net.nodes.values())
                except PolicyError as exc:
                    problems = [FieldProblem(p.pointer, p.message) for p in exc.problems]
                    raise ValidationError(problems) from exc
                stored = await uow.policies.put(
                    text, now, f"apikey:{admin.id}", expected_current=net.version or None
                )
                index = compile_policy(policy, [_policy_node(n) for n in net.nodes.values()])
                woken = changed_views(net.index, index)
                self._net_touched = True
                self._net = _Net(policy, stored.version, index, dict(net.nodes), net.generation)
                if woken:
                    await uow.serials.bump(sorted(woken))
                    await uow.announce(woken)
                await self._audit(
                    uow,
                    now,
                    f"apikey:{admin.id}",
                    "policy.updated",
                    f"policy:{stored.version}",
                    {"version": stored.version, "digest": policy.digest, "woken": len(woken)},
                )
        except StoreConflict:
            raise Conflict("the policy changed meanwhile; retry") from None
        self.waiters.wake(woken)
        return PolicyInfo(stored.version, document, stored.created_at, stored.author)

    async def check_policy(
        self, auth: AdminAuth, document: Mapping[str, JsonValue]
    ) -> PolicyCheckResult:
        """POST /v1/admin/policy/check: validate and run its tests; changes nothing."""
        await self._admin(auth, AdminAction.READ)
        policy = _policy_from(document)
        async with self.store.unit_of_work() as uow:
            nodes = [n for n in await uow.nodes.list_all() if n.state is NodeStatus.ACTIVE]
        try:
            policy.check(_policy_node(n) for n in nodes)
        except PolicyError as exc:
            raise ValidationError(
                [FieldProblem(p.pointer, p.message) for p in exc.problems]
            ) from exc
        return PolicyCheckResult(ok=True, digest=policy.digest, nodes_checked=len(nodes))

    # --- admin: audit --------------------------------------------------------------------------

    async def list_audit(
        self, auth: AdminAuth, start: int = 0, limit: int = 100
    ) -> tuple[AuditEntryInfo, ...]:
        """GET /v1/admin/audit?start=&limit= (limit ≤ 1000)."""
        await self._admin(auth, AdminAction.READ)
        if type(start) is not int or start < 0:
            raise ValidationError.at("/start", "a non-negative integer")
        if type(limit) is not int or not 0 < limit <= MAX_AUDIT_PAGE:
            raise ValidationError.at("/limit", f"1..{MAX_AUDIT_PAGE}")
        async with self.store.unit_of_work() as uow:
            return tuple(_audit_info(e) for e in await uow.audit.entries(start, limit))

    async def verify_audit(self, auth: AdminAuth) -> AuditVerifyResult:
        """POST /v1/admin/audit/verify: hash chain and signed checkpoints."""
        await self._admin(auth, AdminAction.READ)
        return await self.audit_report()

    async def audit_report(self) -> AuditVerifyResult:
        """Verify the stored audit chain (also for tests and `serve` start-up checks)."""
        async with self.store.unit_of_work() as uow:
            entries = await uow.audit.entries()
            checkpoints = await uow.audit.checkpoints()
        report = verify_chain(entries, checkpoints, self.keys.audit_key.public_key)
        return AuditVerifyResult(
            ok=report.ok,
            entries_checked=report.entries_checked,
            checkpoints_verified=report.checkpoints_verified,
            problem=None if report.problem is None else report.problem.value,
            first_bad_index=report.first_bad_index,
            message=report.message,
        )

    # --- operations ----------------------------------------------------------------------------

    async def tick(self) -> None:
        """Periodic upkeep (every few seconds): purge challenges, sign a due audit checkpoint,
        record lapsed join keys, purge nonces and full rate-limit buckets, write the summaries
        of closed audit fold windows."""
        now = self.clock.now()
        async with self._write() as uow:
            await uow.challenges.purge(now)
            self._pending_enrollments = await uow.challenges.count(ChallengeKind.ENROLLMENT, now)
            expired = await uow.credentials.expire_lapsed(now)
            if expired:
                await self._audit(
                    uow, now, "system", "join_key.expired", "join-keys", {"count": expired}
                )
            await uow.nonces.purge(now)
            await uow.limiter.prune(now)
            await self._audit_writer.checkpoint_if_due(uow, now)
        await self._guard.flush(now)  # summaries of the closed fold windows

    def stats(self) -> ControlStats:
        """Numbers for /metrics."""
        return ControlStats(
            policy_version=0 if self._net is None else self._net.version,
            active_waiters=self.waiters.active,
            enrollments=self._enrollments,
            pending_enrollments=self._pending_enrollments,
        )


async def _add_api_key(
    uow: UnitOfWork, request: CreateApiKeyRequest, now: datetime, entropy: Entropy
) -> CreatedApiKey:
    try:
        scope = ApiKeyScope(request.scope)
    except ValueError:
        raise ValidationError.at("/scope", "admin, read-only or enroll-only") from None
    ttl = api_keys.DEFAULT_TTL
    if request.ttl_seconds is not None:
        ttl = requested_ttl(request.ttl_seconds, API_KEY_MAX_TTL_SECONDS)
    if not isinstance(request.description, str) or len(request.description) > 200:
        raise ValidationError.at("/description", "at most 200 characters")
    key = ApiKey.generate(entropy)
    try:
        record = ApiKeyRecord(
            id=key.key_id,
            secret_hash=key.secret_hash(),
            scope=scope,
            description=request.description,
            created_at=now,
            expires_at=now + ttl,
        )
        await uow.api_keys.add(record)
        text = key.to_text()
    finally:
        key.wipe()
    return CreatedApiKey(record.id, text, _api_key_info(record))


async def create_initial_admin_key(
    store: Store,
    *,
    now: datetime,
    entropy: Entropy,
    keys: ControlKeys | None = None,
    description: str = "initial admin key (init)",
) -> CreatedApiKey:
    """For `rustynet-control init`: the first admin key (audited when `keys` is given)."""
    async with store.unit_of_work() as uow:
        created = await _add_api_key(
            uow, CreateApiKeyRequest(scope="admin", description=description), now, entropy
        )
        if keys is not None:
            chain = AuditChain.resume(
                await uow.audit.last_entry(), await uow.audit.last_checkpoint()
            )
            appended = chain.append(
                now=now,
                actor="init",
                action="api_key.created",
                target=created.id,
                details={"scope": "admin", "expires_at": created.info.expires_at.isoformat()},
                signer=keys.audit_key,
            )
            await uow.audit.append(appended.entry)
            if appended.checkpoint is not None:
                await uow.audit.add_checkpoint(appended.checkpoint)
    return created
