-- Rustynet control-plane schema, version 1. One file for SQLite and PostgreSQL: only types
-- and statements both accept (BIGINT, TEXT, BYTEA: SQLite keeps BYTEA values as BLOBs).
-- Times are integer microseconds since the Unix epoch (UTC), except in the audit tables,
-- which keep the exact text their hashes and signatures cover. Booleans are 0/1 INTEGERs.
-- Statements are separated by a line holding only ";" (the runner splits on it).

CREATE TABLE ip_leases (
    address BIGINT PRIMARY KEY,
    node_id TEXT NOT NULL UNIQUE,
    UNIQUE (node_id, address)
)
;
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    identity_key TEXT NOT NULL UNIQUE,
    tunnel_key TEXT NOT NULL,
    tunnel_key_expires_at BIGINT NOT NULL,
    overlay_ipv4 BIGINT NOT NULL UNIQUE,
    tags TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'revoked')),
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT,
    revoked_at BIGINT,
    -- a node's address is its lease: never two nodes on one address, none without a lease
    FOREIGN KEY (id, overlay_ipv4) REFERENCES ip_leases (node_id, address)
)
;
CREATE TABLE credentials (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    scope TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    max_uses BIGINT NOT NULL,
    uses BIGINT NOT NULL,
    state TEXT NOT NULL,
    last_used_at BIGINT,
    ended_at BIGINT,
    CHECK (uses >= 0 AND uses <= max_uses)
)
;
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    secret_hash BYTEA NOT NULL,
    scope TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    last_used_at BIGINT
)
;
CREATE TABLE policies (
    version BIGINT PRIMARY KEY,
    document TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    author TEXT NOT NULL
)
;
CREATE TABLE policy_current (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL REFERENCES policies (version)
)
;
CREATE TABLE audit_entries (
    idx BIGINT PRIMARY KEY,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
)
;
CREATE TABLE audit_checkpoints (
    idx BIGINT PRIMARY KEY,
    head_hash TEXT NOT NULL,
    time TEXT NOT NULL,
    signature TEXT NOT NULL
)
;
CREATE TABLE nonces (
    nonce BYTEA PRIMARY KEY,
    expires_at BIGINT NOT NULL
)
;
CREATE INDEX nonces_expires_at ON nonces (expires_at)
;
CREATE TABLE limiter_buckets (
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    tat BIGINT,
    PRIMARY KEY (tbl, key)
)
;
CREATE TABLE limiter_failures (
    credential TEXT PRIMARY KEY,
    consecutive BIGINT NOT NULL,
    blocked_until BIGINT,
    disabled INTEGER NOT NULL
)
;
CREATE TABLE peer_serials (
    node_id TEXT PRIMARY KEY,
    serial BIGINT NOT NULL
)
