"""Slow and idle clients against a live HTTPS server, and what the server process holds.

`slow_client(kind, ...)` opens one connection that does one slow thing and reports when the
SERVER closed it, measured from the moment the server's deadline for that phase started:

    NO_HELLO        TCP only, never a TLS ClientHello        tls_handshake_timeout
    FRESH_IDLE      TLS done, never a byte                   header_timeout
    HEADER_TRICKLE  TLS done, request headers 1 byte/100 ms  header_timeout
    BODY_TRICKLE    headers sent, body 8 bytes/100 ms        body_timeout
    KEEPALIVE_IDLE  one request answered, then silence       keepalive_timeout

`ProcessProbe` reads a server subprocess's resident memory and open descriptors from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs

from rustynet.domain.connection_limits import ConnectionLimits


class Kind(enum.Enum):
    """What the slow client does (see the module docstring)."""

    NO_HELLO = "no_hello"
    FRESH_IDLE = "fresh_idle"
    HEADER_TRICKLE = "header_trickle"
    BODY_TRICKLE = "body_trickle"
    KEEPALIVE_IDLE = "keepalive_idle"


KINDS = tuple(Kind)

# The deadlines and caps both servers are tested with (control.toml [connections], relay.toml).
LIMITS = ConnectionLimits(
    tls_handshake_timeout=2.0,
    header_timeout=1.0,
    body_timeout=1.5,
    keepalive_timeout=1.0,
    max_connections=250,
    max_connections_per_ip=60,
)
PER_KIND = 40  # x 5 kinds = 200 slow connections, 50 from each of 4 addresses
SLOW_SOURCES = ("127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13")
MEMORY_PEAK_BOUND = 48 * 1024  # KiB over the idle RSS while 200 slow connections are open
TRICKLE_EVERY = 0.1


@attrs.frozen
class Target:
    """Where the server listens and how a client speaks TLS to it."""

    host: str
    port: int
    client_ssl: ssl.SSLContext
    body_request: bytes  # headers of a request whose handler reads a body (no body bytes)
    plain_request: bytes  # a complete keep-alive GET


@attrs.frozen
class Outcome:
    """One slow connection: its kind and how long after its phase began the server closed it
    (None: still open when the client gave up)."""

    kind: Kind
    closed_after: float | None
    source: str


TLS_CLOSE = 0.1  # seconds for a closed client TLS connection to finish its close_notify


async def let_tls_close() -> None:
    """Give closed client TLS transports time to finish: one still in its shutdown when the
    test's event loop ends is reported as an unclosed transport (Python 3.11's asyncio)."""
    await asyncio.sleep(TLS_CLOSE)


def insecure_tls13() -> ssl.SSLContext:
    """A TLS 1.3 client context that does not check the certificate (these tests measure
    connection handling, not trust; other tests pin the key)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


async def _closed(reader: asyncio.StreamReader) -> float:
    """Read until the server closes (EOF, reset or a TLS error); the loop time then."""
    with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
        while await reader.read(65536):
            pass
    return asyncio.get_running_loop().time()


async def _trickle(
    writer: asyncio.StreamWriter, data: bytes, step: int, done: asyncio.Task[float]
) -> None:
    for i in range(0, len(data), step):
        if done.done() or writer.is_closing():
            return
        try:
            writer.write(data[i : i + step])
            await writer.drain()
        except (OSError, ssl.SSLError, RuntimeError):
            return
        await asyncio.sleep(TRICKLE_EVERY)


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response with Content-Length (the status line and headers, body read)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    await reader.readexactly(length)
    return head


