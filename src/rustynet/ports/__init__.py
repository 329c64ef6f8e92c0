"""Ports: `typing.Protocol` interfaces the core needs from the world, with their contracts."""
