-- The exclusive lease of a single-node deployment (`SingleRunner` on this database): at
-- most one live holder per name. Instants are unix milliseconds of the database clock.
CREATE TABLE IF NOT EXISTS cruster_single_node_lease (
    name           TEXT PRIMARY KEY,
    holder         TEXT NOT NULL,
    acquired_at_ms BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);
