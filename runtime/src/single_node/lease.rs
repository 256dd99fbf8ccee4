//! [`SingleNodeLease`]: the exclusive lease a durable `SingleRunner` holds in its database,
//! so two single nodes never both claim every shard of one database.
//!
//! One row of `cruster_single_node_lease` (migration 0002 of `cruster-storage-sql`) names
//! the holder (`runner address/pid/nonce`) and an expiry. Acquiring is one upsert that
//! succeeds only when the row is absent, expired, or already ours; a heartbeat task renews
//! the expiry every sixth of the TTL; `release` deletes the row. A process that dies
//! without releasing leaves a row that expires after the TTL, after which the next node (or
//! a waiting standby) takes it.
//!
//! The lease follows the runtime's fencing rule: a renewal *sent* at `t` lets the node work
//! until `t + ⅔ TTL`; a node that has not confirmed a renewal by then stops at once (every
//! task ends, nothing is drained) — before a standby can take the expired lease. Renewals
//! go through a connection of their own (a one-connection pool on the same database), so a
//! pool busy with application work never delays them: a busy pool is not a lost lease.
//!
//! PostgreSQL instants come from the database clock, so nodes on different machines agree
//! on expiry; SQLite is a local file and uses the local clock.
//!
//! Owns its heartbeat task: `release` stops it, and dropping the lease aborts it (the row
//! then expires). Never holds a lock across an await.

use std::sync::Weak;
use std::time::{Duration, Instant};

use cruster_storage_sql::SqlPool;
use cruster_types::ClusterError;
use tokio::task::JoinHandle;

use crate::sharding_impl::ShardingImpl;

/// The lease row's name: one single node per database (per PostgreSQL schema).
const LEASE_NAME: &str = "single-node";

/// How often a standby retries, at most.
const STANDBY_RETRY: Duration = Duration::from_millis(250);

/// The SQL of the lease, per dialect.
mod queries {
    /// PostgreSQL: instants from the database clock, in unix milliseconds.
    #[cfg(feature = "postgres")]
    pub mod postgres {
        /// `$1` name, `$2` holder, `$3` TTL in ms. Returns the holder when acquired.
        pub const ACQUIRE: &str = "\
            WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms) \
            INSERT INTO cruster_single_node_lease AS l \
                (name, holder, acquired_at_ms, expires_at_ms) \
            SELECT $1, $2, ms, ms + $3 FROM now \
            ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, \
                acquired_at_ms = EXCLUDED.acquired_at_ms, expires_at_ms = EXCLUDED.expires_at_ms \
            WHERE l.expires_at_ms < EXCLUDED.acquired_at_ms OR l.holder = EXCLUDED.holder \
            RETURNING holder";
        /// `$1` name. The holder and the milliseconds left on its lease.
        pub const CURRENT: &str = "\
            SELECT holder, \
                expires_at_ms - (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
            FROM cruster_single_node_lease WHERE name = $1";
        /// `$1` name, `$2` holder, `$3` TTL in ms.
        pub const RENEW: &str = "\
            UPDATE cruster_single_node_lease \
            SET expires_at_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $3 \
            WHERE name = $1 AND holder = $2";
        /// `$1` name, `$2` holder.
        pub const RELEASE: &str =
            "DELETE FROM cruster_single_node_lease WHERE name = $1 AND holder = $2";
    }

