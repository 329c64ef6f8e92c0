"""A malicious relay for the e2e lab (issue 5 scenario 3): the REAL `rustynet-relay serve`
with its forwarding path replaced by one that tampers with or replays frames.

It models a relay operator (or whoever took the relay's host) who controls every byte it
forwards but holds no tunnel or identity keys: the same relay.toml, TLS certificate and key (so
the nodes' SPKI pin passes), the same token and challenge checks, limits, metrics and `ready;`
line, because it runs `rustynet.bootstrap.relay.relay_main(["serve", ...])` with only the
`RelayService` class swapped for a subclass defined here (production code has no test hook).

Modes (every forwarded node→relay data frame):

- `tamper`: one byte of the opaque tunnel packet, the one in its middle, is inverted (XOR 0xFF)
  before the frame is forwarded. The middle byte sits inside the MAC-covered or encrypted part
  of every WireGuard message (never in the ignored-when-idle mac2 of a handshake message).
- `replay`: the frame is forwarded unchanged, and forwarded again 50 ms later.

The one rule: it logs what it did so the test can tell a relay that did nothing from one whose
frames were rejected: `evil-relay: armed mode=MODE` once the service exists, then at most every
0.25 s while it changes `evil-relay: mode=MODE frames=N altered=N replayed=N sources=ID:N,...`
(`frames` = data frames it handled, `altered`/`replayed` = frames it tampered with / forwarded a
second time, `sources` = frames handled per authenticated source node).

Run (inside the relay's namespace)::

    python evil_relay.py {tamper,replay} --config relay.toml
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from typing import Final

from rustynet.application import relay as relay_service
from rustynet.bootstrap import relay as relay_bootstrap
from rustynet.domain.relay import TO_RELAY, FrameError, RelayLimits, RelayTrust, decode_header
from rustynet.ports.clock import Clock
from rustynet.ports.entropy import Entropy

MODES: Final = ("tamper", "replay")
REPLAY_DELAY: Final = 0.05  # seconds between a frame and its replayed copy
REPORT_EVERY: Final = 0.25


def _say(line: str) -> None:
    sys.stderr.write(f"evil-relay: {line}\n")
    sys.stderr.flush()


def tamper(frame: bytes) -> bytes:
    """The frame with the middle byte of its packet inverted (unchanged if it has no packet or
    no valid header: the real service drops and counts those)."""
    try:
        _, offset = decode_header(frame, TO_RELAY)
    except FrameError:
        return frame
    if offset >= len(frame):
        return frame
    position = offset + (len(frame) - offset) // 2
    altered = bytearray(frame)
    altered[position] ^= 0xFF
    return bytes(altered)


class EvilRelayService(relay_service.RelayService):
    """The relay service with a malicious `forward` (see the module docstring)."""

    mode = "tamper"

    def __init__(
        self, trust: RelayTrust, limits: RelayLimits, clock: Clock, entropy: Entropy
    ) -> None:
        super().__init__(trust, limits, clock, entropy)
        self.frames = 0
        self.altered = 0
        self.replayed = 0
        self.sources: Counter[str] = Counter()
        self._reporter = asyncio.get_running_loop().create_task(self._report())
        _say(f"armed mode={self.mode} relay={trust.relay_id}")

    def forward(
        self, session: relay_service.Session, frame: bytes | memoryview, now: float | None = None
    ) -> bool:
        """Forward `frame` the malicious way; the honest service still enforces its checks."""
        frame = bytes(frame)  # a view into a batch message: keep our own copy to alter/replay
        if session.node_id is not None:
            self.frames += 1
            self.sources[session.node_id] += 1
        if self.mode == "tamper":
            altered = tamper(frame)
            self.altered += altered != frame
            return super().forward(session, altered, now)
        forwarded = super().forward(session, frame, now)
        if forwarded:
            loop = asyncio.get_running_loop()
            loop.call_later(REPLAY_DELAY, self._replay, session, frame)
        return forwarded

    def _replay(self, session: relay_service.Session, frame: bytes) -> None:
        if super().forward(session, frame):
            self.replayed += 1

    def line(self) -> str:
        """The counters as one log line."""
        sources = ",".join(f"{node}:{count}" for node, count in sorted(self.sources.items()))
        return (
            f"mode={self.mode} frames={self.frames} altered={self.altered} "
            f"replayed={self.replayed} sources={sources}"
        )

    async def _report(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(REPORT_EVERY)
            line = self.line()
            if line != last:
                _say(line)
                last = line


def main(argv: list[str]) -> int:
    """Arm the chosen mode and run the real relay's `serve` with it."""
    parser = argparse.ArgumentParser(description="malicious rustynet-relay for the e2e lab")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--config", required=True, help="relay.toml (as for rustynet-relay)")
    args = parser.parse_args(argv)
    EvilRelayService.mode = args.mode
    # The composition root builds `RelayService(trust, limits, clock, entropy)`: ours instead
    # (checked first, so a renamed import fails here instead of running an honest relay).
    namespace = vars(relay_bootstrap)
    if namespace.get("RelayService") is not relay_service.RelayService:
        raise SystemExit("rustynet.bootstrap.relay no longer builds RelayService: update me")
    namespace["RelayService"] = EvilRelayService
    return relay_bootstrap.relay_main(["serve", "--config", args.config, "--log-format", "json"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
