//! [`SqlRunnerStorage`]: runner registrations (`cruster_runners`) and shard locks
//! (`cruster_shard_locks`) as rows whose expiry is pushed forward by heartbeats.
//!
//! Owns the translation of the `RunnerStorage` port onto those two tables and the polling
//! task behind each membership watch. Every expiry is computed and compared by the
//! database, in the statement that reads or writes it, so runners whose clocks disagree
//! still agree on who holds what. Every call is bounded by the statement timeout. Never
//! holds a lock across an await; routing, retries and fencing are the runtime's.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cruster_runner_storage::{Runner, RunnerHealth, RunnerStorage};
use cruster_types::{ClusterError, MachineId, RunnerAddress, ShardId};
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;

use crate::dialect::per_dialect;
use crate::pool::SqlPool;
use crate::rows::{failed, Columns};

/// How long one call may take by default (pool checkout included).
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds of the watch's poll interval when it is derived from the TTL.
const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(25);
const MAX_WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How often a registration that collided with a concurrent one on a machine id retries.
const REGISTER_ATTEMPTS: u32 = 64;
/// Connections of the pool opened by [`SqlRunnerStorage::connect_dedicated`]: one for each
/// of a runner's concurrent users of the storage (keep-alive, lock renewal, membership
/// poll) and, on PostgreSQL, one held by the watch's `LISTEN`.
const DEDICATED_POOL_SIZE: u32 = 4;

/// [`RunnerStorage`] and storage-based [`RunnerHealth`] in PostgreSQL or SQLite: a cluster
/// on PostgreSQL alone (or on one host with SQLite), no etcd.
///
/// * **Rows with expiries.** A registration is a row of `cruster_runners`, a shard lock a
///   row of `cruster_shard_locks`; each holds an expiry in unix milliseconds of the
///   *database* clock, set to `now + ttl` by the statement that writes it and compared with
///   the database's `now` by every statement that reads it (PostgreSQL
///   `clock_timestamp()`, SQLite `unixepoch('subsec')`). An expired row counts as absent.
/// * **Locks.** `acquire_shards` is one `INSERT … ON CONFLICT (shard) DO UPDATE … WHERE
///   expired OR ours RETURNING shard`: concurrent takers of a shard have exactly one
///   winner. `refresh_shards` extends only live locks of the caller and returns them;
///   `release_shards` deletes only the caller's.
/// * **Machine ids** are unique among the rows (a unique index); expired rows are deleted
///   before a new runner picks a free id, so ids of departed runners are reused.
/// * **Watch.** `watch_runners` yields the current list, then a new list after each change:
///   at once for registrations made through this storage (and its clones) and, on
///   PostgreSQL, for those of other processes too (`LISTEN`/`NOTIFY` on a channel named
///   after the schema); expiries, and anything a lost notification hid, at the next poll. The poll interval is a quarter of the smallest TTL this storage was
///   given, between 25 ms and 1 s ([`with_watch_interval`](Self::with_watch_interval) sets
///   it). A row that does not decode is logged and skipped.
/// * **Bounded calls.** Every call, pool checkout included, gives up after the statement
///   timeout (default 5 s, [`with_statement_timeout`](Self::with_statement_timeout)) with a
///   `PersistenceError` whose source is a `ClusterError::Timeout`.
///
/// # A pool of its own
///
/// Keep-alives and lock refreshes must not wait behind application work for a pooled
/// connection: a refresh that waits past the TTL loses the runner its shards. Give the
/// runner storage its own small pool (four connections are enough: keep-alive, lock
/// renewal, membership poll, and the watch's `LISTEN` on PostgreSQL), separate from the
/// pool of the message storage and of your activities:
///
/// ```no_run
/// # async fn run() -> Result<(), cruster_types::ClusterError> {
/// use cruster_storage_sql::SqlRunnerStorage;
///
/// let url = "postgres://cruster:cruster@127.0.0.1:5432/cruster";
/// // Either open one from a URL…
/// let runners = SqlRunnerStorage::connect_dedicated(url).await?;
/// runners.migrate().await?;
/// // …or build the pool yourself.
/// let own_pool = sqlx::postgres::PgPoolOptions::new()
///     .max_connections(4)
///     .connect(url)
///     .await?;
/// let runners = SqlRunnerStorage::new(own_pool)
///     .with_statement_timeout(std::time::Duration::from_secs(2));
/// # Ok(()) }
/// ```
///
/// Cheap to clone: clones share the pool and wake each other's watches.
#[derive(Clone, Debug)]
pub struct SqlRunnerStorage {
    pool: SqlPool,
    statement_timeout: Duration,
    watch_interval: Option<Duration>,
    shared: Arc<Shared>,
}

