//! Every SQL statement of the crate, one module per dialect.
//!
//! Most statements are portable (PostgreSQL and SQLite both accept `$1` parameters,
//! `ON CONFLICT … DO NOTHING`, `RETURNING`, partial indexes and `TRUE`/`FALSE`), so they
//! live once in [`portable`] and each dialect module re-exports them. A dialect module
//! defines only what differs: binding a list of shards (`= ANY($1)` on a PostgreSQL
//! `TEXT[]`, `IN (SELECT value FROM json_each($1))` on a JSON array in SQLite).
//!
//! Statements are plain `&'static str`s, so they go to `sqlx::query` as literals.

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// The columns of `cruster_messages` that make up a `StoredRequest`, in `SELECT` form.
macro_rules! request_columns {
    () => {
        "request_id, shard, entity_type, entity_id, tag, payload, persisted, uninterruptible, \
         streaming, expects_reply, deliver_at_ns, dedupe_key, trace, attempts, processed, \
         dead_lettered"
    };
}
pub(crate) use request_columns;

/// The `WHERE` terms of a pending request; they match the partial index
/// `cruster_messages_poll`, so the planner can use it.
macro_rules! pending {
    () => {
        "NOT processed AND NOT dead_lettered"
    };
}
pub(crate) use pending;

/// The execution upsert (binds `$1`…`$11`), as a literal so the PostgreSQL module can
/// also use it inside a `WITH` of a statement that writes more.
macro_rules! upsert_execution {
    () => {
        concat!(
            "INSERT INTO cruster_executions (execution_id, workflow, status, \
                suspended_until_ns, request, result, created_at_ns, updated_at_ns, attempts, \
                progress_mark, last_error) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ",
            $crate::queries::replace_execution!()
        )
    };
}
pub(crate) use upsert_execution;

/// The conflict clause of an execution upsert: every column but the id and
/// `cancel_requested_at_ns` (only `REQUEST_CANCELLATION` sets it) is replaced.
macro_rules! replace_execution {
    () => {
        "ON CONFLICT (execution_id) DO UPDATE SET \
            workflow = excluded.workflow, \
            status = excluded.status, \
            suspended_until_ns = excluded.suspended_until_ns, \
            request = excluded.request, \
            result = excluded.result, \
            created_at_ns = excluded.created_at_ns, \
            updated_at_ns = excluded.updated_at_ns, \
            attempts = excluded.attempts, \
            progress_mark = excluded.progress_mark, \
            last_error = excluded.last_error"
    };
}
pub(crate) use replace_execution;

