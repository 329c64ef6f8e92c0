"""The STUN service: asyncio UDP on two ports (or addresses), answering Binding requests only.

The one rule: a datagram is answered only when it is a well-formed Binding request from a
source within its rate limit, and the answer is never more than 2.5 times the request's bytes
(`rustynet.domain.stun.answer` decides the bytes); everything else is dropped silently and
counted. It listens on two sockets so that a node can compare the mapping one source port gets
toward two destinations (endpoint-independent vs endpoint-dependent mapping); each answer names
the other socket (RFC 5780 OTHER-ADDRESS) when the sockets are bound to specific addresses.

Per-source state is one GCRA timestamp per source network (`ip_key`: IPv4 /32, IPv6 /64) in
a table of at most `StunLimits.max_sources` entries; full buckets are forgotten first and, when
the table is still full, the datagram is dropped as rate limited (deny when in doubt).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

import attrs
import structlog
from rustynet.adapters.support.prometheus import counter, gauge, labelled_counter, render_families

from rustynet.domain.limits import BucketPolicy
from rustynet.domain.source_rates import SourceRateTable
from rustynet.domain.stun import Endpoint, answer

_log = structlog.get_logger(__name__)


@attrs.frozen
class StunLimits:
    """Per-source budget and the bound on the per-source table."""

    per_source: BucketPolicy = attrs.field(
        factory=lambda: BucketPolicy(burst=20, refill=10, per=timedelta(seconds=1))
    )
    max_sources: int = 4096


@attrs.define
class StunCounters:
    """What the service did; read by the metrics collector and tests."""

    answered: int = 0
    dropped_malformed: int = 0
    dropped_rate_limited: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


def _endpoint(sockname: tuple[str, int]) -> Endpoint | None:
    ip = ipaddress.ip_address(sockname[0].split("%", 1)[0])
    return None if ip.is_unspecified else (ip, sockname[1])


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: StunServer, index: int) -> None:
        self._server = server
        self._index = index
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.transport is not None:
            self._server.handle(self._index, self.transport, data, addr)

    def error_received(self, exc: Exception) -> None:
        _log.debug("stun.socket_error", error=str(exc))


class StunServer:
    """The service on `listen` (two ADDR:PORT pairs); `start()` binds, `close()` unbinds."""

    def __init__(
        self,
        listen: Sequence[tuple[str, int]],
        limits: StunLimits | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.listen = tuple(listen)
        self.counters = StunCounters()
        limits = limits or StunLimits()
        self._rates = SourceRateTable(limits.per_source, limits.max_sources)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._transports: list[asyncio.DatagramTransport] = []
        self._local: list[Endpoint | None] = []

    @property
    def bound(self) -> list[tuple[str, int]]:
        """The (host, port) each socket is bound to (port 0 in `listen` picks one)."""
        return [t.get_extra_info("sockname")[:2] for t in self._transports]

    @property
    def sources_tracked(self) -> int:
        """Entries in the per-source table (bounded by `StunLimits.max_sources`)."""
        return len(self._rates)

    def render_metrics(self) -> str:
        """Prometheus text of the service's counters (appended to the app's /metrics)."""
        c = self.counters
        return render_families(
            (
                counter("rustynet_stun_answered_total", "Binding requests answered.", c.answered),
                labelled_counter(
                    "rustynet_stun_dropped_total",
                    "Datagrams dropped without an answer, by reason.",
                    "reason",
                    [("malformed", c.dropped_malformed), ("rate_limited", c.dropped_rate_limited)],
                ),
                counter("rustynet_stun_received_bytes_total", "Bytes received.", c.bytes_in),
                counter("rustynet_stun_sent_bytes_total", "Bytes sent.", c.bytes_out),
                gauge(
                    "rustynet_stun_sources", "Sources in the rate-limit table.", len(self._rates)
                ),
            )
        )

    async def start(self) -> None:
        """Bind every listen address; on failure, close what was bound and raise."""
        loop = asyncio.get_running_loop()
        try:
            for index, (host, port) in enumerate(self.listen):
                transport, _ = await loop.create_datagram_endpoint(
                    self._factory(index), local_addr=(host, port)
                )
                self._transports.append(transport)
        except OSError:
            self.close()
            raise
        self._local = [_endpoint(sockname) for sockname in self.bound]
        _log.info("stun.listening", addresses=[f"{h}:{p}" for h, p in self.bound])

    def _factory(self, index: int) -> Callable[[], _Protocol]:
        return lambda: _Protocol(self, index)

    def close(self) -> None:
        """Unbind every socket."""
        for transport in self._transports:
            transport.close()
        self._transports.clear()

    def handle(
        self,
        index: int,
        transport: asyncio.DatagramTransport,
        data: bytes,
        addr: tuple[str | int, ...],
    ) -> None:
        """Answer one datagram, or drop it and count why."""
        c = self.counters
        c.bytes_in += len(data)
        host, port = str(addr[0]), int(addr[1])
        if not self._rates.take(host, self._clock()):
            c.dropped_rate_limited += 1
            return
        source = (ipaddress.ip_address(host.split("%", 1)[0]), port)
        local = self._local[index]
        other = self._local[1 - index] if len(self._local) == 2 and local else None
        reply = answer(data, source, local, other)
        if reply is None:
            c.dropped_malformed += 1
            return
        c.answered += 1
        c.bytes_out += len(reply)
        transport.sendto(reply, (host, port))
