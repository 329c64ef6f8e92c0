"""Control-plane use cases: one async method per route of docs/control-api.md, behind the
`ControlService` facade.

The one rule: every decision about a request is made here (or in the domain it drives), never in
the HTTP handler; each state change, the serial bumps it causes and its audit entry commit in
ONE unit of work, and success is returned (and waiters are woken) only after that commit.

Where each part lives (arrows point one way: service -> use cases -> guards -> context):

* `service` - `ControlService`, the thin facade that only delegates;
* `enrollment` (+ `pending`, the stored challenge codec) - POST /v1/enroll[/complete];
* `node_session` - token renewal, tunnel-key rotation, underlay endpoints, relay tokens;
* `peer_maps` (+ `map_batch`, the batcher and assembler) - the peer-map long poll;
* `admin_join_keys`, `admin_nodes`, `admin_api_keys`, `admin_policy`, `admin_audit` - admin;
* `relays` - replacing the relay list of a running control plane;
* `upkeep` - the periodic tick, the change feed, shutdown, /metrics numbers;
* `guards` - abuse limits and authentication, shared by every route (`auth_guard`: the
  failure budget per source and the folded audit of failures);
* `inputs` - request fields (and requested lifetimes) to domain values;
* `projections` - records to JSON-ready views;
* `context` - `ControlContext` (store, keys, clock, entropy, settings, waiters, audit writer,
  failure budget) and the one writer of the network cache.

Several instances on one database (docs/control-plane.md): every write that may touch the network
runs under `uow.lock_writers()`, validates the cache against the generation inside that lock,
bumps the generation when it changed the network, and `announce`s the nodes it wakes.
"""

from rustynet.application.control.admin_api_keys import create_initial_admin_key
from rustynet.application.control.context import ControlContext, ControlSettings
from rustynet.application.control.relays import RelaysReplaced
from rustynet.application.control.service import ControlService

__all__ = [
    "ControlContext",
    "ControlService",
    "ControlSettings",
    "RelaysReplaced",
    "create_initial_admin_key",
]