/// The runner-storage statements that differ between the dialects only in how they read
/// the database clock: `$now` is an SQL expression giving the database's current time in
/// unix milliseconds. Every statement reads it once, in a `now(ms)` CTE, so one statement
/// compares and writes one instant. Invoked by each dialect module; the shard-lock
/// statements, which bind shard lists, are written out in the dialect modules.
macro_rules! runner_registry_statements {
    ($now:literal) => {
        /// Deletes expired registrations, so their machine ids can be handed out again.
        pub(crate) const PURGE_EXPIRED_RUNNERS: &str = concat!(
            "WITH now(ms) AS (SELECT ",
            $now,
            ") DELETE FROM cruster_runners WHERE expires_at_ms <= (SELECT ms FROM now)"
        );

        /// Registers `$1` (address) with weight `$2` for `$3` ms. A registered runner keeps
        /// its machine id (weight and expiry are updated); a new one gets a random id that
        /// no row holds (random, so concurrent registrations rarely collide and a departed
        /// runner's id is not reused at once). Returns the machine id; no row when all 1024
        /// ids are taken. Two concurrent registrations that pick the same id: the second
        /// fails on the unique index `cruster_runners_machine_id` and is retried.
        pub(crate) const REGISTER_RUNNER: &str = concat!(
            "WITH RECURSIVE ids(id) AS (SELECT 0 UNION ALL SELECT id + 1 FROM ids WHERE id < 1023), \
                now(ms) AS (SELECT ",
            $now,
            ") \
            INSERT INTO cruster_runners AS r \
                (address, machine_id, weight, registered_at_ms, expires_at_ms) \
            SELECT $1, m.id, $2, now.ms, now.ms + $3 \
            FROM now, (SELECT COALESCE( \
                (SELECT machine_id FROM cruster_runners WHERE address = $1), \
                (SELECT id FROM ids WHERE id NOT IN (SELECT machine_id FROM cruster_runners) \
                 ORDER BY random() LIMIT 1)) AS id) AS m \
            WHERE m.id IS NOT NULL \
            ON CONFLICT (address) DO UPDATE SET weight = excluded.weight, \
                expires_at_ms = excluded.expires_at_ms \
            RETURNING machine_id"
        );

        /// Extends the live registration of `$1` to `$2` ms from now. No row: expired or
        /// never registered.
        pub(crate) const KEEP_RUNNER_ALIVE: &str = concat!(
            "WITH now(ms) AS (SELECT ",
            $now,
            ") UPDATE cruster_runners SET expires_at_ms = (SELECT ms FROM now) + $2 \
            WHERE address = $1 AND expires_at_ms > (SELECT ms FROM now) \
            RETURNING machine_id"
        );

        /// The live registrations (sorted by the caller, by parsed address).
        pub(crate) const LIVE_RUNNERS: &str = concat!(
            "WITH now(ms) AS (SELECT ",
            $now,
            ") SELECT address, machine_id, weight FROM cruster_runners, now \
            WHERE expires_at_ms > now.ms"
        );

        /// One row if `$1` is registered and not expired.
        pub(crate) const RUNNER_IS_LIVE: &str = concat!(
            "WITH now(ms) AS (SELECT ",
            $now,
            ") SELECT address FROM cruster_runners, now \
            WHERE address = $1 AND expires_at_ms > now.ms"
        );

        pub(crate) const DELETE_RUNNER: &str = "DELETE FROM cruster_runners WHERE address = $1";

        /// The live holder of shard `$1`.
        pub(crate) const SHARD_OWNER: &str = concat!(
            "WITH now(ms) AS (SELECT ",
            $now,
            ") SELECT owner FROM cruster_shard_locks, now \
            WHERE shard = $1 AND expires_at_ms > now.ms"
        );

    };
}
pub(crate) use runner_registry_statements;

/// The `SET` and `WHERE` of a shard-lock upsert: a lock is taken when absent, expired or
/// already the taker's. `acquired_at_ms` keeps the time the current holder first took it.
macro_rules! take_lock_on_conflict {
    () => {
        "ON CONFLICT (shard) DO UPDATE SET \
            owner = excluded.owner, \
            acquired_at_ms = CASE WHEN l.owner = excluded.owner \
                AND l.expires_at_ms > excluded.acquired_at_ms \
                THEN l.acquired_at_ms ELSE excluded.acquired_at_ms END, \
            expires_at_ms = excluded.expires_at_ms \
        WHERE l.expires_at_ms <= excluded.acquired_at_ms OR l.owner = excluded.owner \
        RETURNING shard"
    };
}
pub(crate) use take_lock_on_conflict;

/// The `WHERE` terms of a due request: `$now` (a parameter) is not before its `deliver_at`
/// nor its retry instant.
macro_rules! due {
    ($now:literal) => {
        concat!(
            "(deliver_at_ns IS NULL OR deliver_at_ns <= ",
            $now,
            ") AND (retry_at_ns IS NULL OR retry_at_ns <= ",
            $now,
            ")"
        )
    };
}
pub(crate) use due;

/// The `SET` of `start_attempts`: one more attempt, or a dead letter (reason `$4`, at `$3`)
/// when the count already reached `$2`. Reads the row's old values, so one statement counts
/// and decides.
macro_rules! start_attempt_set {
    () => {
        "UPDATE cruster_messages SET \
            attempts = CASE WHEN attempts >= $2 THEN attempts ELSE attempts + 1 END, \
            dead_lettered = (attempts >= $2), \
            dead_lettered_at_ns = CASE WHEN attempts >= $2 THEN $3 ELSE dead_lettered_at_ns END, \
            last_error = CASE WHEN attempts >= $2 THEN $4 ELSE last_error END "
    };
}
pub(crate) use start_attempt_set;

