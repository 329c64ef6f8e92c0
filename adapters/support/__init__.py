"""What every adapter may share: leaves that import only the standard library, third-party
packages and `rustynet.domain`, never another adapter.

The import contract "Adapters do not import each other" lets any adapter import this package
and nothing else across adapters; the contract "Adapter support is a leaf" keeps this package
from importing any other adapter. A rule that two adapters would otherwise copy (the TLS
groups and suites of the crypto policy, the config-file trust check, config value parsing,
the private-file writer, the parser-rejection hook, the Prometheus exposition) lives here
once.
"""