/// What clones of one storage share.
#[derive(Debug)]
struct Shared {
    /// The smallest TTL given to `register` / `keep_alive`, in ms (`u64::MAX`: none yet).
    smallest_ttl_ms: AtomicU64,
    /// Bumped after every membership change made through this storage, to wake watches.
    membership_changed: watch::Sender<()>,
}

impl Shared {
    fn new() -> Self {
        Shared {
            smallest_ttl_ms: AtomicU64::new(u64::MAX),
            membership_changed: watch::Sender::new(()),
        }
    }
}

crate::backend_constructors!(
    SqlRunnerStorage,
    "runner storage",
    statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
    watch_interval: None,
    shared: Arc::new(Shared::new()),
);

impl SqlRunnerStorage {
    /// Opens a small pool of its own (4 connections) on `url` (`postgres://…` or
    /// `sqlite:path`), so renewals never wait behind application work for a connection.
    /// Call `migrate()` once before first use.
    ///
    /// # Errors
    /// `PersistenceError` as [`SqlPool::connect`].
    pub async fn connect_dedicated(url: &str) -> Result<Self, ClusterError> {
        Ok(Self::from_pool(
            SqlPool::connect_with_max_connections(url, Some(DEDICATED_POOL_SIZE)).await?,
        ))
    }

    /// Bounds every call (pool checkout included) to `timeout`; past it the call fails
    /// with a `PersistenceError`. Default 5 s; keep it well under the lock TTL.
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Polls membership every `interval` for watches, instead of a quarter of the TTL.
    pub fn with_watch_interval(mut self, interval: Duration) -> Self {
        self.watch_interval = Some(interval);
        self
    }

    /// The statement timeout in force.
    pub fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    fn note_ttl(&self, ttl: Duration) {
        self.shared
            .smallest_ttl_ms
            .fetch_min(millis(ttl).unsigned_abs(), Ordering::Relaxed);
    }

    fn poll_interval(&self) -> Duration {
        if let Some(interval) = self.watch_interval {
            return interval;
        }
        match self.shared.smallest_ttl_ms.load(Ordering::Relaxed) {
            u64::MAX => MAX_WATCH_INTERVAL,
            ttl => (Duration::from_millis(ttl) / 4).clamp(MIN_WATCH_INTERVAL, MAX_WATCH_INTERVAL),
        }
    }

    /// Wakes the watches of this storage and its clones at once, and on PostgreSQL those
    /// of every other process through `NOTIFY`. A failed notification is only logged: the
    /// watches' poll sees the change anyway.
    async fn announce_membership_change(&self) {
        self.shared.membership_changed.send_replace(());
        #[cfg(feature = "postgres")]
        match &self.pool {
            SqlPool::Postgres(pool) => {
                let notify = async {
                    sqlx::query(crate::queries::postgres::NOTIFY_MEMBERSHIP)
                        .execute(pool)
                        .await
                        .map(drop)
                        .map_err(|e| failed("notifying membership watches", e))
                };
                if let Err(err) = self.bounded("notifying membership watches", notify).await {
                    tracing::debug!(
                        %err,
                        "membership NOTIFY failed; other processes see the change by polling"
                    );
                }
            }
            #[cfg(feature = "sqlite")]
            SqlPool::Sqlite(_) => {}
        }
    }

    /// Runs `work` within the statement timeout.
    async fn bounded<T>(
        &self,
        doing: impl Display,
        work: impl Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(self.statement_timeout, work).await {
            Ok(answer) => answer,
            Err(_) => {
                let operation = doing.to_string();
                Err(ClusterError::PersistenceError {
                    reason: format!(
                        "{operation} timed out after {:?} (the runner storage's statement \
                         timeout): the database is slow or unreachable, or the pool has no \
                         free connection; give the runner storage a pool of its own",
                        self.statement_timeout
                    ),
                    source: Some(Box::new(ClusterError::Timeout {
                        operation,
                        timeout: self.statement_timeout,
                    })),
                })
            }
        }
    }

