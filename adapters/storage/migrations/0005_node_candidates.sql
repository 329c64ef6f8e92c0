-- Rustynet control-plane schema, version 5: a node's candidate endpoints, each with its kind.
-- `candidates` is a JSON array of {"endpoint": "host:port", "kind": "configured|local|
-- reflexive"} (the use case validates them), '[]' for none; `candidates_updated_at` is when
-- the list last changed (microseconds, NULL: never). The underlay endpoints of version 2 were
-- typed by hand: they become `configured` candidates (the text form json.dumps wrote, rewritten
-- with replace(), which SQLite and PostgreSQL both have), and their column goes.

ALTER TABLE nodes ADD COLUMN candidates TEXT NOT NULL DEFAULT '[]'
;
ALTER TABLE nodes ADD COLUMN candidates_updated_at BIGINT
;
UPDATE nodes SET candidates = replace(replace(replace(underlay_endpoints,
    '["', '[{"endpoint": "'),
    '", "', '", "kind": "configured"}, {"endpoint": "'),
    '"]', '", "kind": "configured"}]')
WHERE underlay_endpoints <> '[]'
;
ALTER TABLE nodes DROP COLUMN underlay_endpoints
