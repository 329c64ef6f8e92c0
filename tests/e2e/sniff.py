"""Capture every frame on one interface for a while (AF_PACKET, no tcpdump needed).

Usage (inside a test namespace, as root): `python -m tests.e2e.sniff IFACE SECONDS OUTFILE`.
Writes the frames back to back, each prefixed with its length (4 bytes, big endian).
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

ETH_P_ALL = 0x0003


def main() -> int:
    """Capture on argv[1] for argv[2] seconds into argv[3]."""
    interface, seconds, out = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3])
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((interface, 0))
    sock.settimeout(0.2)
    frames: list[bytes] = []
    deadline = time.monotonic() + seconds
    print("capturing", flush=True)
    while time.monotonic() < deadline:
        try:
            frame = sock.recv(65535)
        except TimeoutError:
            continue
        frames.append(len(frame).to_bytes(4, "big") + frame)
    out.write_bytes(b"".join(frames))
    return 0


if __name__ == "__main__":
    sys.exit(main())
