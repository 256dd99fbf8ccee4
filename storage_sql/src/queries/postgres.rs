//! PostgreSQL statements: the portable ones, plus those binding a shard list as `TEXT[]`.

pub(crate) use super::portable::*;
use super::{due, pending, request_columns, start_attempt_set, upsert_execution};

/// One poll page: pending requests of the shards in `$1` (a `TEXT[]` of `group:number`),
/// due at `$2` (unix nanoseconds), with an id after `$3`, not addressed to an entity of `$4`
/// (a JSON array of `[entity_type, entity_id]` pairs), oldest first, at most `$5`. Walks
/// the partial index `cruster_messages_poll` from the cursor and stops at the limit: it
/// reads the page plus the rows it filters out on the way (other runners' shards, requests
/// not due, skipped entities), never the processed history nor the rest of the backlog.
pub(crate) const POLL_UNPROCESSED: &str = concat!(
    "SELECT ",
    request_columns!(),
    " FROM cruster_messages m WHERE request_id > $3 AND ",
    pending!(),
    " AND shard = ANY($1) AND ",
    due!("$2"),
    // `NOT IN` (not `NOT EXISTS`): planned as a hashed filter on the index scan, which keeps
    // the scan in request-id order so it stops at the limit (an anti join would read every
    // pending row after the cursor and sort them).
    " AND (m.entity_type, m.entity_id) NOT IN \
        (SELECT s.e ->> 0, s.e ->> 1 FROM jsonb_array_elements($4::jsonb) AS s(e)) \
    ORDER BY request_id LIMIT $5"
);

/// The finished requests among `$1` (a `BIGINT[]`): the final reply of each answered one
/// (`body` set), and the attempts of each dead letter without a final reply (`body` NULL).
/// Both halves are primary-key lookups.
pub(crate) const FINISHED_REQUESTS: &str = "\
    SELECT r.request_id, r.body, 0::BIGINT AS attempts FROM cruster_replies r \
    WHERE r.request_id = ANY($1) AND r.is_final \
    UNION ALL \
    SELECT m.request_id, NULL, m.attempts FROM cruster_messages m \
    WHERE m.request_id = ANY($1) AND m.dead_lettered \
      AND NOT EXISTS (SELECT 1 FROM cruster_replies r \
                      WHERE r.request_id = m.request_id AND r.is_final)";

/// Counts the attempts about to redeliver the pending requests in `$1` (a `BIGINT[]`); see
/// `start_attempt_set!`. Returns the counted rows.
pub(crate) const START_ATTEMPTS: &str = concat!(
    start_attempt_set!(),
    "WHERE request_id = ANY($1) AND ",
    pending!(),
    " RETURNING request_id, attempts, dead_lettered"
);

/// Gives back one counted attempt of each pending request in `$1` (a `BIGINT[]`), never
/// below zero.
pub(crate) const RELEASE_ATTEMPTS: &str = concat!(
    "UPDATE cruster_messages SET attempts = attempts - 1 \
     WHERE request_id = ANY($1) AND attempts > 0 AND ",
    pending!()
);

/// Takes back the dead letters among `$1` (a `BIGINT[]`): pending again (or processed, when a
/// final reply was stored meanwhile) with zero attempts and no retry instant. Returns the
/// rows taken back.
pub(crate) const RETRY_DEAD_LETTERS: &str = "\
    UPDATE cruster_messages SET dead_lettered = FALSE, attempts = 0, retry_at_ns = NULL, \
        last_error = NULL, dead_lettered_at_ns = NULL \
    WHERE request_id = ANY($1) AND dead_lettered \
    RETURNING request_id";

/// Deletes the dead letters among `$1` (a `BIGINT[]`); returns the rows deleted.
pub(crate) const PURGE_DEAD_LETTERS: &str = "\
    DELETE FROM cruster_messages WHERE request_id = ANY($1) AND dead_lettered \
    RETURNING request_id";

/// Deletes the replies of the dead letters among `$1` (run before `PURGE_DEAD_LETTERS`, in
/// its transaction).
pub(crate) const DELETE_DEAD_LETTER_REPLIES: &str = "\
    DELETE FROM cruster_replies WHERE request_id IN ( \
        SELECT request_id FROM cruster_messages WHERE request_id = ANY($1) AND dead_lettered)";

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

/// `UPSERT_EXECUTION` for many executions (distinct ids) in one statement: `$1`…`$11` are
/// arrays of the same columns. Like the single upsert, it never sets
/// `cancel_requested_at_ns`.
pub(crate) const UPSERT_EXECUTIONS: &str = concat!(
    "INSERT INTO cruster_executions (execution_id, workflow, status, suspended_until_ns, \
        request, result, created_at_ns, updated_at_ns, attempts, progress_mark, last_error) \
    SELECT k.execution_id, k.workflow, k.status, k.suspended_until_ns, k.request, k.result, \
        k.created_at_ns, k.updated_at_ns, k.attempts, k.progress_mark, k.last_error \
    FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BYTEA[], $6::BYTEA[], \
        $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BYTEA[]) \
        AS k(execution_id, workflow, status, suspended_until_ns, request, result, \
            created_at_ns, updated_at_ns, attempts, progress_mark, last_error) ",
    super::replace_execution!()
);

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

