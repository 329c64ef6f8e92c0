"""The per-peer path controller: which one path (direct or relay) carries a peer's tunnel.

The one rule: a peer has exactly one active path at any time, and the controller moves it only
along the edges of `EDGES`, each move returning exactly one `Transition` (from, to, reason) for
the daemon's log and `rustynet status`. Any input the tables do not list raises and changes
nothing (fail closed).

Theory of operation. The controller is pure: `step(policy, state, event)` takes a frozen
`PeerPath`, one input carrying an explicit UTC `now`, and returns the next state, the
transition (if the phase changed) and the commands the daemon must run. The daemon feeds an
`Observation` every reconcile tick (now, the latest handshake the tunnel reports for the peer,
whether a relay session is available for it) and a `ProbeResult` whenever a direct probe it was
asked for ends (direct probes run both while direct is up and while relayed). A handshake
counts for the current path only if it happened strictly after the path was entered (`since`):
an older one belongs to the previous path.

    phase           path    leaves on (reason -> phase)
    direct-trying   direct  handshake-seen -> direct-up
                            direct-timeout -> relay        (no handshake for direct_timeout,
                            no-relay -> direct-unreachable   relay available / not)
    direct-up       direct  direct-stale -> direct-trying  (no fresh handshake for session_timeout)
                            probe-due -> direct-probing    (every direct_probe_interval)
    direct-probing  direct  direct-stale -> direct-trying
                            probe-failed | probe-timed-out | probe-succeeded -> direct-up
                            direct-lost -> direct-trying   (direct_lost_after failures in a row)
    direct-unreach. direct  handshake-seen -> direct-up
                            relay-available -> relay
    relay           relay   relay-lost | relay-silent -> direct-trying
                            probe-due -> relay-probing     (every probe_interval)
                            direct-seen -> direct-up       (authenticated packets, direct)
    relay-probing   relay   relay-lost | relay-silent -> direct-trying
                            probe-failed | probe-timed-out | probe-succeeded -> relay
                            direct-healthy -> direct-trying (failback_successes in a row)
                            direct-seen -> direct-up

* Direct first. A peer starts in `direct-trying`. If no handshake completes within
  `direct_timeout` (measured from `since`, the start of this direct attempt) it switches to the
  relay when one is available, else it stays on the direct path with status `none` and
  switches as soon as a relay appears. The tunnel keeps retrying the direct path meanwhile, so a
  late direct handshake still brings it to `direct-up`.
* A live session makes a fresh handshake every few minutes; one whose latest handshake is
  `session_timeout` old is dead. On direct the peer then starts a new direct attempt (and falls
  over to the relay `direct_timeout` later); on the relay it goes back to `direct-trying`, as it
  does when the relay session is lost or no handshake completes through the relay within
  `relay_timeout` of switching. The controller is never stuck: every relayed phase has a timed
  exit and every direct phase either succeeds or falls over.
* While direct-up, the controller asks for a direct probe every `direct_probe_interval` (from
  entering direct-up or sending the previous probe), so a direct path that dies while the
  session is idle between re-keys is noticed in seconds, not at `session_timeout`. A failed or
  unanswered probe counts one failure; a successful probe or a fresh handshake is proof of life
  and resets the count; `direct_lost_after` failures in a row leave with `direct-lost` for a new
  direct attempt, which `direct-timeout` later falls over to the relay (or stays direct with
  status `none` when there is no relay). The fall-over bound after the direct path dies is
  `PathPolicy.fallover_bound()` (`FALLOVER_BOUND` for the defaults).
* While relayed, the controller asks for a direct probe (`ProbeDirect`) `probe_interval` after
  entering the relay or after the previous probe was sent; a probe without a result by its
  deadline (`probe_timeout`) counts as failed. After a success the next probe comes
  `confirm_interval` later, and only `failback_successes` successes in a row fail the peer back
  to direct (`UsePath(DIRECT)`); any failure resets the count. The fail-back bound after the
  direct path heals is `PathPolicy.failback_bound()` (`FAILBACK_BOUND` for the defaults).
* While relayed, `Observation.direct_evidence` says the tunnel itself took authenticated
  packets from the peer on a direct endpoint (a probe window sent the peer a keepalive
  directly, the peer's tunnel roamed to us and answered, or the peer's own window reached us):
  the session already runs direct, so the controller moves to `direct-up` at once
  (`direct-seen`), where the direct liveness probes take over. Evidence from before this
  relay stint does not count.
* Each step makes at most one transition; commands follow from the state change alone:
  `UsePath` exactly when the active path changes, `ProbeDirect` exactly when a probe starts.
  Time never goes backwards: an input older than the state's `as_of` raises. A `ProbeResult`
  that does not answer the outstanding probe (it timed out, or the peer left the relay) raises
  `StaleProbeResult`: the daemon drops it.

The package, so a new phase touches each part once:

    phases.py      the vocabulary: paths, phases, reasons, errors, each phase's path word
    table.py       the transition table (`EDGES`) as data
    policy.py      `PathPolicy`, its defaults and bounds
    states.py      `PeerPath`, the inputs, the commands and `Transition`
    controller.py  `step`, the per-phase handlers (`HANDLERS`) and `wake_at`
    status.py      the `path` word status shows (`status_path`, `peer_status`)
    view.py        `PathView`: the word with its endpoint or relay, in text and JSON form

This module is the package's public face: import from `rustynet.domain.path`.
"""

