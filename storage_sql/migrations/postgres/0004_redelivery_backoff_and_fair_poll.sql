-- Message storage: redelivery with backoff, and a poll whose cost follows what it can
-- deliver (cruster schema, version 4, PostgreSQL).
--
-- Never edit this file once released: change the schema with a new, higher-numbered file.

-- A failed attempt makes its request not due before this instant (unix nanoseconds); NULL
-- when it never failed. A request is due when both deliver_at_ns and retry_at_ns are NULL
-- or not after now.
ALTER TABLE cruster_messages ADD COLUMN retry_at_ns BIGINT;

-- The poll walks the pending requests in request-id order from its cursor and stops at its
-- limit: a partial index ordered by request id, carrying the columns the poll filters on
-- (shard, entity, due instants) so rows it skips are rejected without reading the table.
CREATE INDEX cruster_messages_poll
    ON cruster_messages (request_id)
    INCLUDE (shard, entity_type, entity_id, deliver_at_ns, retry_at_ns)
    WHERE NOT processed AND NOT dead_lettered;

-- Served the old poll (all pending rows of a set of shards, then sorted), which made a
-- poll's cost grow with the whole backlog; nothing reads it any more.
DROP INDEX cruster_messages_pending;
