-- cruster schema, version 1 (SQLite). The same tables as the PostgreSQL schema; see
-- migrations/postgres/0001_initial_schema.sql for what each column holds.
--
-- Never edit this file once released: change the schema with a new, higher-numbered file.
-- Tables are STRICT (values must have the declared type); booleans are INTEGER 0/1 and
-- instants INTEGER unix nanoseconds.

CREATE TABLE cruster_messages (
    request_id          INTEGER PRIMARY KEY,
    shard               TEXT    NOT NULL,
    entity_type         TEXT    NOT NULL,
    entity_id           TEXT    NOT NULL,
    tag                 TEXT    NOT NULL,
    payload             BLOB    NOT NULL,
    persisted           INTEGER NOT NULL,
    uninterruptible     INTEGER NOT NULL,
    streaming           INTEGER NOT NULL,
    expects_reply       INTEGER NOT NULL,
    deliver_at_ns       INTEGER,
    dedupe_key          TEXT,
    trace               BLOB    NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    processed           INTEGER NOT NULL DEFAULT FALSE,
    dead_lettered       INTEGER NOT NULL DEFAULT FALSE,
    last_error          TEXT,
    dead_lettered_at_ns INTEGER
) STRICT;

CREATE UNIQUE INDEX cruster_messages_address_dedupe
    ON cruster_messages (entity_type, entity_id, shard, dedupe_key);

CREATE INDEX cruster_messages_pending
    ON cruster_messages (shard, deliver_at_ns, request_id)
    WHERE NOT processed AND NOT dead_lettered;

CREATE INDEX cruster_messages_dead_letters
    ON cruster_messages (request_id)
    WHERE dead_lettered;

CREATE TABLE cruster_replies (
    request_id INTEGER NOT NULL,
    is_final   INTEGER NOT NULL,
    sequence   INTEGER NOT NULL,
    body       BLOB    NOT NULL,
    PRIMARY KEY (request_id, is_final, sequence)
) STRICT;

-- Storing a final reply marks its request processed in the same statement.
CREATE TRIGGER cruster_final_reply_marks_processed
    AFTER INSERT ON cruster_replies
    FOR EACH ROW WHEN NEW.is_final
BEGIN
    UPDATE cruster_messages SET processed = TRUE
    WHERE request_id = NEW.request_id AND NOT processed;
END;

CREATE TABLE cruster_journal (
    execution_id   TEXT    NOT NULL,
    sequence       INTEGER NOT NULL,
    activity       TEXT    NOT NULL,
    result         BLOB    NOT NULL,
    attempts       INTEGER NOT NULL,
    recorded_at_ns INTEGER NOT NULL,
    PRIMARY KEY (execution_id, sequence, activity)
) STRICT;

CREATE TABLE cruster_activity_values (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;

CREATE TABLE cruster_executions (
    execution_id       TEXT    PRIMARY KEY,
    workflow           TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    suspended_until_ns INTEGER,
    request            BLOB    NOT NULL,
    result             BLOB,
    created_at_ns      INTEGER NOT NULL,
    updated_at_ns      INTEGER NOT NULL
) STRICT;

CREATE INDEX cruster_executions_by_creation
    ON cruster_executions (created_at_ns, execution_id);

CREATE TABLE cruster_timers (
    execution_id TEXT    NOT NULL,
    timer_key    TEXT    NOT NULL,
    shard        TEXT    NOT NULL,
    entity_type  TEXT    NOT NULL,
    entity_id    TEXT    NOT NULL,
    fire_at_ns   INTEGER NOT NULL,
    completed    INTEGER NOT NULL DEFAULT FALSE,
    PRIMARY KEY (execution_id, timer_key)
) STRICT;

CREATE INDEX cruster_timers_due
    ON cruster_timers (fire_at_ns)
    WHERE NOT completed;

CREATE TABLE cruster_deferred (
    execution_id TEXT NOT NULL,
    name         TEXT NOT NULL,
    value        BLOB NOT NULL,
    PRIMARY KEY (execution_id, name)
) STRICT;
