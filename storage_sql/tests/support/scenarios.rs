//! Scenarios both dialects run, beyond the ports' conformance suites.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use cruster_message_storage::{AttemptFailure, FailedAttempt, MessageStorage};
use cruster_storage_sql::{SqlMessageStorage, SqlPool, SqlWorkflowEngine, SqlWorkflowStorage};
use cruster_types::{
    ClusterError, EntityAddress, EntityId, EntityType, EnvelopeRequest, ExitResult, Reply,
    ReplyChunk, ReplyWithExit, ShardId, Snowflake, TraceContext,
};
use cruster_workflow_storage::{
    ActivityKey, ActivityTransaction, CommitOutcome, DurableTimer, ExecutionRecord,
    ExecutionStatus, JournalEntry, WorkflowEngine, WorkflowStorage,
};

use super::{Dialect, TestDatabase};

fn t0() -> DateTime<Utc> {
    // Deliberately not whole milliseconds: SQL backends keep nanoseconds.
    DateTime::from_timestamp_nanos(1_900_000_000_123_456_789)
}

fn shard() -> ShardId {
    ShardId::new("scenario", 1)
}

fn address(entity_id: &str) -> EntityAddress {
    EntityAddress {
        shard_id: shard(),
        entity_type: EntityType::new("Scenario"),
        entity_id: EntityId::new(entity_id),
    }
}

fn request(id: i64) -> EnvelopeRequest {
    let mut envelope = EnvelopeRequest::new(
        Snowflake(id),
        address("e-1"),
        "scenario",
        Bytes::from(format!("payload {id}")),
    );
    envelope.persisted = true;
    envelope
}

fn final_reply(id: i64, text: &str) -> ReplyWithExit {
    ReplyWithExit {
        request_id: Snowflake(id),
        exit: ExitResult::Success(Bytes::from(text.to_owned())),
    }
}

fn key(name: &str, sequence: u32) -> ActivityKey {
    ActivityKey {
        name: name.to_owned(),
        sequence,
    }
}

fn entry(execution_id: &str, key: &ActivityKey, text: &str) -> JournalEntry {
    JournalEntry {
        execution_id: execution_id.to_owned(),
        key: key.clone(),
        result: ExitResult::Success(Bytes::from(text.to_owned())),
        attempts: 1,
        recorded_at: t0(),
    }
}

async fn pending_ids(storage: &dyn MessageStorage) -> Vec<i64> {
    storage
        .unprocessed(&[shard()], t0() + Duration::days(365), 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.envelope.request_id.0)
        .collect()
}

/// Runs one statement of the user's own inside an activity transaction, as `self.tx` will.
async fn run_in_activity(dialect: Dialect, tx: &mut dyn ActivityTransaction, sql: &'static str) {
    match dialect {
        Dialect::Postgres => {
            assert!(cruster_storage_sql::sqlite_transaction(tx).is_none());
            let pg = cruster_storage_sql::postgres_transaction(tx).expect(
                "a PostgreSQL activity transaction downcasts to sqlx::Transaction<Postgres>",
            );
            sqlx::query(sql).execute(&mut **pg).await.unwrap();
        }
        Dialect::Sqlite => {
            assert!(cruster_storage_sql::postgres_transaction(tx).is_none());
            let lite = cruster_storage_sql::sqlite_transaction(tx)
                .expect("a SQLite activity transaction downcasts to sqlx::Transaction<Sqlite>");
            sqlx::query(sql).execute(&mut **lite).await.unwrap();
        }
    }
}

async fn balances(db: &TestDatabase, pool: &SqlPool) -> (i64, i64) {
    (
        db.fetch_i64(pool, "SELECT balance FROM accounts WHERE id = 1")
            .await,
        db.fetch_i64(pool, "SELECT balance FROM accounts WHERE id = 2")
            .await,
    )
}

async fn create_accounts(db: &TestDatabase, pool: &SqlPool) {
    db.execute(
        pool,
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL); \
         INSERT INTO accounts (id, balance) VALUES (1, 100), (2, 0);",
    )
    .await;
}

const TRANSFER_OUT: &str = "UPDATE accounts SET balance = balance - 10 WHERE id = 1";
const TRANSFER_IN: &str = "UPDATE accounts SET balance = balance + 10 WHERE id = 2";

