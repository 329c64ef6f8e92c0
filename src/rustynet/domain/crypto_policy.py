"""Crypto policy: which algorithm may be used for what, until when, and by which exception.

The one rule: nothing is used that the policy does not name. An algorithm that is unknown,
denied, used for a purpose its allow entry does not list, or past its deprecation date is
refused with `CryptoPolicyViolation`, unless an *active* exception covers exactly that
(algorithm, use). Exceptions are time-bound (≤ 90 days from creation) and fail closed: once
expired they permit nothing and `check_startup` refuses to start until they are renewed or
removed.

Deprecation has two dates per algorithm. After `not_after_for_apply` the algorithm may no longer
*apply* protection (sign, encrypt, MAC, hash, derive, agree, handshake); after
`not_after_for_process` it may no longer *process* existing protection either (verify, decrypt,
check a MAC or digest, re-derive). The apply cut-off always comes strictly first, so data
protected before the cut-off stays readable during the transition.

The policy is machine-readable TOML (`domain/data/crypto-policy.toml`, shipped with the package).
This module parses the TOML *text* (`tomllib` is pure) into frozen values and validates strictly:
unknown keys, wrong types, duplicates, an algorithm both allowed and denied, or an exception
longer than 90 days raise `CryptoPolicyError` naming the path of the offending value. An operator
override file may only tighten the shipped policy (more denials, earlier dates) and add
time-bound exceptions; it can never add an allow entry. Reading the files is bootstrap's job
(`rustynet.bootstrap.crypto_policy.load_crypto_policy`).
"""

from __future__ import annotations

import enum
import tomllib
import types
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Final

import attrs

from rustynet.domain.errors import LocalProtocolError

MAX_EXCEPTION_LIFETIME: Final = timedelta(days=90)
SCHEMA_VERSION: Final = 1


class CryptoPolicyError(LocalProtocolError):
    """The policy document is malformed or breaks a rule; `path` names the offending value."""

    def __init__(self, source: str, path: str, message: str) -> None:
        self.source = source
        self.path = path
        super().__init__(f"{source}: {path}: {message}" if path else f"{source}: {message}")


class CryptoPolicyViolation(LocalProtocolError):  # noqa: N818 - a refusal, named for what it is
    """A use of an algorithm is not permitted; `problems` lists every reason (one per line)."""

    def __init__(self, problems: Iterable[str], *, heading: str | None = None) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        lines = [heading] if heading else []
        lines += [f"  - {p}" for p in self.problems] if heading else list(self.problems)
        super().__init__("\n".join(lines))


class Use(enum.Enum):
    """What an algorithm is used for. Each use either applies or processes protection."""

    SIGN = "sign"
    VERIFY = "verify"
    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    MAC = "mac"
    MAC_VERIFY = "mac-verify"
    HASH = "hash"
    HASH_VERIFY = "hash-verify"
    KDF = "kdf"
    KDF_VERIFY = "kdf-verify"
    KEY_AGREEMENT = "key-agreement"
    TLS = "tls"

    @property
    def applies_protection(self) -> bool:
        """True for uses that create new protection (cut off first on deprecation)."""
        return self not in _PROCESS_USES


_PROCESS_USES: Final = frozenset(
    {Use.VERIFY, Use.DECRYPT, Use.MAC_VERIFY, Use.HASH_VERIFY, Use.KDF_VERIFY}
)


@attrs.frozen
class AlgorithmUse:
    """One (algorithm, use) pair a program relies on, with where it is used (for messages)."""

    algorithm: str = attrs.field(validator=attrs.validators.instance_of(str))
    use: Use = attrs.field(validator=attrs.validators.instance_of(Use))
    where: str = attrs.field(default="", validator=attrs.validators.instance_of(str))


def _uses(*uses: Use, algorithm: str, where: str) -> tuple[AlgorithmUse, ...]:
    return tuple(AlgorithmUse(algorithm, u, where) for u in uses)


