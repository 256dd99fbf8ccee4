//! Test support: [`MemoryCluster`] (several runners in one process, over shared memory
//! storage and the in-process transport, for tests of multi-runner behaviour) and
//! [`VirtualClock`] (business time that moves only when the test says so).
//!
//! ```
//! use cruster::prelude::*;
//! use cruster::testing::MemoryCluster;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), ClusterError> {
//! let cluster = MemoryCluster::builder()
//!     .runners(3)
//!     .setup(|_sharding| async move { Ok(()) }) // register entities here, as a runner binary does
//!     .build()
//!     .await?;
//! cluster.wait_until_balanced(std::time::Duration::from_secs(5)).await?;
//! cluster.kill_runner(1);
//! cluster.start_runner(1).await?;
//! cluster.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Testing with a virtual clock
//!
//! Build a runner (or a whole `MemoryCluster`) with a [`VirtualClock`]; then
//! [`VirtualClock::advance`] fires everything due on the way — workflow sleeps,
//! `send_at`/`notify_at`, cron runs, activity and singleton retry backoff, redelivery
//! backoff, idle eviction — in order of its instant, and returns once the work each one
//! caused has settled. A day of timers takes milliseconds:
//!
//! ```
//! use std::time::Duration;
//! use chrono::TimeZone;
//! use cruster::cron::{ClusterCron, CronSchedule};
//! use cruster::prelude::*;
//! use cruster::testing::VirtualClock;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ClusterError> {
//! let start = chrono::Utc.with_ymd_and_hms(2030, 1, 1, 0, 30, 0).unwrap();
//! let clock = VirtualClock::starting_at(start);
//! let runner = SingleRunner::builder().clock(clock.clone()).build().await?;
//!
//! let runs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
//! let seen = runs.clone();
//! ClusterCron::new("hourly", CronSchedule::parse("0 0 * * * *")?, move |scheduled| {
//!     seen.lock().unwrap().push(scheduled);
//!     Box::pin(async { Ok(()) })
//! })
//! .register(runner.sharding().as_ref())
//! .await?;
//! // Wait (in real time) until the cron has armed its first run, then move a day ahead.
//! let first = chrono::Utc.with_ymd_and_hms(2030, 1, 1, 1, 0, 0).unwrap();
//! while !clock.timers().contains(&first) {
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//! }
//! clock.advance(Duration::from_secs(24 * 3600)).await;
//! assert_eq!(runs.lock().unwrap().len(), 24); // 01:00 on the first day .. 00:00 on the next
//! runner.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Leases, membership heartbeats, call deadlines and the poll's own cadence stay on real
//! time (see [`crate::clock`]): a virtual clock changes when business events are due,
//! never whether a runner looks alive.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster_storage_memory::{
    InProcessNetwork, MemoryMessageStorage, MemoryRunnerStorage, MemoryWorkflowEngine,
    MemoryWorkflowStorage,
};
use cruster_types::{ClusterError, RunnerAddress};
use parking_lot::Mutex;

use crate::clock::Clock;
pub use crate::clock::VirtualClock;
use crate::config::ShardingConfig;
use crate::metrics::ClusterMetrics;
use crate::sharding_impl::ShardingImpl;

type SetupFn = Arc<
    dyn Fn(Arc<ShardingImpl>) -> Pin<Box<dyn Future<Output = Result<(), ClusterError>> + Send>>
        + Send
        + Sync,
>;

/// N runners in one process. See the module docs.
pub struct MemoryCluster {
    config: ShardingConfig,
    network: InProcessNetwork,
    /// The message storage all runners share.
    pub message_storage: Arc<MemoryMessageStorage>,
    /// The workflow journal all runners share.
    pub workflow_storage: Arc<MemoryWorkflowStorage>,
    /// The workflow engine storage all runners share.
    pub workflow_engine: Arc<MemoryWorkflowEngine>,
    /// The runner registry and shard locks all runners share.
    pub runner_storage: Arc<MemoryRunnerStorage>,
    setup: SetupFn,
    slots: Mutex<Vec<Slot>>,
}

struct Slot {
    sharding: Arc<ShardingImpl>,
    running: bool,
}

