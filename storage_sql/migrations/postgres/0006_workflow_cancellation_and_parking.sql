-- Workflow executions: cancellation requests and parking of executions that fail to make
-- progress (cruster schema, version 6, PostgreSQL).
--
-- Never edit this file once released: change the schema with a new, higher-numbered file.
-- It depends only on version 1 (cruster_executions), so it applies whether or not
-- version 5 is already there.

-- Runs started since the execution last made progress, counted before each run; the
-- journal length when the last run started; the last failed run's error (a MessagePack
-- WireError).
ALTER TABLE cruster_executions ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE cruster_executions ADD COLUMN progress_mark BIGINT NOT NULL DEFAULT 0;
ALTER TABLE cruster_executions ADD COLUMN last_error BYTEA;

-- When cancellation was first requested (unix nanoseconds). Only the cancellation
-- statement sets it; the execution upsert never touches it.
ALTER TABLE cruster_executions ADD COLUMN cancel_requested_at_ns BIGINT;

-- Operators list parked executions: a partial index keeps that cheap however many
-- finished executions the table holds.
CREATE INDEX cruster_executions_parked
    ON cruster_executions (created_at_ns, execution_id)
    WHERE status = 'parked';
