//! [`ShardingImpl`]: one runner of a cluster, and the facade over its services.
//!
//! Builds and owns the runner's services and implements the [`Sharding`] port (clients,
//! entities) and the [`RunnerInbound`] port (the transport) by handing each call to the
//! service that owns it: plain routing ([`Router`]), persisted delivery
//! ([`PersistedDelivery`]), requests from other runners ([`Inbound`]), membership and shard
//! locks ([`Membership`]), the storage poll and the singleton supervisor. It holds no
//! delivery logic of its own.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use cruster_message_storage::MessageStorage;
use cruster_runner_storage::{RunnerHealth, RunnerStorage};
use cruster_sharding::{Entity, ReplyStream, ShardAssignment, Sharding, SingletonFn};
use cruster_transport::{RunnerInbound, Runners};
use cruster_types::{
    shard_for_entity, AckChunk, ClusterError, EntityId, EntityType, EnvelopeRequest, Interrupt,
    MachineId, ReplyWithExit, RunnerAddress, ShardId, Snowflake, SnowflakeGenerator,
};
use cruster_workflow_storage::{WorkflowEngine, WorkflowStorage};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::clock::Clock;
use crate::config::ShardingConfig;
use crate::delivery::in_flight::InFlight;
use crate::delivery::inbound::Inbound;
use crate::delivery::persisted::PersistedDelivery;
use crate::delivery::reply_push::ReplyPush;
use crate::delivery::router::Router;
use crate::delivery::storage_poller::StoragePoller;
use crate::delivery::waiter_fallback::WaiterFallback;
use crate::delivery::waiter_registry::{ExecutionWaiters, PushedResultWaiters, ReplyWaiters};
use crate::entity::entity_manager::EntityManager;
use crate::entity::registry::EntityRegistry;
use crate::inspection::{DeliveryProgress, EntityLoad, RunnerView, ShardGroupView, ShardMove};
use crate::metrics::ClusterMetrics;
use crate::retention::cleaner::RetentionCleaner;
use crate::retention::RetentionSweep;
use crate::runtime_core::RuntimeCore;
use crate::sharding::assignment::RendezvousAssignment;
use crate::sharding::membership::Membership;
use crate::sharding::shard_table::{Route, ShardTable};
use crate::singleton::supervisor::SingletonSupervisor;

pub use crate::trace_context::TRACE_PARENT_SPAN;

/// One runner of a cluster: routes, delivers, persists, and runs entities, singletons and
/// workflows. Create it with [`ShardingImpl::new_with_engines`] (production), or use
/// `SingleRunner` / `MemoryCluster` for one node or tests.
pub struct ShardingImpl {
    core: Arc<RuntimeCore>,
    router: Arc<Router>,
    persisted: Arc<PersistedDelivery>,
    inbound: Inbound,
    runner_health: Option<Arc<dyn RunnerHealth>>,
    workflow_storage: Option<Arc<dyn WorkflowStorage>>,
    workflow_engine: Option<Arc<dyn WorkflowEngine>>,
    registry: Arc<EntityRegistry>,
    supervisor: Arc<SingletonSupervisor>,
    membership: Arc<Membership>,
    poller_wake: Arc<tokio::sync::Notify>,
    poller: Mutex<Option<StoragePoller>>,
    retention: Arc<RetentionCleaner>,
    started: AtomicBool,
    default_group: Arc<str>,
}

impl std::fmt::Debug for ShardingImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardingImpl")
            .field("runner_address", &self.core.config.runner_address)
            .finish()
    }
}

impl ShardingImpl {
    /// Creates a runner from its configuration and ports. Nothing runs until
    /// [`ShardingImpl::start`].
    ///
    /// * `runner_storage: None` makes a runner that is alone and owns every shard.
    /// * `message_storage: None` disables persisted messaging (a clear `Unsupported` error).
    /// * `state_storage`/`workflow_engine: None` disables workflows.
    ///
    /// # Errors
    /// `InvalidConfig` when the configuration is invalid.
    #[allow(clippy::too_many_arguments)]
    pub fn new_with_engines(
        config: Arc<ShardingConfig>,
        runners: Arc<dyn Runners>,
        runner_storage: Option<Arc<dyn RunnerStorage>>,
        runner_health: Option<Arc<dyn RunnerHealth>>,
        message_storage: Option<Arc<dyn MessageStorage>>,
        state_storage: Option<Arc<dyn WorkflowStorage>>,
        workflow_engine: Option<Arc<dyn WorkflowEngine>>,
        metrics: Arc<ClusterMetrics>,
    ) -> Result<Arc<Self>, ClusterError> {
        Self::with_assignment(
            config,
            runners,
            runner_storage,
            runner_health,
            message_storage,
            state_storage,
            workflow_engine,
            metrics,
            Arc::new(RendezvousAssignment),
        )
    }

