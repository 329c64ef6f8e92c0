"""A node-side probe of the relay's token checks for the e2e lab (issue 5 scenario 3).

It acts as an enrolled node — the node's own identity key (read from its encrypted key store
with its passphrase file), its node id, control URL, pin and trust certificates (from its state
file) — and uses the product's own clients: `HttpControlPlane` for an access token and relay
tokens from the real control plane, `WebSocketRelayTransport` with `pinned_ssl_context` for
relay sessions. So every attempt below differs from an accepted session in ONE thing: the token.

In order, against the relay at `--relay-url` (id `--relay-id`, pin `--relay-pin`):

1. `unauthenticated_send`: a raw WebSocket that sends a data frame to `--destination` before
   authenticating, then authenticates with a garbage token → the close code it got;
2. `garbage`: the transport with a garbage token → the outcome;
3. `other_relay`: the transport with a real token control issued for `--other-relay-id` → the
   outcome (`other_token` holds its unverified claims: aud, sub);
4. `own`: the transport with a real token for this relay → the outcome (the positive control;
   the session is closed at once).

The relay's `/metrics` is read before 1 (`before`), after 3 (`refused`) and after 4 (`after`).
One JSON object on stdout. An outcome is `accepted` or the exception's class name.

Run (inside the node's namespace)::

    python relay_probe.py --state-dir DIR --passphrase-file FILE --relay-url wss://... \
        --relay-id ID --relay-pin sha256//... --other-relay-id ID --destination NODE_ID
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from typing import Final

import aiohttp
from rustynet.adapters.control_client import ControlClient, pinned_ssl_context
from rustynet.adapters.control_plane_http import HttpControlPlane
from rustynet.adapters.relay.client import WebSocketRelayTransport

from rustynet.bootstrap.keystores import KeystoreSettings, build_keystore
from rustynet.domain.keys import Purpose, SigningKey, b64decode, b64encode
from rustynet.domain.node_state import NodeState
from rustynet.domain.relay import TO_RELAY, challenge_message, frame_header
from rustynet.domain.tls_pin import SpkiPin
from rustynet.domain.tokens import token_renewal_message
from rustynet.ports.control_plane import NodeCredentials
from rustynet.ports.relay import RelayAuth, RelayEndpoint, RelayError

STATE_FILE: Final = "node-state.json"  # rustynet.bootstrap.node.STATE_FILE
IDENTITY_KEY: Final = "node.identity"  # rustynet.application.node.IDENTITY_KEY
SIGNATURE_BYTES: Final = 64
TIMEOUT: Final = 5.0


def claims(token: str) -> dict[str, object]:
    """The claims of a v4.public token, NOT verified (to show which relay it names)."""
    body = token.split(".")[2]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    decoded = json.loads(raw[:-SIGNATURE_BYTES])
    assert isinstance(decoded, dict)
    return decoded


def load_identity(state_dir: Path, passphrase_file: Path) -> SigningKey:
    """The node's identity key from its encrypted file key store."""
    store = build_keystore(
        KeystoreSettings(state_dir=state_dir, kind="file", passphrase_file=passphrase_file),
        environ={},
        interactive=False,
    )
    try:
        secret = store.get(IDENTITY_KEY)
        try:
            return SigningKey.from_secret_text(secret.decode("ascii"))
        finally:
            secret[:] = bytes(len(secret))
    finally:
        store.close()


