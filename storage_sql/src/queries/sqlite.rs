//! SQLite statements: the portable ones, plus those binding a shard list as a JSON array
//! (SQLite has no array type; `json_each` unpacks the list inside the one statement).

pub(crate) use super::portable::*;
use super::{due, pending, request_columns, start_attempt_set};

/// One poll page: pending requests of the shards in `$1` (a JSON array of `group:number`),
/// due at `$2` (unix nanoseconds), with an id after `$3`, not addressed to an entity of `$4`
/// (a JSON array of `[entity_type, entity_id]` pairs), oldest first, at most `$5`. Walks
/// the partial index `cruster_messages_poll` from the cursor and stops at the limit.
pub(crate) const POLL_UNPROCESSED: &str = concat!(
    "SELECT ",
    request_columns!(),
    " FROM cruster_messages AS m WHERE request_id > $3 AND ",
    pending!(),
    " AND shard IN (SELECT value FROM json_each($1)) AND ",
    due!("$2"),
    " AND (m.entity_type, m.entity_id) NOT IN \
        (SELECT json_extract(s.value, '$[0]'), json_extract(s.value, '$[1]') FROM json_each($4) AS s) \
    ORDER BY request_id LIMIT $5"
);

/// The finished requests among `$1` (a JSON array of ids): the final reply of each answered
/// one (`body` set), and the attempts of each dead letter without a final reply (`body`
/// NULL). Both halves are primary-key lookups.
pub(crate) const FINISHED_REQUESTS: &str = "\
    SELECT r.request_id, r.body, 0 AS attempts FROM cruster_replies r \
    WHERE r.request_id IN (SELECT value FROM json_each($1)) AND r.is_final \
    UNION ALL \
    SELECT m.request_id, NULL, m.attempts FROM cruster_messages m \
    WHERE m.request_id IN (SELECT value FROM json_each($1)) AND m.dead_lettered \
      AND NOT EXISTS (SELECT 1 FROM cruster_replies r \
                      WHERE r.request_id = m.request_id AND r.is_final)";

/// Counts the attempts about to redeliver the pending requests in `$1` (a JSON array of
/// ids); see `start_attempt_set!`. Returns the counted rows.
pub(crate) const START_ATTEMPTS: &str = concat!(
    start_attempt_set!(),
    "WHERE request_id IN (SELECT value FROM json_each($1)) AND ",
    pending!(),
    " RETURNING request_id, attempts, dead_lettered"
);

/// Gives back one counted attempt of each pending request in `$1` (a JSON array of ids),
/// never below zero.
pub(crate) const RELEASE_ATTEMPTS: &str = concat!(
    "UPDATE cruster_messages SET attempts = attempts - 1 \
     WHERE request_id IN (SELECT value FROM json_each($1)) AND attempts > 0 AND ",
    pending!()
);

/// Takes back the dead letters among `$1` (a JSON array of ids): pending again (or processed, when a
/// final reply was stored meanwhile) with zero attempts and no retry instant. Returns the
/// rows taken back.
pub(crate) const RETRY_DEAD_LETTERS: &str = "\
    UPDATE cruster_messages SET dead_lettered = FALSE, attempts = 0, retry_at_ns = NULL, \
        last_error = NULL, dead_lettered_at_ns = NULL \
    WHERE request_id IN (SELECT value FROM json_each($1)) AND dead_lettered \
    RETURNING request_id";

/// Deletes the dead letters among `$1` (a JSON array of ids); returns the rows deleted.
pub(crate) const PURGE_DEAD_LETTERS: &str = "\
    DELETE FROM cruster_messages WHERE request_id IN (SELECT value FROM json_each($1)) AND dead_lettered \
    RETURNING request_id";

/// Deletes the replies of the dead letters among `$1` (run before `PURGE_DEAD_LETTERS`, in
/// its transaction).
pub(crate) const DELETE_DEAD_LETTER_REPLIES: &str = "\
    DELETE FROM cruster_replies WHERE request_id IN ( \
        SELECT request_id FROM cruster_messages WHERE request_id IN (SELECT value FROM json_each($1)) AND dead_lettered)";

// ---- retention (see `message_storage.rs`, `workflow_engine.rs`) --------------------------

