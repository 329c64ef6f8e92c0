-- Rustynet control-plane schema, version 4: the capacity check on issuing a challenge counts
-- only pending (unused, unexpired) ones, through an index that holds exactly that range.
-- Before, it counted every unexpired row, used or not: at 100+ enrollments/s that was a range
-- of thousands of index entries read on every POST /v1/enroll (py-spy, bench/bench_control.py).
-- Statements both SQLite and PostgreSQL accept.

CREATE INDEX challenges_pending ON challenges (kind, used, expires_at)
