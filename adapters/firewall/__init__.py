"""Firewall adapters: nftables (the real one) and in-memory (tests, platforms without nftables)."""
