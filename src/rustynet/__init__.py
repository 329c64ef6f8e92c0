"""Rustynet: a self-hostable mesh VPN.

`rustynet.domain` is the pure core, `rustynet.ports` the interfaces it needs from the world,
`rustynet.application` the use cases, `rustynet.adapters` the technology, and
`rustynet.bootstrap` the one place that wires them together.
"""

__version__ = "0.1.0"
