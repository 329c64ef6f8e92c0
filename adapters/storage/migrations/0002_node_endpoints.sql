-- Rustynet control-plane schema, version 2: a node's underlay endpoints survive a restart.
-- A JSON array of "host:port" strings (the use case validates them), '[]' for none; existing
-- nodes start with none and re-report theirs. One statement both SQLite and PostgreSQL accept.

ALTER TABLE nodes ADD COLUMN underlay_endpoints TEXT NOT NULL DEFAULT '[]'
