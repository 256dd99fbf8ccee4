-- cruster schema, version 1 (PostgreSQL).
--
-- Never edit this file once released: change the schema with a new, higher-numbered file.
-- Every instant is stored as BIGINT unix nanoseconds so it round-trips exactly (a
-- TIMESTAMPTZ keeps microseconds only); inspect with to_timestamp(x / 1e9).

-- Persisted requests: one row per request, the envelope spread over columns. The storage
-- never interprets `payload`; `trace` is the MessagePack-encoded trace context.
CREATE TABLE cruster_messages (
    request_id          BIGINT  PRIMARY KEY,
    shard               TEXT    NOT NULL,              -- ShardId as "group:number"
    entity_type         TEXT    NOT NULL,
    entity_id           TEXT    NOT NULL,
    tag                 TEXT    NOT NULL,
    payload             BYTEA   NOT NULL,
    persisted           BOOLEAN NOT NULL,
    uninterruptible     BOOLEAN NOT NULL,
    streaming           BOOLEAN NOT NULL,
    expects_reply       BOOLEAN NOT NULL,
    deliver_at_ns       BIGINT,
    dedupe_key          TEXT,
    trace               BYTEA   NOT NULL,
    attempts            BIGINT  NOT NULL DEFAULT 0,
    processed           BOOLEAN NOT NULL DEFAULT FALSE,
    dead_lettered       BOOLEAN NOT NULL DEFAULT FALSE,
    last_error          TEXT,
    dead_lettered_at_ns BIGINT
);

-- A dedupe key is unique per entity address (NULL keys never conflict). Also serves
-- clear_address, which filters on the leading columns.
CREATE UNIQUE INDEX cruster_messages_address_dedupe
    ON cruster_messages (entity_type, entity_id, shard, dedupe_key);

-- The poll: pending requests of a set of shards, due by deliver_at, in request-id order.
-- Partial, so it only holds what is still to be delivered.
CREATE INDEX cruster_messages_pending
    ON cruster_messages (shard, deliver_at_ns, request_id)
    WHERE NOT processed AND NOT dead_lettered;

CREATE INDEX cruster_messages_dead_letters
    ON cruster_messages (request_id)
    WHERE dead_lettered;

-- Replies, keyed by request id (no foreign key: a reply may arrive before its request is
-- visible). Chunks have is_final = FALSE and their stream position; the final reply has
-- is_final = TRUE and sequence 0. `body` is the MessagePack-encoded Reply.
CREATE TABLE cruster_replies (
    request_id BIGINT  NOT NULL,
    is_final   BOOLEAN NOT NULL,
    sequence   BIGINT  NOT NULL,
    body       BYTEA   NOT NULL,
    PRIMARY KEY (request_id, is_final, sequence)
);

-- Storing a final reply marks its request processed in the same statement.
CREATE FUNCTION cruster_mark_request_processed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE cruster_messages SET processed = TRUE
    WHERE request_id = NEW.request_id AND NOT processed;
    RETURN NULL;
END
$$;

CREATE TRIGGER cruster_final_reply_marks_processed
    AFTER INSERT ON cruster_replies
    FOR EACH ROW WHEN (NEW.is_final)
    EXECUTE FUNCTION cruster_mark_request_processed();

-- The activity journal. `result` is the MessagePack-encoded ExitResult.
CREATE TABLE cruster_journal (
    execution_id   TEXT   NOT NULL,
    sequence       BIGINT NOT NULL,
    activity       TEXT   NOT NULL,
    result         BYTEA  NOT NULL,
    attempts       BIGINT NOT NULL,
    recorded_at_ns BIGINT NOT NULL,
    PRIMARY KEY (execution_id, sequence, activity)
);

-- Key-value writes of activity transactions.
CREATE TABLE cruster_activity_values (
    key   TEXT  PRIMARY KEY,
    value BYTEA NOT NULL
);

-- Workflow executions. `status` is ExecutionStatus::name(); `suspended_until_ns` holds the
-- `until` of a suspended execution. `request` and `result` (an ExitResult) are MessagePack.
CREATE TABLE cruster_executions (
    execution_id       TEXT   PRIMARY KEY,
    workflow           TEXT   NOT NULL,
    status             TEXT   NOT NULL,
    suspended_until_ns BIGINT,
    request            BYTEA  NOT NULL,
    result             BYTEA,
    created_at_ns      BIGINT NOT NULL,
    updated_at_ns      BIGINT NOT NULL
);

CREATE INDEX cruster_executions_by_creation
    ON cruster_executions (created_at_ns, execution_id);

-- Durable timers; the address is the workflow's hidden entity.
CREATE TABLE cruster_timers (
    execution_id TEXT    NOT NULL,
    timer_key    TEXT    NOT NULL,
    shard        TEXT    NOT NULL,
    entity_type  TEXT    NOT NULL,
    entity_id    TEXT    NOT NULL,
    fire_at_ns   BIGINT  NOT NULL,
    completed    BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (execution_id, timer_key)
);

CREATE INDEX cruster_timers_due
    ON cruster_timers (fire_at_ns)
    WHERE NOT completed;

-- Deferred values (write-once). `value` is the MessagePack-encoded ExitResult.
CREATE TABLE cruster_deferred (
    execution_id TEXT  NOT NULL,
    name         TEXT  NOT NULL,
    value        BYTEA NOT NULL,
    PRIMARY KEY (execution_id, name)
);