/// `INSERT_JOURNAL_ENTRY` (`$1`…`$6`) and `CANCELLATION_REQUESTED` of the entry's execution
/// in one round trip, for a chain carrying its held entry on at the next activity's
/// suspension point: the rows inserted (0 when the position is taken) and the cancellation
/// instant (NULL when none was requested). The read does not see the insert, nor needs to.
pub(crate) const CARRY_JOURNAL_ENTRY_READING_CANCELLATION: &str = "\
    WITH carried AS ( \
        INSERT INTO cruster_journal (execution_id, sequence, activity, result, attempts, \
            recorded_at_ns) \
        VALUES ($1, $2, $3, $4, $5, $6) \
        ON CONFLICT DO NOTHING \
        RETURNING 1) \
    SELECT (SELECT COUNT(*) FROM carried), \
        (SELECT cancel_requested_at_ns FROM cruster_executions WHERE execution_id = $1)";

/// The upsert of a finished execution's record (`$1`…`$11`) as a `WITH` item named
/// `execution`, then the insert of its request's final reply (`$12`…`$15`): the tail of the
/// finishing statements.
macro_rules! execution_then_reply {
    () => {
        concat!(
            "execution AS (",
            upsert_execution!(),
            ") INSERT INTO cruster_replies (request_id, is_final, sequence, body) \
            VALUES ($12, $13, $14, $15) ON CONFLICT DO NOTHING"
        )
    };
}

/// Journal entries from the arrays `$a`…`$a+5` (the columns of `INSERT_JOURNAL_ENTRY`), all
/// or none: without `ON CONFLICT`, a taken position fails the whole statement.
macro_rules! insert_journal_entries {
    ($execution_id:literal, $sequence:literal, $activity:literal, $result:literal,
     $attempts:literal, $recorded_at_ns:literal) => {
        concat!(
            "INSERT INTO cruster_journal (execution_id, sequence, activity, result, attempts, \
                recorded_at_ns) \
            SELECT * FROM UNNEST(",
            $execution_id,
            "::TEXT[], ",
            $sequence,
            "::BIGINT[], ",
            $activity,
            "::TEXT[], ",
            $result,
            "::BYTEA[], ",
            $attempts,
            "::BIGINT[], ",
            $recorded_at_ns,
            "::BIGINT[])"
        )
    };
}

/// Journal-only steps held back together, in one statement: `$1`…`$6` are arrays of the
/// entries' columns.
pub(crate) const APPEND_JOURNAL_ENTRIES: &str =
    insert_journal_entries!("$1", "$2", "$3", "$4", "$5", "$6");

/// `FINISH_WITH_REPLY` (`$1`…`$15`) with journal entries (`$16`…`$21`, arrays of their
/// columns) in the same statement: a taken position applies nothing.
pub(crate) const FINISH_WITH_REPLY_AND_ENTRIES: &str = concat!(
    "WITH journaled AS (",
    insert_journal_entries!("$16", "$17", "$18", "$19", "$20", "$21"),
    "), ",
    execution_then_reply!()
);

// ---- retention (see `message_storage.rs`, `workflow_engine.rs`) --------------------------

/// At most `$3` processed requests of the shards in `$1` (`TEXT[]`) processed at or before
/// `$2`, read through the partial index `cruster_messages_processed`.
pub(crate) const PROCESSED_BEFORE: &str = "\
    SELECT request_id FROM cruster_messages \
    WHERE shard = ANY($1) AND processed AND NOT dead_lettered AND processed_at_ns <= $2 \
    LIMIT $3";

/// Deletes the replies of the requests in `$1` (a `BIGINT[]`).
pub(crate) const DELETE_REPLIES_OF: &str = "DELETE FROM cruster_replies WHERE request_id = ANY($1)";

/// Deletes the processed, not dead, requests among `$1` (a `BIGINT[]`).
pub(crate) const DELETE_PROCESSED: &str = "\
    DELETE FROM cruster_messages WHERE request_id = ANY($1) AND processed AND NOT dead_lettered";

/// Deletes the executions among `$1` (a `TEXT[]`) that are finished and last updated at or
/// before `$2`; returns their ids.
pub(crate) const DELETE_FINISHED_EXECUTIONS: &str = "\
    DELETE FROM cruster_executions \
    WHERE execution_id = ANY($1) AND status IN ('completed', 'failed', 'cancelled') \
        AND updated_at_ns <= $2 \
    RETURNING execution_id";

