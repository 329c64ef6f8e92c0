"""The store's errors: what a repository call raises besides a domain rejection."""

from __future__ import annotations

from rustynet.domain.credentials import CredentialRejected
from rustynet.domain.errors import RustynetError


class StoreError(RustynetError):
    """The store failed or refused; the message is for the operator (never holds a secret)."""


class StoreUnavailable(StoreError):  # noqa: N818 - names the state, like KeystoreUnavailable
    """The database cannot be reached or answered with a driver error (nothing committed)."""


class StoreConflict(StoreError):  # noqa: N818 - names the outcome, like CredentialRejected
    """A concurrent unit of work won (serialization failure, deadlock, lost race): the whole
    unit of work was rolled back and may be retried from the start."""


class UnitOfWorkAborted(StoreError):  # noqa: N818 - names the outcome
    """The block ended normally although a repository call in it had failed (and the
    exception was caught): nothing was committed."""


class NotFound(StoreError):  # noqa: N818 - reads as the fact it reports, like KeyError
    """The record to change does not exist."""


class AlreadyExists(StoreError):  # noqa: N818 - reads as the fact it reports
    """A record with this id (or unique name / identity key / version) already exists."""


class MigrationError(StoreError):
    """The database schema is newer than this code or a migration failed (nothing applied)."""


class TooManyChallenges(StoreError):  # noqa: N818 - names the state, like TooManyWaiters
    """`capacity` live challenges of this kind are outstanding; nothing was stored (the unit
    of work is not spoiled: the refusal is by design)."""


class UnknownCredential(CredentialRejected):
    """No credential with this id exists (the edge answers it like any other rejection)."""