impl MemoryCluster {
    /// Starts building a cluster (3 runners, TTL 1 s, poll 100 ms by default).
    pub fn builder() -> MemoryClusterBuilder {
        MemoryClusterBuilder {
            runners: 3,
            config: ShardingConfig {
                runner_lock_ttl: Duration::from_secs(1),
                storage_poll_interval: Duration::from_millis(100),
                shutdown_timeout: Duration::from_secs(2),
                ..Default::default()
            },
            clock: None,
            setup: Arc::new(|_| Box::pin(async { Ok(()) })),
        }
    }

    /// The address of runner `i`.
    pub fn address(i: usize) -> RunnerAddress {
        RunnerAddress::new(format!("memory-runner-{i}"), 9000)
    }

    /// How many runner slots the cluster has.
    pub fn len(&self) -> usize {
        self.slots.lock().len()
    }

    /// Whether the cluster has no runner slots.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runner `i` (the latest instance started in slot `i`, even if stopped since).
    ///
    /// # Panics
    /// If `i` is not a slot of this cluster (a test bug).
    #[allow(clippy::panic)]
    pub fn runner(&self, i: usize) -> Arc<ShardingImpl> {
        match self.slots.lock().get(i) {
            Some(slot) => slot.sharding.clone(),
            None => panic!("MemoryCluster has no runner {i}"),
        }
    }

    /// Whether runner `i` is running.
    pub fn is_running(&self, i: usize) -> bool {
        self.slots.lock().get(i).is_some_and(|s| s.running)
    }

    /// The running runners.
    pub fn running(&self) -> Vec<Arc<ShardingImpl>> {
        self.slots
            .lock()
            .iter()
            .filter(|s| s.running)
            .map(|s| s.sharding.clone())
            .collect()
    }

    async fn launch(&self, i: usize) -> Result<Arc<ShardingImpl>, ClusterError> {
        let config = Arc::new(ShardingConfig {
            runner_address: Self::address(i),
            ..self.config.clone()
        });
        let sharding = ShardingImpl::new_with_engines(
            config.clone(),
            Arc::new(self.network.runners()),
            Some(self.runner_storage.clone()),
            Some(self.runner_storage.clone()),
            Some(self.message_storage.clone()),
            Some(self.workflow_storage.clone()),
            Some(self.workflow_engine.clone()),
            Arc::new(ClusterMetrics::unregistered()),
        )?;
        (self.setup)(sharding.clone()).await?;
        self.network
            .register(config.runner_address.clone(), sharding.clone());
        sharding.start().await?;
        Ok(sharding)
    }

    /// Starts (or restarts) runner `i`, running the setup callback first.
    ///
    /// # Errors
    /// `InvalidConfig` if it is running; errors of the setup callback or of starting.
    pub async fn start_runner(&self, i: usize) -> Result<(), ClusterError> {
        if self.is_running(i) {
            return Err(ClusterError::InvalidConfig {
                field: "runner".into(),
                reason: format!("runner {i} is already running"),
            });
        }
        let sharding = self.launch(i).await?;
        let mut slots = self.slots.lock();
        while slots.len() <= i {
            slots.push(Slot {
                sharding: sharding.clone(),
                running: false,
            });
        }
        slots[i] = Slot {
            sharding,
            running: true,
        };
        Ok(())
    }

    /// Graceful stop of runner `i`: drains, releases its shards and leaves.
    ///
    /// # Errors
    /// As [`ShardingImpl::shutdown`].
    pub async fn stop_runner(&self, i: usize) -> Result<(), ClusterError> {
        let sharding = {
            let mut slots = self.slots.lock();
            match slots.get_mut(i) {
                Some(slot) if slot.running => {
                    slot.running = false;
                    slot.sharding.clone()
                }
                _ => return Ok(()),
            }
        };
        sharding.shutdown().await?;
        self.network.unregister(sharding.runner_address());
        Ok(())
    }

