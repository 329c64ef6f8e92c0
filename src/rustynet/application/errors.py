"""Use-case errors: what a control-plane request can fail with, one class per API error code.

The one rule: a use case reports every refusal by raising exactly one of these, and the driving
adapter maps the class to its status once (`code` is the `error` field of docs/control-api.md).
Messages are for the client and never contain a secret or say which of several credential
checks failed: unknown and wrong credentials both raise the same `Unauthorized()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import attrs

from rustynet.domain.errors import RustynetError


class ApplicationError(RustynetError):
    """Base: a request the control plane refuses. `code` is the API error code."""

    code: ClassVar[str] = "internal"
    default_detail: ClassVar[str] = "internal error"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail if detail is not None else self.default_detail
        super().__init__(self.detail)


class BadRequest(ApplicationError):  # noqa: N818 - named for the API error code
    """400: the request is malformed (the adapter also uses it for JSON/field errors)."""

    code = "bad_request"
    default_detail = "bad request"


@attrs.frozen
class FieldProblem:
    """One finding: where (RFC 6901 pointer into the request body or document) and what."""

    pointer: str
    message: str


class ValidationError(BadRequest):
    """400 with pointers: a field or a policy document is invalid; nothing changed."""

    def __init__(self, problems: Sequence[FieldProblem], detail: str | None = None) -> None:
        self.problems: tuple[FieldProblem, ...] = tuple(problems)
        first = self.problems[0] if self.problems else None
        summary = f"{first.pointer or '/'}: {first.message}" if first else "invalid input"
        super().__init__(detail if detail is not None else summary)

    @classmethod
    def at(cls, pointer: str, message: str) -> ValidationError:
        """A single problem."""
        return cls([FieldProblem(pointer, message)])


class Unauthorized(ApplicationError):  # noqa: N818 - named for the API error code
    """401: missing, unknown, wrong, expired or revoked credentials (all look the same)."""

    code = "unauthorized"
    default_detail = "authentication failed"


class Forbidden(ApplicationError):  # noqa: N818 - named for the API error code
    """403: authenticated, but the API key's scope (or the join key's scope) does not allow it."""

    code = "forbidden"
    default_detail = "not allowed for this credential"


class NotFoundError(ApplicationError):
    """404: the addressed resource does not exist."""

    code = "not_found"
    default_detail = "not found"


class Conflict(ApplicationError):  # noqa: N818 - named for the API error code
    """409: the request clashes with current state (taken name, identity already enrolled,
    concurrent policy change)."""

    code = "conflict"
    default_detail = "conflict"


class Gone(ApplicationError):  # noqa: N818 - named for the API error code
    """410: the join key is used, exhausted, expired or revoked (one code for all)."""

    code = "gone"
    default_detail = "join key is no longer valid"


class RateLimited(ApplicationError):  # noqa: N818 - named for the API error code
    """429: too many requests or too many failures; retry after `retry_after` seconds."""

    code = "rate_limited"
    default_detail = "too many requests"

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        self.retry_after = max(1, int(retry_after))
        super().__init__(detail)


ERROR_STATUS: dict[type[ApplicationError], int] = {
    ApplicationError: 500,
    BadRequest: 400,
    ValidationError: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFoundError: 404,
    Conflict: 409,
    Gone: 410,
    RateLimited: 429,
}
"""HTTP status per class (the adapter may use it; subclasses inherit their base's status)."""


def status_of(error: ApplicationError) -> int:
    """The HTTP status for `error` (walks the class hierarchy)."""
    for klass in type(error).__mro__:
        if klass in ERROR_STATUS:
            return ERROR_STATUS[klass]
    return 500
