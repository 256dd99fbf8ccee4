//! [`SingleRunner`]: a one-node cluster that owns every shard.
//!
//! Memory backends by default; entities, workflows, singletons and cron register on
//! `runner.sharding()` exactly as on a production `ShardingImpl`.
//!
//! # Durable single node (features `postgres` / `sqlite`)
//!
//! [`SingleRunnerBuilder::postgres`] and [`SingleRunnerBuilder::sqlite`] put message storage,
//! workflow journal and workflow engine on one database pool; `build` runs the migrations.
//! Persisted messages, replies, journals and timers then survive a restart: the next
//! single node on the same database picks them up.
//!
//! A durable single node owns every shard, so two of them on one database would take each
//! other's messages. `build` therefore takes an exclusive **single-node lease** in the
//! database (table `cruster_single_node_lease`; holder id `runner address/pid N/nonce`):
//!
//! * if another live node holds it, `build` fails at once with
//!   `ClusterError::InvalidConfig { field: "single_node_lease", .. }` naming the holder;
//! * with [`SingleRunnerBuilder::standby`]`(true)` it waits until the lease is free instead;
//! * the lease is renewed every sixth of its TTL ([`SingleRunnerBuilder::lease_ttl`],
//!   default 15 s) through a database connection of its own (application work that keeps
//!   the pool busy never delays a renewal), released by [`SingleRunner::shutdown`], and
//!   expires after its TTL when the process dies;
//! * a node that has not confirmed a renewal within ⅔ of the TTL of sending it stops at
//!   once (no drain), before a standby can take the expired lease over.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn run() -> Result<(), cruster::ClusterError> {
//! use cruster::prelude::*;
//!
//! let pool = cruster::sqlx::PgPool::connect("postgres://cruster:cruster@127.0.0.1/cruster").await?;
//! let runner = SingleRunner::builder().postgres(pool).build().await?;
//! // register entities and workflows on runner.sharding() ...
//! runner.shutdown().await?; // also releases the lease
//! # Ok(()) }
//! ```
//!
//! ```
//! use cruster::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ClusterError> {
//! let runner = SingleRunner::builder().build().await?;
//! assert!(!runner.sharding().owned_shards().is_empty());
//! runner.shutdown().await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use std::time::Duration;

use cruster_message_storage::MessageStorage;
use cruster_storage_memory::InProcessNetwork;
use cruster_types::ClusterError;
use cruster_workflow_storage::{WorkflowEngine, WorkflowStorage};

use crate::clock::Clock;
use crate::config::ShardingConfig;
use crate::metrics::ClusterMetrics;
use crate::sharding_impl::ShardingImpl;

/// A one-node cluster. See the module docs.
pub struct SingleRunner {
    sharding: Arc<ShardingImpl>,
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    lease: tokio::sync::Mutex<Option<crate::single_node::lease::SingleNodeLease>>,
}

/// Default TTL of the single-node lease.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

impl std::fmt::Debug for SingleRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleRunner").finish_non_exhaustive()
    }
}

impl SingleRunner {
    /// Starts building a single runner (memory backends unless told otherwise).
    pub fn builder() -> SingleRunnerBuilder {
        SingleRunnerBuilder::default()
    }

    /// The runner, to register entities, workflows, singletons and cron on.
    pub fn sharding(&self) -> &Arc<ShardingImpl> {
        &self.sharding
    }

    /// Graceful shutdown (see [`ShardingImpl::shutdown`]); on a SQL database, then releases
    /// the single-node lease so that the next node starts at once.
    ///
    /// # Errors
    /// As [`ShardingImpl::shutdown`]; `PersistenceError` when the lease cannot be released
    /// (it then expires after its TTL).
    pub async fn shutdown(&self) -> Result<(), ClusterError> {
        self.sharding.shutdown().await?;
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        if let Some(mut lease) = self.lease.lock().await.take() {
            lease.release().await?;
        }
        Ok(())
    }

    /// The holder id of the single-node lease this runner holds (`runner address/pid
    /// N/nonce`), or `None` on memory storage.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub async fn lease_holder(&self) -> Option<String> {
        self.lease
            .lock()
            .await
            .as_ref()
            .map(|lease| lease.holder().to_owned())
    }
}

/// Builder of a [`SingleRunner`].
#[derive(Default)]
pub struct SingleRunnerBuilder {
    config: Option<ShardingConfig>,
    clock: Option<Clock>,
    message_storage: Option<Arc<dyn MessageStorage>>,
    workflow_storage: Option<Arc<dyn WorkflowStorage>>,
    workflow_engine: Option<Arc<dyn WorkflowEngine>>,
    metrics: Option<Arc<ClusterMetrics>>,
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    sql: Option<cruster_storage_sql::SqlPool>,
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    standby: bool,
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    lease_ttl: Option<Duration>,
}