pub async fn everything_written_survives_reopening_the_database(db: &TestDatabase) {
    let first = db.migrated().await;
    let messages = SqlMessageStorage::from_pool(first.clone());
    let journal = SqlWorkflowStorage::from_pool(first.clone());
    let engine = SqlWorkflowEngine::from_pool(first.clone());

    let mut scheduled = request(1);
    scheduled.deliver_at = Some(t0());
    scheduled.dedupe_key = Some("once".into());
    scheduled.uninterruptible = true;
    scheduled.trace = TraceContext(vec![("traceparent".into(), "00-abc-def-01".into())]);
    let mut streamed = request(2);
    streamed.streaming = true;
    messages.save_request(&scheduled).await.unwrap();
    messages.save_request(&streamed).await.unwrap();
    let chunk = Reply::Chunk(ReplyChunk {
        request_id: Snowflake(2),
        sequence: 0,
        values: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
    });
    let last = Reply::WithExit(final_reply(2, "done"));
    messages.save_reply(&chunk).await.unwrap();
    messages.save_reply(&last).await.unwrap();
    assert_eq!(
        messages
            .record_failed_attempt(
                Snowflake(1),
                &AttemptFailure {
                    reason: "busy",
                    max_attempts: 5,
                    retry_at: t0(),
                    counted: false,
                }
            )
            .await
            .unwrap(),
        FailedAttempt::WillRetry { attempts: 1 }
    );

    let activity = key("charge", 0);
    let mut tx = journal.begin_activity("exec-1", &activity).await.unwrap();
    tx.put("charge/exec-1", Bytes::from_static(b"charged"))
        .await
        .unwrap();
    let recorded = entry("exec-1", &activity, "ok");
    assert_eq!(
        tx.commit(&recorded).await.unwrap(),
        CommitOutcome::Committed
    );

    let execution = ExecutionRecord {
        execution_id: "exec-1".into(),
        workflow: "Order".into(),
        status: ExecutionStatus::Suspended {
            until: Some(t0() + Duration::seconds(30)),
        },
        request: Bytes::from_static(b"request"),
        result: None,
        created_at: t0(),
        updated_at: t0() + Duration::nanoseconds(1),
        attempts: 2,
        progress_mark: 1,
        last_error: Some(cruster_types::ClusterError::handler("it panicked").to_wire()),
        cancel_requested_at: None,
    };
    engine.upsert_execution(&execution).await.unwrap();
    let timer = DurableTimer {
        execution_id: "exec-1".into(),
        timer_key: "sleep/0".into(),
        address: address("exec-1"),
        fire_at: t0() + Duration::seconds(30),
        completed: false,
    };
    engine.schedule_timer(&timer).await.unwrap();
    let resolved = ExitResult::failure(&ClusterError::handler("declined"));
    assert!(engine
        .resolve_deferred("exec-1", "approval", &resolved)
        .await
        .unwrap());
    first.close().await;
    drop((messages, journal, engine, first));

    // A new process: a new pool, migrations run again (a no-op), everything still there.
    let second = db.migrated().await;
    let messages = SqlMessageStorage::from_pool(second.clone());
    let journal = SqlWorkflowStorage::from_pool(second.clone());
    let engine = SqlWorkflowEngine::from_pool(second.clone());

    let stored = messages.request(Snowflake(1)).await.unwrap().unwrap();
    assert_eq!(stored.envelope, scheduled);
    assert_eq!(stored.attempts, 1);
    assert!(!stored.processed && !stored.dead_lettered);
    assert_eq!(
        pending_ids(&messages).await,
        vec![1],
        "request 2 has its final reply"
    );
    assert_eq!(
        messages.replies_for(Snowflake(2)).await.unwrap(),
        vec![chunk, last]
    );
    assert!(matches!(
        messages.save_request(&request(1)).await.unwrap(),
        cruster_message_storage::SaveResult::Duplicate {
            original_request_id: Snowflake(1),
            reply: None
        }
    ));

    assert_eq!(journal.journal("exec-1").await.unwrap(), vec![recorded]);
    assert_eq!(
        journal.get_value("charge/exec-1").await.unwrap(),
        Some(Bytes::from_static(b"charged"))
    );
    assert_eq!(engine.execution("exec-1").await.unwrap(), Some(execution));
    assert_eq!(
        engine.timer("exec-1", "sleep/0").await.unwrap(),
        Some(timer.clone())
    );
    assert_eq!(
        engine
            .due_timers(t0() + Duration::minutes(1), 10)
            .await
            .unwrap(),
        vec![timer]
    );
    assert_eq!(
        engine.deferred("exec-1", "approval").await.unwrap(),
        Some(resolved)
    );
    second.close().await;
}

