//! Membership and shard ownership of one runner.
//!
//! Owns the runner's registration (register, keep-alive, re-register after expiry), the
//! membership watch that feeds the shard table, and the rebalance loop that turns the
//! assignment into held shard locks: release first what moved away (after stopping its
//! entities and singletons), then acquire what is assigned here, then refresh the rest.
//! Without a `RunnerStorage` the runner is alone and holds every shard.
//! Never holds a lock across an await.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster_runner_storage::RunnerStorage;
use cruster_types::{ClusterError, ShardId};
use futures::StreamExt;
use tokio::sync::Notify;

use crate::entity::registry::EntityRegistry;
use crate::runtime_core::RuntimeCore;
use crate::singleton::supervisor::SingletonSupervisor;

pub(crate) struct Membership {
    core: Arc<RuntimeCore>,
    runner_storage: Option<Arc<dyn RunnerStorage>>,
    registry: Arc<EntityRegistry>,
    supervisor: Arc<SingletonSupervisor>,
    poller_wake: Arc<Notify>,
    pub(crate) wake: Arc<Notify>,
}

impl Membership {
    pub(crate) fn new(
        core: Arc<RuntimeCore>,
        runner_storage: Option<Arc<dyn RunnerStorage>>,
        registry: Arc<EntityRegistry>,
        supervisor: Arc<SingletonSupervisor>,
        poller_wake: Arc<Notify>,
    ) -> Self {
        Membership {
            core,
            runner_storage,
            registry,
            supervisor,
            poller_wake,
            wake: Arc::new(Notify::new()),
        }
    }

    fn ttl(&self) -> Duration {
        self.core.config.runner_lock_ttl
    }

    /// Registers the runner and sets its machine id. Without runner storage, the runner
    /// is the whole cluster.
    pub(crate) async fn register(&self) -> Result<(), ClusterError> {
        let me = self.core.config.runner_address.clone();
        match &self.runner_storage {
            Some(storage) => {
                let machine = storage
                    .register(&me, self.core.config.runner_weight, self.ttl())
                    .await?;
                self.core.snowflakes.set_machine_id(machine);
                let runners = storage.runners().await?;
                self.core
                    .shard_table
                    .set_runners(runners.into_iter().map(|r| r.address).collect());
            }
            None => self.core.shard_table.set_runners(vec![me]),
        }
        Ok(())
    }

    /// Spawns the keep-alive, watch and rebalance loops.
    pub(crate) fn spawn_loops(self: &Arc<Self>) {
        if self.runner_storage.is_some() {
            let this = self.clone();
            self.core.spawn(async move { this.keep_alive_loop().await });
            let this = self.clone();
            self.core.spawn(async move { this.watch_loop().await });
        }
        let this = self.clone();
        self.core.spawn(async move { this.rebalance_loop().await });
    }