    /// SQLite: instants from the local clock, passed in as `now` (unix milliseconds).
    #[cfg(feature = "sqlite")]
    pub mod sqlite {
        /// `$1` name, `$2` holder, `$3` now, `$4` TTL in ms. Returns the holder when acquired.
        pub const ACQUIRE: &str = "\
            INSERT INTO cruster_single_node_lease AS l \
                (name, holder, acquired_at_ms, expires_at_ms) \
            VALUES ($1, $2, $3, $3 + $4) \
            ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                acquired_at_ms = excluded.acquired_at_ms, expires_at_ms = excluded.expires_at_ms \
            WHERE l.expires_at_ms < excluded.acquired_at_ms OR l.holder = excluded.holder \
            RETURNING holder";
        /// `$1` name, `$2` now. The holder and the milliseconds left on its lease.
        pub const CURRENT: &str = "\
            SELECT holder, expires_at_ms - $2 FROM cruster_single_node_lease WHERE name = $1";
        /// `$1` name, `$2` holder, `$3` now, `$4` TTL in ms.
        pub const RENEW: &str = "\
            UPDATE cruster_single_node_lease SET expires_at_ms = $3 + $4 \
            WHERE name = $1 AND holder = $2";
        /// `$1` name, `$2` holder.
        pub const RELEASE: &str =
            "DELETE FROM cruster_single_node_lease WHERE name = $1 AND holder = $2";
    }
}

/// What an acquisition attempt found.
enum Attempt {
    /// The lease is ours.
    Acquired,
    /// Someone else holds it, for about this long yet.
    HeldBy { holder: String, remaining_ms: i64 },
}

/// An acquired single-node lease with its heartbeat task. See the module docs.
pub(crate) struct SingleNodeLease {
    /// A pool of its own on the lease's database (one connection).
    pool: SqlPool,
    holder: String,
    /// When the acquisition that succeeded was sent.
    acquired_sent: Instant,
    heartbeat: Option<JoinHandle<()>>,
}

/// A one-connection pool on the database of `pool`, for the lease alone. An in-memory
/// SQLite database exists only inside its own pool, so there the lease shares it.
async fn dedicated_pool(pool: &SqlPool) -> Result<SqlPool, ClusterError> {
    const DOING: &str = "opening the single-node lease's own connection";
    match pool {
        #[cfg(feature = "postgres")]
        SqlPool::Postgres(app) => {
            let options = (*app.connect_options()).clone();
            let own = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .map_err(|e| db_error(DOING, e))?;
            Ok(SqlPool::Postgres(own))
        }
        #[cfg(feature = "sqlite")]
        SqlPool::Sqlite(app) => {
            let options = (*app.connect_options()).clone();
            if options.get_filename().as_os_str().is_empty()
                || options
                    .get_filename()
                    .to_string_lossy()
                    .contains(":memory:")
            {
                return Ok(pool.clone());
            }
            let own = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .map_err(|e| db_error(DOING, e))?;
            Ok(SqlPool::Sqlite(own))
        }
        #[allow(unreachable_patterns)]
        _ => Err(unknown_pool()),
    }
}

