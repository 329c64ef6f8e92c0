"""SQL repositories shared by the SQLite and PostgreSQL stores (plain SQL, no ORM).

The one rule: each race a use case could lose is decided by ONE statement the database
executes atomically (conditional UPDATE, INSERT ... ON CONFLICT, upsert-increment, or a row
lock taken before a read-modify-write), never by Python comparing what it read earlier.

Queries are written once with `:name` placeholders; a `Dialect` rewrites them for the driver
(psycopg wants `%(name)s`) and adds what only one database needs (PostgreSQL's `FOR UPDATE`
row locks and advisory locks; SQLite's `BEGIN IMMEDIATE` already serializes every writer).
Times are stored as integer microseconds since the epoch (exact, and ordered in SQL).

One module per repository group; none imports a database driver (the stores do):
`dialect` (the two dialects, the executor a store implements, time columns), `migrations`
(the versioned schema), `nodes` (nodes and IPAM leases), `credentials` (join credentials and
admin API keys), `guards` (replay nonces, rate limits, enrollment challenges), `policy_audit`
(policy versions and the audit chain), `serials` (peer-map serials and the network
generation) and `repositories` (every repository over one unit of work's executor).
"""
