//! [`SqlPool`]: the connection pool a backend runs on, PostgreSQL or SQLite.

use cruster_types::{ClusterError, StoreLocation};

use crate::dialect::per_dialect;
use crate::migrations;

/// A connection pool of one of the supported databases.
///
/// Every backend of this crate is built from one (`From` converts sqlx's pools), and
/// several backends may share the same pool: they use disjoint tables of one schema.
///
/// ```no_run
/// # async fn run() -> Result<(), cruster_types::ClusterError> {
/// use cruster_storage_sql::{SqlMessageStorage, SqlPool};
/// let pool = SqlPool::connect("sqlite:cruster.db").await?;
/// let storage = SqlMessageStorage::from_pool(pool);
/// storage.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum SqlPool {
    /// A PostgreSQL pool.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    /// A SQLite pool.
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

#[cfg(feature = "postgres")]
impl From<sqlx::PgPool> for SqlPool {
    fn from(pool: sqlx::PgPool) -> Self {
        SqlPool::Postgres(pool)
    }
}

#[cfg(feature = "sqlite")]
impl From<sqlx::SqlitePool> for SqlPool {
    fn from(pool: sqlx::SqlitePool) -> Self {
        SqlPool::Sqlite(pool)
    }
}

impl SqlPool {
    /// This pool's identity: equal for clones of one pool, so backends built on clones of
    /// one pool can share commits (see [`StoreLocation`]).
    pub fn location(&self) -> StoreLocation {
        let shared: *const () = per_dialect!(self, SqlPool, |pool, _d| {
            std::ptr::from_ref(pool.options()).cast::<()>()
        });
        StoreLocation::new(shared as usize as u64)
    }

    /// Connects to a database URL and returns a pool.
    ///
    /// * `postgres://user:password@host:port/database` (or `postgresql://…`) opens a
    ///   PostgreSQL pool with sqlx's defaults.
    /// * `sqlite:path/to/file.db` (or `sqlite://…`) opens a SQLite file, creating it if
    ///   missing, in WAL mode (readers never block the writer) with `synchronous = FULL`
    ///   (a committed write survives a power loss) and a 5 s busy timeout.
    ///   `sqlite::memory:` gives a pool of one connection, since every connection to an
    ///   in-memory database would see its own empty database.
    ///
    /// Connecting does not create tables: call `migrate()` on a backend.
    ///
    /// # Errors
    /// `PersistenceError` when the URL is malformed, names a database this build was not
    /// compiled for (features `postgres` / `sqlite`), or the database cannot be reached. The
    /// message never repeats the URL, which may hold a password.
    pub async fn connect(url: &str) -> Result<SqlPool, ClusterError> {
        Self::connect_with_max_connections(url, None).await
    }

    /// [`SqlPool::connect`] with at most `max_connections` connections (sqlx's default
    /// when `None`; an in-memory SQLite database always gets one).
    pub(crate) async fn connect_with_max_connections(
        url: &str,
        max_connections: Option<u32>,
    ) -> Result<SqlPool, ClusterError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
                use sqlx::{ConnectOptions, Connection};
                use std::str::FromStr;
                let options =
                    PgConnectOptions::from_str(url).map_err(|e| connect_error("PostgreSQL", e))?;
                // One direct connection first: a pool retries a refused connection until its
                // acquire timeout (30 s), while a wrong URL should fail at once.
                options
                    .connect()
                    .await
                    .map_err(|e| connect_error("PostgreSQL", e))?
                    .close()
                    .await
                    .map_err(|e| connect_error("PostgreSQL", e))?;
                let mut pool = PgPoolOptions::new();
                if let Some(max) = max_connections {
                    pool = pool.max_connections(max);
                }
                pool.connect_with(options)
                    .await
                    .map(SqlPool::Postgres)
                    .map_err(|e| connect_error("PostgreSQL", e))
            }
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                use sqlx::sqlite::{
                    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
                };
                use std::str::FromStr;
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(|e| connect_error("SQLite", e))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(std::time::Duration::from_secs(5));
                let mut pool = SqlitePoolOptions::new();
                if let Some(max) = max_connections {
                    pool = pool.max_connections(max);
                }
                if url.contains(":memory:") || url.contains("mode=memory") {
                    pool = pool.max_connections(1).min_connections(1);
                }
                pool.connect_with(options)
                    .await
                    .map(SqlPool::Sqlite)
                    .map_err(|e| connect_error("SQLite", e))
            }
            _ => Err(ClusterError::PersistenceError {
                reason: format!(
                    "unsupported database URL scheme `{scheme}`: this build of \
                     cruster-storage-sql accepts {}",
                    supported_schemes()
                ),
                source: None,
            }),
        }
    }

    /// Creates or upgrades the cruster tables, recording applied migrations in
    /// `_cruster_migrations`. Idempotent; safe to call from several runners at once.
    ///
    /// # Errors
    /// `PersistenceError` when the database cannot be reached, or holds a schema from a
    /// newer cruster (a migration this build does not know) or an edited migration.
    pub async fn migrate(&self) -> Result<(), ClusterError> {
        per_dialect!(self, SqlPool, |pool, d| {
            d::migrator()
                .run(pool)
                .await
                .map_err(|e| migrations::migration_error(d::NAME, e))
        })
    }

    /// Closes every connection of the pool, waiting for those in use to be returned.
    /// Backends built on it fail with `PersistenceError` afterwards.
    pub async fn close(&self) {
        per_dialect!(self, SqlPool, |pool, _d| pool.close().await)
    }

    /// Which database this pool talks to: `"PostgreSQL"` or `"SQLite"`.
    pub fn backend_name(&self) -> &'static str {
        per_dialect!(self, SqlPool, |_pool, d| d::NAME)
    }
}

fn supported_schemes() -> &'static str {
    match (cfg!(feature = "postgres"), cfg!(feature = "sqlite")) {
        (true, true) => "`postgres://`, `postgresql://` and `sqlite:`",
        (true, false) => "`postgres://` and `postgresql://` (enable feature `sqlite` for SQLite)",
        (false, true) => "`sqlite:` (enable feature `postgres` for PostgreSQL)",
        (false, false) => "nothing",
    }
}

fn connect_error(backend: &str, err: sqlx::Error) -> ClusterError {
    ClusterError::PersistenceError {
        reason: format!("cannot connect to the {backend} database: {err}"),
        source: Some(Box::new(err)),
    }
}