impl std::fmt::Debug for SingleNodeLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleNodeLease")
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl SingleNodeLease {
    /// A holder id unique to this process and call: `address/pid N/nonce`.
    pub(crate) fn holder_id(runner_address: &impl std::fmt::Display) -> String {
        format!(
            "{runner_address}/pid {}/{:016x}",
            std::process::id(),
            rand::random::<u64>()
        )
    }

    /// Takes the lease for `holder`, or fails at once naming the current holder
    /// (`standby == false`), or waits until it is free (`standby == true`).
    ///
    /// # Errors
    /// `InvalidConfig` with field `single_node_lease` when another node holds the lease and
    /// `standby` is off; `PersistenceError` when the database fails.
    pub(crate) async fn acquire(
        pool: SqlPool,
        holder: String,
        ttl: Duration,
        standby: bool,
    ) -> Result<SingleNodeLease, ClusterError> {
        let pool = dedicated_pool(&pool).await?;
        let mut announced = false;
        loop {
            let sent = Instant::now();
            match try_acquire(&pool, &holder, ttl).await? {
                Attempt::Acquired => {
                    tracing::info!(%holder, ttl_ms = ttl.as_millis() as u64, "single-node lease acquired");
                    return Ok(SingleNodeLease {
                        pool,
                        holder,
                        acquired_sent: sent,
                        heartbeat: None,
                    });
                }
                Attempt::HeldBy {
                    holder: current,
                    remaining_ms,
                } if !standby => {
                    return Err(held_error(pool.backend_name(), &current, remaining_ms));
                }
                Attempt::HeldBy {
                    holder: current,
                    remaining_ms,
                } => {
                    if !announced {
                        tracing::info!(
                            current_holder = %current,
                            "single-node lease is held; waiting as a standby until it is free"
                        );
                        announced = true;
                    }
                    let wait = u64::try_from(remaining_ms.max(1)).unwrap_or(1);
                    tokio::time::sleep(Duration::from_millis(wait).min(STANDBY_RETRY)).await;
                }
            }
        }
    }

    /// Starts renewing the lease every sixth of `ttl`. A node that has not confirmed a
    /// renewal within ⅔ of `ttl` of sending it (it could not reach the database in time, or
    /// another node took the lease) stops at once: every task of the runner ends, nothing
    /// is drained, so two single nodes never process one database at once.
    pub(crate) fn start_heartbeat(&mut self, ttl: Duration, runner: Weak<ShardingImpl>) {
        let pool = self.pool.clone();
        let holder = self.holder.clone();
        let serve_for = ttl * 2 / 3;
        let mut valid_until = self.acquired_sent + serve_for;
        let task = tokio::spawn(async move {
            let every = (ttl / 6).max(Duration::from_millis(5));
            loop {
                let wake = (Instant::now() + every).min(valid_until);
                tokio::time::sleep_until(wake.into()).await;
                let sent = Instant::now();
                let reason = if sent >= valid_until {
                    Some("no renewal was confirmed within two thirds of its TTL")
                } else {
                    // A renewal may take as long as the node can still afford to wait.
                    match tokio::time::timeout_at(valid_until.into(), renew(&pool, &holder, ttl))
                        .await
                    {
                        Ok(Ok(true)) => {
                            valid_until = sent + serve_for;
                            None
                        }
                        Ok(Ok(false)) => Some("another node took it"),
                        Ok(Err(err)) => {
                            tracing::warn!(%holder, error = %err, "renewing the single-node lease failed");
                            None
                        }
                        Err(_) => {
                            tracing::warn!(%holder, "renewing the single-node lease timed out");
                            None
                        }
                    }
                };
                let reason = match reason {
                    Some(reason) => reason,
                    None if Instant::now() >= valid_until => {
                        "no renewal was confirmed within two thirds of its TTL"
                    }
                    None => continue,
                };
                tracing::error!(
                    %holder,
                    reason,
                    "single-node lease lost: this runner stops at once so that two nodes never \
                     process one database at once"
                );
                if let Some(runner) = runner.upgrade() {
                    runner.halt();
                }
                return;
            }
        });
        self.heartbeat = Some(task);
    }

    /// This lease's holder id.
    pub(crate) fn holder(&self) -> &str {
        &self.holder
    }

    /// Stops the heartbeat and deletes the lease row, so the next node starts at once.
    ///
    /// # Errors
    /// `PersistenceError` when the row cannot be deleted (it then expires after its TTL).
    pub(crate) async fn release(&mut self) -> Result<(), ClusterError> {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
        release(&self.pool, &self.holder).await
    }
}

impl Drop for SingleNodeLease {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
    }
}

fn held_error(backend: &str, holder: &str, remaining_ms: i64) -> ClusterError {
    ClusterError::InvalidConfig {
        field: "single_node_lease".into(),
        reason: format!(
            "another single node holds this {backend} database: `{holder}` (its lease expires \
             in {:.1} s unless renewed). Stop that node, point this one at another database, \
             or start it as a standby with SingleRunner::builder().standby(true)",
            remaining_ms.max(0) as f64 / 1000.0
        ),
    }
}

fn db_error(doing: &str, err: sqlx::Error) -> ClusterError {
    ClusterError::PersistenceError {
        reason: format!("{doing}: {err}"),
        source: Some(Box::new(err)),
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4)
}

#[cfg(feature = "sqlite")]
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn unknown_pool() -> ClusterError {
    ClusterError::Unsupported {
        operation: "the single-node lease".into(),
        backend: "this SQL pool".into(),
    }
}

