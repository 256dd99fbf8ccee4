-- The workflow journal holds one entry per position (cruster schema, version 5,
-- PostgreSQL).
--
-- Never edit this file once released: change the schema with a new, higher-numbered file.
--
-- Up to version 4 the journal was keyed by (execution_id, sequence, activity), so two
-- different activities could both be recorded at one position of an execution (a
-- non-deterministic replay racing the original run). Such a position keeps the entry
-- recorded first (the earliest recorded_at_ns; the smallest activity name on a tie); the
-- others are moved to cruster_journal_displaced for an operator to inspect, not lost.

CREATE TABLE cruster_journal_displaced (
    execution_id   TEXT   NOT NULL,
    sequence       BIGINT NOT NULL,
    activity       TEXT   NOT NULL,
    result         BYTEA  NOT NULL,
    attempts       BIGINT NOT NULL,
    recorded_at_ns BIGINT NOT NULL,
    PRIMARY KEY (execution_id, sequence, activity)
);

INSERT INTO cruster_journal_displaced
SELECT j.execution_id, j.sequence, j.activity, j.result, j.attempts, j.recorded_at_ns
FROM cruster_journal j
WHERE EXISTS (
    SELECT 1 FROM cruster_journal k
    WHERE k.execution_id = j.execution_id AND k.sequence = j.sequence
      AND (k.recorded_at_ns, k.activity) < (j.recorded_at_ns, j.activity)
);

DELETE FROM cruster_journal j
USING cruster_journal_displaced d
WHERE j.execution_id = d.execution_id AND j.sequence = d.sequence AND j.activity = d.activity;

ALTER TABLE cruster_journal DROP CONSTRAINT cruster_journal_pkey;
ALTER TABLE cruster_journal ADD PRIMARY KEY (execution_id, sequence);
