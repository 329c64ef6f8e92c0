"""Entropy port: the only way the core gets randomness.

The Protocol is the domain's (`rustynet.domain.entropy.Entropy`, defined where it is consumed so
no domain module depends on a port); use cases and adapters name it through this port.
"""

from __future__ import annotations

from rustynet.domain.entropy import Entropy

__all__ = ["Entropy"]
