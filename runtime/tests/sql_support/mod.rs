//! Shared set-up of the runtime's SQL tests: a fresh database per test, so nextest's
//! parallel tests never see each other.
//!
//! * PostgreSQL: a new schema in the database of `DATABASE_URL`; every pool opened on it
//!   sets `search_path` to that schema. Without `DATABASE_URL` the test prints
//!   `SKIPPED: DATABASE_URL is not set` loudly and returns.
//! * SQLite: a file in a temporary directory of its own, in WAL mode.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cruster::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use cruster::sqlx::{self, AssertSqlSafe, PgPool, SqlitePool};
use cruster::storage::sql_message::SqlPool;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A schema of its own in the PostgreSQL database of `DATABASE_URL`.
pub struct PgTestDb {
    url: String,
    pub schema: String,
}

impl PgTestDb {
    /// A fresh schema, or `None` (after a loud message) when `DATABASE_URL` is unset.
    pub async fn new() -> Option<PgTestDb> {
        let Ok(url) = std::env::var("DATABASE_URL") else {
            eprintln!(
                "\n==============================================================\n\
                 SKIPPED: DATABASE_URL is not set, so this PostgreSQL test did not run.\n\
                 Run `source .ci/services.sh` (CI always does) to start PostgreSQL.\n\
                 ==============================================================\n"
            );
            return None;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let schema = format!(
            "cruster_rt_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        let admin = PgPool::connect(&url)
            .await
            .expect("DATABASE_URL must point at a reachable PostgreSQL");
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        Some(PgTestDb { url, schema })
    }

    /// A new pool on this schema (a new one per call, as a restarted process opens).
    pub async fn pool(&self) -> PgPool {
        let options = PgConnectOptions::from_str(&self.url)
            .unwrap()
            .options([("search_path", self.schema.as_str())]);
        PgPoolOptions::new()
            .max_connections(16)
            .connect_with(options)
            .await
            .unwrap()
    }

    /// A new pool on this schema with at most `max_connections` connections (10 is what
    /// `PgPool::connect` gives, as in the contract's production example).
    pub async fn pool_with_max_connections(&self, max_connections: u32) -> PgPool {
        let options = PgConnectOptions::from_str(&self.url)
            .unwrap()
            .options([("search_path", self.schema.as_str())]);
        PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await
            .unwrap()
    }

    /// The URL of this database (for child processes), and the schema to use in it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Drops the schema (call at the end of a passing test).
    pub async fn drop_schema(self) {
        let admin = PgPool::connect(&self.url).await.unwrap();
        sqlx::query(AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.schema
        )))
        .execute(&admin)
        .await
        .unwrap();
        admin.close().await;
    }
}

/// A SQLite file in a temporary directory of its own (deleted on drop).
pub struct SqliteTestDb {
    _dir: tempfile::TempDir,
    pub url: String,
}

impl SqliteTestDb {
    /// A fresh file.
    pub fn new() -> SqliteTestDb {
        let dir = tempfile::Builder::new()
            .prefix("cruster-rt-sqlite-")
            .tempdir()
            .unwrap();
        let url = format!("sqlite:{}", dir.path().join("cruster.db").display());
        SqliteTestDb { _dir: dir, url }
    }

    /// A new pool on the file (WAL mode, as `SqlPool::connect` opens it).
    pub async fn pool(&self) -> SqlitePool {
        match SqlPool::connect(&self.url).await.unwrap() {
            SqlPool::Sqlite(pool) => pool,
            other => panic!("expected a SQLite pool, got {other:?}"),
        }
    }
}

/// Runs `sql` (several statements allowed) on a PostgreSQL pool.
pub async fn pg_exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap();
}

/// Runs `sql` (several statements allowed) on a SQLite pool.
pub async fn sqlite_exec(pool: &SqlitePool, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap();
}

/// One integer read on PostgreSQL.
pub async fn pg_i64(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// One integer read on SQLite.
pub async fn sqlite_i64(pool: &SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Polls `check` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