    async fn keep_alive_loop(&self) {
        let Some(storage) = &self.runner_storage else {
            return;
        };
        let me = self.core.config.runner_address.clone();
        let period = self.ttl() / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.core.stopping.cancelled() => return,
            }
            match storage.keep_alive(&me, self.ttl()).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("runner registration had expired; registering again");
                    match storage
                        .register(&me, self.core.config.runner_weight, self.ttl())
                        .await
                    {
                        Ok(machine) => self.core.snowflakes.set_machine_id(machine),
                        Err(err) => tracing::warn!(%err, "re-registration failed"),
                    }
                }
                Err(err) => tracing::warn!(%err, "runner keep-alive failed"),
            }
        }
    }

    async fn watch_loop(&self) {
        let Some(storage) = &self.runner_storage else {
            return;
        };
        loop {
            match storage.watch_runners().await {
                Ok(mut stream) => loop {
                    tokio::select! {
                        next = stream.next() => match next {
                            Some(Ok(runners)) => {
                                let addresses = runners.into_iter().map(|r| r.address).collect();
                                self.core.shard_table.set_runners(addresses);
                                self.wake.notify_one();
                            }
                            Some(Err(err)) => {
                                tracing::warn!(%err, "membership watch failed; watching again");
                                break;
                            }
                            None => break,
                        },
                        _ = self.core.stopping.cancelled() => return,
                    }
                },
                Err(err) => tracing::warn!(%err, "cannot watch membership; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = self.core.stopping.cancelled() => return,
            }
        }
    }

    async fn rebalance_loop(&self) {
        let refresh_every = self.ttl() / 3;
        let mut last_refresh = Instant::now();
        // When the shard locks were last confirmed in storage. Past one TTL without a
        // confirmation, other runners may hold them: this runner stops serving (fences
        // itself) rather than risk two owners.
        let mut last_confirmed = Instant::now();
        let mut force_refresh = false;
        let retry = (self.ttl() / 10).clamp(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            let refresh = force_refresh || last_refresh.elapsed() >= refresh_every;
            if refresh {
                last_refresh = Instant::now();
            }
            let pending = match self.rebalance(refresh).await {
                Ok(pending) => {
                    if refresh {
                        last_confirmed = Instant::now();
                    }
                    force_refresh = false;
                    pending
                }
                Err(err) => {
                    force_refresh = true;
                    let held = self.core.shard_table.held();
                    if self.runner_storage.is_some()
                        && !held.is_empty()
                        && last_confirmed.elapsed() >= self.ttl()
                    {
                        tracing::error!(%err, count = held.len(), "shard locks could not be confirmed for a whole TTL; no longer serving them");
                        self.stop_serving(&held).await;
                    } else {
                        tracing::warn!(%err, "rebalance failed; retrying");
                    }
                    true
                }
            };
            let wait = if pending {
                retry
            } else {
                refresh_every.min(Duration::from_secs(1))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = self.core.stopping.cancelled() => return,
            }
        }
    }

    /// One round. Returns whether some assigned shards could not be acquired yet.
    pub(crate) async fn rebalance(&self, refresh: bool) -> Result<bool, ClusterError> {
        let me = self.core.config.runner_address.clone();
        if self.core.is_detached() {
            self.probe_storage().await;
        }
        let desired: BTreeSet<ShardId> =
            if self.core.is_detached() || self.core.stopping.is_cancelled() {
                BTreeSet::new()
            } else {
                self.core.shard_table.assigned_to_me().into_iter().collect()
            };
        let held: BTreeSet<ShardId> = self.core.shard_table.held().into_iter().collect();

        let release: Vec<ShardId> = held.difference(&desired).cloned().collect();
        if !release.is_empty() {
            self.release(&release).await;
        }

        let wanted: Vec<ShardId> = desired.difference(&held).cloned().collect();
        let mut pending = false;
        if !wanted.is_empty() {
            let acquired = match &self.runner_storage {
                Some(storage) => storage.acquire_shards(&me, &wanted, self.ttl()).await?,
                None => wanted.clone(),
            };
            pending = acquired.len() < wanted.len();
            if !acquired.is_empty() {
                if let Some(storage) = &self.core.message_storage {
                    let reset = storage.reset_shards(&acquired).await;
                    self.core.storage_result(&reset);
                    if let Err(err) = reset {
                        tracing::warn!(%err, "could not reset retry counts of acquired shards");
                    }
                }
                self.core.shard_table.set_held(&acquired, true);
                self.core
                    .metrics
                    .shards_owned
                    .set(self.core.shard_table.held().len() as i64);
                self.core
                    .metrics
                    .shard_moves
                    .with_label_values(&["acquired"])
                    .inc_by(acquired.len() as u64);
                tracing::info!(count = acquired.len(), "acquired shards");
                self.poller_wake.notify_one();
                self.supervisor.sync();
            }
        }

        if refresh {
            if let Some(storage) = &self.runner_storage {
                let keep: Vec<ShardId> = held.intersection(&desired).cloned().collect();
                if !keep.is_empty() {
                    let kept: BTreeSet<ShardId> = storage
                        .refresh_shards(&me, &keep, self.ttl())
                        .await?
                        .into_iter()
                        .collect();
                    let lost: Vec<ShardId> =
                        keep.into_iter().filter(|s| !kept.contains(s)).collect();
                    if !lost.is_empty() {
                        tracing::warn!(
                            count = lost.len(),
                            "lost shard locks (expired); stopping their entities"
                        );
                        self.stop_serving(&lost).await;
                    }
                }
            }
        }
        // Restart singletons that finished by failure-backoff exhaustion or were not started.
        self.supervisor.sync();
        Ok(pending)
    }

    /// A detached runner has no shards, so nothing else touches storage: probe it with a
    /// cheap read so the runner re-attaches once storage answers again.
    async fn probe_storage(&self) {
        if let Some(storage) = &self.core.message_storage {
            let probe = storage.unprocessed(&[], chrono::Utc::now(), 1).await;
            self.core.storage_result(&probe);
        }
    }

    async fn stop_serving(&self, shards: &[ShardId]) {
        self.core.shard_table.set_held(shards, false);
        self.supervisor.stop(Some(shards)).await;
        let deadline = self.core.config.shutdown_timeout;
        let managers = self.registry.all();
        futures::future::join_all(managers.iter().map(|m| m.stop_shards(shards, deadline))).await;
        self.core
            .metrics
            .shards_owned
            .set(self.core.shard_table.held().len() as i64);
    }

    /// Stops serving shards and releases their locks (entities drained first).
    pub(crate) async fn release(&self, shards: &[ShardId]) {
        self.stop_serving(shards).await;
        if let Some(storage) = &self.runner_storage {
            if let Err(err) = storage
                .release_shards(&self.core.config.runner_address, shards)
                .await
            {
                tracing::warn!(%err, "could not release shard locks; they will expire");
            }
        }
        self.core
            .metrics
            .shard_moves
            .with_label_values(&["released"])
            .inc_by(shards.len() as u64);
        tracing::info!(count = shards.len(), "released shards");
    }

    /// Releases everything and leaves the cluster (graceful shutdown).
    pub(crate) async fn leave(&self) {
        let held = self.core.shard_table.held();
        if !held.is_empty() {
            self.release(&held).await;
        }
        if let Some(storage) = &self.runner_storage {
            if let Err(err) = storage.unregister(&self.core.config.runner_address).await {
                tracing::warn!(%err, "could not unregister the runner; its registration will expire");
            }
        }
    }
}
