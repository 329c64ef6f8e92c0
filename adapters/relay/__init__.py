"""The relay transport: the `rustynet-relay` WebSocket server and the node's relay client
(protocol: docs/relay-protocol.md)."""
