"""A malicious control-plane stand-in for the e2e lab (scenario 6): it holds the real control
plane's TLS certificate and key, but not its signing keys.

It models an attacker who stole the TLS key (or sits where control used to be): the node's SPKI
pin passes, so everything the node still trusts has to come from the peer-map signatures.

The one rule: it serves exactly what the test queued, once each, in order, to the one node it
targets. The test writes deliveries as `QUEUE/000.json`, `QUEUE/001.json`, ... (each
`{"label", "envelope", "trust": {"root_certificate", "signing_certificates"}}`, written to a
temporary name and renamed, so a half-written file is never read). `GET /v1/peermap` from the
target (the `Rustynet-Node` header) answers the next unserved delivery as soon as it appears,
else parks like the real long poll (`wait` seconds, default and cap 60) and answers 204; other
nodes only ever get 204 after their wait. Every other route answers 503. Each request and each
delivery is one log line (`request ...`, `served N LABEL`); `ready;` once listening.

Run (inside the control namespace)::

    python standin_control.py --listen 198.51.100.1:8443 --cert control.crt --key control.key \
        --target NODE_ID --queue DIR
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from pathlib import Path
from typing import Final

from aiohttp import web

LONGEST_POLL: Final = 60.0
QUEUE_TICK: Final = 0.05


def _say(line: str) -> None:
    print(line, flush=True)


class StandIn:
    """The stand-in's state: its target node and how many deliveries it has served."""

    def __init__(self, target: str, queue: Path) -> None:
        self.target = target
        self.queue = queue
        self.served = 0

    def _next(self) -> dict[str, object] | None:
        path = self.queue / f"{self.served:03d}.json"
        if not path.exists():
            return None
        decoded = json.loads(path.read_text())
        assert isinstance(decoded, dict)
        return decoded

    async def peer_map(self, request: web.Request) -> web.Response:
        node = request.headers.get("Rustynet-Node", "")
        wait_text = request.query.get("wait")
        wait = LONGEST_POLL if wait_text is None else min(float(wait_text), LONGEST_POLL)
        _say(f"request GET /v1/peermap node={node} after={request.query.get('after')} wait={wait}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            delivery = self._next() if node == self.target else None
            if delivery is not None:
                _say(f"served {self.served} {delivery['label']}")
                self.served += 1
                body = {"envelope": delivery["envelope"], "trust": delivery["trust"]}
                return web.json_response(body)
            if loop.time() >= deadline:
                return web.Response(status=204)
            await asyncio.sleep(QUEUE_TICK)

    async def other(self, request: web.Request) -> web.Response:
        _say(f"request {request.method} {request.path} -> 503")
        body = {"error": "unavailable", "detail": "stand-in: only GET /v1/peermap"}
        return web.json_response(body, status=503)


def _ssl_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(certfile=cert, keyfile=key)
    return context


async def _serve(args: argparse.Namespace) -> None:
    standin = StandIn(args.target, Path(args.queue))
    app = web.Application()
    app.router.add_get("/v1/peermap", standin.peer_map)
    app.router.add_route("*", "/{tail:.*}", standin.other)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = args.listen.rsplit(":", 1)
    site = web.TCPSite(runner, host, int(port), ssl_context=_ssl_context(args.cert, args.key))
    await site.start()
    _say(f"ready; listening on {args.listen}")
    await asyncio.Event().wait()  # until the harness kills our process group


def main(argv: list[str]) -> None:
    """Parse the arguments and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--cert", required=True, help="control's TLS certificate (PEM)")
    parser.add_argument("--key", required=True, help="control's TLS private key (PEM)")
    parser.add_argument("--target", required=True, help="node id that receives the deliveries")
    parser.add_argument("--queue", required=True, help="directory of NNN.json deliveries")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
