//! Throw-away databases for the SQL benches: a PostgreSQL schema of its own on
//! `DATABASE_URL` (dropped at the end), or a SQLite file in a temporary folder (removed).

use std::str::FromStr;

use cruster::sqlx::{self, AssertSqlSafe};
use cruster::storage::sql_message::SqlPool;

/// A schema created for one bench run, and the pool whose `search_path` is that schema.
pub struct PgBenchSchema {
    admin: sqlx::PgPool,
    schema: String,
    /// The bench's pool on the schema.
    pub pool: SqlPool,
}

impl PgBenchSchema {
    /// Creates schema `<prefix>_<pid>` on `url` and a pool of `pool_size` connections on it.
    ///
    /// # Errors
    /// The database cannot be reached or the schema cannot be created.
    pub async fn create(url: &str, prefix: &str, pool_size: u32) -> anyhow::Result<Self> {
        let schema = format!("{prefix}_{}", std::process::id());
        let admin = sqlx::PgPool::connect(url).await?;
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await?;
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?
            .options([("search_path", schema.as_str())]);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(pool_size)
            .connect_with(options)
            .await?;
        Ok(PgBenchSchema {
            admin,
            schema,
            pool: SqlPool::from(pool),
        })
    }

    /// Closes the pool and drops the schema.
    ///
    /// # Errors
    /// The schema cannot be dropped.
    pub async fn drop_schema(self) -> anyhow::Result<()> {
        self.pool.close().await;
        sqlx::query(AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.schema
        )))
        .execute(&self.admin)
        .await?;
        Ok(())
    }
}

/// A SQLite file in a temporary folder of its own.
pub struct SqliteBenchFile {
    dir: std::path::PathBuf,
    /// The pool on the file (WAL mode, `synchronous = FULL`).
    pub pool: SqlPool,
}

impl SqliteBenchFile {
    /// Creates `<tmp>/<prefix>-<pid>/bench.db` and opens it.
    ///
    /// # Errors
    /// The folder or the database cannot be created.
    pub async fn create(prefix: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let url = format!("sqlite:{}", dir.join("bench.db").display());
        let pool = SqlPool::connect(&url).await?;
        Ok(SqliteBenchFile { dir, pool })
    }

    /// Closes the pool and removes the folder.
    pub async fn remove(self) {
        self.pool.close().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `sql` (one or more statements, no parameters) on `pool`.
///
/// # Errors
/// The statements fail, or the pool is of a database this build does not know.
pub async fn exec(pool: &SqlPool, sql: &str) -> anyhow::Result<()> {
    match pool {
        SqlPool::Postgres(p) => {
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(p)
                .await?;
        }
        SqlPool::Sqlite(p) => {
            sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                .execute(p)
                .await?;
        }
        _ => anyhow::bail!("unknown pool"),
    }
    Ok(())
}