    /// On PostgreSQL, a listener on this schema's membership channel, so a watch hears of
    /// other processes' joins and leaves at once. `None` on SQLite, or when listening
    /// fails (logged; the watch then relies on its poll).
    #[cfg(feature = "postgres")]
    async fn listen_for_membership_changes(&self) -> Option<sqlx::postgres::PgListener> {
        // Infallible when only the `postgres` feature is on.
        #[allow(clippy::infallible_destructuring_match)]
        let pool = match &self.pool {
            SqlPool::Postgres(pool) => pool,
            #[cfg(feature = "sqlite")]
            SqlPool::Sqlite(_) => return None,
        };
        let listen = async {
            let channel: String = sqlx::query_scalar(crate::queries::postgres::MEMBERSHIP_CHANNEL)
                .fetch_one(pool)
                .await
                .map_err(|e| failed("naming the membership channel", e))?;
            let mut listener = sqlx::postgres::PgListener::connect_with(pool)
                .await
                .map_err(|e| failed("opening a membership listener", e))?;
            listener
                .listen(&channel)
                .await
                .map_err(|e| failed("listening for membership changes", e))?;
            Ok(listener)
        };
        match self
            .bounded("listening for membership changes", listen)
            .await
        {
            Ok(listener) => Some(listener),
            Err(err) => {
                tracing::warn!(%err, "membership watch falls back to polling only");
                None
            }
        }
    }

    /// One attempt at registering: purge expired rows, then upsert. `Ok(None)`: no free id.
    async fn try_register(
        &self,
        address: &str,
        weight: i64,
        ttl_ms: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query(d::sql::PURGE_EXPIRED_RUNNERS)
                .execute(pool)
                .await?;
            sqlx::query_scalar(d::sql::REGISTER_RUNNER)
                .bind(address)
                .bind(weight)
                .bind(ttl_ms)
                .fetch_optional(pool)
                .await
        })
    }

    /// Runs a lock statement binding (`$1` shard list, `$2` owner[, `$3` TTL]) and returns
    /// the shards it answered, in the caller's order.
    async fn lock_statement(
        &self,
        doing: &str,
        statement: LockStatement,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Option<Duration>,
    ) -> Result<Vec<ShardId>, ClusterError> {
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        let owner_text = owner.to_string();
        let ttl_ms = ttl.map(millis);
        self.bounded(format!("{doing} for {owner}"), async {
            let answered: Vec<String> = per_dialect!(&self.pool, SqlPool, |pool, d| {
                let list = d::shard_list(shards)?;
                let sql = match statement {
                    LockStatement::Acquire => d::sql::ACQUIRE_SHARD_LOCKS,
                    LockStatement::Refresh => d::sql::REFRESH_SHARD_LOCKS,
                    LockStatement::Release => d::sql::RELEASE_SHARD_LOCKS,
                };
                let mut query = sqlx::query_scalar(sql).bind(list).bind(&owner_text);
                if let Some(ttl_ms) = ttl_ms {
                    query = query.bind(ttl_ms);
                }
                query
                    .fetch_all(pool)
                    .await
                    .map_err(|e| failed(format_args!("{doing} for {owner}"), e))?
            });
            Ok(in_callers_order(shards, &answered))
        })
        .await
    }
}

#[derive(Clone, Copy)]
enum LockStatement {
    Acquire,
    Refresh,
    Release,
}

/// A duration as whole milliseconds for a bind parameter (saturating).
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The shards of `asked` (deduplicated, in their order) that appear in `answered`.
/// A returned name that is not one of them (it cannot be: the statements return the
/// shards they were given) is logged and skipped.
fn in_callers_order(asked: &[ShardId], answered: &[String]) -> Vec<ShardId> {
    let answered: std::collections::HashSet<&str> = answered.iter().map(String::as_str).collect();
    let mut held = Vec::with_capacity(answered.len());
    let mut seen = std::collections::HashSet::new();
    for shard in asked {
        let name = shard.to_string();
        if answered.contains(name.as_str()) && seen.insert(name) {
            held.push(shard.clone());
        }
    }
    if held.len() < answered.len() {
        tracing::warn!(
            answered = ?answered,
            "the database answered shard locks that were not asked for; ignoring them"
        );
    }
    held
}

/// A `cruster_runners` row as a [`Runner`], or why it cannot be one.
fn decode_runner(row: &impl Columns) -> Result<Runner, String> {
    let address = row.text("address").map_err(|e| e.to_string())?;
    let parsed = address
        .parse::<RunnerAddress>()
        .map_err(|e| format!("address `{address}`: {e}"))?;
    let machine_id = row.int("machine_id").map_err(|e| e.to_string())?;
    let machine_id = u16::try_from(machine_id)
        .map_err(|_| ())
        .and_then(|id| MachineId::new(id).map_err(|_| ()))
        .map_err(|()| format!("runner {address}: machine id {machine_id} is out of range"))?;
    let weight = row.int("weight").map_err(|e| e.to_string())?;
    let weight = u32::try_from(weight)
        .map_err(|_| format!("runner {address}: weight {weight} is out of range"))?;
    Ok(Runner {
        address: parsed,
        machine_id,
        weight,
    })
}

