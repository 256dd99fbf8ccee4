//! The PostgreSQL backends against every conformance suite and the shared scenarios.
//!
//! Needs `DATABASE_URL` (CI sets it with `.ci/services.sh`); without it every test prints
//! `SKIPPED: DATABASE_URL is not set` and passes. Each test works in its own schema.

mod support;

use support::TestDatabase;

async fn fresh() -> Option<TestDatabase> {
    TestDatabase::postgres().await
}

sql_backend_tests!(fresh);

mod connecting {
    use cruster_storage_sql::{SqlMessageStorage, SqlPool};
    use cruster_types::ClusterError;

    fn assert_persistence_error(err: &ClusterError) {
        assert!(
            matches!(
                err,
                ClusterError::PersistenceError {
                    source: Some(_),
                    ..
                }
            ),
            "expected a PersistenceError with its cause, got {err:?}"
        );
    }

    #[tokio::test]
    async fn unreachable_server_is_a_persistence_error() {
        let err = SqlPool::connect("postgres://cruster:cruster@127.0.0.1:1/cruster")
            .await
            .unwrap_err();
        assert_persistence_error(&err);
        assert!(
            !err.to_string().contains("cruster:cruster"),
            "the password leaked: {err}"
        );
    }

    #[tokio::test]
    async fn lazily_connected_pool_fails_migrate_with_a_persistence_error() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_secs(2))
            .connect_lazy("postgres://cruster:cruster@127.0.0.1:1/cruster")
            .unwrap();
        let err = SqlMessageStorage::new(pool).migrate().await.unwrap_err();
        assert_persistence_error(&err);
    }

    #[tokio::test]
    async fn malformed_url_is_a_persistence_error() {
        let err = SqlPool::connect("postgres://[not a host")
            .await
            .unwrap_err();
        assert_persistence_error(&err);
        let err = SqlPool::connect("mysql://localhost/db").await.unwrap_err();
        assert!(
            matches!(err, ClusterError::PersistenceError { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn wrong_password_is_a_persistence_error() {
        let Ok(url) = std::env::var("DATABASE_URL") else {
            eprintln!("SKIPPED: DATABASE_URL is not set");
            return;
        };
        let Some(rest) = url.split_once('@').map(|(_, rest)| rest.to_owned()) else {
            eprintln!("SKIPPED: DATABASE_URL has no user:password@ part");
            return;
        };
        let err = SqlPool::connect(&format!("postgres://cruster:not-the-password@{rest}"))
            .await
            .unwrap_err();
        assert_persistence_error(&err);
    }
}

/// Group commit (PostgreSQL only): saves queued while the writer is busy share one
/// statement, and still answer exactly as saves made one at a time would.
///
/// To form a batch deterministically, a test holds a table lock so the writer's first
/// statement waits in the database, queues the saves under test behind it, then releases
/// the lock: the writer takes all of them as the next batch.
#[allow(clippy::unwrap_used)]
mod group_commit {
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use cruster_message_storage::{MessageStorage, SaveResult};
    use cruster_storage_sql::{SqlMessageStorage, SqlPool};
    use cruster_types::{
        ClusterError, EntityAddress, EntityId, EntityType, EnvelopeRequest, ExitResult, Reply,
        ReplyWithExit, ShardId, Snowflake,
    };
    use sqlx::PgPool;
    use tokio::task::JoinHandle;

    use super::fresh;

    /// Long enough for spawned saves to reach the writer's queue.
    const SETTLE: Duration = Duration::from_millis(300);

    fn postgres(pool: &SqlPool) -> PgPool {
        match pool {
            SqlPool::Postgres(pool) => pool.clone(),
            _ => unreachable!("these tests run on PostgreSQL"),
        }
    }

    fn request(id: i64, entity_id: &str, dedupe_key: Option<&str>) -> EnvelopeRequest {
        let address = EntityAddress {
            shard_id: ShardId::new("batch", 3),
            entity_type: EntityType::new("Batch"),
            entity_id: EntityId::new(entity_id),
        };
        let mut envelope =
            EnvelopeRequest::new(Snowflake(id), address, "batch", Bytes::from(vec![7u8; 16]));
        envelope.persisted = true;
        envelope.dedupe_key = dedupe_key.map(str::to_owned);
        envelope
    }

    fn final_reply(id: i64, text: &'static str) -> Reply {
        Reply::WithExit(ReplyWithExit {
            request_id: Snowflake(id),
            exit: ExitResult::Success(Bytes::from_static(text.as_bytes())),
        })
    }

    /// Holds `LOCK TABLE table IN SHARE MODE` (which blocks inserts) until committed.
    async fn lock(pool: &PgPool, table: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE {table} IN SHARE MODE"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx
    }

    fn save(
        storage: &Arc<SqlMessageStorage>,
        envelope: EnvelopeRequest,
    ) -> JoinHandle<Result<SaveResult, ClusterError>> {
        let storage = Arc::clone(storage);
        tokio::spawn(async move { storage.save_request(&envelope).await })
    }

    /// How many transactions wrote the rows of `table` (rows written by one statement share
    /// their `xmin`).
    async fn writing_transactions(pool: &PgPool, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(DISTINCT xmin::text) FROM {table}"
        )))
        .fetch_one(pool)
        .await
        .unwrap()
    }

    /// Execution upserts queued behind a held batch go out as one statement; an id
    /// repeated in the queue is written after it (the later write wins), and an upsert in
    /// a batch keeps a recorded cancellation, as a single upsert does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn execution_upserts_share_a_commit_and_keep_last_write_and_cancellation() {
        use cruster_storage_sql::SqlWorkflowEngine;
        use cruster_workflow_storage::{ExecutionRecord, ExecutionStatus, WorkflowEngine};

        let Some(db) = fresh().await else { return };
        let pool = db.migrated().await;
        let pg = postgres(&pool);
        let engine = Arc::new(SqlWorkflowEngine::from_pool(pool));
        let record = |id: &str, status: ExecutionStatus| {
            let mut record = ExecutionRecord::new(
                id,
                "Batch",
                Bytes::from(format!("request of {id}")),
                chrono::Utc::now(),
            );
            record.status = status;
            record
        };
        let upsert = |record: ExecutionRecord| {
            let engine = Arc::clone(&engine);
            tokio::spawn(async move { engine.upsert_execution(&record).await })
        };
        engine
            .upsert_execution(&record("cancelled", ExecutionStatus::Running))
            .await
            .unwrap();
        let cancelled_at = engine
            .request_cancellation("cancelled", chrono::Utc::now())
            .await
            .unwrap()
            .and_then(|stored| stored.cancel_requested_at)
            .expect("the cancellation is recorded");

        let blocker = lock(&pg, "cruster_executions").await;
        let holder = upsert(record("holder", ExecutionStatus::Running));
        tokio::time::sleep(SETTLE).await;
        let mut queued: Vec<_> = (0..40)
            .map(|n| upsert(record(&format!("e-{n}"), ExecutionStatus::Running)))
            .collect();
        queued.push(upsert(record("cancelled", ExecutionStatus::Running)));
        queued.push(upsert(record("twice", ExecutionStatus::Running)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        queued.push(upsert(record("twice", ExecutionStatus::Completed)));
        tokio::time::sleep(SETTLE).await;
        blocker.commit().await.unwrap();

        holder.await.unwrap().unwrap();
        for task in queued {
            task.await.unwrap().unwrap();
        }
        let batch_commits: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT xmin::text) FROM cruster_executions WHERE execution_id LIKE 'e-%'",
        )
        .fetch_one(&pg)
        .await
        .unwrap();
        assert_eq!(batch_commits, 1, "the 40 queued upserts share one commit");
        let twice = engine.execution("twice").await.unwrap().unwrap();
        assert_eq!(
            twice.status,
            ExecutionStatus::Completed,
            "the later write wins"
        );
        let cancelled = engine.execution("cancelled").await.unwrap().unwrap();
        assert_eq!(cancelled.cancel_requested_at, Some(cancelled_at));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicates_inside_one_batch_have_exactly_one_winner() {
        let Some(db) = fresh().await else { return };
        let pool = db.migrated().await;
        let pg = postgres(&pool);
        let storage = Arc::new(SqlMessageStorage::from_pool(pool));

        let blocker = lock(&pg, "cruster_messages").await;
        let holder = save(&storage, request(1, "holder", None));
        tokio::time::sleep(SETTLE).await;
        // 40 ids saved twice each, and 40 dedupe keys used by two ids each.
        let mut by_id = Vec::new();
        let mut by_key = Vec::new();
        for n in 0..40 {
            let id = 100 + n;
            by_id.push((id, save(&storage, request(id, "same-id", None))));
            by_id.push((id, save(&storage, request(id, "same-id", None))));
            let key = format!("key-{n}");
            for id in [1_000 + 2 * n, 1_001 + 2 * n] {
                by_key.push((
                    key.clone(),
                    id,
                    save(&storage, request(id, "same-key", Some(&key))),
                ));
            }
        }
        tokio::time::sleep(SETTLE).await;
        blocker.commit().await.unwrap();

        assert_eq!(holder.await.unwrap().unwrap(), SaveResult::Saved);
        let mut saved_ids = HashSet::new();
        for (id, task) in by_id {
            match task.await.unwrap().unwrap() {
                SaveResult::Saved => assert!(saved_ids.insert(id), "request {id} saved twice"),
                SaveResult::Duplicate {
                    original_request_id,
                    reply,
                } => {
                    assert_eq!(original_request_id, Snowflake(id));
                    assert_eq!(reply, None);
                }
            }
        }
        assert_eq!(saved_ids.len(), 40, "every id is saved exactly once");
        let mut winners: HashMap<String, i64> = HashMap::new();
        let mut losers = Vec::new();
        for (key, id, task) in by_key {
            match task.await.unwrap().unwrap() {
                SaveResult::Saved => {
                    let previous = winners.insert(key.clone(), id);
                    assert_eq!(previous, None, "dedupe key {key} has two winners");
                }
                SaveResult::Duplicate {
                    original_request_id,
                    ..
                } => losers.push((key, original_request_id)),
            }
        }
        assert_eq!(winners.len(), 40);
        assert_eq!(losers.len(), 40);
        for (key, original) in losers {
            assert_eq!(Some(&original.0), winners.get(&key), "loser of {key}");
        }
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cruster_messages")
            .fetch_one(&pg)
            .await
            .unwrap();
        assert_eq!(rows, 1 + 40 + 40);
        assert_eq!(
            writing_transactions(&pg, "cruster_messages").await,
            2,
            "the holder, then one batch for everything queued behind it"
        );
        db.remove().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_row_fails_only_its_own_save() {
        let Some(db) = fresh().await else { return };
        let pool = db.migrated().await;
        let pg = postgres(&pool);
        let storage = Arc::new(SqlMessageStorage::from_pool(pool));

        let blocker = lock(&pg, "cruster_messages").await;
        let holder = save(&storage, request(1, "holder", None));
        tokio::time::sleep(SETTLE).await;
        let mut good = Vec::new();
        for id in 10..20 {
            good.push(save(&storage, request(id, "good", None)));
        }
        // PostgreSQL refuses a NUL character in TEXT, so the batch statement fails.
        let bad = save(&storage, request(20, "bad\0entity", None));
        for id in 21..31 {
            good.push(save(&storage, request(id, "good", None)));
        }
        tokio::time::sleep(SETTLE).await;
        blocker.commit().await.unwrap();

        assert_eq!(holder.await.unwrap().unwrap(), SaveResult::Saved);
        for task in good {
            assert_eq!(task.await.unwrap().unwrap(), SaveResult::Saved);
        }
        let err = bad.await.unwrap().unwrap_err();
        assert!(
            matches!(err, ClusterError::PersistenceError { .. }),
            "{err:?}"
        );
        assert!(storage.request(Snowflake(20)).await.unwrap().is_none());
        for id in (10..20).chain(21..31) {
            assert!(
                storage.request(Snowflake(id)).await.unwrap().is_some(),
                "request {id}"
            );
        }
        db.remove().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn final_replies_inside_one_batch_keep_the_first() {
        let Some(db) = fresh().await else { return };
        let pool = db.migrated().await;
        let pg = postgres(&pool);
        let storage = Arc::new(SqlMessageStorage::from_pool(pool));
        for id in [5, 6] {
            storage
                .save_request(&request(id, "replied", None))
                .await
                .unwrap();
        }

        let blocker = lock(&pg, "cruster_replies").await;
        let reply = |reply: Reply| {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move { storage.save_reply(&reply).await })
        };
        let holder = reply(final_reply(6, "holder"));
        tokio::time::sleep(SETTLE).await;
        let mut queued = Vec::new();
        for text in ["first", "second", "third"] {
            queued.push(reply(final_reply(5, text)));
            // Queue order is the order within the batch.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(SETTLE).await;
        blocker.commit().await.unwrap();

        holder.await.unwrap().unwrap();
        for task in queued {
            task.await.unwrap().unwrap();
        }
        assert_eq!(
            storage.replies_for(Snowflake(5)).await.unwrap(),
            vec![final_reply(5, "first")]
        );
        let pending = storage
            .unprocessed(&[ShardId::new("batch", 3)], chrono::Utc::now(), 10)
            .await
            .unwrap();
        assert!(
            pending.is_empty(),
            "final replies mark their requests processed: {pending:?}"
        );
        assert_eq!(writing_transactions(&pg, "cruster_replies").await, 2);
        db.remove().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_callers_each_get_their_own_answer() {
        let Some(db) = fresh().await else { return };
        let storage = Arc::new(SqlMessageStorage::from_pool(db.migrated().await));
        let mut tasks = Vec::new();
        for caller in 0..64i64 {
            let storage = Arc::clone(&storage);
            tasks.push(tokio::spawn(async move {
                for n in 0..20i64 {
                    // Every request is saved twice by its caller and once by a neighbour.
                    let id = 10_000 + (caller * 20 + n);
                    let neighbour = 10_000 + ((caller + 1) % 64 * 20 + n);
                    let first = storage.save_request(&request(id, "many", None)).await?;
                    let again = storage.save_request(&request(id, "many", None)).await?;
                    let _ = storage.save_request(&request(neighbour, "many", None)).await?;
                    storage.save_reply(&final_reply(id, "done")).await?;
                    let replied = storage.save_request(&request(id, "many", None)).await?;
                    assert!(matches!(
                        again,
                        SaveResult::Duplicate { original_request_id, .. } if original_request_id == Snowflake(id)
                    ));
                    assert!(matches!(
                        replied,
                        SaveResult::Duplicate { reply: Some(_), .. }
                    ));
                    let _ = first;
                }
                Ok::<_, ClusterError>(())
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        for id in 10_000..10_000 + 64 * 20 {
            assert_eq!(
                storage.replies_for(Snowflake(id)).await.unwrap(),
                vec![final_reply(id, "done")]
            );
        }
        db.remove().await;
    }

    /// A lone save writes on its caller's task; saves queued behind it are written by a
    /// task that ends with the queue. No task outlives the writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_writer_task_outlives_the_writes() {
        let Some(db) = fresh().await else { return };
        let pool = db.migrated().await;
        // A runtime of its own, so its task count holds the writers and nothing else.
        tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let metrics = tokio::runtime::Handle::current().metrics();
                // sqlx spawns short tasks of its own (returning a connection to the pool):
                // wait for the count to reach what is expected, up to a second.
                let settled = |expected: usize| {
                    let metrics = metrics.clone();
                    async move {
                        for _ in 0..100 {
                            if metrics.num_alive_tasks() == expected {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        metrics.num_alive_tasks()
                    }
                };
                assert_eq!(metrics.num_alive_tasks(), 0);
                let storage = Arc::new(SqlMessageStorage::from_pool(pool));
                storage
                    .save_request(&request(1, "alone", None))
                    .await
                    .unwrap();
                storage.save_reply(&final_reply(1, "done")).await.unwrap();
                assert_eq!(settled(0).await, 0, "a lone save spawns nothing");

                let saves: Vec<_> = (2..40)
                    .map(|id| save(&storage, request(id, &format!("queued-{id}"), None)))
                    .collect();
                for save in saves {
                    assert!(matches!(save.await.unwrap().unwrap(), SaveResult::Saved));
                }
                assert_eq!(settled(0).await, 0, "the drain task ended with its queue");
            });
        })
        .await
        .unwrap();
        db.remove().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn message_storage_suite_passes_without_group_commit() {
        let Some(probe) = fresh().await else { return };
        probe.remove().await;
        let databases = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let dbs = Arc::clone(&databases);
        cruster_message_storage::conformance::run_all(move || {
            let dbs = Arc::clone(&dbs);
            async move {
                let db = fresh().await.unwrap();
                let pool = db.migrated().await;
                dbs.lock().await.push(db);
                SqlMessageStorage::from_pool(pool).with_group_commit(false)
            }
        })
        .await;
        for db in std::mem::take(&mut *databases.lock().await) {
            db.remove().await;
        }
    }
}

/// Runner storage under contention (PostgreSQL only): many runners racing for one set of
/// shard locks, as a whole cluster does when it starts at once.
#[allow(clippy::unwrap_used)]
mod runner_lock_contention {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use cruster_runner_storage::RunnerStorage;
    use cruster_storage_sql::SqlRunnerStorage;
    use cruster_types::{RunnerAddress, ShardId};

    use super::fresh;

    /// 16 tasks, each a runner with its own storage, ask for the same 50 shards at the same
    /// instant, each in a different order, over several rounds: every shard has exactly one
    /// winner, the lock table agrees with the answers, and no call fails (no deadlock
    /// between the upserts).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sixteen_runners_racing_for_fifty_shards_have_one_winner_each() {
        const RACERS: u16 = 16;
        const SHARDS: u32 = 50;
        const ROUNDS: u32 = 5;
        let Some(db) = fresh().await else { return };
        let pool = db.migrated().await;
        let ttl = Duration::from_secs(60);
        let racers: Vec<(RunnerAddress, Arc<SqlRunnerStorage>)> = (0..RACERS)
            .map(|n| {
                (
                    RunnerAddress::new(format!("racer-{n}.contention"), 8000 + n),
                    Arc::new(SqlRunnerStorage::from_pool(pool.clone())),
                )
            })
            .collect();
        for (address, storage) in &racers {
            storage.register(address, 1, ttl).await.unwrap();
        }

        for round in 0..ROUNDS {
            let contested: Vec<ShardId> = (0..SHARDS)
                .map(|n| ShardId::new(format!("contention-{round}"), n))
                .collect();
            let start = Arc::new(tokio::sync::Barrier::new(racers.len()));
            let mut tasks = tokio::task::JoinSet::new();
            for (index, (address, storage)) in racers.iter().enumerate() {
                let (address, storage, start) =
                    (address.clone(), Arc::clone(storage), Arc::clone(&start));
                let mut wanted = contested.clone();
                wanted.rotate_left(index * 3);
                if index % 2 == 1 {
                    wanted.reverse();
                }
                tasks.spawn(async move {
                    start.wait().await;
                    let won = storage.acquire_shards(&address, &wanted, ttl).await;
                    (address, won)
                });
            }
            let mut winners: BTreeMap<ShardId, Vec<RunnerAddress>> = BTreeMap::new();
            while let Some(joined) = tasks.join_next().await {
                let (address, won) = joined.unwrap();
                let won = won.unwrap_or_else(|err| panic!("round {round}: {address}: {err}"));
                for shard in won {
                    winners.entry(shard).or_default().push(address.clone());
                }
            }
            for shard in &contested {
                let claimed = winners.get(shard).cloned().unwrap_or_default();
                assert_eq!(
                    claimed.len(),
                    1,
                    "round {round}: shard {shard} won by {claimed:?}"
                );
                let owner = racers[0].1.shard_owner(shard).await.unwrap();
                assert_eq!(owner.as_ref(), claimed.first(), "round {round}: {shard}");
            }
            let rows = db
                .fetch_i64(
                    &pool,
                    &format!(
                        "SELECT COUNT(*) FROM cruster_shard_locks \
                         WHERE shard LIKE 'contention-{round}:%'"
                    ),
                )
                .await;
            assert_eq!(rows, i64::from(SHARDS), "round {round}: lock rows");
        }
        pool.close().await;
        db.remove().await;
    }

    /// A watch hears of another process's join and leave through `LISTEN`/`NOTIFY`, long
    /// before its poll (set to 30 s here) would have found them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_processs_join_and_leave_wake_the_watch_at_once() {
        use futures::StreamExt;
        let Some(db) = fresh().await else { return };
        let ttl = Duration::from_secs(60);
        let mine = SqlRunnerStorage::from_pool(db.migrated().await)
            .with_watch_interval(Duration::from_secs(30));
        let theirs = SqlRunnerStorage::from_pool(db.open().await);
        let me = RunnerAddress::new("watcher.notify", 1);
        let other = RunnerAddress::new("joiner.notify", 2);
        mine.register(&me, 1, ttl).await.unwrap();
        let mut watch = mine.watch_runners().await.unwrap();
        assert_eq!(watch.next().await.unwrap().unwrap().len(), 1);

        let within = Duration::from_secs(5);
        theirs.register(&other, 1, ttl).await.unwrap();
        let joined = tokio::time::timeout(within, watch.next())
            .await
            .expect("the join was not heard before the 30 s poll")
            .unwrap()
            .unwrap();
        assert_eq!(joined.len(), 2, "{joined:?}");
        theirs.unregister(&other).await.unwrap();
        let left = tokio::time::timeout(within, watch.next())
            .await
            .expect("the leave was not heard before the 30 s poll")
            .unwrap()
            .unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        drop(watch);
        db.remove().await;
    }
}

/// A chain's suspension point on PostgreSQL: the held entry's insert and the cancellation
/// read are one statement, inside the chain's transaction.
#[allow(clippy::unwrap_used)]
mod carrying_while_reading_cancellation {
    use bytes::Bytes;
    use cruster_storage_sql::{SqlWorkflowEngine, SqlWorkflowStorage};
    use cruster_types::{ClusterError, ExitResult};
    use cruster_workflow_storage::{
        ActivityKey, CommitOutcome, ExecutionRecord, JournalEntry, WorkflowEngine, WorkflowStorage,
    };

    use super::fresh;

    fn entry(sequence: u32) -> JournalEntry {
        JournalEntry {
            execution_id: "exec-carry".into(),
            key: ActivityKey {
                name: format!("step-{sequence}"),
                sequence,
            },
            result: ExitResult::Success(Bytes::from(format!("result {sequence}"))),
            attempts: 1,
            recorded_at: chrono::DateTime::from_timestamp_nanos(1_700_000_000_000_000_000),
        }
    }

    #[tokio::test]
    async fn the_entry_is_carried_and_the_cancellation_read_in_one_statement() {
        let Some(db) = fresh().await else { return };
        let pool = db.migrated().await;
        let storage = SqlWorkflowStorage::from_pool(pool.clone());
        let engine = SqlWorkflowEngine::from_pool(pool);
        engine
            .upsert_execution(&ExecutionRecord::new(
                "exec-carry",
                "Carry",
                Bytes::from_static(b"request"),
                chrono::Utc::now(),
            ))
            .await
            .unwrap();

        let mut tx = storage
            .begin_activity("exec-carry", &entry(0).key)
            .await
            .unwrap();
        let read = tx
            .carry_on_reading_cancellation(Some(&entry(0)), "exec-carry")
            .await
            .unwrap();
        assert_eq!(read, None, "nothing was requested yet");
        let requested = engine
            .request_cancellation("exec-carry", chrono::Utc::now())
            .await
            .unwrap()
            .and_then(|stored| stored.cancel_requested_at)
            .expect("the cancellation is recorded");
        let read = tx
            .carry_on_reading_cancellation(Some(&entry(1)), "exec-carry")
            .await
            .unwrap();
        assert_eq!(
            read,
            Some(requested),
            "the chain sees the committed request"
        );
        assert!(
            storage.journal("exec-carry").await.unwrap().is_empty(),
            "carried entries wait for the chain's commit"
        );
        assert_eq!(
            tx.commit(&entry(2)).await.unwrap(),
            CommitOutcome::Committed
        );
        assert_eq!(
            storage.journal("exec-carry").await.unwrap(),
            vec![entry(0), entry(1), entry(2)]
        );

        // A taken position fails the carry; nothing of the transaction is applied.
        let mut tx = storage
            .begin_activity("exec-carry", &entry(3).key)
            .await
            .unwrap();
        tx.carry_on(Some(&entry(3))).await.unwrap();
        let taken = tx
            .carry_on_reading_cancellation(Some(&entry(1)), "exec-carry")
            .await;
        assert!(
            matches!(taken, Err(ClusterError::PersistenceError { .. })),
            "carrying at a taken position must fail, not answer {taken:?}"
        );
        drop(tx);
        assert_eq!(storage.journal("exec-carry").await.unwrap().len(), 3);
        db.remove().await;
    }
}
