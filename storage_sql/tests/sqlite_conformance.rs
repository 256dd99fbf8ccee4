//! The SQLite backends (a temporary file per test, WAL mode) against every conformance
//! suite and the shared scenarios.

mod support;

use support::TestDatabase;

async fn fresh() -> Option<TestDatabase> {
    Some(TestDatabase::sqlite().await)
}

sql_backend_tests!(fresh);

mod connecting {
    use cruster_storage_sql::SqlPool;
    use cruster_types::ClusterError;

    #[tokio::test]
    async fn file_in_a_missing_directory_is_a_persistence_error() {
        let err = SqlPool::connect("sqlite:/nonexistent-cruster-dir/sub/cruster.db")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClusterError::PersistenceError {
                    source: Some(_),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn in_memory_database_works_on_one_connection() {
        let pool = SqlPool::connect("sqlite::memory:").await.unwrap();
        pool.migrate().await.unwrap();
        pool.migrate().await.unwrap();
        assert_eq!(pool.backend_name(), "SQLite");
    }

    #[tokio::test]
    async fn new_file_is_created_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("fresh.db").display());
        let pool = SqlPool::connect(&url).await.unwrap();
        let SqlPool::Sqlite(lite) = &pool else {
            panic!("a sqlite: URL gives a SQLite pool")
        };
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(lite)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
}

/// Every public handle of the crate is `Send + Sync` and every public future `Send`, as the
/// runtime's `Arc<dyn Port>`s and spawned tasks need. (sqlx's own futures are not `Sync`,
/// so neither are ours; nothing needs them to be.)
#[test]
fn public_handles_and_futures_are_send_and_sync() {
    use cruster_message_storage::MessageStorage;
    use cruster_storage_sql::{SqlMessageStorage, SqlPool, SqlWorkflowEngine, SqlWorkflowStorage};

    fn send<T: Send>(_: &T) {}
    fn handles<T: Send + Sync + Clone + 'static>() {}
    handles::<SqlPool>();
    handles::<SqlMessageStorage>();
    handles::<SqlWorkflowStorage>();
    handles::<SqlWorkflowEngine>();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let pool = SqlPool::from(sqlx::SqlitePool::connect_lazy("sqlite::memory:").unwrap());
    let storage = SqlMessageStorage::from_pool(pool.clone());
    send(&SqlPool::connect("sqlite::memory:"));
    send(&pool.migrate());
    send(&storage.migrate());
    send(&storage.unprocessed(&[], chrono::Utc::now(), 1));
}

/// Group commit on SQLite: saves queued while the writer is busy share one transaction.
///
/// A second connection holds the write lock (`BEGIN IMMEDIATE`), so the writer's first
/// insert waits (within the 5 s busy timeout) while the saves under test queue behind it.
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
    use tokio::task::JoinHandle;

    use super::fresh;

    const SETTLE: Duration = Duration::from_millis(300);

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

    fn save(
        storage: &Arc<SqlMessageStorage>,
        envelope: EnvelopeRequest,
    ) -> JoinHandle<Result<SaveResult, ClusterError>> {
        let storage = Arc::clone(storage);
        tokio::spawn(async move { storage.save_request(&envelope).await })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicates_and_final_replies_inside_one_batch_answer_as_one_at_a_time() {
        let Some(db) = fresh().await else { return };
        let pool = db.migrated().await;
        let SqlPool::Sqlite(sqlite) = &pool else {
            unreachable!("this test runs on SQLite")
        };
        let storage = Arc::new(SqlMessageStorage::from_pool(pool.clone()));
        storage
            .save_request(&request(5, "replied", None))
            .await
            .unwrap();

        let mut blocker = sqlite.acquire().await.unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut *blocker)
            .await
            .unwrap();
        let holder = save(&storage, request(1, "holder", None));
        let reply = |reply: Reply| {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move { storage.save_reply(&reply).await })
        };
        let reply_holder = reply(final_reply(1, "holder"));
        tokio::time::sleep(SETTLE).await;
        let mut by_id = Vec::new();
        let mut by_key = Vec::new();
        for n in 0..20 {
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
        let mut replies = Vec::new();
        for text in ["first", "second", "third"] {
            replies.push(reply(final_reply(5, text)));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(SETTLE).await;
        sqlx::raw_sql("COMMIT")
            .execute(&mut *blocker)
            .await
            .unwrap();
        drop(blocker);

        assert_eq!(holder.await.unwrap().unwrap(), SaveResult::Saved);
        reply_holder.await.unwrap().unwrap();
        let mut saved_ids = HashSet::new();
        for (id, task) in by_id {
            match task.await.unwrap().unwrap() {
                SaveResult::Saved => assert!(saved_ids.insert(id), "request {id} saved twice"),
                SaveResult::Duplicate {
                    original_request_id,
                    ..
                } => assert_eq!(original_request_id, Snowflake(id)),
            }
        }
        assert_eq!(saved_ids.len(), 20);
        let mut winners: HashMap<String, i64> = HashMap::new();
        let mut losers = Vec::new();
        for (key, id, task) in by_key {
            match task.await.unwrap().unwrap() {
                SaveResult::Saved => {
                    assert_eq!(
                        winners.insert(key.clone(), id),
                        None,
                        "two winners of {key}"
                    )
                }
                SaveResult::Duplicate {
                    original_request_id,
                    ..
                } => losers.push((key, original_request_id)),
            }
        }
        assert_eq!((winners.len(), losers.len()), (20, 20));
        for (key, original) in losers {
            assert_eq!(Some(&original.0), winners.get(&key), "loser of {key}");
        }
        for task in replies {
            task.await.unwrap().unwrap();
        }
        assert_eq!(
            storage.replies_for(Snowflake(5)).await.unwrap(),
            vec![final_reply(5, "first")]
        );
        assert_eq!(
            db.fetch_i64(&pool, "SELECT COUNT(*) FROM cruster_messages")
                .await,
            1 + 1 + 20 + 20
        );
        db.remove().await;
    }
}