#[async_trait]
impl RunnerStorage for SqlRunnerStorage {
    async fn register(
        &self,
        address: &RunnerAddress,
        weight: u32,
        ttl: Duration,
    ) -> Result<MachineId, ClusterError> {
        self.note_ttl(ttl);
        let name = address.to_string();
        let id = self
            .bounded(format!("registering runner {address}"), async {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match self
                        .try_register(&name, i64::from(weight), millis(ttl))
                        .await
                    {
                        Ok(id) => return Ok(id),
                        // A concurrent registration took the same free id first.
                        Err(sqlx::Error::Database(e))
                            if e.is_unique_violation() && attempt < REGISTER_ATTEMPTS =>
                        {
                            continue
                        }
                        Err(e) => {
                            return Err(failed(format_args!("registering runner {address}"), e))
                        }
                    }
                }
            })
            .await?;
        let Some(id) = id else {
            return Err(ClusterError::InvalidConfig {
                field: "machine_id".into(),
                reason: format!(
                    "runner {address} cannot register: all {} machine ids are taken by live \
                     runners; stop a runner or wait for a dead one's registration to expire",
                    u32::from(MachineId::MAX) + 1
                ),
            });
        };
        let id = u16::try_from(id)
            .map_err(|_| ())
            .and_then(|id| MachineId::new(id).map_err(|_| ()))
            .map_err(|()| ClusterError::MalformedMessage {
                reason: format!(
                    "the database gave runner {address} machine id {id}, not in 0..=1023"
                ),
                source: None,
            })?;
        self.announce_membership_change().await;
        Ok(id)
    }

    async fn keep_alive(
        &self,
        address: &RunnerAddress,
        ttl: Duration,
    ) -> Result<bool, ClusterError> {
        self.note_ttl(ttl);
        let name = address.to_string();
        self.bounded(format!("keeping runner {address} alive"), async {
            per_dialect!(&self.pool, SqlPool, |pool, d| {
                sqlx::query(d::sql::KEEP_RUNNER_ALIVE)
                    .bind(&name)
                    .bind(millis(ttl))
                    .fetch_optional(pool)
                    .await
                    .map(|row| row.is_some())
            })
            .map_err(|e| failed(format_args!("keeping runner {address} alive"), e))
        })
        .await
    }

    async fn unregister(&self, address: &RunnerAddress) -> Result<(), ClusterError> {
        let name = address.to_string();
        self.bounded(format!("unregistering runner {address}"), async {
            per_dialect!(&self.pool, SqlPool, |pool, d| {
                let mut tx = pool.begin().await?;
                sqlx::query(d::sql::RELEASE_ALL_SHARD_LOCKS)
                    .bind(&name)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(d::sql::DELETE_RUNNER)
                    .bind(&name)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            })
            .map_err(|e| failed(format_args!("unregistering runner {address}"), e))
        })
        .await?;
        self.announce_membership_change().await;
        Ok(())
    }

    async fn runners(&self) -> Result<Vec<Runner>, ClusterError> {
        self.bounded("listing runners", async {
            let mut runners: Vec<Runner> = per_dialect!(&self.pool, SqlPool, |pool, d| {
                let rows = sqlx::query(d::sql::LIVE_RUNNERS)
                    .fetch_all(pool)
                    .await
                    .map_err(|e| failed("listing runners", e))?;
                rows.iter()
                    .filter_map(|row| match decode_runner(row) {
                        Ok(runner) => Some(runner),
                        Err(why) => {
                            tracing::warn!(
                                %why,
                                "skipping a row of cruster_runners that does not decode"
                            );
                            None
                        }
                    })
                    .collect()
            });
            runners.sort_by(|a, b| a.address.cmp(&b.address));
            Ok(runners)
        })
        .await
    }

    async fn watch_runners(
        &self,
    ) -> Result<BoxStream<'static, Result<Vec<Runner>, ClusterError>>, ClusterError> {
        let mut changes = self.shared.membership_changed.subscribe();
        changes.borrow_and_update();
        #[cfg(feature = "postgres")]
        let notifications = self.listen_for_membership_changes().await;
        let first = self.runners().await?;
        let watch = MembershipPoll {
            storage: self.clone(),
            last: first.clone(),
            changes,
            #[cfg(feature = "postgres")]
            notifications,
            #[cfg(not(feature = "postgres"))]
            notifications: None,
        };
        let later = stream::unfold(watch, |mut watch| async move {
            let next = watch.next_change().await;
            Some((next, watch))
        });
        Ok(stream::once(async move { Ok(first) }).chain(later).boxed())
    }

    async fn acquire_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError> {
        self.lock_statement(
            "acquiring shard locks",
            LockStatement::Acquire,
            owner,
            shards,
            Some(ttl),
        )
        .await
    }

    async fn refresh_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError> {
        self.lock_statement(
            "refreshing shard locks",
            LockStatement::Refresh,
            owner,
            shards,
            Some(ttl),
        )
        .await
    }

    async fn release_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
    ) -> Result<(), ClusterError> {
        self.lock_statement(
            "releasing shard locks",
            LockStatement::Release,
            owner,
            shards,
            None,
        )
        .await
        .map(drop)
    }

    async fn shard_owner(&self, shard: &ShardId) -> Result<Option<RunnerAddress>, ClusterError> {
        let name = shard.to_string();
        let owner: Option<String> = self
            .bounded(format!("reading the owner of shard {shard}"), async {
                per_dialect!(&self.pool, SqlPool, |pool, d| {
                    sqlx::query_scalar(d::sql::SHARD_OWNER)
                        .bind(&name)
                        .fetch_optional(pool)
                        .await
                })
                .map_err(|e| failed(format_args!("reading the owner of shard {shard}"), e))
            })
            .await?;
        owner
            .map(|owner| {
                owner.parse::<RunnerAddress>().map_err(|e| {
                    tracing::warn!(%shard, %owner, "the lock of a shard names an owner that does not decode");
                    ClusterError::MalformedMessage {
                        reason: format!(
                            "the lock of shard {shard} names owner `{owner}`, which is not a \
                             runner address: {e}"
                        ),
                        source: None,
                    }
                })
            })
            .transpose()
    }
}

