"""Tunnel backends (the `TunnelBackend` port): in-memory, userspace daemon, kernel module.

`links` holds the shared rtnetlink helpers (addresses, routes, link state) for the real ones.
"""