/// Statements both dialects accept as written.
pub(crate) mod portable {
    // ---- message storage ---------------------------------------------------------------

    /// Inserts a request unless its id, or its address + dedupe key, is taken. A final
    /// reply stored before the request (by another runner) marks it processed at once.
    /// Returns one row when inserted, none on conflict.
    pub(crate) const INSERT_REQUEST: &str = "\
        INSERT INTO cruster_messages (request_id, shard, entity_type, entity_id, tag, payload, \
            persisted, uninterruptible, streaming, expects_reply, deliver_at_ns, dedupe_key, \
            trace, processed) \
        SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
            EXISTS (SELECT 1 FROM cruster_replies WHERE request_id = $1 AND is_final) \
        WHERE TRUE \
        ON CONFLICT DO NOTHING \
        RETURNING request_id";

    /// The request a conflicting save collided with (same id first, else same address +
    /// dedupe key), with its final reply if any.
    pub(crate) const FIND_DUPLICATE: &str = "\
        SELECT m.request_id, r.body AS final_reply \
        FROM cruster_messages m \
        LEFT JOIN cruster_replies r ON r.request_id = m.request_id AND r.is_final \
        WHERE m.request_id = $1 \
           OR (m.entity_type = $2 AND m.entity_id = $3 AND m.shard = $4 AND m.dedupe_key = $5) \
        ORDER BY CASE WHEN m.request_id = $1 THEN 0 ELSE 1 END \
        LIMIT 1";

    /// Stores a reply; the first one stored under a key wins. The trigger
    /// `cruster_final_reply_marks_processed` marks the request of a final reply processed.
    pub(crate) const INSERT_REPLY: &str = "\
        INSERT INTO cruster_replies (request_id, is_final, sequence, body) \
        VALUES ($1, $2, $3, $4) \
        ON CONFLICT DO NOTHING";

    /// Chunks in sequence order, then the final reply.
    pub(crate) const REPLIES_FOR: &str = "\
        SELECT body FROM cruster_replies WHERE request_id = $1 ORDER BY is_final, sequence";

    pub(crate) const REQUEST_BY_ID: &str = concat!(
        "SELECT ",
        super::request_columns!(),
        " FROM cruster_messages WHERE request_id = $1"
    );

    pub(crate) const MARK_PROCESSED: &str = "\
        UPDATE cruster_messages SET processed = TRUE WHERE request_id = $1 AND NOT processed";

    /// Records a failed attempt of a pending request: counts it (`$5` is 1, or 0 when it
    /// was counted when it started), dead-letters at the limit `$3` (at `$4`), else makes
    /// it not due before `$6`; in one statement (the `SET` expressions read the row's old
    /// values). No row: not pending.
    pub(crate) const RECORD_FAILED_ATTEMPT: &str = concat!(
        "UPDATE cruster_messages SET \
            attempts = attempts + $5, \
            last_error = $2, \
            dead_lettered = (attempts + $5 >= $3), \
            dead_lettered_at_ns = CASE WHEN attempts + $5 >= $3 THEN $4 ELSE NULL END, \
            retry_at_ns = CASE WHEN attempts + $5 >= $3 THEN retry_at_ns ELSE $6 END \
         WHERE request_id = $1 AND ",
        super::pending!(),
        " RETURNING attempts, dead_lettered"
    );

    /// Dead-letters a pending row that cannot be decoded, so it stops occupying the poll.
    pub(crate) const QUARANTINE_UNDECODABLE: &str = concat!(
        "UPDATE cruster_messages SET dead_lettered = TRUE, dead_lettered_at_ns = $2, \
            last_error = $3 \
         WHERE request_id = $1 AND ",
        super::pending!()
    );

    pub(crate) const DEAD_LETTERS: &str = concat!(
        "SELECT ",
        super::request_columns!(),
        ", last_error, dead_lettered_at_ns FROM cruster_messages \
         WHERE dead_lettered ORDER BY request_id LIMIT $1"
    );

