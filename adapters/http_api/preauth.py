"""Pre-authentication: an admin or node route that takes a body checks its credential first.

The one rule: no body of an unauthenticated request is read or parsed. Admin and node routes
used to read and parse their body (up to 1 MiB for a policy document) before the use case
looked at the credential, so an unauthenticated client could make the server parse a
30,000-deep array and was answered 400, not 401. `authenticate_first` runs after the per-IP
admission (admission.py) for every route whose gate is `ADMIN` or `NODE` (`ROUTE_GATES`) and
asks `ControlService.authenticate` — the use cases' own check, not a copy — whether the API
key, or the node id and access token, authenticate: a refusal is the use case's 401 (or 429),
charged and audited once, and the body stays unread (with `Expect: 100-continue` it is not even
invited, expect.py). On success nothing is written; the handler then reads the body and the
use case authenticates and authorizes (scope, admin bucket) as before. Routes without a body
are unchanged: their use case authenticates before any work.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler
from rustynet.adapters.http_api.admission import ROUTE_GATES
from rustynet.adapters.http_api.credentials import admin_auth, node_auth
from rustynet.adapters.http_api.keys import SERVICE_KEY
from rustynet.adapters.http_api.middleware import route_template

from rustynet.application.admission import Gate


@web.middleware
async def authenticate_first(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the credential of a body-reading admin or node route before its handler runs."""
    gate = ROUTE_GATES.get((request.method, route_template(request)))
    if gate is Gate.ADMIN:
        await request.app[SERVICE_KEY].authenticate(admin_auth(request))
    elif gate is Gate.NODE:
        await request.app[SERVICE_KEY].authenticate(node_auth(request))
    return await handler(request)