# Everything Rustynet itself relies on. Every program checks this list against the policy at
# start-up (`load_crypto_policy`); add a row here when code starts using an algorithm.
RUSTYNET_ALGORITHMS: Final[tuple[AlgorithmUse, ...]] = (
    *_uses(
        Use.SIGN,
        Use.VERIFY,
        algorithm="Ed25519",
        where="keys.py: certificates, peer maps, tokens, audit checkpoints, proofs",
    ),
    *_uses(Use.KEY_AGREEMENT, algorithm="X25519", where="keys.py: tunnel keys"),
    *_uses(
        Use.ENCRYPT,
        Use.DECRYPT,
        algorithm="ChaCha20-Poly1305",
        where="encrypted key files; tunnel data",
    ),
    *_uses(Use.KDF, Use.KDF_VERIFY, algorithm="Argon2id", where="encrypted key files"),
    *_uses(
        Use.HASH,
        Use.HASH_VERIFY,
        algorithm="SHA-256",
        where="fingerprints, TLS SPKI pins, stored credential hashes, audit chain",
    ),
    *_uses(Use.HASH, Use.HASH_VERIFY, algorithm="BLAKE2s", where="tunnel handshake"),
    *_uses(Use.SIGN, Use.VERIFY, algorithm="ECDSA-P256", where="control TLS certificate"),
    *_uses(Use.TLS, algorithm="TLS1.3", where="control and relay HTTPS"),
    *_uses(
        Use.MAC,
        Use.MAC_VERIFY,
        algorithm="HMAC-SHA-256",
        where="keys.py MacKey: token-renewal challenges",
    ),
    *_uses(Use.KDF, algorithm="HKDF-SHA-256", where="keys.py MacKey: renewal-challenge MAC key"),
    # What the TLS 1.3 contexts offer (rustynet.adapters.support.tls_policy: groups, suites); a test
    # reads the live contexts and checks every negotiable group and suite against this list.
    *_uses(Use.KEY_AGREEMENT, algorithm="X25519", where="TLS 1.3 group X25519"),
    *_uses(Use.KEY_AGREEMENT, algorithm="ECDH-P256", where="TLS 1.3 group P-256"),
    *_uses(Use.ENCRYPT, Use.DECRYPT, algorithm="AES-256-GCM", where="TLS 1.3 records"),
    *_uses(Use.ENCRYPT, Use.DECRYPT, algorithm="ChaCha20-Poly1305", where="TLS 1.3 records"),
    *_uses(Use.KDF, algorithm="HKDF-SHA-384", where="TLS 1.3 key schedule"),
    *_uses(Use.KDF, algorithm="HKDF-SHA-256", where="TLS 1.3 key schedule"),
    *_uses(Use.HASH, algorithm="SHA-384", where="TLS 1.3 transcript"),
)


def _frozen_allowed(value: Mapping[str, AllowedAlgorithm]) -> Mapping[str, AllowedAlgorithm]:
    return types.MappingProxyType(dict(value))


def _frozen_denied(value: Mapping[str, DeniedAlgorithm]) -> Mapping[str, DeniedAlgorithm]:
    return types.MappingProxyType(dict(value))


def _norm(name: str) -> str:
    return name.casefold()


def _require_aware(now: object) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise LocalProtocolError("now must be a timezone-aware datetime")
    return now


@attrs.frozen
class AllowedAlgorithm:
    """An allowlisted algorithm, the uses it is allowed for, and its deprecation dates."""

    name: str
    uses: frozenset[Use]
    not_after_for_apply: datetime | None = None
    not_after_for_process: datetime | None = None
    note: str = ""

    def refusal(self, use: Use, now: datetime) -> str | None:
        """Why `use` at `now` is not allowed, or None when it is."""
        if use not in self.uses:
            allowed = ", ".join(sorted(u.value for u in self.uses))
            return f"{self.name} is not allowed for {use.value} (allowed for: {allowed})"
        if use.applies_protection:
            cutoff = self.not_after_for_apply
            if cutoff is not None and now > cutoff:
                return (
                    f"{self.name} may no longer be used for {use.value} "
                    f"(apply cut-off {cutoff.isoformat()})"
                )
        cutoff = self.not_after_for_process
        if cutoff is not None and now > cutoff:
            return (
                f"{self.name} may no longer be used at all "
                f"(process cut-off {cutoff.isoformat()}; {use.value} refused)"
            )
        return None


@attrs.frozen
class DeniedAlgorithm:
    """A denylisted algorithm and why."""

    name: str
    reason: str


@attrs.frozen
class PolicyException:
    """A time-bound permission for (algorithm, uses) that the policy would otherwise refuse."""

    id: str
    algorithm: str
    uses: frozenset[Use]
    owner: str
    reason: str
    created: datetime
    expires: datetime

    def covers(self, algorithm: str, use: Use) -> bool:
        """True when this exception's scope names (algorithm, use)."""
        return _norm(self.algorithm) == _norm(algorithm) and use in self.uses

    def active_at(self, now: datetime) -> bool:
        """True from `created` up to and including `expires`."""
        return self.created <= now <= self.expires


