"""Request fields turned into domain values: each refusal is a `ValidationError` naming the
field by JSON pointer. The value rules themselves belong to the domain types (`Tag`,
`Candidate`, `Policy`, the key types); this module only maps their errors to fields.

Requested lifetimes (`ttl_seconds`) of join keys and API keys are bounded BEFORE any arithmetic:
an integer number of seconds in 1..maximum (`timedelta(seconds=10**17)` raises OverflowError,
which was a 500). The maxima are the domain's: a one-time join key lives at most 7 days (a
reusable one at most 24 hours, which `Credential.create` enforces), an API key at most 365 days.
The OpenAPI document (rustynet.adapters.http_api/openapi.json) states the same bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Final, TypeVar

from rustynet.application.errors import FieldProblem, ValidationError
from rustynet.domain import api_keys
from rustynet.domain.candidates import MAX_CANDIDATES, Candidate, CandidateKind, candidate_set
from rustynet.domain.credentials import MAX_ONE_TIME_TTL
from rustynet.domain.errors import DecodeError
from rustynet.domain.keys import b64decode
from rustynet.domain.nat import NatClass
from rustynet.domain.policy import Policy, PolicyError
from rustynet.domain.scope import Tag
from rustynet.domain.tunnel import TunnelConfigError
from rustynet.ports.store import MAX_NAME_LENGTH
from rustynet.ports.wire.v1 import EndpointsRequest

_T = TypeVar("_T")
_HOSTNAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
JOIN_KEY_MAX_TTL_SECONDS: Final = int(MAX_ONE_TIME_TTL.total_seconds())  # 604,800 (7 days)
API_KEY_MAX_TTL_SECONDS: Final = int(api_keys.MAX_TTL.total_seconds())  # 31,536,000 (365 days)


def tags(values: Iterable[str], where: str) -> frozenset[Tag]:
    """Every value a tag; all the bad ones named in one ValidationError."""
    problems = []
    found = set()
    for i, value in enumerate(values):
        try:
            found.add(Tag(value))
        except (DecodeError, TypeError):
            problems.append(FieldProblem(f"{where}/{i}", "not a tag (tag:lowercase-name)"))
    if problems:
        raise ValidationError(problems)
    return frozenset(found)


def parsed(parse: Callable[[str], _T], text: str, where: str, what: str) -> _T:
    """`parse(text)`, its refusal as "not a valid `what`" at `where`."""
    try:
        return parse(text)
    except (DecodeError, TypeError, ValueError) as exc:
        raise ValidationError.at(where, f"not a valid {what}") from exc


def b64(text: str, where: str) -> bytes:
    """Unpadded base64url bytes."""
    try:
        return b64decode(text)
    except DecodeError as exc:
        raise ValidationError.at(where, "not unpadded base64url") from exc


def policy(document: object) -> Policy:
    """A policy document, each problem at its own pointer."""
    try:
        return Policy.parse(document)
    except PolicyError as exc:
        raise ValidationError([FieldProblem(p.pointer, p.message) for p in exc.problems]) from exc


def candidates(request: EndpointsRequest) -> tuple[Candidate, ...]:
    """The candidates a node reports (`domain.candidates` rule), each problem at its field.

    The previous shape's `underlay_endpoints` are `configured` candidates, listed first;
    duplicates are dropped (the first kind wins); more than `MAX_CANDIDATES` in all is refused.
    """
    found: list[Candidate] = []
    for i, text in enumerate(request.underlay_endpoints):
        found.append(_candidate(text, CandidateKind.CONFIGURED.value, f"/underlay_endpoints/{i}"))
    for i, body in enumerate(request.candidates):
        found.append(_candidate(body.endpoint, body.kind, f"/candidates/{i}"))
    if len(found) > MAX_CANDIDATES:
        where = "/candidates" if request.candidates else "/underlay_endpoints"
        raise ValidationError.at(where, f"at most {MAX_CANDIDATES} candidates")
    return candidate_set(found)


def nat_classification(request: EndpointsRequest) -> NatClass | None:
    """The reported NAT classification: one of the `NatClass` values, or none."""
    if request.nat_classification is None:
        return None
    try:
        return NatClass(request.nat_classification)
    except ValueError:
        allowed = ", ".join(c.value for c in NatClass)
        raise ValidationError.at("/nat_classification", f"one of {allowed}") from None


def _candidate(endpoint: str, kind: str, where: str) -> Candidate:
    try:
        CandidateKind(kind)
    except ValueError:
        raise ValidationError.at(f"{where}/kind", "one of configured, local, reflexive") from None
    try:
        return Candidate.parse(endpoint, kind)
    except (DecodeError, TunnelConfigError) as exc:
        field = f"{where}/endpoint" if where.startswith("/candidates") else where
        raise ValidationError.at(
            field, f"a unicast 198.51.100.2:41641 or [2001:db8::1]:41641 ({exc})"
        ) from None


def node_name(name: str, where: str) -> str:
    """One lowercase DNS label (a-z, 0-9, '-', at most `MAX_NAME_LENGTH`)."""
    if (
        not 0 < len(name) <= MAX_NAME_LENGTH
        or not set(name) <= _HOSTNAME_CHARS
        or name.startswith("-")
        or name.endswith("-")
    ):
        raise ValidationError.at(where, "one lowercase DNS label (a-z, 0-9, '-', ≤ 63)")
    return name


def requested_ttl(value: object, maximum_seconds: int, pointer: str = "/ttl_seconds") -> timedelta:
    """`value` seconds as a timedelta; 400 (`ValidationError`) unless an int in 1..maximum."""
    if type(value) is not int or not 1 <= value <= maximum_seconds:
        raise ValidationError.at(pointer, f"an integer number of seconds, 1..{maximum_seconds}")
    return timedelta(seconds=value)
