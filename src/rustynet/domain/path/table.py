"""The transition table as data: every legal (from phase, reason) -> to phase edge.

`controller.step` refuses any move a handler proposes that is not listed here (fail closed), so a
new phase or reason is legal only once its edges are written down in this one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from rustynet.domain.path.phases import PathPhase, Reason

_P, _R = PathPhase, Reason
EDGES: Final[Mapping[tuple[PathPhase, Reason], PathPhase]] = {
    (_P.DIRECT_TRYING, _R.HANDSHAKE_SEEN): _P.DIRECT_UP,
    (_P.DIRECT_TRYING, _R.DIRECT_TIMEOUT): _P.RELAY,
    (_P.DIRECT_TRYING, _R.DIRECT_UNLIKELY): _P.RELAY,
    (_P.DIRECT_TRYING, _R.NO_RELAY): _P.DIRECT_UNREACHABLE,
    (_P.DIRECT_UP, _R.DIRECT_STALE): _P.DIRECT_TRYING,
    (_P.DIRECT_UP, _R.PROBE_DUE): _P.DIRECT_PROBING,
    (_P.DIRECT_PROBING, _R.DIRECT_STALE): _P.DIRECT_TRYING,
    (_P.DIRECT_PROBING, _R.PROBE_FAILED): _P.DIRECT_UP,
    (_P.DIRECT_PROBING, _R.PROBE_TIMED_OUT): _P.DIRECT_UP,
    (_P.DIRECT_PROBING, _R.PROBE_SUCCEEDED): _P.DIRECT_UP,
    (_P.DIRECT_PROBING, _R.DIRECT_LOST): _P.DIRECT_TRYING,
    (_P.DIRECT_UNREACHABLE, _R.HANDSHAKE_SEEN): _P.DIRECT_UP,
    (_P.DIRECT_UNREACHABLE, _R.RELAY_AVAILABLE): _P.RELAY,
    (_P.RELAY, _R.RELAY_LOST): _P.DIRECT_TRYING,
    (_P.RELAY, _R.RELAY_SILENT): _P.DIRECT_TRYING,
    (_P.RELAY, _R.PROBE_DUE): _P.RELAY_PROBING,
    (_P.RELAY, _R.DIRECT_SEEN): _P.DIRECT_UP,
    (_P.RELAY_PROBING, _R.RELAY_LOST): _P.DIRECT_TRYING,
    (_P.RELAY_PROBING, _R.RELAY_SILENT): _P.DIRECT_TRYING,
    (_P.RELAY_PROBING, _R.PROBE_FAILED): _P.RELAY,
    (_P.RELAY_PROBING, _R.PROBE_TIMED_OUT): _P.RELAY,
    (_P.RELAY_PROBING, _R.PROBE_SUCCEEDED): _P.RELAY,
    (_P.RELAY_PROBING, _R.DIRECT_HEALTHY): _P.DIRECT_TRYING,
    (_P.RELAY_PROBING, _R.DIRECT_SEEN): _P.DIRECT_UP,
}
"""Every legal transition: (from phase, reason) -> to phase. Handlers name the reason only."""
