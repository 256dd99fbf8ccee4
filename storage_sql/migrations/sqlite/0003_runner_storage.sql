-- Runner storage (`SqlRunnerStorage`): cluster membership and shard locks for a single
-- host. Every row carries an expiry in unix milliseconds of the database's clock
-- (`unixepoch('subsec')`, read inside each statement), pushed forward by the owner's
-- heartbeat; a row whose expiry has passed counts as absent.

-- One row per registered runner. `address` is `host:port`; `machine_id` (0..1023) is
-- unique among all rows, and rows of expired runners are deleted before a new id is
-- handed out, so ids of departed runners are reused.
CREATE TABLE IF NOT EXISTS cruster_runners (
    address          TEXT PRIMARY KEY NOT NULL,
    machine_id       INTEGER NOT NULL,
    weight           INTEGER NOT NULL,
    registered_at_ms INTEGER NOT NULL,
    expires_at_ms    INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS cruster_runners_machine_id ON cruster_runners (machine_id);

-- One row per shard lock (`group:number`), held by `owner` (a runner address) until
-- `expires_at_ms`.
CREATE TABLE IF NOT EXISTS cruster_shard_locks (
    shard          TEXT PRIMARY KEY NOT NULL,
    owner          TEXT NOT NULL,
    acquired_at_ms INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);
-- `unregister` frees every lock of one runner.
CREATE INDEX IF NOT EXISTS cruster_shard_locks_owner ON cruster_shard_locks (owner);
