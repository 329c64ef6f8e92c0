"""The STUN service (`server`) and the node's STUN probe (`client`), over asyncio UDP."""