pub async fn migrating_twice_changes_nothing(db: &TestDatabase) {
    let pool = db.migrated().await;
    let messages = SqlMessageStorage::from_pool(pool.clone());
    messages.save_request(&request(1)).await.unwrap();

    pool.migrate().await.unwrap();
    messages.migrate().await.unwrap();
    SqlWorkflowStorage::from_pool(pool.clone())
        .migrate()
        .await
        .unwrap();
    SqlWorkflowEngine::from_pool(pool.clone())
        .migrate()
        .await
        .unwrap();

    assert_eq!(
        db.fetch_i64(&pool, "SELECT COUNT(*) FROM _cruster_migrations")
            .await,
        8,
        "each of the eight migration files applied once"
    );
    assert_eq!(pending_ids(&messages).await, vec![1]);
    pool.close().await;
}

/// Migrations 7 (retention) and 8 on a database of version 6: a request processed before it gets
/// the upgrade instant as its processing time (kept one full retention from the upgrade,
/// then deleted like any other), pending requests get none, and requests processed
/// afterwards are stamped by the triggers.
pub async fn migrating_to_retention_stamps_processed_requests_with_the_upgrade_instant(
    db: &TestDatabase,
) {
    let pool = db.migrated().await;
    let back_to_version_6 = match db.dialect {
        Dialect::Postgres => {
            "DROP TRIGGER cruster_final_replies_mark_processed ON cruster_replies; \
             DROP FUNCTION cruster_mark_requests_processed(); \
             CREATE FUNCTION cruster_mark_request_processed() RETURNS trigger \
                 LANGUAGE plpgsql AS $$ BEGIN \
                     UPDATE cruster_messages SET processed = TRUE \
                     WHERE request_id = NEW.request_id AND NOT processed; \
                     RETURN NULL; \
                 END $$; \
             CREATE TRIGGER cruster_final_reply_marks_processed AFTER INSERT ON cruster_replies \
                 FOR EACH ROW WHEN (NEW.is_final) \
                 EXECUTE FUNCTION cruster_mark_request_processed(); \
             DELETE FROM _cruster_migrations WHERE version = 8; \
             DROP TRIGGER cruster_processed_at_on_insert ON cruster_messages; \
             DROP TRIGGER cruster_processed_at_on_update ON cruster_messages; \
             DROP FUNCTION cruster_stamp_processed_at(); \
             DROP INDEX cruster_messages_processed; \
             DROP INDEX cruster_executions_finished; \
             DROP INDEX cruster_timers_fired; \
             ALTER TABLE cruster_messages DROP COLUMN processed_at_ns; \
             DELETE FROM _cruster_migrations WHERE version = 7;"
        }
        Dialect::Sqlite => {
            "DROP TRIGGER cruster_final_reply_marks_processed; \
             CREATE TRIGGER cruster_final_reply_marks_processed AFTER INSERT ON cruster_replies \
                 FOR EACH ROW WHEN NEW.is_final BEGIN \
                     UPDATE cruster_messages SET processed = TRUE \
                     WHERE request_id = NEW.request_id AND NOT processed; \
                 END; \
             DELETE FROM _cruster_migrations WHERE version = 8; \
             DROP TRIGGER cruster_processed_at_on_insert; \
             DROP TRIGGER cruster_processed_at_on_update; \
             DROP INDEX cruster_messages_processed; \
             DROP INDEX cruster_executions_finished; \
             DROP INDEX cruster_timers_fired; \
             ALTER TABLE cruster_messages DROP COLUMN processed_at_ns; \
             DELETE FROM _cruster_migrations WHERE version = 7;"
        }
    };
    db.execute(&pool, back_to_version_6).await;
    let messages = SqlMessageStorage::from_pool(pool.clone());
    messages.save_request(&request(1)).await.unwrap();
    messages
        .save_reply(&Reply::WithExit(final_reply(1, "old answer")))
        .await
        .unwrap();
    messages.save_request(&request(2)).await.unwrap();

    let before_upgrade = Utc::now() - Duration::seconds(1);
    pool.migrate().await.unwrap();
    assert_eq!(
        messages
            .delete_processed_before(&[shard()], before_upgrade, 100)
            .await
            .unwrap(),
        0,
        "a request processed before the upgrade counts as processed at the upgrade"
    );
    messages.save_request(&request(3)).await.unwrap();
    messages.mark_processed(Snowflake(3)).await.unwrap();
    let later = Utc::now() + Duration::minutes(1);
    assert_eq!(
        messages
            .delete_processed_before(&[shard()], later, 100)
            .await
            .unwrap(),
        2,
        "the old processed request and the one processed after the upgrade"
    );
    assert_eq!(pending_ids(&messages).await, vec![2], "pending stays");
    pool.close().await;
}

