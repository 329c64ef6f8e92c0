"""HTTP driving adapter of `rustynet-control`: aiohttp app, strict JSON edge, TLS 1.3 only.

Handlers translate HTTP to one use-case call each and back; the rules live in the application
layer. `create_app(service, settings)` builds the app, `server_ssl_context(cert, key)` the TLS
context; bootstrap wires both.
"""
