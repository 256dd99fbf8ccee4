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