/// Migration 5 (journal unique by position) on a journal that holds two entries at one
/// position, as version 4 allowed: the entry recorded first stays, the other is moved to
/// `cruster_journal_displaced`, and the position is unique from then on.
pub async fn migrating_a_journal_with_two_entries_at_one_position_keeps_the_first(
    db: &TestDatabase,
) {
    let pool = db.migrated().await;
    // Back to the version-4 journal (keyed by execution, sequence and activity).
    let back_to_version_4 = match db.dialect {
        Dialect::Postgres => {
            "DROP TABLE cruster_journal_displaced; \
             ALTER TABLE cruster_journal DROP CONSTRAINT cruster_journal_pkey; \
             ALTER TABLE cruster_journal ADD PRIMARY KEY (execution_id, sequence, activity); \
             DELETE FROM _cruster_migrations WHERE version = 5;"
        }
        Dialect::Sqlite => {
            "DROP TABLE cruster_journal_displaced; \
             DROP TABLE cruster_journal; \
             CREATE TABLE cruster_journal (execution_id TEXT NOT NULL, sequence INTEGER NOT NULL, \
                 activity TEXT NOT NULL, result BLOB NOT NULL, attempts INTEGER NOT NULL, \
                 recorded_at_ns INTEGER NOT NULL, \
                 PRIMARY KEY (execution_id, sequence, activity)) STRICT; \
             DELETE FROM _cruster_migrations WHERE version = 5;"
        }
    };
    db.execute(&pool, back_to_version_4).await;
    let journal = SqlWorkflowStorage::from_pool(pool.clone());
    let first = JournalEntry {
        execution_id: "exec-dup".into(),
        key: ActivityKey {
            name: "reserve".into(),
            sequence: 0,
        },
        result: ExitResult::Success(Bytes::from_static(b"first")),
        attempts: 1,
        recorded_at: t0(),
    };
    let later = JournalEntry {
        key: ActivityKey {
            name: "charge".into(),
            sequence: 0,
        },
        result: ExitResult::Success(Bytes::from_static(b"later")),
        recorded_at: t0() + Duration::seconds(1),
        ..first.clone()
    };
    let next = JournalEntry {
        key: ActivityKey {
            name: "ship".into(),
            sequence: 1,
        },
        recorded_at: t0() + Duration::seconds(2),
        ..first.clone()
    };
    // Recorded later, committed first: age decides, not commit order.
    for entry in [&later, &first, &next] {
        let tx = journal
            .begin_activity(&entry.execution_id, &entry.key)
            .await
            .unwrap();
        assert_eq!(tx.commit(entry).await.unwrap(), CommitOutcome::Committed);
    }
    assert_eq!(journal.journal("exec-dup").await.unwrap().len(), 3);

    pool.migrate().await.unwrap();
    assert_eq!(
        journal.journal("exec-dup").await.unwrap(),
        vec![first.clone(), next]
    );
    assert_eq!(
        db.fetch_i64(
            &pool,
            "SELECT COUNT(*) FROM cruster_journal_displaced \
             WHERE execution_id = 'exec-dup' AND sequence = 0 AND activity = 'charge'"
        )
        .await,
        1,
        "the displaced entry is kept for inspection"
    );
    let tx = journal
        .begin_activity(&later.execution_id, &later.key)
        .await
        .unwrap();
    assert_eq!(
        tx.commit(&later).await.unwrap(),
        CommitOutcome::AlreadyRecorded(first),
        "the position is unique after the migration"
    );
    pool.close().await;
}

pub async fn schema_from_a_newer_version_is_refused(db: &TestDatabase) {
    let pool = db.migrated().await;
    db.execute(
        &pool,
        &format!(
            "INSERT INTO _cruster_migrations (version, description, success, checksum, \
             execution_time) VALUES (9999, 'from a newer cruster', TRUE, {}, 0)",
            db.blob_literal("00")
        ),
    )
    .await;
    let err = SqlMessageStorage::from_pool(pool.clone())
        .migrate()
        .await
        .unwrap_err();
    match &err {
        ClusterError::PersistenceError { reason, source } => {
            assert!(reason.contains("newer cruster"), "reason: {reason}");
            assert!(reason.contains("9999"), "reason: {reason}");
            assert!(source.is_some());
        }
        other => panic!("expected a PersistenceError, got {other:?}"),
    }
    pool.close().await;
}