async fn try_acquire(pool: &SqlPool, holder: &str, ttl: Duration) -> Result<Attempt, ClusterError> {
    const DOING: &str = "acquiring the single-node lease";
    let (acquired, current): (Option<String>, Option<(String, i64)>) = match pool {
        #[cfg(feature = "postgres")]
        SqlPool::Postgres(pool) => {
            use queries::postgres as q;
            let acquired = sqlx::query_scalar(q::ACQUIRE)
                .bind(LEASE_NAME)
                .bind(holder)
                .bind(ttl_ms(ttl))
                .fetch_optional(pool)
                .await
                .map_err(|e| db_error(DOING, e))?;
            let current = match acquired {
                Some(_) => None,
                None => sqlx::query_as(q::CURRENT)
                    .bind(LEASE_NAME)
                    .fetch_optional(pool)
                    .await
                    .map_err(|e| db_error(DOING, e))?,
            };
            (acquired, current)
        }
        #[cfg(feature = "sqlite")]
        SqlPool::Sqlite(pool) => {
            use queries::sqlite as q;
            let acquired = sqlx::query_scalar(q::ACQUIRE)
                .bind(LEASE_NAME)
                .bind(holder)
                .bind(now_ms())
                .bind(ttl_ms(ttl))
                .fetch_optional(pool)
                .await
                .map_err(|e| db_error(DOING, e))?;
            let current = match acquired {
                Some(_) => None,
                None => sqlx::query_as(q::CURRENT)
                    .bind(LEASE_NAME)
                    .bind(now_ms())
                    .fetch_optional(pool)
                    .await
                    .map_err(|e| db_error(DOING, e))?,
            };
            (acquired, current)
        }
        #[allow(unreachable_patterns)]
        _ => return Err(unknown_pool()),
    };
    Ok(match (acquired, current) {
        (Some(_), _) => Attempt::Acquired,
        (None, Some((holder, remaining_ms))) => Attempt::HeldBy {
            holder,
            remaining_ms,
        },
        // Released between the two statements: try again at once.
        (None, None) => Attempt::HeldBy {
            holder: "(just released)".into(),
            remaining_ms: 0,
        },
    })
}

/// Renews the lease; `false` when it is no longer ours.
async fn renew(pool: &SqlPool, holder: &str, ttl: Duration) -> Result<bool, ClusterError> {
    const DOING: &str = "renewing the single-node lease";
    let updated = match pool {
        #[cfg(feature = "postgres")]
        SqlPool::Postgres(pool) => sqlx::query(queries::postgres::RENEW)
            .bind(LEASE_NAME)
            .bind(holder)
            .bind(ttl_ms(ttl))
            .execute(pool)
            .await
            .map(|done| done.rows_affected()),
        #[cfg(feature = "sqlite")]
        SqlPool::Sqlite(pool) => sqlx::query(queries::sqlite::RENEW)
            .bind(LEASE_NAME)
            .bind(holder)
            .bind(now_ms())
            .bind(ttl_ms(ttl))
            .execute(pool)
            .await
            .map(|done| done.rows_affected()),
        #[allow(unreachable_patterns)]
        _ => return Err(unknown_pool()),
    }
    .map_err(|e| db_error(DOING, e))?;
    Ok(updated == 1)
}

async fn release(pool: &SqlPool, holder: &str) -> Result<(), ClusterError> {
    const DOING: &str = "releasing the single-node lease";
    match pool {
        #[cfg(feature = "postgres")]
        SqlPool::Postgres(pool) => sqlx::query(queries::postgres::RELEASE)
            .bind(LEASE_NAME)
            .bind(holder)
            .execute(pool)
            .await
            .map(drop),
        #[cfg(feature = "sqlite")]
        SqlPool::Sqlite(pool) => sqlx::query(queries::sqlite::RELEASE)
            .bind(LEASE_NAME)
            .bind(holder)
            .execute(pool)
            .await
            .map(drop),
        #[allow(unreachable_patterns)]
        _ => return Err(unknown_pool()),
    }
    .map_err(|e| db_error(DOING, e))
}
