-- Retention: when each request became processed, and indexes for the retention sweep's
-- bounded deletes (cruster schema, version 7, PostgreSQL).
--
-- Never edit this file once released: change the schema with a new, higher-numbered file.

-- When the request became processed (unix nanoseconds of the database clock); NULL while it
-- is not. Set by the triggers below whatever statement marks a request processed (a final
-- reply, mark_processed, a request saved after its final reply), so no writer has to.
ALTER TABLE cruster_messages ADD COLUMN processed_at_ns BIGINT;

-- Requests processed before this version get the upgrade instant: they are kept one full
-- retention period from now, never deleted early.
UPDATE cruster_messages
SET processed_at_ns = (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint
WHERE processed;

CREATE FUNCTION cruster_stamp_processed_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.processed_at_ns := (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint;
    RETURN NEW;
END
$$;

CREATE TRIGGER cruster_processed_at_on_insert
    BEFORE INSERT ON cruster_messages
    FOR EACH ROW WHEN (NEW.processed AND NEW.processed_at_ns IS NULL)
    EXECUTE FUNCTION cruster_stamp_processed_at();

CREATE TRIGGER cruster_processed_at_on_update
    BEFORE UPDATE OF processed ON cruster_messages
    FOR EACH ROW WHEN (NEW.processed AND NOT OLD.processed)
    EXECUTE FUNCTION cruster_stamp_processed_at();

-- The sweep of processed requests: per shard, oldest processed first. Partial, so it holds
-- only what the sweep may delete (never pending requests or dead letters).
CREATE INDEX cruster_messages_processed
    ON cruster_messages (shard, processed_at_ns)
    WHERE processed AND NOT dead_lettered;

-- The sweep of finished executions, oldest last change first.
CREATE INDEX cruster_executions_finished
    ON cruster_executions (updated_at_ns, execution_id)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- The sweep of fired timers.
CREATE INDEX cruster_timers_fired
    ON cruster_timers (fire_at_ns)
    WHERE completed;
