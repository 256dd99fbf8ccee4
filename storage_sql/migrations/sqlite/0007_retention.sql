-- Retention: when each request became processed, and indexes for the retention sweep's
-- bounded deletes (cruster schema, version 7, SQLite). See the PostgreSQL file of the same
-- number.
--
-- Never edit this file once released: change the schema with a new, higher-numbered file.

ALTER TABLE cruster_messages ADD COLUMN processed_at_ns INTEGER;

-- Requests processed before this version get the upgrade instant: they are kept one full
-- retention period from now, never deleted early.
UPDATE cruster_messages
SET processed_at_ns = CAST(unixepoch('subsec') * 1000000000 AS INTEGER)
WHERE processed;

-- SQLite triggers cannot change the row being written: these stamp it right after, in the
-- same statement.
CREATE TRIGGER cruster_processed_at_on_insert
    AFTER INSERT ON cruster_messages
    FOR EACH ROW WHEN NEW.processed AND NEW.processed_at_ns IS NULL
BEGIN
    UPDATE cruster_messages
    SET processed_at_ns = CAST(unixepoch('subsec') * 1000000000 AS INTEGER)
    WHERE request_id = NEW.request_id;
END;

CREATE TRIGGER cruster_processed_at_on_update
    AFTER UPDATE OF processed ON cruster_messages
    FOR EACH ROW WHEN NEW.processed AND NOT OLD.processed
BEGIN
    UPDATE cruster_messages
    SET processed_at_ns = CAST(unixepoch('subsec') * 1000000000 AS INTEGER)
    WHERE request_id = NEW.request_id;
END;

CREATE INDEX cruster_messages_processed
    ON cruster_messages (shard, processed_at_ns)
    WHERE processed AND NOT dead_lettered;

CREATE INDEX cruster_executions_finished
    ON cruster_executions (updated_at_ns, execution_id)
    WHERE status IN ('completed', 'failed', 'cancelled');

CREATE INDEX cruster_timers_fired
    ON cruster_timers (fire_at_ns)
    WHERE completed;
