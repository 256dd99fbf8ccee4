//! PostgreSQL statements: the portable ones, plus those binding a shard list as `TEXT[]`.

pub(crate) use super::portable::*;
use super::{pending, request_columns};

/// Pending, due requests of the shards in `$1` (a `TEXT[]` of `group:number`), oldest
/// first, at most `$3`. `$2` is now in unix nanoseconds.
pub(crate) const UNPROCESSED: &str = concat!(
    "SELECT ",
    request_columns!(),
    " FROM cruster_messages WHERE shard = ANY($1) AND ",
    pending!(),
    " AND (deliver_at_ns IS NULL OR deliver_at_ns <= $2) ORDER BY request_id LIMIT $3"
);

/// Restarts the attempt count of the pending requests of the shards in `$1`.
pub(crate) const RESET_SHARDS: &str = concat!(
    "UPDATE cruster_messages SET attempts = 0 WHERE shard = ANY($1) AND ",
    pending!(),
    " AND attempts > 0"
);

// ---- group commit (PostgreSQL only; see `group_commit.rs`) -------------------------------

/// `INSERT_REQUEST` for many requests in one statement: `$1`…`$13` are arrays holding one
/// element per request, in the order of `INSERT_REQUEST`'s parameters. Rows are inserted
/// in array order. Returns the ids of the rows inserted; a request whose id or address +
/// dedupe key is taken is skipped. The caller never passes two rows that conflict with
/// each other, so every returned id names exactly one row.
pub(crate) const INSERT_REQUESTS: &str = "\
    INSERT INTO cruster_messages (request_id, shard, entity_type, entity_id, tag, payload, \
        persisted, uninterruptible, streaming, expects_reply, deliver_at_ns, dedupe_key, \
        trace, processed) \
    SELECT k.request_id, k.shard, k.entity_type, k.entity_id, k.tag, k.payload, \
        k.persisted, k.uninterruptible, k.streaming, k.expects_reply, k.deliver_at_ns, \
        k.dedupe_key, k.trace, \
        EXISTS (SELECT 1 FROM cruster_replies r WHERE r.request_id = k.request_id AND r.is_final) \
    FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BYTEA[], \
        $7::BOOLEAN[], $8::BOOLEAN[], $9::BOOLEAN[], $10::BOOLEAN[], $11::BIGINT[], \
        $12::TEXT[], $13::BYTEA[]) \
        WITH ORDINALITY AS k(request_id, shard, entity_type, entity_id, tag, payload, \
            persisted, uninterruptible, streaming, expects_reply, deliver_at_ns, dedupe_key, \
            trace, position) \
    ORDER BY k.position \
    ON CONFLICT DO NOTHING \
    RETURNING request_id";

/// `INSERT_REPLY` for many replies in one statement: `$1`…`$4` are arrays of request ids,
/// final flags, sequences and bodies. Rows are inserted in array order; the first reply
/// stored under a key wins, as with `INSERT_REPLY`.
pub(crate) const INSERT_REPLIES: &str = "\
    INSERT INTO cruster_replies (request_id, is_final, sequence, body) \
    SELECT k.request_id, k.is_final, k.sequence, k.body \
    FROM UNNEST($1::BIGINT[], $2::BOOLEAN[], $3::BIGINT[], $4::BYTEA[]) \
        WITH ORDINALITY AS k(request_id, is_final, sequence, body, position) \
    ORDER BY k.position \
    ON CONFLICT DO NOTHING";
