//! Membership and shard ownership of one runner.
//!
//! Owns the runner's registration (register, keep-alive, re-register after expiry), the
//! membership watch that feeds the shard table, the rebalance loop that turns the
//! assignment into held shard locks, and the lock keeper that renews them and fences.
//! Without a `RunnerStorage` the runner is alone and holds every shard.
//!
//! # Rules
//! * **Serve only what is provably ours.** A lock taken or renewed by a call sent at `t` is
//!   served until `t + ⅔ TTL` (see [`ShardLeases`]); the lock keeper renews every TTL/6,
//!   in its own task (an acquisition that fails never delays a renewal), and fences the
//!   moment a deadline passes or a renewal reports a lock lost: the shard leaves the table,
//!   its fence fires, every handler of it is aborted (nothing stored), its singletons are
//!   cancelled. No graceful drain past the moment another runner may own the shard.
//! * **Every runner-storage call is bounded** by a timeout, so a hanging storage fences
//!   like a failing one.
//! * **Releasing is a drain.** A shard that moves away stops taking messages; running
//!   handlers get `shutdown_timeout`; then interruptible ones are aborted; uninterruptible
//!   ones finish while the keeper still renews the lock. Only then is the lock released, so
//!   the new owner never runs a request the old owner is still running.
//!
//! Never holds a lock across an await.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster_runner_storage::{Runner, RunnerStorage};
use cruster_types::{ClusterError, ShardId};
use futures::StreamExt;
use tokio::sync::Notify;

use crate::entity::registry::EntityRegistry;
use crate::inspection::ShardMoveDirection;
use crate::runtime_core::RuntimeCore;
use crate::sharding::shard_leases::ShardLeases;
use crate::singleton::supervisor::SingletonSupervisor;