#[async_trait]
impl RunnerHealth for SqlRunnerStorage {
    /// Alive while registered and not expired. A database error answers `false` (and is
    /// logged): a runner whose liveness cannot be confirmed is not counted on.
    async fn is_alive(&self, address: &RunnerAddress) -> bool {
        let name = address.to_string();
        let answer = self
            .bounded(
                format!("checking whether runner {address} is alive"),
                async {
                    per_dialect!(&self.pool, SqlPool, |pool, d| {
                        sqlx::query(d::sql::RUNNER_IS_LIVE)
                            .bind(&name)
                            .fetch_optional(pool)
                            .await
                            .map(|row| row.is_some())
                    })
                    .map_err(|e| {
                        failed(
                            format_args!("checking whether runner {address} is alive"),
                            e,
                        )
                    })
                },
            )
            .await;
        answer.unwrap_or_else(|err| {
            tracing::warn!(%err, %address, "runner health unknown; answering not alive");
            false
        })
    }
}

/// The state behind one membership watch: the last list it yielded and what wakes it
/// before the next poll (changes made through this storage; on PostgreSQL, `NOTIFY`s of
/// other processes). Dropped, listener and all, when the watch stream is dropped.
struct MembershipPoll {
    storage: SqlRunnerStorage,
    last: Vec<Runner>,
    changes: watch::Receiver<()>,
    #[cfg(feature = "postgres")]
    notifications: Option<sqlx::postgres::PgListener>,
    #[cfg(not(feature = "postgres"))]
    notifications: Option<std::convert::Infallible>,
}

impl MembershipPoll {
    /// Waits for a list that differs from the last one yielded (or for an error).
    async fn next_change(&mut self) -> Result<Vec<Runner>, ClusterError> {
        loop {
            let interval = self.storage.poll_interval();
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                // Never fails: `self.storage` keeps the sender alive.
                _ = self.changes.changed() => {}
                heard = next_notification(&mut self.notifications) => {
                    if let Err(err) = heard {
                        tracing::warn!(%err, "membership listener failed; the watch falls back to polling");
                        self.notifications = None;
                    }
                }
            }
            let list = self.storage.runners().await?;
            if list != self.last {
                self.last.clone_from(&list);
                return Ok(list);
            }
        }
    }
}

/// The next `NOTIFY` on the membership channel (cancel-safe); never, without a listener.
#[cfg(feature = "postgres")]
async fn next_notification(
    listener: &mut Option<sqlx::postgres::PgListener>,
) -> Result<(), sqlx::Error> {
    match listener {
        Some(listener) => listener.recv().await.map(drop),
        None => std::future::pending().await,
    }
}

/// Without PostgreSQL there is no listener: never.
#[cfg(not(feature = "postgres"))]
async fn next_notification(_: &mut Option<std::convert::Infallible>) -> Result<(), ClusterError> {
    std::future::pending().await
}