    pub(crate) const CLEAR_ADDRESS_REPLIES: &str = "\
        DELETE FROM cruster_replies WHERE request_id IN ( \
            SELECT request_id FROM cruster_messages \
            WHERE entity_type = $1 AND entity_id = $2 AND shard = $3)";

    pub(crate) const CLEAR_ADDRESS_REQUESTS: &str = "\
        DELETE FROM cruster_messages WHERE entity_type = $1 AND entity_id = $2 AND shard = $3";

    /// Pending (retrying ones with at least one attempt among them) and dead-lettered
    /// requests per shard and entity type. Reads the pending rows through the partial
    /// index `cruster_messages_poll` and the dead ones through
    /// `cruster_messages_dead_letters`, never the processed history.
    pub(crate) const MESSAGE_COUNTS: &str = "\
        SELECT shard, entity_type, SUM(pending) AS pending, SUM(retrying) AS retrying, \
            SUM(dead) AS dead \
        FROM ( \
            SELECT shard, entity_type, 1 AS pending, \
                CASE WHEN attempts > 0 THEN 1 ELSE 0 END AS retrying, 0 AS dead \
            FROM cruster_messages WHERE NOT processed AND NOT dead_lettered \
            UNION ALL \
            SELECT shard, entity_type, 0, 0, 1 FROM cruster_messages WHERE dead_lettered \
        ) AS c \
        GROUP BY shard, entity_type";

    // ---- workflow journal ----------------------------------------------------------------

    pub(crate) const JOURNAL_ENTRY: &str = "\
        SELECT execution_id, sequence, activity, result, attempts, recorded_at_ns \
        FROM cruster_journal WHERE execution_id = $1 AND sequence = $2 AND activity = $3";

    /// The entry at one position, whatever its name.
    pub(crate) const JOURNAL_ENTRY_AT: &str = "\
        SELECT execution_id, sequence, activity, result, attempts, recorded_at_ns \
        FROM cruster_journal WHERE execution_id = $1 AND sequence = $2";

    pub(crate) const JOURNAL: &str = "\
        SELECT execution_id, sequence, activity, result, attempts, recorded_at_ns \
        FROM cruster_journal WHERE execution_id = $1 ORDER BY sequence";

    /// Stores an entry unless one exists at its position (zero rows affected then).
    pub(crate) const INSERT_JOURNAL_ENTRY: &str = "\
        INSERT INTO cruster_journal (execution_id, sequence, activity, result, attempts, \
            recorded_at_ns) \
        VALUES ($1, $2, $3, $4, $5, $6) \
        ON CONFLICT DO NOTHING";

    pub(crate) const DELETE_JOURNAL: &str = "DELETE FROM cruster_journal WHERE execution_id = $1";

    pub(crate) const PUT_VALUE: &str = "\
        INSERT INTO cruster_activity_values (key, value) VALUES ($1, $2) \
        ON CONFLICT (key) DO UPDATE SET value = excluded.value";

    pub(crate) const GET_VALUE: &str = "SELECT value FROM cruster_activity_values WHERE key = $1";

    /// Marks the point a chained activity's failure rolls back to (see
    /// `ActivityTransaction::carry_on`); a later mark of the same name hides the earlier one.
    pub(crate) const MARK_ACTIVITY: &str = "SAVEPOINT cruster_activity";

    /// Discards what the current chained activity wrote, keeping what the chain carried.
    pub(crate) const ROLLBACK_TO_ACTIVITY_MARK: &str = "ROLLBACK TO SAVEPOINT cruster_activity";

    // ---- workflow engine -----------------------------------------------------------------

    /// Never sets `cancel_requested_at_ns`: only `REQUEST_CANCELLATION` does.
    pub(crate) const UPSERT_EXECUTION: &str = super::upsert_execution!();

    pub(crate) const EXECUTION: &str = "\
        SELECT execution_id, workflow, status, suspended_until_ns, request, result, \
            created_at_ns, updated_at_ns, attempts, progress_mark, last_error, \
            cancel_requested_at_ns \
        FROM cruster_executions WHERE execution_id = $1";