    /// Like [`ShardingImpl::new_with_engines`], with a custom shard-assignment strategy
    /// (every runner of a cluster must use the same one).
    ///
    /// # Errors
    /// `InvalidConfig` when the configuration is invalid.
    #[allow(clippy::too_many_arguments)]
    pub fn with_assignment(
        config: Arc<ShardingConfig>,
        runners: Arc<dyn Runners>,
        runner_storage: Option<Arc<dyn RunnerStorage>>,
        runner_health: Option<Arc<dyn RunnerHealth>>,
        message_storage: Option<Arc<dyn MessageStorage>>,
        state_storage: Option<Arc<dyn WorkflowStorage>>,
        workflow_engine: Option<Arc<dyn WorkflowEngine>>,
        metrics: Arc<ClusterMetrics>,
        assignment: Arc<dyn ShardAssignment>,
    ) -> Result<Arc<Self>, ClusterError> {
        config.validate()?;
        if config.runner_weight == 0 && runner_storage.is_none() {
            return Err(ClusterError::InvalidConfig {
                field: "runner_weight".into(),
                reason: "0 makes a client-only runner, which needs a runner storage to find \
                         the runners of its cluster; pass one, or use a weight of at least 1"
                    .into(),
            });
        }
        let sharding = Arc::new_cyclic(|weak: &std::sync::Weak<ShardingImpl>| {
            let weak_dyn: std::sync::Weak<dyn Sharding> = weak.clone();
            let table = ShardTable::new(
                config.runner_address.clone(),
                config.shards_per_group,
                assignment,
            );
            for group in &config.shard_groups {
                table.add_group(group);
            }
            let poll_in_flight = metrics.poll_in_flight.clone();
            let core = Arc::new(RuntimeCore {
                config: config.clone(),
                reply_push: ReplyPush::new(runners.clone(), metrics.clone()),
                waiters: Arc::new(ReplyWaiters::new(Some(
                    metrics.callers_waiting.with_label_values(&["reply"]),
                ))),
                execution_waiters: Arc::new(ExecutionWaiters::new(Some(
                    metrics.callers_waiting.with_label_values(&["workflow"]),
                ))),
                pushed_results: Arc::new(PushedResultWaiters::new(None)),
                metrics,
                message_storage,
                shard_table: table,
                shard_moves: Default::default(),
                fences: Default::default(),
                in_flight: InFlight::new(poll_in_flight),
                finished_executions: Default::default(),
                snowflakes: SnowflakeGenerator::new(MachineId::wrapping(0)),
                stopping: CancellationToken::new(),
                killed: CancellationToken::new(),
                tasks: TaskTracker::new(),
                shutting_down: AtomicBool::new(false),
                storage_failures: AtomicU32::new(0),
                detached: AtomicBool::new(false),
                sharding: weak_dyn,
            });
            let registry = Arc::new(EntityRegistry::default());
            let router = Arc::new(Router {
                core: core.clone(),
                runners,
                registry: registry.clone(),
            });
            let persisted = Arc::new(PersistedDelivery::new(core.clone(), router.clone()));
            let inbound = Inbound {
                core: core.clone(),
                router: router.clone(),
                persisted: persisted.clone(),
            };
            let supervisor = Arc::new(SingletonSupervisor::new(core.clone()));
            let poller = StoragePoller::new(core.clone(), registry.clone(), persisted.clone());
            let poller_wake = poller.wake.clone();
            let membership = Arc::new(Membership::new(
                core.clone(),
                runner_storage,
                registry.clone(),
                supervisor.clone(),
                poller_wake.clone(),
            ));
            let retention = Arc::new(RetentionCleaner::new(
                core.clone(),
                state_storage.clone(),
                workflow_engine.clone(),
            ));
            ShardingImpl {
                retention,
                core,
                router,
                persisted,
                inbound,
                runner_health,
                workflow_storage: state_storage,
                workflow_engine,
                registry,
                supervisor,
                membership,
                poller_wake,
                poller: Mutex::new(Some(poller)),
                started: AtomicBool::new(false),
                default_group: Arc::from(cruster_types::DEFAULT_SHARD_GROUP),
            }
        });
        Ok(sharding)
    }

