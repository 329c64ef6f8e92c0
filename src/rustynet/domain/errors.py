"""Domain errors, split by whose fault they are.

`LocalProtocolError`: we misused a machine or value (a bug on our side, or an operator mistake
caught before anything was sent). `RemoteProtocolError`: the peer or the input misbehaved and
must be rejected. Driving adapters map these to HTTP statuses and CLI exit codes, once.
"""

from __future__ import annotations


class RustynetError(Exception):
    """Base of every error the domain raises on purpose."""


class LocalProtocolError(RustynetError):
    """We broke a contract: a state machine was driven out of order, a value misused."""


class RemoteProtocolError(RustynetError):
    """Input from outside broke a rule: reject it and leave state unchanged."""


class InvalidSignature(RemoteProtocolError):  # noqa: N818 - mirrors cryptography's name
    """A signature did not verify for the stated key and purpose."""


class DecodeError(RemoteProtocolError):
    """A typed text or binary encoding could not be parsed as the requested type."""
