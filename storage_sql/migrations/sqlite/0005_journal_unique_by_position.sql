-- The workflow journal holds one entry per position (cruster schema, version 5, SQLite).
-- See the PostgreSQL file of the same number. SQLite cannot change a primary key in place,
-- so the table is rebuilt.
--
-- Never edit this file once released: change the schema with a new, higher-numbered file.

CREATE TABLE cruster_journal_displaced (
    execution_id   TEXT    NOT NULL,
    sequence       INTEGER NOT NULL,
    activity       TEXT    NOT NULL,
    result         BLOB    NOT NULL,
    attempts       INTEGER NOT NULL,
    recorded_at_ns INTEGER NOT NULL,
    PRIMARY KEY (execution_id, sequence, activity)
) STRICT;

INSERT INTO cruster_journal_displaced
SELECT j.execution_id, j.sequence, j.activity, j.result, j.attempts, j.recorded_at_ns
FROM cruster_journal j
WHERE EXISTS (
    SELECT 1 FROM cruster_journal k
    WHERE k.execution_id = j.execution_id AND k.sequence = j.sequence
      AND (k.recorded_at_ns < j.recorded_at_ns
           OR (k.recorded_at_ns = j.recorded_at_ns AND k.activity < j.activity))
);

CREATE TABLE cruster_journal_by_position (
    execution_id   TEXT    NOT NULL,
    sequence       INTEGER NOT NULL,
    activity       TEXT    NOT NULL,
    result         BLOB    NOT NULL,
    attempts       INTEGER NOT NULL,
    recorded_at_ns INTEGER NOT NULL,
    PRIMARY KEY (execution_id, sequence)
) STRICT;

INSERT INTO cruster_journal_by_position
SELECT j.execution_id, j.sequence, j.activity, j.result, j.attempts, j.recorded_at_ns
FROM cruster_journal j
WHERE NOT EXISTS (
    SELECT 1 FROM cruster_journal_displaced d
    WHERE d.execution_id = j.execution_id AND d.sequence = j.sequence
      AND d.activity = j.activity
);

DROP TABLE cruster_journal;
ALTER TABLE cruster_journal_by_position RENAME TO cruster_journal;