    /// Registers the runner and starts the background loops (membership, rebalancing,
    /// storage poll, idle eviction, singletons). Entities may be registered before or after.
    ///
    /// # Errors
    /// Storage errors while registering; `InvalidConfig` if already started.
    pub async fn start(&self) -> Result<(), ClusterError> {
        if self.started.swap(true, Ordering::AcqRel) {
            return Err(ClusterError::InvalidConfig {
                field: "start".into(),
                reason: "this runner is already started".into(),
            });
        }
        if let Err(err) = self.membership.register().await {
            // Not started after all: a later `start` may try again.
            self.started.store(false, Ordering::Release);
            return Err(err);
        }
        // First rebalance inline, so a lone runner owns its shards when `start` returns.
        if let Err(err) = self.membership.rebalance().await {
            tracing::warn!(%err, "first rebalance failed; the rebalance loop retries");
        }
        self.membership.spawn_loops();
        if let Some(poller) = self.poller.lock().take() {
            self.core.spawn(async move { poller.run().await });
        }
        let fallback = WaiterFallback::new(self.core.clone(), self.workflow_engine.clone());
        self.core.spawn(fallback.run());
        let retention = self.retention.clone();
        self.core.spawn(async move { retention.run().await });
        for manager in self.registry.all() {
            self.spawn_reaper(manager);
        }
        tracing::info!(runner = %self.core.config.runner_address, "runner started");
        Ok(())
    }

    /// Runs one retention sweep now, as the background cleaner does every
    /// `retention_sweep_interval`: deletes, in bounded batches, the processed messages of
    /// the shards this runner holds and, on the runner holding shard 0 of the first
    /// configured shard group, the finished workflow executions and fired timers past
    /// their retention. Answers what it deleted.
    ///
    /// # Errors
    /// Storage errors (what was deleted before the error stays deleted).
    pub async fn sweep_retention(&self) -> Result<RetentionSweep, ClusterError> {
        self.retention.sweep().await
    }

