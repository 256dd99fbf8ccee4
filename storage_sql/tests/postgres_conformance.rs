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
