"""The node's use cases: enrollment, credentials, map intake, reconcile, paths, the daemon.

This package's public face; the modules and what each owns:

* `agent.py`: `NodeAgent`, composes the use cases below and runs the node's loop;
* `enrollment.py`: joining with a join token, once;
* `credentials.py`: identity key, tunnel key (and its rotation), access token;
* `map_intake.py`: long-poll, verify, save and apply signed peer maps;
* `map_source.py`: the saved map held back at start, and where the applied map came from;
* `reconciler.py`: the plan against the tunnel and firewall backends;
* `paths.py`: each peer's path controller (direct or relay);
* `relay_link.py`: the authenticated session with the home relay;
* `status.py`: the `rustynet status` snapshot;
* `saved_state.py`: the node state in memory and its store;
* `daemon.py`: `NodeDaemon`, one agent across up/down/re-enroll/shutdown;
* `lifecycle.py`: the daemon's states and the transitions allowed between them;
* `reenroll.py`: discarding a revoked node's credentials;
* `settings.py`, `errors.py`: the agent's settings and refusals.
"""

from rustynet.application.node.agent import NodeAgent
from rustynet.application.node.credentials import IDENTITY_KEY, NEXT_TUNNEL_KEY, TUNNEL_KEY
from rustynet.application.node.daemon import ControlFactory, NodeDaemon, NodePorts
from rustynet.application.node.errors import (
    AgentError,
    AgentRevoked,
    AlreadyEnrolled,
    JoinFailed,
    NotEnrolled,
    NotRunning,
)
from rustynet.application.node.lifecycle import DaemonState, IllegalTransitionError
from rustynet.application.node.map_source import STORED_MAP_FALLBACK
from rustynet.application.node.reenroll import NotRevoked
from rustynet.application.node.settings import AgentSettings
from rustynet.application.node.status import AgentStatus, PeerStatus

__all__ = [
    "IDENTITY_KEY",
    "NEXT_TUNNEL_KEY",
    "STORED_MAP_FALLBACK",
    "TUNNEL_KEY",
    "AgentError",
    "AgentRevoked",
    "AgentSettings",
    "AgentStatus",
    "AlreadyEnrolled",
    "ControlFactory",
    "DaemonState",
    "IllegalTransitionError",
    "JoinFailed",
    "NodeAgent",
    "NodeDaemon",
    "NodePorts",
    "NotEnrolled",
    "NotRevoked",
    "NotRunning",
    "PeerStatus",
]