@attrs.frozen
class Permission:
    """The outcome of a permitted use; `exception` is set when only an exception permits it."""

    algorithm: str
    use: Use
    exception: PolicyException | None = None


@attrs.frozen
class CryptoPolicy:
    """A validated crypto policy. Build it with `parse`; tighten it with `tightened`."""

    allowed: Mapping[str, AllowedAlgorithm] = attrs.field(converter=_frozen_allowed)
    denied: Mapping[str, DeniedAlgorithm] = attrs.field(converter=_frozen_denied)
    exceptions: tuple[PolicyException, ...]
    sources: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, *, source: str = "crypto-policy.toml") -> CryptoPolicy:
        """Parse and strictly validate a full policy document."""
        doc = _load(text, source)
        p = _Parser(source)
        p.keys(doc, "", required={"version"}, optional={"allow", "deny", "exception"})
        p.version(doc)
        allowed: dict[str, AllowedAlgorithm] = {}
        for path, entry in p.tables(doc, "allow"):
            alg = p.allow_entry(entry, path)
            if _norm(alg.name) in allowed:
                raise p.error(f"{path}.name", f"{alg.name!r} is listed twice")
            allowed[_norm(alg.name)] = alg
        denied = p.deny_entries(doc)
        for key, den in denied.items():
            if key in allowed:
                raise p.error("deny", f"{den.name!r} is both allowed and denied")
        policy = cls(allowed, denied, (), (source,))
        return policy._with_exceptions(p, doc)

    def tightened(self, text: str, *, source: str) -> CryptoPolicy:
        """Apply an operator override: extra denials, earlier dates, time-bound exceptions.

        An override never widens the policy: it has no `allow` section, it may not move a
        deprecation date later, and anything else it would need must be an exception.
        """
        doc = _load(text, source)
        p = _Parser(source)
        p.keys(doc, "", required={"version"}, optional={"deny", "deprecate", "exception"})
        p.version(doc)
        allowed = dict(self.allowed)
        denied = dict(self.denied)
        for key, den in p.deny_entries(doc).items():
            if key in denied:
                raise p.error("deny", f"{den.name!r} is already denied by the shipped policy")
            allowed.pop(key, None)
            denied[key] = den
        for path, entry in p.tables(doc, "deprecate"):
            name, apply_at, process_at = p.deprecation(entry, path)
            if _norm(name) not in allowed:
                raise p.error(f"{path}.name", f"{name!r} is not an allowed algorithm")
            current = allowed[_norm(name)]
            for field, new, old in (
                ("not_after_for_apply", apply_at, current.not_after_for_apply),
                ("not_after_for_process", process_at, current.not_after_for_process),
            ):
                if new is not None and old is not None and new > old:
                    raise p.error(
                        f"{path}.{field}",
                        f"may only bring the date earlier than {old.isoformat()} "
                        "(use an exception to extend)",
                    )
            merged = attrs.evolve(
                current,
                not_after_for_apply=apply_at or current.not_after_for_apply,
                not_after_for_process=process_at or current.not_after_for_process,
            )
            p.check_dates(merged, path)
            allowed[_norm(name)] = merged
        base = CryptoPolicy(allowed, denied, self.exceptions, (*self.sources, source))
        return base._with_exceptions(p, doc)

    def _with_exceptions(self, p: _Parser, doc: Mapping[str, object]) -> CryptoPolicy:
        exceptions = list(self.exceptions)
        seen = {e.id for e in exceptions}
        for path, entry in p.tables(doc, "exception"):
            exc = p.exception_entry(entry, path)
            if exc.id in seen:
                raise p.error(f"{path}.id", f"exception id {exc.id!r} is used twice")
            key = _norm(exc.algorithm)
            if key not in self.allowed and key not in self.denied:
                raise p.error(
                    f"{path}.algorithm",
                    f"{exc.algorithm!r} is neither allowed nor denied; add it to the policy",
                )
            seen.add(exc.id)
            exceptions.append(exc)
        return attrs.evolve(self, exceptions=tuple(exceptions))

    def _refusal(self, algorithm: str, use: Use, now: datetime) -> str | None:
        key = _norm(algorithm)
        if key in self.denied:
            den = self.denied[key]
            return f"{den.name} is denied ({den.reason}); {use.value} refused"
        if key in self.allowed:
            return self.allowed[key].refusal(use, now)
        return f"{algorithm!r} is not in the crypto policy; {use.value} refused"

    def check_use(self, algorithm: str, use: Use, now: datetime) -> Permission:
        """Permit `algorithm` for `use` at `now`, or raise `CryptoPolicyViolation`."""
        _require_aware(now)
        if not isinstance(algorithm, str) or not isinstance(use, Use):
            raise LocalProtocolError("check_use takes an algorithm name and a Use")
        refusal = self._refusal(algorithm, use, now)
        if refusal is None:
            return Permission(algorithm, use)
        covering = [e for e in self.exceptions if e.covers(algorithm, use)]
        for exc in covering:
            if exc.active_at(now):
                return Permission(algorithm, use, exc)
        for exc in covering:
            refusal += (
                f" (exception {exc.id} owned by {exc.owner} "
                f"{'expired ' + exc.expires.isoformat() if now > exc.expires else 'not yet valid'})"
            )
        raise CryptoPolicyViolation([refusal])

    def check_startup(self, uses: Iterable[AlgorithmUse], now: datetime) -> None:
        """Check every (algorithm, use) a program relies on; raise one message listing all."""
        _require_aware(now)
        problems: list[str] = []
        for item in uses:
            try:
                self.check_use(item.algorithm, item.use, now)
            except CryptoPolicyViolation as exc:
                where = f" [{item.where}]" if item.where else ""
                problems.extend(p + where for p in exc.problems)
        problems.extend(
            f"exception {e.id} ({e.algorithm}, owner {e.owner}) expired {e.expires.isoformat()}: "
            "renew it (≤ 90 days) or remove it from the policy"
            for e in self.exceptions
            if now > e.expires
        )
        if problems:
            heading = (
                f"crypto policy ({', '.join(self.sources)}) refuses to start: "
                f"{len(problems)} problem(s)"
            )
            raise CryptoPolicyViolation(problems, heading=heading)

    def warnings(self, now: datetime, horizon: timedelta = timedelta(days=30)) -> tuple[str, ...]:
        """Deadlines within `horizon` of `now` (cut-offs, exception expiries), for `doctor`."""
        _require_aware(now)
        soon = now + horizon
        found: list[str] = []
        for alg in self.allowed.values():
            for label, when in (
                ("apply cut-off", alg.not_after_for_apply),
                ("process cut-off", alg.not_after_for_process),
            ):
                if when is not None and now <= when <= soon:
                    found.append(f"{alg.name}: {label} {when.isoformat()}")
        found.extend(
            f"exception {e.id} ({e.algorithm}, owner {e.owner}) expires {e.expires.isoformat()}"
            for e in self.exceptions
            if now <= e.expires <= soon
        )
        return tuple(found)