    fn spawn_reaper(&self, manager: Arc<EntityManager>) {
        let stopping = self.core.stopping.clone();
        // Real cadence, and at once whenever a virtual clock moves.
        let mut clock_ticks = self.core.config.clock.ticks(None);
        self.core.spawn(async move {
            let interval = manager.reap_interval();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => { manager.evict_idle(); }
                    _ = clock_ticks.next() => { manager.evict_idle(); }
                    _ = stopping.cancelled() => return,
                }
            }
        });
    }

    /// Graceful shutdown: stops taking work, stops singletons, drains mailboxes (within
    /// `shutdown_timeout`), releases shard locks and unregisters the runner.
    ///
    /// # Errors
    /// None today; storage failures are logged and the locks left to expire.
    pub async fn shutdown(&self) -> Result<(), ClusterError> {
        if self.core.shutting_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        tracing::info!(runner = %self.core.config.runner_address, "runner shutting down");
        self.core.stopping.cancel();
        self.membership.leave().await;
        self.core.killed.cancel();
        self.core.tasks.close();
        let _ =
            tokio::time::timeout(self.core.config.shutdown_timeout, self.core.tasks.wait()).await;
        Ok(())
    }

    /// Simulates a crash (for tests): every task stops at once; nothing is released or
    /// unregistered, so locks and registration expire after their TTL.
    #[doc(hidden)]
    pub fn kill(&self) {
        self.core.shutting_down.store(true, Ordering::Release);
        self.core.stopping.cancel();
        self.core.killed.cancel();
        self.core.tasks.close();
    }

    /// Stops at once, as when the runner can no longer prove it may work (its single-node
    /// lease is lost): every shard leaves the table, every handler is aborted (nothing is
    /// stored for it), every task ends. Nothing is drained or released.
    #[cfg_attr(
        not(all(feature = "memory", any(feature = "postgres", feature = "sqlite"))),
        allow(dead_code)
    )]
    pub(crate) fn halt(&self) {
        let held = self.core.shard_table.held();
        self.core.shard_table.set_held(&held, false);
        self.core.fences.fire(&held);
        self.core.metrics.shards_owned.set(0);
        self.kill();
    }

    /// The services this runner shares between its parts (the workflow runtime reaches its
    /// waiting callers through it).
    pub(crate) fn core(&self) -> &Arc<RuntimeCore> {
        &self.core
    }

    /// This runner's configuration.
    pub fn config(&self) -> &Arc<ShardingConfig> {
        &self.core.config
    }

    /// The clock this runner reads business time from (`ShardingConfig::clock`).
    pub fn clock(&self) -> &Clock {
        &self.core.config.clock
    }

    /// This runner's metrics.
    pub fn metrics(&self) -> &Arc<ClusterMetrics> {
        &self.core.metrics
    }

    /// The address of this runner.
    pub fn runner_address(&self) -> &RunnerAddress {
        &self.core.config.runner_address
    }

    /// The message storage, if configured.
    pub fn message_storage(&self) -> Option<&Arc<dyn MessageStorage>> {
        self.core.message_storage.as_ref()
    }

    /// The workflow journal storage, if configured.
    pub fn workflow_storage(&self) -> Option<&Arc<dyn WorkflowStorage>> {
        self.workflow_storage.as_ref()
    }

    /// The workflow engine storage, if configured.
    pub fn workflow_engine(&self) -> Option<&Arc<dyn WorkflowEngine>> {
        self.workflow_engine.as_ref()
    }

    /// The health check of other runners, if configured.
    pub fn runner_health(&self) -> Option<&Arc<dyn RunnerHealth>> {
        self.runner_health.as_ref()
    }

    /// Shards this runner holds now.
    pub fn owned_shards(&self) -> Vec<ShardId> {
        self.core.shard_table.held()
    }

    /// The live runners this runner knows of.
    pub fn known_runners(&self) -> Vec<RunnerAddress> {
        self.core.shard_table.runners()
    }

    /// The manager of one entity type (for the runtime's own tests).
    #[cfg(test)]
    pub(crate) fn entity_manager(
        &self,
        entity_type: &EntityType,
    ) -> Option<Arc<crate::entity::entity_manager::EntityManager>> {
        self.registry.get(entity_type)
    }

    /// Live entity instances on this runner, by entity type.
    pub fn active_entities(&self) -> HashMap<EntityType, usize> {
        self.registry
            .all()
            .into_iter()
            .map(|m| (m.entity_type().clone(), m.active_count()))
            .collect()
    }

    /// Names of the singletons running on this runner.
    pub fn running_singletons(&self) -> Vec<String> {
        self.supervisor.running_names()
    }

    /// Whether message storage failures detached this runner from its shards.
    pub fn is_detached(&self) -> bool {
        self.core.is_detached()
    }

    /// The runners of the cluster as this runner sees them: address, weight, how long each
    /// has been a member and, with a health check configured, whether it answers. Sorted by
    /// address.
    ///
    /// # Errors
    /// Runner-storage errors (reading the registered weights).
    pub async fn runners(&self) -> Result<Vec<RunnerView>, ClusterError> {
        let me = &self.core.config.runner_address;
        let weights: HashMap<RunnerAddress, u32> = match self.membership.runner_storage() {
            Some(storage) => storage
                .runners()
                .await?
                .into_iter()
                .map(|runner| (runner.address, runner.weight))
                .collect(),
            None => HashMap::new(),
        };
        // Health checks of other runners run concurrently (each is bounded by the check).
        let members = self.core.shard_table.runners_with_age();
        let checks = members.iter().map(|(address, _)| async move {
            match &self.runner_health {
                Some(health) if address != me => Some(health.is_alive(address).await),
                Some(_) => Some(!self.core.is_stopping()),
                None => None,
            }
        });
        let health = futures::future::join_all(checks).await;
        let views = members
            .into_iter()
            .zip(health)
            .map(|((address, known_for), healthy)| RunnerView {
                weight: weights
                    .get(&address)
                    .copied()
                    .unwrap_or(self.core.config.runner_weight),
                is_self: address == *me,
                address,
                known_for,
                healthy,
            })
            .collect();
        Ok(views)
    }

    /// Whether [`ShardingImpl::start`] ran and the runner is not stopping.
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire) && !self.core.is_stopping()
    }

    /// How many shards the current assignment gives this runner, and how many of those it
    /// holds (equal once it serves its whole share).
    pub fn assigned_and_held_shards(&self) -> (usize, usize) {
        let assigned = self.core.shard_table.assigned_to_me();
        let held = assigned
            .iter()
            .filter(|shard| self.core.shard_table.is_held(shard))
            .count();
        (assigned.len(), held)
    }

    /// The shard table: for every known shard group, the owner of each shard by the
    /// current assignment and the shards this runner holds.
    pub fn shard_groups(&self) -> Vec<ShardGroupView> {
        self.core.shard_table.group_views()
    }

    /// The shards that moved to or from this runner lately (at most 256), oldest first.
    pub fn recent_shard_moves(&self) -> Vec<ShardMove> {
        self.core.shard_moves.recent()
    }

    /// The entities of this runner: per registered type its live instances and mailbox
    /// depth, and the `busiest` instances with the most requests queued or running.
    pub fn entity_load(&self, busiest: usize) -> EntityLoad {
        let mut load = EntityLoad::default();
        for manager in self.registry.all() {
            let (type_load, busy) = manager.load();
            load.types.push(type_load);
            load.busiest.extend(busy);
        }
        load.types.sort_by(|a, b| a.entity_type.cmp(&b.entity_type));
        load.busiest.sort_by(|a, b| {
            b.pending
                .cmp(&a.pending)
                .then_with(|| a.address.to_string().cmp(&b.address.to_string()))
        });
        load.busiest.truncate(busiest);
        load
    }

    /// Whether delivery on this runner makes progress: the requests waiting in its
    /// mailboxes and, while some wait, how long no request finished. An operator's liveness
    /// check compares [`DeliveryProgress::waiting_without_progress`] with a limit.
    pub fn delivery_progress(&self) -> DeliveryProgress {
        let mut pending_requests = 0;
        let mut last_progress: Option<std::time::Instant> = None;
        let mut earliest_busy: Option<std::time::Instant> = None;
        for manager in self.registry.all() {
            let (pending, progress, busy) = manager.progress();
            pending_requests += pending;
            last_progress = last_progress.max(progress);
            earliest_busy = match (earliest_busy, busy) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let waiting_without_progress = match (pending_requests, earliest_busy) {
            (0, _) | (_, None) => std::time::Duration::ZERO,
            (_, Some(busy)) => last_progress.map_or(busy, |p| p.max(busy)).elapsed(),
        };
        DeliveryProgress {
            pending_requests,
            waiting_without_progress,
        }
    }

    /// Runs one storage poll now (normally every `storage_poll_interval`).
    pub fn poll_storage_now(&self) {
        self.poller_wake.notify_one();
    }

    fn check_open(&self) -> Result<(), ClusterError> {
        if self.core.is_stopping() {
            return Err(ClusterError::ShuttingDown);
        }
        Ok(())
    }

    /// Stamps an outgoing envelope with the caller's span and counts it.
    fn outgoing(&self, envelope: &mut EnvelopeRequest) -> Result<(), ClusterError> {
        self.check_open()?;
        crate::trace_context::attach(envelope, &self.core.config.runner_address);
        self.core.metrics.messages_sent.inc();
        Ok(())
    }
}