    /// `$1` workflow and `$2` status are optional filters (NULL matches everything).
    pub(crate) const LIST_EXECUTIONS: &str = "\
        SELECT execution_id, workflow, status, suspended_until_ns, request, result, \
            created_at_ns, updated_at_ns, attempts, progress_mark, last_error, \
            cancel_requested_at_ns \
        FROM cruster_executions \
        WHERE ($1 IS NULL OR workflow = $1) AND ($2 IS NULL OR status = $2) \
        ORDER BY created_at_ns, execution_id \
        LIMIT $3";

    /// Records the first cancellation request `$2` of an execution that has not finished;
    /// the caller reads the row back with `EXECUTION`.
    pub(crate) const REQUEST_CANCELLATION: &str = "\
        UPDATE cruster_executions SET cancel_requested_at_ns = $2 \
        WHERE execution_id = $1 AND cancel_requested_at_ns IS NULL \
            AND status NOT IN ('completed', 'failed', 'cancelled')";

    pub(crate) const CANCELLATION_REQUESTED: &str = "\
        SELECT cancel_requested_at_ns FROM cruster_executions WHERE execution_id = $1";

    /// A second schedule of the same key keeps the first.
    pub(crate) const SCHEDULE_TIMER: &str = "\
        INSERT INTO cruster_timers (execution_id, timer_key, shard, entity_type, entity_id, \
            fire_at_ns, completed) \
        VALUES ($1, $2, $3, $4, $5, $6, $7) \
        ON CONFLICT DO NOTHING";

    pub(crate) const TIMER: &str = "\
        SELECT execution_id, timer_key, shard, entity_type, entity_id, fire_at_ns, completed \
        FROM cruster_timers WHERE execution_id = $1 AND timer_key = $2";

    pub(crate) const DUE_TIMERS: &str = "\
        SELECT execution_id, timer_key, shard, entity_type, entity_id, fire_at_ns, completed \
        FROM cruster_timers \
        WHERE NOT completed AND fire_at_ns <= $1 \
        ORDER BY fire_at_ns, execution_id, timer_key \
        LIMIT $2";

    pub(crate) const COMPLETE_TIMER: &str = "\
        UPDATE cruster_timers SET completed = TRUE \
        WHERE execution_id = $1 AND timer_key = $2 AND NOT completed";

    /// Retention: at most `$2` finished executions last updated at or before `$1`, oldest
    /// first, read through the partial index `cruster_executions_finished`.
    pub(crate) const FINISHED_EXECUTIONS_BEFORE: &str = "\
        SELECT execution_id FROM cruster_executions \
        WHERE status IN ('completed', 'failed', 'cancelled') AND updated_at_ns <= $1 \
        ORDER BY updated_at_ns, execution_id \
        LIMIT $2";

    /// Retention: deletes at most `$2` fired timers with `fire_at` at or before `$1` whose
    /// execution has finished or is gone (found through the partial index
    /// `cruster_timers_fired`).
    pub(crate) const DELETE_FIRED_TIMERS_BEFORE: &str = "\
        DELETE FROM cruster_timers WHERE (execution_id, timer_key) IN ( \
            SELECT t.execution_id, t.timer_key FROM cruster_timers AS t \
            WHERE t.completed AND t.fire_at_ns <= $1 \
              AND NOT EXISTS (SELECT 1 FROM cruster_executions AS e \
                  WHERE e.execution_id = t.execution_id \
                    AND e.status NOT IN ('completed', 'failed', 'cancelled')) \
            LIMIT $2)";

    /// Write-once: zero rows affected when already resolved.
    pub(crate) const RESOLVE_DEFERRED: &str = "\
        INSERT INTO cruster_deferred (execution_id, name, value) VALUES ($1, $2, $3) \
        ON CONFLICT DO NOTHING";

    pub(crate) const DEFERRED: &str = "\
        SELECT value FROM cruster_deferred WHERE execution_id = $1 AND name = $2";
}
