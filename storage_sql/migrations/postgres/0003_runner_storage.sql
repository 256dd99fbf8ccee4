-- Runner storage (`SqlRunnerStorage`): cluster membership and shard locks, for a cluster
-- that runs on PostgreSQL alone. Every row carries an expiry in unix milliseconds of the
-- DATABASE clock (`clock_timestamp()`), pushed forward by the owner's heartbeat; a row
-- whose expiry has passed counts as absent, whatever the runners' own clocks say.

-- One row per registered runner. `address` is `host:port`; `machine_id` (0..1023) is
-- unique among all rows, and rows of expired runners are deleted before a new id is
-- handed out, so ids of departed runners are reused.
CREATE TABLE IF NOT EXISTS cruster_runners (
    address          TEXT PRIMARY KEY,
    machine_id       BIGINT NOT NULL,
    weight           BIGINT NOT NULL,
    registered_at_ms BIGINT NOT NULL,
    expires_at_ms    BIGINT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS cruster_runners_machine_id ON cruster_runners (machine_id);

-- One row per shard lock (`group:number`), held by `owner` (a runner address) until
-- `expires_at_ms`. Taken with one `INSERT … ON CONFLICT (shard) DO UPDATE … WHERE expired
-- OR ours`, so concurrent takers of one shard have exactly one winner.
CREATE TABLE IF NOT EXISTS cruster_shard_locks (
    shard          TEXT PRIMARY KEY,
    owner          TEXT NOT NULL,
    acquired_at_ms BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);
-- `unregister` frees every lock of one runner.
CREATE INDEX IF NOT EXISTS cruster_shard_locks_owner ON cruster_shard_locks (owner);