/// At most `$3` processed requests of the shards in `$1` (a JSON array) processed at or
/// before `$2`, read through the partial index `cruster_messages_processed`.
pub(crate) const PROCESSED_BEFORE: &str = "\
    SELECT request_id FROM cruster_messages \
    WHERE shard IN (SELECT value FROM json_each($1)) AND processed AND NOT dead_lettered \
        AND processed_at_ns <= $2 \
    LIMIT $3";

/// Deletes the replies of the requests in `$1` (a JSON array of ids).
pub(crate) const DELETE_REPLIES_OF: &str =
    "DELETE FROM cruster_replies WHERE request_id IN (SELECT value FROM json_each($1))";

/// Deletes the processed, not dead, requests among `$1` (a JSON array of ids).
pub(crate) const DELETE_PROCESSED: &str = "\
    DELETE FROM cruster_messages WHERE request_id IN (SELECT value FROM json_each($1)) \
        AND processed AND NOT dead_lettered";

/// Deletes the executions among `$1` (a JSON array of ids) that are finished and last
/// updated at or before `$2`; returns their ids.
pub(crate) const DELETE_FINISHED_EXECUTIONS: &str = "\
    DELETE FROM cruster_executions \
    WHERE execution_id IN (SELECT value FROM json_each($1)) \
        AND status IN ('completed', 'failed', 'cancelled') AND updated_at_ns <= $2 \
    RETURNING execution_id";

/// Deletes the timers of the executions in `$1` (a JSON array of ids).
pub(crate) const DELETE_TIMERS_OF: &str =
    "DELETE FROM cruster_timers WHERE execution_id IN (SELECT value FROM json_each($1))";

/// Deletes the deferred values of the executions in `$1` (a JSON array of ids).
pub(crate) const DELETE_DEFERREDS_OF: &str =
    "DELETE FROM cruster_deferred WHERE execution_id IN (SELECT value FROM json_each($1))";

// ---- runner storage (see `runner_storage.rs`) --------------------------------------------

super::runner_registry_statements!("CAST(unixepoch('subsec') * 1000 AS INTEGER)");

/// Takes the locks of the shards in `$1` (a JSON array) for owner `$2`, for `$3` ms: each
/// one that is absent, expired or already `$2`'s. Returns the shards now held by `$2`.
/// SQLite runs one writing statement at a time, so concurrent takers are serialised and
/// the later ones find the lock taken. (`WHERE TRUE` keeps the parser from reading `ON
/// CONFLICT` as a join constraint.)
pub(crate) const ACQUIRE_SHARD_LOCKS: &str = concat!(
    "WITH now(ms) AS (SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER)) \
    INSERT INTO cruster_shard_locks AS l (shard, owner, acquired_at_ms, expires_at_ms) \
    SELECT s.value, $2, now.ms, now.ms + $3 \
    FROM (SELECT DISTINCT value FROM json_each($1)) AS s, now \
    WHERE TRUE ",
    super::take_lock_on_conflict!()
);

/// Extends to `$3` ms from now the live locks of the shards in `$1` held by `$2`; returns
/// those.
pub(crate) const REFRESH_SHARD_LOCKS: &str = "\
    WITH now(ms) AS (SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER)) \
    UPDATE cruster_shard_locks SET expires_at_ms = (SELECT ms FROM now) + $3 \
    WHERE shard IN (SELECT value FROM json_each($1)) AND owner = $2 \
        AND expires_at_ms > (SELECT ms FROM now) \
    RETURNING shard";

/// Deletes the locks of the shards in `$1` held by `$2` (live or expired).
pub(crate) const RELEASE_SHARD_LOCKS: &str = "\
    DELETE FROM cruster_shard_locks \
    WHERE shard IN (SELECT value FROM json_each($1)) AND owner = $2";

/// Deletes every lock held by `$1` (unregister).
pub(crate) const RELEASE_ALL_SHARD_LOCKS: &str = "DELETE FROM cruster_shard_locks WHERE owner = $1";

/// The executions among `$1` (a list of execution ids) that stopped running: finished
/// (completed, failed, cancelled) or parked. Primary-key lookups.
pub(crate) const STOPPED_EXECUTIONS: &str = "\
    SELECT execution_id, workflow, status, suspended_until_ns, request, result, \
        created_at_ns, updated_at_ns, attempts, progress_mark, last_error, \
        cancel_requested_at_ns \
    FROM cruster_executions \
    WHERE execution_id IN (SELECT value FROM json_each($1)) AND status IN ('completed', 'failed', 'cancelled', 'parked')";