/// Deletes the timers of the executions in `$1` (a `TEXT[]`).
pub(crate) const DELETE_TIMERS_OF: &str = "DELETE FROM cruster_timers WHERE execution_id = ANY($1)";

/// Deletes the deferred values of the executions in `$1` (a `TEXT[]`).
pub(crate) const DELETE_DEFERREDS_OF: &str =
    "DELETE FROM cruster_deferred WHERE execution_id = ANY($1)";

// ---- runner storage (see `runner_storage.rs`) --------------------------------------------

super::runner_registry_statements!("(extract(epoch FROM clock_timestamp()) * 1000)::bigint");

/// Takes the locks of the shards in `$1` (`TEXT[]`) for owner `$2`, for `$3` ms: each one
/// that is absent, expired or already `$2`'s. Returns the shards now held by `$2`.
///
/// Rows are inserted in shard order, so concurrent acquisitions (and the refreshes and
/// releases below, which lock in the same order) wait for each other without deadlocking;
/// a shard's second taker waits for the first to commit, then sees its lock and skips it:
/// exactly one winner.
pub(crate) const ACQUIRE_SHARD_LOCKS: &str = concat!(
    "WITH now(ms) AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint) \
    INSERT INTO cruster_shard_locks AS l (shard, owner, acquired_at_ms, expires_at_ms) \
    SELECT s.shard, $2, now.ms, now.ms + $3 \
    FROM (SELECT DISTINCT shard FROM unnest($1::TEXT[]) AS u(shard)) AS s, now \
    ORDER BY s.shard ",
    super::take_lock_on_conflict!()
);

/// Extends to `$3` ms from now the live locks of the shards in `$1` held by `$2`; returns
/// those. Rows are locked in shard order first (see `ACQUIRE_SHARD_LOCKS`).
pub(crate) const REFRESH_SHARD_LOCKS: &str = "\
    WITH now(ms) AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint), \
        mine AS MATERIALIZED (SELECT shard FROM cruster_shard_locks \
            WHERE shard = ANY($1) AND owner = $2 ORDER BY shard FOR UPDATE) \
    UPDATE cruster_shard_locks AS l SET expires_at_ms = now.ms + $3 \
    FROM now, mine \
    WHERE l.shard = mine.shard AND l.owner = $2 AND l.expires_at_ms > now.ms \
    RETURNING l.shard";

/// Deletes the locks of the shards in `$1` held by `$2` (live or expired).
pub(crate) const RELEASE_SHARD_LOCKS: &str = "\
    WITH mine AS MATERIALIZED (SELECT shard FROM cruster_shard_locks \
        WHERE shard = ANY($1) AND owner = $2 ORDER BY shard FOR UPDATE) \
    DELETE FROM cruster_shard_locks AS l USING mine \
    WHERE l.shard = mine.shard AND l.owner = $2";

/// Deletes every lock held by `$1` (unregister).
pub(crate) const RELEASE_ALL_SHARD_LOCKS: &str = "\
    WITH mine AS MATERIALIZED (SELECT shard FROM cruster_shard_locks \
        WHERE owner = $1 ORDER BY shard FOR UPDATE) \
    DELETE FROM cruster_shard_locks AS l USING mine \
    WHERE l.shard = mine.shard AND l.owner = $1";

/// The `LISTEN`/`NOTIFY` channel of membership changes in this schema: tests and
/// deployments that share a database in separate schemas do not wake each other.
/// (A channel name has at most 63 bytes.)
pub(crate) const MEMBERSHIP_CHANNEL: &str =
    "SELECT left('cruster_runners:' || current_schema(), 63)";

/// Wakes the membership watches of every process (sent after a registration or an
/// unregistration; expiries are seen by polling).
pub(crate) const NOTIFY_MEMBERSHIP: &str =
    "SELECT pg_notify(left('cruster_runners:' || current_schema(), 63), '')";

/// The executions among `$1` (a list of execution ids) that stopped running: finished
/// (completed, failed, cancelled) or parked. Primary-key lookups.
pub(crate) const STOPPED_EXECUTIONS: &str = "\
    SELECT execution_id, workflow, status, suspended_until_ns, request, result, \
        created_at_ns, updated_at_ns, attempts, progress_mark, last_error, \
        cancel_requested_at_ns \
    FROM cruster_executions \
    WHERE execution_id = ANY($1) AND status IN ('completed', 'failed', 'cancelled', 'parked')";

/// A finished execution's record (`$1`…`$11`, as `UPSERT_EXECUTION`) and the final reply
/// of the request that ran it (`$12`…`$15`, as `INSERT_REPLY`) in one statement, so one
/// commit. The reply's trigger marks the request processed, as after `INSERT_REPLY`.
pub(crate) const FINISH_WITH_REPLY: &str = concat!("WITH ", execution_then_reply!());