pub async fn undecodable_pending_row_is_dead_lettered_and_the_rest_still_served(db: &TestDatabase) {
    let pool = db.migrated().await;
    let messages = SqlMessageStorage::from_pool(pool.clone());
    let mut unreadable_payload = request(4);
    unreadable_payload.payload = Bytes::from_static(&[0xc1, 0xff, 0x00]);
    for envelope in [
        request(1),
        request(2),
        request(3),
        unreadable_payload.clone(),
    ] {
        messages.save_request(&envelope).await.unwrap();
    }
    // 0xC1 is never valid MessagePack: the trace context of request 2 cannot be decoded.
    db.execute(
        &pool,
        &format!(
            "UPDATE cruster_messages SET trace = {} WHERE request_id = 2",
            db.blob_literal("c1")
        ),
    )
    .await;

    // The storage never interprets payloads: request 4 is served as stored, and the runtime
    // (whose handler cannot decode it) retries and dead-letters it like any failure.
    assert_eq!(pending_ids(&messages).await, vec![1, 3, 4]);
    let served = messages.request(Snowflake(4)).await.unwrap().unwrap();
    assert_eq!(served.envelope, unreadable_payload);

    assert_eq!(
        db.fetch_i64(
            &pool,
            "SELECT COUNT(*) FROM cruster_messages WHERE request_id = 2 AND dead_lettered"
        )
        .await,
        1,
        "the undecodable row is dead-lettered"
    );
    assert_eq!(
        db.fetch_i64(
            &pool,
            "SELECT COUNT(*) FROM cruster_messages WHERE request_id = 2 \
             AND last_error LIKE '%cannot be decoded%'"
        )
        .await,
        1,
        "its last error says why"
    );
    // Listing dead letters still works; the undecodable one is left out (and logged).
    assert!(messages.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(
        pending_ids(&messages).await,
        vec![1, 3, 4],
        "the next poll is clean"
    );
    pool.close().await;
}

pub async fn undecodable_rows_read_by_id_are_malformed_not_panics(db: &TestDatabase) {
    let pool = db.migrated().await;
    let messages = SqlMessageStorage::from_pool(pool.clone());
    let journal = SqlWorkflowStorage::from_pool(pool.clone());
    let engine = SqlWorkflowEngine::from_pool(pool.clone());

    messages.save_request(&request(1)).await.unwrap();
    messages
        .save_reply(&Reply::WithExit(final_reply(1, "done")))
        .await
        .unwrap();
    let tx = journal
        .begin_activity("exec-1", &key("a", 0))
        .await
        .unwrap();
    tx.commit(&entry("exec-1", &key("a", 0), "ok"))
        .await
        .unwrap();
    let timer = DurableTimer {
        execution_id: "exec-1".into(),
        timer_key: "sleep/0".into(),
        address: address("exec-1"),
        fire_at: t0(),
        completed: false,
    };
    engine.schedule_timer(&timer).await.unwrap();
    engine
        .upsert_execution(&ExecutionRecord {
            execution_id: "exec-1".into(),
            workflow: "Order".into(),
            status: ExecutionStatus::Running,
            request: Bytes::new(),
            result: None,
            created_at: t0(),
            updated_at: t0(),
            attempts: 0,
            progress_mark: 0,
            last_error: None,
            cancel_requested_at: None,
        })
        .await
        .unwrap();

    let garbage = db.blob_literal("c1");
    db.execute(
        &pool,
        &format!(
            "UPDATE cruster_messages SET trace = {garbage}; \
             UPDATE cruster_replies SET body = {garbage}; \
             UPDATE cruster_journal SET result = {garbage}; \
             UPDATE cruster_timers SET shard = 'no shard here'; \
             UPDATE cruster_executions SET status = 'exploded';"
        ),
    )
    .await;

    let malformed = |what: &str, err: ClusterError| {
        assert!(
            matches!(err, ClusterError::MalformedMessage { .. }),
            "{what}: expected MalformedMessage, got {err:?}"
        );
    };
    malformed("request", messages.request(Snowflake(1)).await.unwrap_err());
    malformed(
        "replies",
        messages.replies_for(Snowflake(1)).await.unwrap_err(),
    );
    malformed(
        "duplicate with its reply",
        messages.save_request(&request(1)).await.unwrap_err(),
    );
    malformed(
        "journal entry",
        journal
            .journal_entry("exec-1", &key("a", 0))
            .await
            .unwrap_err(),
    );
    malformed("journal", journal.journal("exec-1").await.unwrap_err());
    malformed(
        "timer",
        engine.timer("exec-1", "sleep/0").await.unwrap_err(),
    );
    malformed("due timers", engine.due_timers(t0(), 10).await.unwrap_err());
    malformed("execution", engine.execution("exec-1").await.unwrap_err());
    pool.close().await;
}

pub async fn activity_sql_commits_with_its_journal_entry(db: &TestDatabase) {
    let pool = db.migrated().await;
    create_accounts(db, &pool).await;
    let journal = SqlWorkflowStorage::from_pool(pool.clone());

    let activity = key("transfer_funds", 0);
    let mut tx = journal.begin_activity("exec-1", &activity).await.unwrap();
    run_in_activity(db.dialect, &mut *tx, TRANSFER_OUT).await;
    run_in_activity(db.dialect, &mut *tx, TRANSFER_IN).await;
    // Nothing is visible outside the transaction before it commits.
    assert_eq!(balances(db, &pool).await, (100, 0));
    assert_eq!(journal.journal("exec-1").await.unwrap(), vec![]);

    let recorded = entry("exec-1", &activity, "moved 10");
    assert_eq!(
        tx.commit(&recorded).await.unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(balances(db, &pool).await, (90, 10));
    assert_eq!(journal.journal("exec-1").await.unwrap(), vec![recorded]);
    pool.close().await;
}

pub async fn activity_sql_is_discarded_by_rollback_and_by_a_lost_race(db: &TestDatabase) {
    let pool = db.migrated().await;
    create_accounts(db, &pool).await;
    let journal = SqlWorkflowStorage::from_pool(pool.clone());
    let activity = key("transfer_funds", 0);

    let mut rolled_back = journal.begin_activity("exec-1", &activity).await.unwrap();
    run_in_activity(db.dialect, &mut *rolled_back, TRANSFER_OUT).await;
    rolled_back.rollback().await.unwrap();
    assert_eq!(balances(db, &pool).await, (100, 0), "after a rollback");

    let mut dropped = journal.begin_activity("exec-1", &activity).await.unwrap();
    run_in_activity(db.dialect, &mut *dropped, TRANSFER_OUT).await;
    drop(dropped);
    assert_eq!(
        balances(db, &pool).await,
        (100, 0),
        "after a dropped transaction"
    );

    // Another runner records the activity first; this one's writes must not apply.
    let winner = entry("exec-1", &activity, "moved by the other runner");
    let other = journal.begin_activity("exec-1", &activity).await.unwrap();
    assert_eq!(
        other.commit(&winner).await.unwrap(),
        CommitOutcome::Committed
    );
    let mut late = journal.begin_activity("exec-1", &activity).await.unwrap();
    run_in_activity(db.dialect, &mut *late, TRANSFER_OUT).await;
    run_in_activity(db.dialect, &mut *late, TRANSFER_IN).await;
    assert_eq!(
        late.commit(&entry("exec-1", &activity, "moved twice"))
            .await
            .unwrap(),
        CommitOutcome::AlreadyRecorded(winner.clone())
    );
    assert_eq!(balances(db, &pool).await, (100, 0), "after losing the race");
    assert_eq!(journal.journal("exec-1").await.unwrap(), vec![winner]);
    pool.close().await;
}

pub async fn attempt_counts_from_two_pools_are_never_lost(db: &TestDatabase) {
    const PER_RUNNER: u32 = 25;
    let runners = [
        Arc::new(SqlMessageStorage::from_pool(db.migrated().await)),
        Arc::new(SqlMessageStorage::from_pool(db.open().await)),
    ];
    runners[0].save_request(&request(1)).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for runner in &runners {
        for _ in 0..PER_RUNNER {
            let runner = Arc::clone(runner);
            tasks.spawn(async move {
                runner
                    .record_failed_attempt(
                        Snowflake(1),
                        &AttemptFailure {
                            reason: "handler failed",
                            max_attempts: 1_000,
                            retry_at: Utc::now(),
                            counted: false,
                        },
                    )
                    .await
                    .unwrap()
            });
        }
    }
    let mut counts: Vec<u32> = tasks
        .join_all()
        .await
        .into_iter()
        .map(|answer| match answer {
            FailedAttempt::WillRetry { attempts } => attempts,
            other => panic!("expected WillRetry, got {other:?}"),
        })
        .collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=2 * PER_RUNNER).collect::<Vec<_>>(),
        "each count answered once"
    );
    let stored = runners[1].request(Snowflake(1)).await.unwrap().unwrap();
    assert_eq!(stored.attempts, 2 * PER_RUNNER);
    for runner in &runners {
        runner.pool().close().await;
    }
}