class Probe:
    """The node's credentials and the relay under test."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.state = NodeState.from_bytes((Path(args.state_dir) / STATE_FILE).read_bytes())
        self.identity = load_identity(Path(args.state_dir), Path(args.passphrase_file))
        self.endpoint = RelayEndpoint(args.relay_id, args.relay_url, SpkiPin.from_text(args.pin))
        self.base = "https://" + args.relay_url.removeprefix("wss://").split("/", 1)[0]
        self.transport = WebSocketRelayTransport(ssl_context=pinned_ssl_context, timeout=TIMEOUT)

    def auth(self, token: str) -> RelayAuth:
        """What the daemon presents, with `token`."""
        identity = self.identity
        return RelayAuth(
            node_id=self.state.node_id,
            identity_key=identity.public_key.to_text(),
            token=token,
            root_certificate=self.state.root_certificate,
            signing_certificates=self.state.signing_certificates,
            sign=lambda message: identity.sign(Purpose.RELAY_AUTH, message),
        )

    async def relay_tokens(self, *relay_ids: str) -> list[str]:
        """Relay tokens from the real control plane, as the daemon gets them."""
        state = self.state
        control = HttpControlPlane(ControlClient(state.control_url, SpkiPin(state.tls_spki_sha256)))
        try:
            challenge = await control.token_challenge(state.node_id)
            signature = self.identity.sign(
                Purpose.TOKEN_RENEWAL, token_renewal_message(challenge.challenge_id, state.node_id)
            )
            grant = await control.renew_token(state.node_id, challenge.challenge_id, signature)
            creds = NodeCredentials(state.node_id, grant.access_token)
            return [(await control.relay_token(creds, relay_id)).token for relay_id in relay_ids]
        finally:
            await control.close()

    async def session(self, token: str) -> str:
        """`accepted` or the refusal's class name."""
        try:
            session = await self.transport.connect(self.endpoint, self.auth(token))
        except RelayError as exc:
            return type(exc).__name__
        await session.close()
        return "accepted"

    async def unauthenticated_send(self, destination: str) -> str:
        """A data frame before `auth`, then a garbage token: the close code the relay sent."""
        connector = aiohttp.TCPConnector(ssl=pinned_ssl_context(self.endpoint.tls_pin))
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.ws_connect(self.endpoint.url) as ws,
        ):
            challenge = await ws.receive_json(timeout=TIMEOUT)
            await ws.send_bytes(frame_header(TO_RELAY, destination) + os.urandom(148))
            nonce = b64decode(challenge["nonce"])
            signature = self.identity.sign(
                Purpose.RELAY_AUTH, challenge_message(nonce, self.endpoint.relay_id)
            )
            auth = self.auth("not-a-relay-token")
            await ws.send_str(
                json.dumps(
                    {
                        "type": "auth",
                        "node_id": auth.node_id,
                        "identity_key": auth.identity_key,
                        "token": auth.token,
                        "root_certificate": auth.root_certificate,
                        "signing_certificates": list(auth.signing_certificates),
                        "signature": b64encode(signature),
                    }
                )
            )
            message = await ws.receive(timeout=TIMEOUT)
            return f"{message.type.name} {ws.close_code}"

    async def metrics(self) -> dict[str, float]:
        """The relay's `/metrics`: sample (with labels) → value."""
        connector = aiohttp.TCPConnector(ssl=pinned_ssl_context(self.endpoint.tls_pin))
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get(self.base + "/metrics") as response,
        ):
            text = await response.text()
        lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in lines)}


async def run(args: argparse.Namespace) -> dict[str, object]:
    """The four attempts of the module docstring, with metrics around them."""
    probe = Probe(args)
    own, other = await probe.relay_tokens(args.relay_id, args.other_relay_id)
    garbage = "v4.public." + base64.urlsafe_b64encode(os.urandom(160)).decode().rstrip("=")
    result: dict[str, object] = {"node_id": probe.state.node_id, "before": await probe.metrics()}
    result["unauthenticated_send"] = await probe.unauthenticated_send(args.destination)
    result["garbage"] = await probe.session(garbage)
    result["other_relay"] = await probe.session(other)
    result["refused"] = await probe.metrics()
    result["own"] = await probe.session(own)
    result["after"] = await probe.metrics()
    result["own_token"] = claims(own)
    result["other_token"] = claims(other)
    return result


def main(argv: list[str]) -> None:
    """Parse the arguments, probe, print the JSON result."""
    parser = argparse.ArgumentParser(description="relay token probe for the e2e lab")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--passphrase-file", required=True)
    parser.add_argument("--relay-url", required=True)
    parser.add_argument("--relay-id", required=True)
    parser.add_argument("--relay-pin", dest="pin", required=True)
    parser.add_argument("--other-relay-id", required=True)
    parser.add_argument("--destination", required=True, help="node id of the raw frame")
    result = asyncio.run(run(parser.parse_args(argv)))
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1:])