async def slow_client(kind: Kind, target: Target, source: str, give_up: float) -> Outcome:
    """Run one slow connection from `source` (a loopback address); see the module docstring."""
    loop = asyncio.get_running_loop()
    tls = None if kind is Kind.NO_HELLO else target.client_ssl
    reader, writer = await asyncio.open_connection(
        target.host,
        target.port,
        ssl=tls,
        server_hostname=target.host if tls is not None else None,
        local_addr=(source, 0),
    )
    trickler: asyncio.Task[None] | None = None
    try:
        started = loop.time()
        if kind is Kind.KEEPALIVE_IDLE:
            writer.write(target.plain_request)
            await writer.drain()
            await _read_response(reader)
            started = loop.time()
        closing = asyncio.ensure_future(_closed(reader))
        if kind is Kind.HEADER_TRICKLE:
            endless = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
            trickler = asyncio.ensure_future(_trickle(writer, endless, 1, closing))
        elif kind is Kind.BODY_TRICKLE:
            writer.write(target.body_request)
            await writer.drain()
            started = loop.time()
            trickler = asyncio.ensure_future(_trickle(writer, b" " * 60_000, 8, closing))
        try:
            closed_at = await asyncio.wait_for(closing, give_up)
        except TimeoutError:
            return Outcome(kind, None, source)
        return Outcome(kind, closed_at - started, source)
    finally:
        if trickler is not None:
            trickler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await trickler
        writer.transport.abort()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


@attrs.define
class Held:
    """A plain TCP connection from one source address (it counts against the caps while the
    server has it); `streams` is None when the server's reset beat the client's connect."""

    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None

    async def refused(self, within: float) -> bool:
        """Whether the server closes this connection within `within` seconds."""
        if self.streams is None:
            return True
        try:
            await asyncio.wait_for(_closed(self.streams[0]), within)
        except TimeoutError:
            return False
        return True

    def drop(self) -> None:
        """Close it at once."""
        if self.streams is not None:
            self.streams[1].transport.abort()


async def held_connection(host: str, port: int, source: str) -> Held:
    """Open a `Held` connection from `source`."""
    try:
        return Held(await asyncio.open_connection(host, port, local_addr=(source, 0)))
    except ConnectionResetError:  # refused at accept before the connect completed here
        return Held(None)


async def request_every(
    interval: float, until: asyncio.Event, request: Callable[[], Awaitable[int]]
) -> list[int | str]:
    """Call `request` every `interval` s until `until` is set; every status or error name."""
    results: list[int | str] = []
    while not until.is_set():
        try:
            results.append(await asyncio.wait_for(request(), 5.0))
        except (OSError, TimeoutError, ssl.SSLError, RuntimeError, ValueError) as exc:
            results.append(type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), interval)
    return results


@attrs.frozen
class ProcessProbe:
    """Resident memory and open descriptors of a process, from /proc."""

    pid: int

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return sum(1 for _ in Path(f"/proc/{self.pid}/fd").iterdir())


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value} (comments skipped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


# --- scenarios shared by the control-plane and relay tests --------------------------------------

SLACK = 2.0  # seconds past a deadline before a still-open connection counts as a failure
NORMAL_EVERY = 0.25
Fetch = Callable[[], Awaitable[dict[str, float]]]


def deadline_of(kind: Kind, limits: ConnectionLimits) -> float:
    """The deadline the server applies to `kind` (a body the handler never reads is drained
    for at most the body timeout, then bounded by the header deadline: the larger one)."""
    if kind is Kind.NO_HELLO:
        return limits.tls_handshake_timeout
    if kind is Kind.BODY_TRICKLE:
        return max(limits.body_timeout, limits.header_timeout)
    if kind is Kind.KEEPALIVE_IDLE:
        return limits.keepalive_timeout
    return limits.header_timeout


@attrs.frozen
class Wave:
    """What one slowloris wave showed."""

    outcomes: list[Outcome]
    normal: list[int | str]
    peak_rss_kib: int


async def slowloris_wave(
    target: Target,
    limits: ConnectionLimits,
    probe: ProcessProbe,
    *,
    per_kind: int,
    sources: tuple[str, ...],
    normal: tuple[Callable[[], Awaitable[int]], ...],
) -> Wave:
    """`per_kind` connections of every kind, spread over `sources`, while each `normal`
    request runs every NORMAL_EVERY s; the server's peak RSS sampled every 50 ms."""
    give_up = max(deadline_of(kind, limits) for kind in KINDS) + SLACK + 1.0
    stop = asyncio.Event()
    peak = probe.rss_kib()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, probe.rss_kib())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    sampler = asyncio.ensure_future(sample())
    clients = [asyncio.ensure_future(request_every(NORMAL_EVERY, stop, fn)) for fn in normal]
    slow = [
        slow_client(kind, target, sources[i % len(sources)], give_up)
        for i in range(per_kind)
        for kind in KINDS
    ]
    try:
        outcomes = list(await asyncio.gather(*slow))
    finally:
        stop.set()
        normal_results = [r for results in await asyncio.gather(*clients) for r in results]
        await sampler
    return Wave(outcomes, normal_results, peak)


