-- Message storage: redelivery with backoff, and a poll whose cost follows what it can
-- deliver (cruster schema, version 4, SQLite). See the PostgreSQL file of the same number.
--
-- Never edit this file once released: change the schema with a new, higher-numbered file.

ALTER TABLE cruster_messages ADD COLUMN retry_at_ns INTEGER;

CREATE INDEX cruster_messages_poll
    ON cruster_messages (request_id, shard, entity_type, entity_id, deliver_at_ns, retry_at_ns)
    WHERE NOT processed AND NOT dead_lettered;

DROP INDEX cruster_messages_pending;
