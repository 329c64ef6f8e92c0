"""Tunnel backends (the `TunnelBackend` port): in-memory, userspace daemon, kernel module.

`links` holds the shared link, address and route helpers (through ip(8)) for the real ones.
"""