pub async fn final_replies_racing_from_two_pools_keep_the_first(db: &TestDatabase) {
    const PER_RUNNER: i64 = 10;
    let runners = [
        Arc::new(SqlMessageStorage::from_pool(db.migrated().await)),
        Arc::new(SqlMessageStorage::from_pool(db.open().await)),
    ];
    runners[0].save_request(&request(1)).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, runner) in runners.iter().enumerate() {
        for n in 0..PER_RUNNER {
            let runner = Arc::clone(runner);
            let text = format!("runner {index} reply {n}");
            tasks.spawn(async move {
                runner
                    .save_reply(&Reply::WithExit(final_reply(1, &text)))
                    .await
                    .unwrap()
            });
        }
    }
    tasks.join_all().await;
    let replies = runners[0].replies_for(Snowflake(1)).await.unwrap();
    assert_eq!(replies.len(), 1, "one final reply: {replies:?}");
    assert!(
        runners[1]
            .request(Snowflake(1))
            .await
            .unwrap()
            .unwrap()
            .processed
    );
    assert_eq!(pending_ids(&*runners[1]).await, Vec::<i64>::new());
    for runner in &runners {
        runner.pool().close().await;
    }
}

/// `finish_with_reply` stores a finished execution's record and its request's final reply
/// (marking the request processed) together; a second finish keeps the first reply (as
/// `save_reply` does) while the record takes the later write. Engine and message storage
/// on clones of one pool report one location; on two pools, two.
pub async fn finished_execution_is_stored_with_its_reply(db: &TestDatabase) {
    let pool = db.migrated().await;
    let messages = SqlMessageStorage::from_pool(pool.clone());
    let engine = SqlWorkflowEngine::from_pool(pool.clone());
    assert_eq!(engine.location(), messages.location());
    assert!(engine.location().is_some());
    let other_pool = db.open().await;
    assert_ne!(
        SqlWorkflowEngine::from_pool(other_pool.clone()).location(),
        messages.location(),
        "two pools are two locations"
    );

    messages.save_request(&request(7)).await.unwrap();
    let mut record = ExecutionRecord::new("exec-finish", "Checkout", Bytes::from("req"), t0());
    engine.upsert_execution(&record).await.unwrap();
    record.status = ExecutionStatus::Completed;
    record.result = Some(ExitResult::Success(Bytes::from("done")));
    record.updated_at = t0() + Duration::seconds(1);
    engine
        .finish_with_reply(&record, &final_reply(7, "completed"))
        .await
        .unwrap();

    assert_eq!(
        engine.execution("exec-finish").await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(
        messages.replies_for(Snowflake(7)).await.unwrap(),
        vec![Reply::WithExit(final_reply(7, "completed"))]
    );
    assert!(
        messages
            .request(Snowflake(7))
            .await
            .unwrap()
            .unwrap()
            .processed
    );
    assert_eq!(pending_ids(&messages).await, Vec::<i64>::new());

    // Again, as after a redelivery: the first reply stays.
    record.updated_at = t0() + Duration::seconds(2);
    engine
        .finish_with_reply(&record, &final_reply(7, "completed again"))
        .await
        .unwrap();
    assert_eq!(
        messages.replies_for(Snowflake(7)).await.unwrap(),
        vec![Reply::WithExit(final_reply(7, "completed"))]
    );
    assert_eq!(engine.execution("exec-finish").await.unwrap(), Some(record));
    other_pool.close().await;
    pool.close().await;
}

/// Journal-only steps held back together go out with the end of their run in one commit
/// (`append_entries_finishing`): entries, record and reply all, or (a taken position)
/// none of them. Alone, the last entry's taken position answers with the entry holding it;
/// with carried entries it fails. SQLite never holds steps back together: carried entries
/// are `Unsupported`.
pub async fn held_back_steps_are_stored_with_the_end_of_their_run(db: &TestDatabase) {
    let pool = db.migrated().await;
    let messages = SqlMessageStorage::from_pool(pool.clone());
    let engine = SqlWorkflowEngine::from_pool(pool.clone());
    let journal = SqlWorkflowStorage::from_pool(pool.clone());
    let step = |execution_id: &str, name: &str, sequence: u32| JournalEntry {
        execution_id: execution_id.to_owned(),
        key: key(name, sequence),
        result: ExitResult::Success(Bytes::from(format!("{name} done"))),
        attempts: 1,
        recorded_at: t0() + Duration::milliseconds(i64::from(sequence)),
    };
    let finished = |execution_id: &str| {
        let mut record = ExecutionRecord::new(execution_id, "Held", Bytes::from("req"), t0());
        record.status = ExecutionStatus::Completed;
        record.result = Some(ExitResult::Success(Bytes::from("done")));
        record
    };
    let processed = |id: i64| {
        let messages = &messages;
        async move {
            messages
                .request(Snowflake(id))
                .await
                .unwrap()
                .unwrap()
                .processed
        }
    };

    // The last step alone, with the end.
    messages.save_request(&request(21)).await.unwrap();
    let only = step("exec-held-1", "notify", 0);
    let outcome = journal
        .append_entries_finishing(&[], &only, &finished("exec-held-1"), &final_reply(21, "ok"))
        .await
        .unwrap();
    assert_eq!(outcome, CommitOutcome::Committed);
    assert_eq!(
        journal.journal("exec-held-1").await.unwrap(),
        vec![only.clone()]
    );
    assert_eq!(
        engine.execution("exec-held-1").await.unwrap(),
        Some(finished("exec-held-1"))
    );
    assert_eq!(
        messages.replies_for(Snowflake(21)).await.unwrap(),
        vec![Reply::WithExit(final_reply(21, "ok"))]
    );
    assert!(processed(21).await);

    // Its position taken: nothing applied, the holder returned.
    messages.save_request(&request(22)).await.unwrap();
    let mut running = ExecutionRecord::new("exec-held-1b", "Held", Bytes::from("req"), t0());
    running.status = ExecutionStatus::Running;
    engine.upsert_execution(&running).await.unwrap();
    journal
        .append_entry(&step("exec-held-1b", "notify", 0))
        .await
        .unwrap();
    let outcome = journal
        .append_entries_finishing(
            &[],
            &step("exec-held-1b", "other", 0),
            &finished("exec-held-1b"),
            &final_reply(22, "ok"),
        )
        .await
        .unwrap();
    // Nothing applied: the holder answered, the record and the reply untouched.
    let nothing_applied = async |outcome: CommitOutcome| {
        assert_eq!(
            outcome,
            CommitOutcome::AlreadyRecorded(step("exec-held-1b", "notify", 0))
        );
        assert_eq!(
            engine.execution("exec-held-1b").await.unwrap(),
            Some(running.clone())
        );
        assert!(messages
            .replies_for(Snowflake(22))
            .await
            .unwrap()
            .is_empty());
    };
    nothing_applied(outcome).await;
    assert!(!processed(22).await);

    // The same through an activity's transaction (`commit_finishing`): its staged writes
    // are not applied either.
    let mut tx = journal
        .begin_activity("exec-held-1b", &key("other", 0))
        .await
        .unwrap();
    let support = tx.put("held/staged", Bytes::from("staged")).await;
    let outcome = tx
        .commit_finishing(
            &step("exec-held-1b", "other", 0),
            &finished("exec-held-1b"),
            &final_reply(22, "ok"),
        )
        .await
        .unwrap();
    nothing_applied(outcome).await;
    if support.is_ok() {
        assert_eq!(journal.get_value("held/staged").await.unwrap(), None);
    }

    // Carried steps with the last one and the end.
    messages.save_request(&request(23)).await.unwrap();
    let carried = [step("exec-held-3", "a", 0), step("exec-held-3", "b", 1)];
    let last = step("exec-held-3", "c", 2);
    let outcome = journal
        .append_entries_finishing(
            &carried,
            &last,
            &finished("exec-held-3"),
            &final_reply(23, "ok"),
        )
        .await;
    if db.dialect == Dialect::Sqlite {
        assert!(
            matches!(outcome, Err(ClusterError::Unsupported { .. })),
            "SQLite holds no steps back together, got {outcome:?}"
        );
        assert!(journal.journal("exec-held-3").await.unwrap().is_empty());
        assert!(!processed(23).await);
        pool.close().await;
        return;
    }
    assert_eq!(outcome.unwrap(), CommitOutcome::Committed);
    assert_eq!(
        journal.journal("exec-held-3").await.unwrap(),
        vec![carried[0].clone(), carried[1].clone(), last.clone()]
    );
    assert!(processed(23).await);

    // A taken position among carried steps: nothing at all is applied.
    messages.save_request(&request(24)).await.unwrap();
    let outcome = journal
        .append_entries_finishing(
            &[step("exec-held-3", "c again", 2)],
            &step("exec-held-3", "d", 3),
            &finished("exec-held-3"),
            &final_reply(24, "ok"),
        )
        .await;
    assert!(
        matches!(outcome, Err(ClusterError::PersistenceError { .. })),
        "a taken carried position must fail, not answer {outcome:?}"
    );
    assert_eq!(journal.journal("exec-held-3").await.unwrap().len(), 3);
    assert!(messages
        .replies_for(Snowflake(24))
        .await
        .unwrap()
        .is_empty());
    assert!(!processed(24).await);
    pool.close().await;
}