#[async_trait]
impl Sharding for ShardingImpl {
    fn shard_id(&self, entity_type: &EntityType, entity_id: &EntityId) -> ShardId {
        let group = self
            .registry
            .get(entity_type)
            .map(|m| m.shard_group.clone())
            .unwrap_or_else(|| self.default_group.clone());
        ShardId {
            group,
            id: shard_for_entity(entity_id.as_str(), self.core.config.shards_per_group),
        }
    }

    fn next_request_id(&self) -> Snowflake {
        self.core.snowflakes.next()
    }

    async fn send(&self, mut envelope: EnvelopeRequest) -> Result<ReplyWithExit, ClusterError> {
        self.outgoing(&mut envelope)?;
        let span = tracing::debug_span!(
            "cruster.send",
            entity_type = %envelope.address.entity_type,
            entity_id = %envelope.address.entity_id,
            tag = %envelope.tag,
            request_id = %envelope.request_id,
            persisted = envelope.persisted,
        );
        if envelope.persisted {
            self.persisted.send(envelope).instrument(span).await
        } else {
            self.router.send(envelope).instrument(span).await
        }
    }

    async fn send_stream(
        &self,
        mut envelope: EnvelopeRequest,
    ) -> Result<ReplyStream, ClusterError> {
        self.outgoing(&mut envelope)?;
        if envelope.persisted {
            return Err(persisted_stream_refused(&envelope));
        }
        self.router.stream(envelope).await
    }

    async fn notify(&self, mut envelope: EnvelopeRequest) -> Result<(), ClusterError> {
        self.outgoing(&mut envelope)?;
        if envelope.persisted {
            self.persisted.notify(envelope).await
        } else {
            self.router.notify(envelope).await
        }
    }