impl SingleRunnerBuilder {
    /// Runs durably on PostgreSQL (feature `postgres`): message storage, workflow journal
    /// and workflow engine on `pool`, migrated by `build`, under the exclusive single-node
    /// lease (see the module docs). Ports set with the other methods take precedence.
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, pool: sqlx::PgPool) -> Self {
        self.sql = Some(pool.into());
        self
    }

    /// Runs durably on SQLite (feature `sqlite`): as [`Self::postgres`], on a SQLite pool
    /// (open it on a file in WAL mode, as `SqlPool::connect("sqlite:path")` does).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(mut self, pool: sqlx::SqlitePool) -> Self {
        self.sql = Some(pool.into());
        self
    }

    /// Runs durably on either SQL database; see [`Self::postgres`].
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub fn sql(mut self, pool: impl Into<cruster_storage_sql::SqlPool>) -> Self {
        self.sql = Some(pool.into());
        self
    }

    /// With `true`, `build` waits while another single node holds the database's lease and
    /// starts once it is released or expires, instead of failing at once (default `false`).
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub fn standby(mut self, standby: bool) -> Self {
        self.standby = standby;
        self
    }

    /// TTL of the single-node lease (default 15 s): how long after a crash the next node
    /// may take over. Renewed every third of it.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = Some(ttl);
        self
    }

    /// The clock business time is read from (default: the configuration's, which is the
    /// system clock unless set). Pass a [`VirtualClock`](crate::clock::VirtualClock) to
    /// test timers, cron and backoff in milliseconds; see the README's testing section.
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = Some(clock.into());
        self
    }

    /// Sets the configuration (default: `ShardingConfig::default()`).
    pub fn config(mut self, config: ShardingConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Uses this message storage instead of memory.
    pub fn message_storage(mut self, storage: Arc<dyn MessageStorage>) -> Self {
        self.message_storage = Some(storage);
        self
    }

    /// Uses this workflow journal storage instead of memory.
    pub fn workflow_storage(mut self, storage: Arc<dyn WorkflowStorage>) -> Self {
        self.workflow_storage = Some(storage);
        self
    }

    /// Uses this workflow engine storage instead of memory.
    pub fn workflow_engine(mut self, engine: Arc<dyn WorkflowEngine>) -> Self {
        self.workflow_engine = Some(engine);
        self
    }

    /// Exports metrics through these (default: unregistered).
    pub fn metrics(mut self, metrics: Arc<ClusterMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Builds and starts the runner. On a SQL pool, first runs the migrations and takes
    /// the single-node lease.
    ///
    /// # Errors
    /// `InvalidConfig` for a bad configuration, or (field `single_node_lease`) when another
    /// single node holds the database; `PersistenceError` when the database cannot be
    /// reached or migrated; storage errors while starting.
    // Without the SQL features the error paths below are plain `?`s.
    #[allow(unused_mut, clippy::question_mark)]
    pub async fn build(mut self) -> Result<SingleRunner, ClusterError> {
        let mut config = self.config.take().unwrap_or_default();
        if let Some(clock) = self.clock.take() {
            config.clock = clock;
        }
        let config = Arc::new(config);
        config.validate()?;
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        let mut lease = match self.sql.take() {
            Some(pool) => Some(self.prepare_sql(pool, &config).await?),
            None => None,
        };
        let network = InProcessNetwork::new();
        // Ports given to this builder win; `memory()` fills the rest.
        let mut ports = ShardingImpl::builder()
            .config((*config).clone())
            .runners(Arc::new(network.runners()));
        if let Some(storage) = self.message_storage.take() {
            ports = ports.message_storage(storage);
        }
        if let Some(storage) = self.workflow_storage.take() {
            ports = ports.workflow_storage(storage);
        }
        if let Some(engine) = self.workflow_engine.take() {
            ports = ports.workflow_engine(engine);
        }
        if let Some(metrics) = self.metrics.take() {
            ports = ports.metrics(metrics);
        }
        let sharding = ports.memory().build();
        let sharding = match sharding {
            Ok(sharding) => sharding,
            Err(err) => {
                #[cfg(any(feature = "postgres", feature = "sqlite"))]
                if let Some(mut lease) = lease.take() {
                    let _ = lease.release().await;
                }
                return Err(err);
            }
        };
        network.register(config.runner_address.clone(), sharding.clone());
        #[cfg(any(feature = "postgres", feature = "sqlite"))]
        if let Some(lease) = lease.as_mut() {
            lease.start_heartbeat(
                self.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
                Arc::downgrade(&sharding),
            );
        }
        if let Err(err) = sharding.start().await {
            #[cfg(any(feature = "postgres", feature = "sqlite"))]
            if let Some(mut lease) = lease.take() {
                let _ = lease.release().await;
            }
            return Err(err);
        }
        Ok(SingleRunner {
            sharding,
            #[cfg(any(feature = "postgres", feature = "sqlite"))]
            lease: tokio::sync::Mutex::new(lease),
        })
    }

    /// Migrates the database, takes the single-node lease and fills the storage ports not
    /// set explicitly with SQL backends on `pool`.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    async fn prepare_sql(
        &mut self,
        pool: cruster_storage_sql::SqlPool,
        config: &ShardingConfig,
    ) -> Result<crate::single_node::lease::SingleNodeLease, ClusterError> {
        use crate::single_node::lease::SingleNodeLease;
        use cruster_storage_sql::{SqlMessageStorage, SqlWorkflowEngine, SqlWorkflowStorage};

        let ttl = self.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
        if ttl < Duration::from_millis(30) {
            return Err(ClusterError::InvalidConfig {
                field: "lease_ttl".into(),
                reason: format!("must be at least 30 ms (got {ttl:?})"),
            });
        }
        pool.migrate().await?;
        let holder = SingleNodeLease::holder_id(&config.runner_address);
        let lease = SingleNodeLease::acquire(pool.clone(), holder, ttl, self.standby).await?;
        if self.message_storage.is_none() {
            self.message_storage = Some(Arc::new(SqlMessageStorage::from_pool(pool.clone())));
        }
        if self.workflow_storage.is_none() {
            self.workflow_storage = Some(Arc::new(SqlWorkflowStorage::from_pool(pool.clone())));
        }
        if self.workflow_engine.is_none() {
            self.workflow_engine = Some(Arc::new(SqlWorkflowEngine::from_pool(pool)));
        }
        Ok(lease)
    }
}