def late(wave: Wave, limits: ConnectionLimits) -> list[Outcome]:
    """Connections the server did not close within their deadline + SLACK."""
    return [
        o
        for o in wave.outcomes
        if o.closed_after is None or o.closed_after > deadline_of(o.kind, limits) + SLACK
    ]


async def settle(probe: ProcessProbe, fds: int, within: float = 5.0) -> int:
    """Wait until the server holds at most `fds` descriptors (closing is asynchronous)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while probe.fds() > fds and loop.time() < end:
        await asyncio.sleep(0.05)
    return probe.fds()


async def _quiet(target: Target, metrics: Fetch) -> tuple[dict[str, float], int]:
    """The metrics once the server admits a new connection again (it takes in the clients'
    resets asynchronously; a TLS fetch refused at the cap leaves an unclosed transport in
    Python 3.11's asyncio, so plain TCP probes go first), and how many probes were refused."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 5.0
    refused = 0
    while True:
        probe = await held_connection(target.host, target.port, "127.0.0.1")
        try:
            if not await probe.refused(0.1):
                break
        finally:
            probe.drop()
        refused += 1
        assert loop.time() < end, "the server does not admit connections again"
        await asyncio.sleep(0.1)
    return await metrics(), refused


async def per_ip_cap(target: Target, limits: ConnectionLimits, metrics: Fetch) -> None:
    """N connections from one address are admitted, the N+1th is closed at accept (well
    before any deadline), and another address still gets in."""
    before, _ = await _quiet(target, metrics)
    held: list[Held] = []
    try:
        for _ in range(limits.max_connections_per_ip):
            held.append(await held_connection(target.host, target.port, "127.0.0.20"))  # noqa: PERF401
        extra = await held_connection(target.host, target.port, "127.0.0.20")
        other = await held_connection(target.host, target.port, "127.0.0.21")
        held += [extra, other]
        within = limits.tls_handshake_timeout / 2
        assert await extra.refused(within), "the N+1th connection was not refused"
        still = await asyncio.gather(*(h.refused(0.05) for h in held if h is not extra))
        assert not any(still), f"{sum(still)} admitted connections were closed"
    finally:
        for h in held:
            h.drop()
    after, probes = await _quiet(target, metrics)
    refused = 'rustynet_connections_refused_total{reason="per_ip"}'
    assert after[refused] - before[refused] == 1
    total = 'rustynet_connections_refused_total{reason="total"}'
    assert after[total] - before[total] == probes


async def total_cap(target: Target, limits: ConnectionLimits, metrics: Fetch) -> None:
    """Beyond max_connections (from addresses each under the per-IP cap) every further
    connection is closed at accept and counted as `total`; the ones admitted stay."""
    before, _ = await _quiet(target, metrics)
    extra = 5
    sources = [f"127.0.0.{30 + i}" for i in range(64)]
    per_source = max(1, limits.max_connections_per_ip // 2)
    held: list[Held] = []
    try:
        for i in range(limits.max_connections + extra):
            source = sources[i // per_source]
            held.append(await held_connection(target.host, target.port, source))
        await asyncio.sleep(0.3)
        closed = await asyncio.gather(*(h.refused(0.05) for h in held))
        assert not any(closed[: limits.max_connections - 8]), "an admitted connection was closed"
        assert extra <= sum(closed) <= extra + 8, sum(closed)
    finally:
        for h in held:
            h.drop()
    after, probes = await _quiet(target, metrics)
    total = 'rustynet_connections_refused_total{reason="total"}'
    assert after[total] - before[total] == sum(closed) + probes
    per_ip = 'rustynet_connections_refused_total{reason="per_ip"}'
    assert after[per_ip] == before[per_ip]


async def parser_rejection(target: Target) -> bytes:
    """Send a request whose header line is over aiohttp's 8 KiB limit; the raw answer."""
    reader, writer = await asyncio.open_connection(
        target.host, target.port, ssl=target.client_ssl, server_hostname=target.host
    )
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)  # the server closes after it
    finally:
        writer.transport.abort()
