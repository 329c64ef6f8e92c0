"""What the node's use cases refuse, as exceptions whose message is for the operator.

The one rule: each refusal names the state that forbids the request (not enrolled, already
enrolled, revoked, not running) or the outcome (the join failed), so the local API can map it
to one HTTP status (`adapters/local_api.py::error_response`) and the CLI print its message.
"""

from __future__ import annotations

from rustynet.domain.errors import RustynetError


class AgentError(RustynetError):
    """The agent cannot do what was asked; the message is for the operator."""


class NotEnrolled(AgentError):  # noqa: N818 - names the state
    """There is no saved node state: run `join` first."""


class AlreadyEnrolled(AgentError):  # noqa: N818 - names the state
    """This state directory already holds an enrolled node."""


class JoinFailed(AgentError):  # noqa: N818 - names the outcome
    """Enrollment was refused or the control plane answered something we do not trust."""


class AgentRevoked(AgentError):  # noqa: N818 - names the state
    """Control refused our identity (401 on token renewal): the node was revoked."""


class NotRunning(AgentError):  # noqa: N818 - names the state
    """The tunnel is not running (`rustynet up` first)."""


__all__ = [
    "AgentError",
    "AgentRevoked",
    "AlreadyEnrolled",
    "JoinFailed",
    "NotEnrolled",
    "NotRunning",
]