pub(crate) struct Membership {
    core: Arc<RuntimeCore>,
    runner_storage: Option<Arc<dyn RunnerStorage>>,
    registry: Arc<EntityRegistry>,
    supervisor: Arc<SingletonSupervisor>,
    poller_wake: Arc<Notify>,
    leases: ShardLeases,
    /// The lock TTL in force: the configured one, or less if the backend grants less.
    ttl: Duration,
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
        let configured = core.config.runner_lock_ttl;
        let ttl = runner_storage.as_ref().map_or(configured, |s| {
            s.granted_lock_ttl(configured).min(configured)
        });
        Membership {
            core,
            runner_storage,
            registry,
            supervisor,
            poller_wake,
            leases: ShardLeases::new(ttl),
            ttl,
            wake: Arc::new(Notify::new()),
        }
    }

    /// The runner storage, if any (`None`: this runner is alone).
    pub(crate) fn runner_storage(&self) -> Option<&Arc<dyn RunnerStorage>> {
        self.runner_storage.as_ref()
    }

    /// How long one runner-storage call may take before it counts as failed.
    fn call_timeout(&self) -> Duration {
        (self.ttl / 4).max(Duration::from_millis(50))
    }

    /// Runs a runner-storage call with the call timeout.
    async fn timed<T>(
        &self,
        operation: &str,
        call: impl Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        let timeout = self.call_timeout();
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(ClusterError::Timeout {
                operation: format!("runner storage: {operation}"),
                timeout,
            }),
        }
    }

    /// Registers the runner and sets its machine id. Without runner storage, the runner
    /// is the whole cluster.
    pub(crate) async fn register(&self) -> Result<(), ClusterError> {
        let me = self.core.config.runner_address.clone();
        match &self.runner_storage {
            Some(storage) => {
                let machine = storage
                    .register(&me, self.core.config.runner_weight, self.ttl)
                    .await?;
                self.core.snowflakes.set_machine_id(machine);
                let runners = storage.runners().await?;
                self.apply_membership(&runners);
            }
            None => self.core.shard_table.set_runners(vec![me]),
        }
        Ok(())
    }

    /// Takes a membership snapshot: every runner goes into the directory (replies are
    /// pushed to client-only runners too); only runners of weight 1 or more own shards.
    fn apply_membership(&self, runners: &[Runner]) {
        self.core.reply_push.directory.set(runners);
        let owners = runners
            .iter()
            .filter(|runner| runner.weight > 0)
            .map(|runner| runner.address.clone())
            .collect();
        self.core.shard_table.set_runners(owners);
    }

    /// Spawns the keep-alive, watch, lock-keeper and rebalance loops.
    pub(crate) fn spawn_loops(self: &Arc<Self>) {
        if self.runner_storage.is_some() {
            let this = self.clone();
            self.core.spawn(async move { this.keep_alive_loop().await });
            let this = self.clone();
            self.core.spawn(async move { this.watch_loop().await });
            let this = self.clone();
            self.core
                .spawn(async move { this.lock_keeper_loop().await });
        }
        let this = self.clone();
        self.core.spawn(async move { this.rebalance_loop().await });
    }

    async fn keep_alive_loop(&self) {
        let Some(storage) = &self.runner_storage else {
            return;
        };
        let me = self.core.config.runner_address.clone();
        let period = self.ttl / 4;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.core.stopping.cancelled() => return,
            }
            match self
                .timed("keep_alive", storage.keep_alive(&me, self.ttl))
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("runner registration had expired; registering again");
                    let weight = self.core.config.runner_weight;
                    match self
                        .timed("register", storage.register(&me, weight, self.ttl))
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
            match self.timed("watch_runners", storage.watch_runners()).await {
                Ok(mut stream) => loop {
                    tokio::select! {
                        next = stream.next() => match next {
                            Some(Ok(runners)) => {
                                self.apply_membership(&runners);
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

    /// Renews every lock this runner holds (served or draining) every TTL/6, and fences a
    /// shard the moment its service deadline passes without a confirmed renewal. Runs until
    /// the runner is killed or fully stopped (a graceful drain still needs renewals).
    async fn lock_keeper_loop(&self) {
        let Some(storage) = &self.runner_storage else {
            return;
        };
        let me = self.core.config.runner_address.clone();
        let period = self.ttl / 6;
        let mut next_renewal = Instant::now() + period;
        loop {
            let wake_at = self
                .leases
                .next_deadline()
                .map_or(next_renewal, |deadline| deadline.min(next_renewal));
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at.into()) => {}
                _ = self.core.killed.cancelled() => return,
            }
            if Instant::now() >= next_renewal {
                next_renewal = Instant::now() + period;
                let ours = self.leases.all();
                if !ours.is_empty() {
                    let sent = Instant::now();
                    // A renewal may take until the first service deadline it could save.
                    let patience = self
                        .leases
                        .next_deadline()
                        .map_or(self.call_timeout(), |d| d.saturating_duration_since(sent))
                        .max(self.call_timeout());
                    let renewal = storage.refresh_shards(&me, &ours, self.ttl);
                    let renewed = match tokio::time::timeout(patience, renewal).await {
                        Ok(result) => result,
                        Err(_) => Err(ClusterError::Timeout {
                            operation: "runner storage: refresh_shards".into(),
                            timeout: patience,
                        }),
                    };
                    match renewed {
                        Ok(kept) => {
                            self.leases.confirm(&kept, sent);
                            let kept: HashSet<&ShardId> = kept.iter().collect();
                            let lost: Vec<ShardId> =
                                ours.iter().filter(|s| !kept.contains(s)).cloned().collect();
                            if !lost.is_empty() {
                                tracing::error!(
                                    count = lost.len(),
                                    "shard locks were lost (expired or taken); fencing them now"
                                );
                                self.fence(&lost).await;
                            }
                        }
                        Err(err) => {
                            tracing::warn!(%err, "renewing shard locks failed; retrying before their service deadline")
                        }
                    }
                }
            }
            let expired = self.leases.expired(Instant::now());
            if !expired.is_empty() {
                tracing::error!(
                    count = expired.len(),
                    "shard locks could not be renewed before their safety margin; fencing them now"
                );
                self.fence(&expired).await;
            }
        }
    }

    /// Stops serving shards at once: out of the table, fence fired (handlers aborted, nothing
    /// stored), singletons cancelled. The locks are left to expire.
    async fn fence(&self, shards: &[ShardId]) {
        self.core.shard_table.set_held(shards, false);
        self.leases.forget(shards);
        self.core.fences.fire(shards);
        self.supervisor.stop(Some(shards), true).await;
        let managers = self.registry.all();
        futures::future::join_all(managers.iter().map(|m| m.abort_shards(shards))).await;
        self.core
            .metrics
            .shard_moves
            .with_label_values(&["fenced"])
            .inc_by(shards.len() as u64);
        self.core
            .shard_moves
            .record(ShardMoveDirection::Fenced, shards);
        self.update_owned_gauge();
        self.wake.notify_one();
    }

    async fn rebalance_loop(self: &Arc<Self>) {
        let retry = (self.ttl / 10).clamp(Duration::from_millis(20), Duration::from_millis(500));
        let idle = (self.ttl / 6).min(Duration::from_secs(1));
        loop {
            let pending = match self.rebalance().await {
                Ok(pending) => pending,
                Err(err) => {
                    tracing::warn!(%err, "rebalance failed; retrying");
                    true
                }
            };
            let wait = if pending { retry } else { idle };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = self.core.stopping.cancelled() => return,
            }
        }
    }

    /// One round: release what moved away (drained in the background), acquire what is
    /// assigned here. Returns whether some assigned shards could not be acquired yet.
    pub(crate) async fn rebalance(self: &Arc<Self>) -> Result<bool, ClusterError> {
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
            self.core.shard_table.set_held(&release, false);
            self.leases.start_draining(&release);
            let this = self.clone();
            self.core.spawn(async move { this.release(&release).await });
        }

        let draining = self.leases.draining();
        let wanted: Vec<ShardId> = desired
            .difference(&held)
            .filter(|s| !draining.contains(*s))
            .cloned()
            .collect();
        if wanted.is_empty() {
            self.supervisor.sync();
            return Ok(false);
        }
        let acquired = match &self.runner_storage {
            Some(storage) => {
                let me = self.core.config.runner_address.clone();
                let sent = Instant::now();
                let acquired = self
                    .timed(
                        "acquire_shards",
                        storage.acquire_shards(&me, &wanted, self.ttl),
                    )
                    .await?;
                self.leases.confirm(&acquired, sent);
                acquired
            }
            None => wanted.clone(),
        };
        let pending = acquired.len() < wanted.len();
        if !acquired.is_empty() {
            self.core.fences.arm(&acquired);
            self.core.shard_table.set_held(&acquired, true);
            self.update_owned_gauge();
            self.core
                .metrics
                .shard_moves
                .with_label_values(&["acquired"])
                .inc_by(acquired.len() as u64);
            self.core
                .shard_moves
                .record(ShardMoveDirection::Acquired, &acquired);
            tracing::info!(count = acquired.len(), "acquired shards");
            self.poller_wake.notify_one();
        }
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

    fn update_owned_gauge(&self) {
        self.core
            .metrics
            .shards_owned
            .set(self.core.shard_table.held().len() as i64);
    }

    /// Drains shards that left this runner's table (see the module docs), then releases
    /// their locks.
    async fn release(&self, shards: &[ShardId]) {
        self.supervisor.stop(Some(shards), false).await;
        let deadline = self.core.config.shutdown_timeout;
        let managers = self.registry.all();
        futures::future::join_all(managers.iter().map(|m| m.stop_shards(shards, deadline))).await;
        self.update_owned_gauge();
        if let Some(storage) = &self.runner_storage {
            let me = &self.core.config.runner_address;
            if let Err(err) = self
                .timed("release_shards", storage.release_shards(me, shards))
                .await
            {
                tracing::warn!(%err, "could not release shard locks; they will expire");
            }
        }
        self.leases.forget(shards);
        self.core
            .metrics
            .shard_moves
            .with_label_values(&["released"])
            .inc_by(shards.len() as u64);
        self.core
            .shard_moves
            .record(ShardMoveDirection::Released, shards);
        tracing::info!(count = shards.len(), "released shards");
        self.wake.notify_one();
    }

    /// Releases everything and leaves the cluster (graceful shutdown).
    pub(crate) async fn leave(&self) {
        let held = self.core.shard_table.held();
        if !held.is_empty() {
            self.core.shard_table.set_held(&held, false);
            self.leases.start_draining(&held);
            self.release(&held).await;
        }
        // Drains started by the rebalance loop end on their own; wait for them too, so
        // unregistering does not hand their shards over early.
        while !self.leases.draining().is_empty() && !self.core.killed.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(storage) = &self.runner_storage {
            let me = &self.core.config.runner_address;
            if let Err(err) = self.timed("unregister", storage.unregister(me)).await {
                tracing::warn!(%err, "could not unregister the runner; its registration will expire");
            }
        }
    }
}