def _load(text: str, source: str) -> dict[str, object]:
    if not isinstance(text, str):
        raise CryptoPolicyError(source, "", "policy text must be a str")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CryptoPolicyError(source, "", f"not valid TOML: {exc}") from exc


class _Parser:
    """Strict readers for policy tables; every error names its path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, path: str, message: str) -> CryptoPolicyError:
        return CryptoPolicyError(self.source, path, message)

    def keys(
        self, table: Mapping[str, object], path: str, *, required: set[str], optional: set[str]
    ) -> None:
        for key in table:
            if key not in required | optional:
                where = f"{path}.{key}" if path else key
                known = ", ".join(sorted(required | optional))
                raise self.error(where, f"unknown key (expected one of: {known})")
        for key in sorted(required - set(table)):
            raise self.error(f"{path}.{key}" if path else key, "missing required key")

    def version(self, doc: Mapping[str, object]) -> None:
        version = doc["version"]
        if type(version) is not int or version != SCHEMA_VERSION:
            raise self.error("version", f"unsupported version {version!r} (expected 1)")

    def tables(
        self, doc: Mapping[str, object], name: str
    ) -> Iterable[tuple[str, Mapping[str, object]]]:
        items = doc.get(name, [])
        if not isinstance(items, list):
            raise self.error(name, f"must be an array of tables ([[{name}]])")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.error(f"{name}[{i}]", "must be a table")
            yield f"{name}[{i}]", item

    def text(self, table: Mapping[str, object], key: str, path: str) -> str:
        value = table[key]
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"{path}.{key}", "must be a non-empty string")
        return value

    def when(self, table: Mapping[str, object], key: str, path: str) -> datetime | None:
        if key not in table:
            return None
        value = table[key]
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise self.error(
                f"{path}.{key}", "must be a date-time with a UTC offset, e.g. 2030-01-01T00:00:00Z"
            )
        return value

    def required_when(self, table: Mapping[str, object], key: str, path: str) -> datetime:
        value = self.when(table, key, path)
        if value is None:
            raise self.error(f"{path}.{key}", "missing required key")
        return value

    def use_set(self, table: Mapping[str, object], path: str) -> frozenset[Use]:
        value = table["uses"]
        if not isinstance(value, list) or not value:
            raise self.error(f"{path}.uses", "must be a non-empty array of uses")
        uses: set[Use] = set()
        for i, item in enumerate(value):
            try:
                use = Use(item)
            except ValueError:
                known = ", ".join(u.value for u in Use)
                raise self.error(
                    f"{path}.uses[{i}]", f"unknown use {item!r} (expected one of: {known})"
                ) from None
            if use in uses:
                raise self.error(f"{path}.uses[{i}]", f"{use.value!r} is listed twice")
            uses.add(use)
        return frozenset(uses)

    def check_dates(self, alg: AllowedAlgorithm, path: str) -> None:
        apply_at, process_at = alg.not_after_for_apply, alg.not_after_for_process
        if process_at is not None and apply_at is None:
            raise self.error(
                f"{path}.not_after_for_apply",
                "required when not_after_for_process is set (apply is cut off first)",
            )
        if apply_at is not None and process_at is not None and not apply_at < process_at:
            raise self.error(
                f"{path}.not_after_for_process",
                "must be later than not_after_for_apply (apply is cut off first)",
            )

    def allow_entry(self, entry: Mapping[str, object], path: str) -> AllowedAlgorithm:
        self.keys(
            entry,
            path,
            required={"name", "uses"},
            optional={"not_after_for_apply", "not_after_for_process", "note"},
        )
        note = self.text(entry, "note", path) if "note" in entry else ""
        alg = AllowedAlgorithm(
            name=self.text(entry, "name", path),
            uses=self.use_set(entry, path),
            not_after_for_apply=self.when(entry, "not_after_for_apply", path),
            not_after_for_process=self.when(entry, "not_after_for_process", path),
            note=note,
        )
        self.check_dates(alg, path)
        return alg

    def deny_entries(self, doc: Mapping[str, object]) -> dict[str, DeniedAlgorithm]:
        denied: dict[str, DeniedAlgorithm] = {}
        for path, entry in self.tables(doc, "deny"):
            self.keys(entry, path, required={"name", "reason"}, optional=set())
            den = DeniedAlgorithm(self.text(entry, "name", path), self.text(entry, "reason", path))
            if _norm(den.name) in denied:
                raise self.error(f"{path}.name", f"{den.name!r} is listed twice")
            denied[_norm(den.name)] = den
        return denied

    def deprecation(
        self, entry: Mapping[str, object], path: str
    ) -> tuple[str, datetime | None, datetime | None]:
        self.keys(
            entry,
            path,
            required={"name"},
            optional={"not_after_for_apply", "not_after_for_process"},
        )
        apply_at = self.when(entry, "not_after_for_apply", path)
        process_at = self.when(entry, "not_after_for_process", path)
        if apply_at is None and process_at is None:
            raise self.error(path, "names no date")
        return self.text(entry, "name", path), apply_at, process_at

    def exception_entry(self, entry: Mapping[str, object], path: str) -> PolicyException:
        self.keys(
            entry,
            path,
            required={"id", "algorithm", "uses", "owner", "reason", "created", "expires"},
            optional=set(),
        )
        created = self.required_when(entry, "created", path)
        expires = self.required_when(entry, "expires", path)
        if expires <= created:
            raise self.error(f"{path}.expires", "must be after created")
        if expires - created > MAX_EXCEPTION_LIFETIME:
            raise self.error(
                f"{path}.expires",
                f"an exception lasts at most 90 days from creation; this one lasts "
                f"{expires - created}",
            )
        return PolicyException(
            id=self.text(entry, "id", path),
            algorithm=self.text(entry, "algorithm", path),
            uses=self.use_set(entry, path),
            owner=self.text(entry, "owner", path),
            reason=self.text(entry, "reason", path),
            created=created,
            expires=expires,
        )