    async fn poll_reply(
        &self,
        request_id: Snowflake,
    ) -> Result<Option<ReplyWithExit>, ClusterError> {
        self.persisted.poll_reply(request_id).await
    }

    async fn join_reply(&self, request_id: Snowflake) -> Result<ReplyWithExit, ClusterError> {
        self.persisted.join_reply(request_id).await
    }

    async fn ack_chunk(&self, ack: AckChunk) -> Result<(), ClusterError> {
        match self.core.shard_table.route(&ack.address.shard_id) {
            Route::Local => self.inbound.ack(&ack),
            Route::Remote(address) => self.router.runners.ack_chunk(&address, ack).await,
            Route::Pending => Err(ClusterError::ShardNotOwned {
                shard_id: ack.address.shard_id.clone(),
            }),
        }
    }

    async fn interrupt(&self, interrupt: Interrupt) -> Result<(), ClusterError> {
        match self.core.shard_table.route(&interrupt.address.shard_id) {
            Route::Local => self.inbound.interrupt(&interrupt),
            Route::Remote(address) => self.router.runners.interrupt(&address, interrupt).await,
            Route::Pending => Err(ClusterError::ShardNotOwned {
                shard_id: interrupt.address.shard_id.clone(),
            }),
        }
    }

    async fn register_entity(&self, entity: Arc<dyn Entity>) -> Result<(), ClusterError> {
        let manager = EntityManager::new(self.core.clone(), entity)?;
        let group = manager.shard_group.clone();
        self.registry.insert(manager.clone())?;
        self.persisted.type_registered(manager.entity_type());
        if self.core.shard_table.add_group(&group) {
            self.membership.wake.notify_one();
        }
        if self.started.load(Ordering::Acquire) {
            self.spawn_reaper(manager);
            self.poller_wake.notify_one();
        }
        tracing::debug!(entity_type = %group, "entity type registered");
        Ok(())
    }

    async fn register_singleton(
        &self,
        name: &str,
        shard_group: Option<&str>,
        run: SingletonFn,
    ) -> Result<(), ClusterError> {
        let group = shard_group.unwrap_or(cruster_types::DEFAULT_SHARD_GROUP);
        self.supervisor.register(name, group, run)?;
        if self.core.shard_table.add_group(group) {
            self.membership.wake.notify_one();
        }
        if self.started.load(Ordering::Acquire) {
            self.supervisor.sync();
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[async_trait]
impl RunnerInbound for ShardingImpl {
    async fn handle_send(&self, envelope: EnvelopeRequest) -> Result<ReplyStream, ClusterError> {
        self.inbound.send(envelope).await
    }

    async fn handle_notify(&self, envelope: EnvelopeRequest) -> Result<(), ClusterError> {
        self.inbound.notify(envelope).await
    }

    async fn handle_ack(&self, ack: AckChunk) -> Result<(), ClusterError> {
        self.inbound.ack(&ack)
    }

    async fn handle_interrupt(&self, interrupt: Interrupt) -> Result<(), ClusterError> {
        self.inbound.interrupt(&interrupt)
    }

    async fn handle_stored_reply(&self, reply: ReplyWithExit) -> Result<(), ClusterError> {
        self.inbound.stored_reply(&reply);
        Ok(())
    }
}

/// Persisted streaming is refused: a stream's chunks go to one live caller, so "deliver
/// again after a crash" has nobody to resume to. Persist the work (a persisted RPC or a
/// workflow) and stream its stored result instead.
fn persisted_stream_refused(envelope: &EnvelopeRequest) -> ClusterError {
    ClusterError::Unsupported {
        operation: format!(
            "persisted streaming RPC `{}` of `{}`",
            envelope.tag, envelope.address.entity_type
        ),
        backend: "cruster: a streaming RPC is delivered at most once; make it a plain \
                  `#[rpc]` stream, or persist the work as a persisted RPC or a workflow and \
                  stream its stored result"
            .into(),
    }
}

/// The clock of the runner behind `sharding`: its configured clock when it is a
/// [`ShardingImpl`], the system clock otherwise (test doubles of `Sharding`).
pub(crate) fn clock_of(sharding: &dyn Sharding) -> Clock {
    sharding
        .as_any()
        .downcast_ref::<ShardingImpl>()
        .map(|runner| runner.clock().clone())
        .unwrap_or_default()
}