    /// Abrupt stop of runner `i`, as a crash: nothing is released; its registration and
    /// shard locks expire after `runner_lock_ttl`, and messages to it fail.
    pub fn kill_runner(&self, i: usize) {
        let sharding = {
            let mut slots = self.slots.lock();
            match slots.get_mut(i) {
                Some(slot) if slot.running => {
                    slot.running = false;
                    slot.sharding.clone()
                }
                _ => return,
            }
        };
        self.network.unregister(sharding.runner_address());
        sharding.kill();
    }

    /// Waits until every shard of the default group is held by exactly one running runner
    /// and each runner holds what the assignment gives it.
    ///
    /// # Errors
    /// `Timeout` if that does not happen within `timeout`.
    pub async fn wait_until_balanced(&self, timeout: Duration) -> Result<(), ClusterError> {
        let started = Instant::now();
        let total = self.config.shards_per_group as usize;
        loop {
            let running = self.running();
            let held: usize = running.iter().map(|r| r.owned_shards().len()).sum();
            let every_runner_sees_all = running
                .iter()
                .all(|r| r.known_runners().len() == running.len());
            let every_runner_holds_some = running.iter().all(|r| !r.owned_shards().is_empty());
            // Each holds exactly its share: all it is assigned, and nothing it is not (a
            // shard still on its way from its old owner counts as not balanced yet).
            let every_runner_holds_its_share = running.iter().all(|r| {
                let (assigned, held_of_assigned) = r.assigned_and_held_shards();
                assigned == held_of_assigned && r.owned_shards().len() == assigned
            });
            if held >= total
                && every_runner_sees_all
                && every_runner_holds_some
                && every_runner_holds_its_share
            {
                let mut all: Vec<_> = running.iter().flat_map(|r| r.owned_shards()).collect();
                all.sort();
                all.dedup();
                if all.len() == held {
                    return Ok(());
                }
            }
            if started.elapsed() > timeout {
                return Err(ClusterError::Timeout {
                    operation: format!(
                        "cluster balance ({held} of {total} shards held by {} runners)",
                        running.len()
                    ),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every running runner gracefully.
    ///
    /// # Errors
    /// The first shutdown error.
    pub async fn shutdown(&self) -> Result<(), ClusterError> {
        for i in 0..self.len() {
            self.stop_runner(i).await?;
        }
        Ok(())
    }
}

/// Builder of a [`MemoryCluster`].
pub struct MemoryClusterBuilder {
    runners: usize,
    config: ShardingConfig,
    clock: Option<Clock>,
    setup: SetupFn,
}

impl MemoryClusterBuilder {
    /// How many runners to start (default 3).
    pub fn runners(mut self, n: usize) -> Self {
        self.runners = n;
        self
    }

    /// The configuration every runner uses (its `runner_address` is replaced per runner).
    pub fn config(mut self, config: ShardingConfig) -> Self {
        self.config = config;
        self
    }

    /// The clock every runner reads business time from (default: the configuration's).
    /// One [`VirtualClock`] shared by all runners moves the whole cluster's timers.
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = Some(clock.into());
        self
    }

    /// Runs at every runner start, before it starts: register entities, workflows,
    /// singletons and cron here, as a runner binary does.
    pub fn setup<F, Fut>(mut self, setup: F) -> Self
    where
        F: Fn(Arc<ShardingImpl>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ClusterError>> + Send + 'static,
    {
        self.setup = Arc::new(move |sharding| Box::pin(setup(sharding)));
        self
    }

    /// Builds the cluster and starts every runner.
    ///
    /// # Errors
    /// Errors of the setup callback or of starting a runner.
    pub async fn build(self) -> Result<MemoryCluster, ClusterError> {
        let mut config = self.config;
        if let Some(clock) = self.clock {
            config.clock = clock;
        }
        let cluster = MemoryCluster {
            config,
            network: InProcessNetwork::new(),
            message_storage: Arc::new(MemoryMessageStorage::new()),
            workflow_storage: Arc::new(MemoryWorkflowStorage::new()),
            workflow_engine: Arc::new(MemoryWorkflowEngine::new()),
            runner_storage: Arc::new(MemoryRunnerStorage::new()),
            setup: self.setup,
            slots: Mutex::new(Vec::new()),
        };
        for i in 0..self.runners {
            cluster.start_runner(i).await?;
        }
        Ok(cluster)
    }
}