from __future__ import annotations

from rustynet.domain.path.controller import HANDLERS, Step, step, wake_at
from rustynet.domain.path.phases import (
    PathKind,
    PathPhase,
    PathPolicyError,
    PathTransitionError,
    Reason,
    StaleProbeResult,
    StatusPath,
    status_path_of,
)
from rustynet.domain.path.policy import (
    DEFAULT_CONFIRM_INTERVAL,
    DEFAULT_DIRECT_LOST_AFTER,
    DEFAULT_DIRECT_PROBE_INTERVAL,
    DEFAULT_DIRECT_TIMEOUT,
    DEFAULT_FAILBACK_SUCCESSES,
    DEFAULT_PROBE_INTERVAL,
    DEFAULT_PROBE_TIMEOUT,
    DEFAULT_RELAY_TIMEOUT,
    DEFAULT_SESSION_TIMEOUT,
    DEFAULT_TICK,
    FAILBACK_BOUND,
    FALLOVER_BOUND,
    PathPolicy,
)
from rustynet.domain.path.states import (
    Command,
    Observation,
    PathInput,
    PeerPath,
    ProbeDirect,
    ProbeResult,
    Transition,
    UsePath,
)
from rustynet.domain.path.status import peer_status, status_path
from rustynet.domain.path.table import EDGES
from rustynet.domain.path.view import WORDS, PathView, path_view

__all__ = [
    "DEFAULT_CONFIRM_INTERVAL",
    "DEFAULT_DIRECT_LOST_AFTER",
    "DEFAULT_DIRECT_PROBE_INTERVAL",
    "DEFAULT_DIRECT_TIMEOUT",
    "DEFAULT_FAILBACK_SUCCESSES",
    "DEFAULT_PROBE_INTERVAL",
    "DEFAULT_PROBE_TIMEOUT",
    "DEFAULT_RELAY_TIMEOUT",
    "DEFAULT_SESSION_TIMEOUT",
    "DEFAULT_TICK",
    "EDGES",
    "FAILBACK_BOUND",
    "FALLOVER_BOUND",
    "HANDLERS",
    "WORDS",
    "Command",
    "Observation",
    "PathInput",
    "PathKind",
    "PathPhase",
    "PathPolicy",
    "PathPolicyError",
    "PathTransitionError",
    "PathView",
    "PeerPath",
    "ProbeDirect",
    "ProbeResult",
    "Reason",
    "StaleProbeResult",
    "StatusPath",
    "Step",
    "Transition",
    "UsePath",
    "path_view",
    "peer_status",
    "status_path",
    "status_path_of",
    "step",
    "wake_at",
]
