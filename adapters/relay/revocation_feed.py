"""The relay's follower of the control plane's revocation feed (`GET /v1/relay/revocations`).

The one rule: the follower trusts nothing it receives; it hands each delivered document to
`RelayService.apply_revocations`, which verifies it against the pinned root and the watermark
and closes the sessions of the nodes it names. TLS to the control plane therefore only carries
the document (the relay holds no pin for the control plane's TLS key; a man in the middle can
delay revocations, never forge or roll them back). When the control plane cannot be reached
the relay keeps relaying (availability: tokens still expire as before), logs
`relay.revocation_feed_unreachable` once per outage and reports `rustynet_relay_revocation_
feed_up 0`; it retries with a bounded back-off.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Final

import aiohttp
import structlog

from rustynet.application.relay import RelayService
from rustynet.domain.relay_revocations import FeedRejected
from rustynet.ports.wire.codec import WireError, decode, parse_json_object
from rustynet.ports.wire.v1 import RelayRevocations

PATH: Final = "/v1/relay/revocations"
MAX_FEED_BYTES: Final = 1024 * 1024  # MAX_FEED_ENTRIES entries and a few certificates fit
POLL_WAIT: Final = 55  # seconds; below the control plane's long-poll time
RETRY_MIN: Final = 0.5
RETRY_MAX: Final = 10.0
_log = structlog.get_logger(__name__)


def feed_ssl_context() -> ssl.SSLContext:
    """TLS 1.3 to the control plane without a pin: the document is signed (see above)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_FEED_BYTES:
            raise WireError("the feed is larger than the relay reads")
    return bytes(body)


class RevocationFeedFollower:
    """Long-polls the feed of `control_url` and applies what verifies; run `follow()` as a task."""

    def __init__(
        self,
        service: RelayService,
        control_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        poll_wait: int = POLL_WAIT,
    ) -> None:
        self._service = service
        self._url = control_url.rstrip("/") + PATH
        self._ssl = ssl_context if ssl_context is not None else feed_ssl_context()
        self._wait = poll_wait

    async def follow(self) -> None:
        """Until cancelled: poll, apply, and on failure back off (never raises)."""
        counters = self._service.counters
        delay = RETRY_MIN
        timeout = aiohttp.ClientTimeout(total=self._wait + 15, connect=10)
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            while True:
                try:
                    await self._poll_once(http)
                except (aiohttp.ClientError, TimeoutError, OSError, WireError) as exc:
                    if counters.feed_up:
                        _log.warning(
                            "relay.revocation_feed_unreachable", error_type=type(exc).__name__
                        )
                    counters.feed_up = 0
                    counters.feed_failures += 1
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                delay = RETRY_MIN

    async def _poll_once(self, http: aiohttp.ClientSession) -> None:
        service = self._service
        # While the feed is not known to be up, ask for an answer at once (204 or the feed).
        wait = self._wait if service.counters.feed_up else 0
        params = {"after": str(service.revoked.watermark), "wait": str(wait)}
        async with http.get(self._url, params=params) as response:
            if response.status == 204:
                self._up()
                return
            if response.status != 200:
                raise WireError(f"the feed answered {response.status}")
            body = await _read_bounded(response)
        delivery = decode(parse_json_object(body), RelayRevocations)
        self._up()
        try:
            closed = service.apply_revocations(
                delivery.envelope,
                delivery.trust.root_certificate,
                delivery.trust.signing_certificates,
            )
        except FeedRejected as exc:
            _log.warning("relay.revocation_feed_rejected", reason=str(exc))
            await asyncio.sleep(RETRY_MIN)  # a rejected answer does not make a tight loop
            return
        _log.info(
            "relay.revocations_applied",
            serial=service.revoked.watermark,
            revoked=len(service.revoked),
            sessions_closed=closed,
        )

    def _up(self) -> None:
        counters = self._service.counters
        if not counters.feed_up:
            _log.info("relay.revocation_feed_up", url=self._url)
        counters.feed_up = 1
