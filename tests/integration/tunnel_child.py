"""A stand-in daemon for the crash tests: starts a wireguard-go interface through the real
userspace backend, lets worker threads come and go, prints `pid <wireguard-go pid>`, then
waits to be killed.

Usage (as root): `python -m tests.integration.tunnel_child NETNS IFNAME`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading

from rustynet.adapters.tunnel.wireguard_uapi import WireGuardUapiBackend

from rustynet.domain.keys import TunnelKeyScheme, TunnelPrivateKey
from rustynet.domain.tunnel import InterfaceConfig


async def main(netns: str, interface: str) -> None:
    """Start the interface from the event loop's (main) thread, then park."""
    backend = WireGuardUapiBackend(netns=netns)
    key = TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, os.urandom(32))
    await backend.start(InterfaceConfig(interface, key, None, ["100.64.7.1/32"], []))
    # Other threads of the daemon (executor workers, the unlock thread) may end at any time:
    # only the forking thread's exit would fire the parent-death signal.
    for _ in range(3):
        worker = threading.Thread(target=lambda: None)
        worker.start()
        worker.join()
    print(f"pid {backend.pid}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
