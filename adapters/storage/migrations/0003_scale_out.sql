-- Rustynet control-plane schema, version 3: state several control instances share.
-- Challenges (enrollment proofs, token renewals) move out of process memory so a challenge
-- issued by one instance can be answered on another, exactly once (`used` flips with one
-- conditional UPDATE). `net_generation` counts changes of the node set and policy that peer
-- maps are compiled from, so each instance can tell when its cached compilation is stale.
-- Statements both SQLite and PostgreSQL accept.

CREATE TABLE challenges (
    id BYTEA PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    payload TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
)
;
CREATE INDEX challenges_kind_expires_at ON challenges (kind, expires_at)
;
CREATE TABLE net_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
)
;
INSERT INTO net_generation (id, generation) VALUES (1, 0)
