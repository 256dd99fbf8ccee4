//! [`ShardingImpl`]: one runner of a cluster.
//!
//! Owns the runner's services (entity managers, storage poll, membership, singleton
//! supervisor) and implements the [`Sharding`] port for clients and entities and the
//! [`RunnerInbound`] port for the transport. Routing reads the shard table without a
//! lock; the happy path of a local send is a map lookup, a bounded-channel push and a
//! oneshot reply, with no timer and no storage round trip.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use chrono::Utc;
use cruster_message_storage::{MessageStorage, SaveResult};
use cruster_runner_storage::{RunnerHealth, RunnerStorage};
use cruster_sharding::{Entity, ReplyStream, ShardAssignment, Sharding, SingletonFn};
use cruster_transport::{RunnerInbound, Runners};
use cruster_types::{
    shard_for_entity, AckChunk, ClusterError, EntityId, EntityType, EnvelopeRequest, Interrupt,
    MachineId, Reply, ReplyWithExit, RunnerAddress, ShardId, Snowflake, SnowflakeGenerator,
};
use cruster_workflow_storage::{WorkflowEngine, WorkflowStorage};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::ShardingConfig;
use crate::entity_manager::EntityManager;
use crate::in_flight::InFlight;
use crate::mailbox::{MailboxItem, Outcome, ReplySink};
use crate::membership::Membership;
use crate::metrics::ClusterMetrics;
use crate::reply_waiters::ReplyWaiters;
use crate::runtime_core::RuntimeCore;
use crate::shard_assignment::RendezvousAssignment;
use crate::shard_table::{Route, ShardTable};
use crate::singleton_supervisor::SingletonSupervisor;
use crate::storage_poller::StoragePoller;

/// Trace-context key of the sender's span (`span-id@runner-address`).
pub const TRACE_PARENT_SPAN: &str = "cruster-parent-span";

/// The registered entity types of a runner: read on every delivery, written on registration.
#[derive(Default)]
pub(crate) struct EntityRegistry {
    managers: ArcSwap<HashMap<EntityType, Arc<EntityManager>>>,
    write: Mutex<()>,
}

impl EntityRegistry {
    pub(crate) fn get(&self, entity_type: &EntityType) -> Option<Arc<EntityManager>> {
        self.managers.load().get(entity_type).cloned()
    }

    pub(crate) fn all(&self) -> Vec<Arc<EntityManager>> {
        self.managers.load().values().cloned().collect()
    }

    fn insert(&self, manager: Arc<EntityManager>) -> Result<(), ClusterError> {
        let _guard = self.write.lock();
        let current = self.managers.load();
        if current.contains_key(manager.entity_type()) {
            return Err(ClusterError::InvalidConfig {
                field: "entity type".into(),
                reason: format!(
                    "entity type `{}` is already registered on this runner",
                    manager.entity_type()
                ),
            });
        }
        let mut next = (**current).clone();
        next.insert(manager.entity_type().clone(), manager);
        self.managers.store(Arc::new(next));
        Ok(())
    }
}

/// One runner of a cluster: routes, delivers, persists, and runs entities, singletons and
/// workflows. Create it with [`ShardingImpl::new_with_engines`] (production), or use
/// `SingleRunner` / `MemoryCluster` for one node or tests.
pub struct ShardingImpl {
    core: Arc<RuntimeCore>,
    runners: Arc<dyn Runners>,
    runner_health: Option<Arc<dyn RunnerHealth>>,
    workflow_storage: Option<Arc<dyn WorkflowStorage>>,
    workflow_engine: Option<Arc<dyn WorkflowEngine>>,
    registry: Arc<EntityRegistry>,
    supervisor: Arc<SingletonSupervisor>,
    membership: Arc<Membership>,
    poller_wake: Arc<tokio::sync::Notify>,
    poller: Mutex<Option<StoragePoller>>,
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
            let core = Arc::new(RuntimeCore {
                config: config.clone(),
                metrics,
                message_storage,
                shard_table: table,
                waiters: Arc::new(ReplyWaiters::default()),
                in_flight: InFlight::default(),
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
            let supervisor = Arc::new(SingletonSupervisor::new(core.clone()));
            let poller = StoragePoller::new(core.clone(), registry.clone());
            let poller_wake = poller.wake.clone();
            let membership = Arc::new(Membership::new(
                core.clone(),
                runner_storage,
                registry.clone(),
                supervisor.clone(),
                poller_wake.clone(),
            ));
            ShardingImpl {
                core,
                runners,
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
        self.membership.register().await?;
        // First rebalance inline, so a lone runner owns its shards when `start` returns.
        if let Err(err) = self.membership.rebalance(true).await {
            tracing::warn!(%err, "first rebalance failed; the rebalance loop retries");
        }
        self.membership.spawn_loops();
        if let Some(poller) = self.poller.lock().take() {
            self.core.spawn(async move { poller.run().await });
        }
        for manager in self.registry.all() {
            self.spawn_reaper(manager);
        }
        tracing::info!(runner = %self.core.config.runner_address, "runner started");
        Ok(())
    }

    fn spawn_reaper(&self, manager: Arc<EntityManager>) {
        let stopping = self.core.stopping.clone();
        self.core.spawn(async move {
            let interval = manager.reap_interval();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => { manager.evict_idle(); }
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

    /// This runner's configuration.
    pub fn config(&self) -> &Arc<ShardingConfig> {
        &self.core.config
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

    /// Runs one storage poll now (normally every `storage_poll_interval`).
    pub fn poll_storage_now(&self) {
        self.poller_wake.notify_one();
    }

    fn retry_backoff(&self, attempt: u32) -> Duration {
        self.core
            .config
            .send_retry_backoff
            .saturating_mul(2u32.saturating_pow(attempt.min(10)))
    }

    fn check_open(&self) -> Result<(), ClusterError> {
        if self.core.is_stopping() {
            return Err(ClusterError::ShuttingDown);
        }
        Ok(())
    }

    fn not_routable(&self, envelope: &EnvelopeRequest) -> ClusterError {
        ClusterError::ShardNotOwned {
            shard_id: envelope.address.shard_id.clone(),
        }
    }

    fn manager(&self, entity_type: &EntityType) -> Result<Arc<EntityManager>, ClusterError> {
        self.registry
            .get(entity_type)
            .ok_or_else(|| ClusterError::EntityNotRegistered {
                entity_type: entity_type.clone(),
            })
    }

    /// Delivers a non-persisted request and waits for its reply, retrying routing failures
    /// that happened before delivery.
    async fn send_plain(
        &self,
        mut envelope: EnvelopeRequest,
    ) -> Result<ReplyWithExit, ClusterError> {
        let retries = self.core.config.send_retry_count;
        let mut attempt = 0;
        loop {
            let err = match self.core.shard_table.route(&envelope.address.shard_id) {
                Route::Local => {
                    let manager = self.manager(&envelope.address.entity_type)?;
                    let (tx, rx) = oneshot::channel();
                    match manager.deliver(MailboxItem {
                        envelope,
                        sink: ReplySink::Once(tx),
                    }) {
                        Err((err, item)) => {
                            envelope = item.envelope;
                            err
                        }
                        Ok(()) => match rx.await {
                            Ok(Outcome::Reply(reply)) => return Ok(reply),
                            Ok(Outcome::Refused(err, back)) => {
                                envelope = *back;
                                err
                            }
                            Err(_) => return Err(self.lost_reply()),
                        },
                    }
                }
                Route::Remote(address) => match self.runners.send(&address, envelope.clone()).await
                {
                    Ok(stream) => return final_reply(stream, &address).await,
                    Err(err) => err,
                },
                Route::Pending => self.not_routable(&envelope),
            };
            if !err.is_routing() || attempt >= retries {
                return Err(err);
            }
            tokio::time::sleep(self.retry_backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// Carries the caller's span and runner in the envelope, so the receiving runner's
    /// `cruster.handle` span names where the request came from.
    fn attach_trace(&self, envelope: &mut EnvelopeRequest) {
        if !envelope.trace.is_empty() {
            return;
        }
        if let Some(id) = tracing::Span::current().id() {
            envelope.trace.0.push((
                TRACE_PARENT_SPAN.to_string(),
                format!("{}@{}", id.into_u64(), self.core.config.runner_address),
            ));
        }
    }

    fn lost_reply(&self) -> ClusterError {
        ClusterError::RunnerUnavailable {
            address: self.core.config.runner_address.clone(),
            reason: "the runner stopped before the request finished".into(),
        }
    }

    /// Stores a persisted request (or finds its duplicate). `Ok(Some(reply))` when the
    /// request is a duplicate that already has its reply; `Ok(None)` when it must be delivered.
    async fn save_persisted(
        &self,
        envelope: &EnvelopeRequest,
    ) -> Result<SaveOutcome, ClusterError> {
        let storage = self.core.storage()?;
        let saved = storage.save_request(envelope).await;
        self.core.storage_result(&saved);
        match saved? {
            SaveResult::Saved => {
                self.core.metrics.messages_persisted.inc();
                Ok(SaveOutcome::New)
            }
            SaveResult::Duplicate {
                reply: Some(reply), ..
            } => Ok(SaveOutcome::Answered(reply)),
            SaveResult::Duplicate {
                original_request_id,
                reply: None,
            } => Ok(SaveOutcome::Pending(original_request_id)),
        }
    }

    async fn send_persisted(
        &self,
        envelope: EnvelopeRequest,
    ) -> Result<ReplyWithExit, ClusterError> {
        match self.save_persisted(&envelope).await? {
            SaveOutcome::Answered(reply) => return Ok(reply),
            SaveOutcome::Pending(original) => return self.join_reply(original).await,
            SaveOutcome::New => {}
        }
        let request_id = envelope.request_id;
        if !envelope.is_due(Utc::now()) {
            return self.join_reply(request_id).await;
        }
        match self.deliver_persisted_now(envelope, true).await {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(err)) => Err(err),
            None => self.join_reply(request_id).await,
        }
    }

    /// Delivers a stored request at once. `Some` when it ran (or failed for good), `None`
    /// when it was not delivered and the storage poll (or its owner) will take it.
    async fn deliver_persisted_now(
        &self,
        envelope: EnvelopeRequest,
        wait: bool,
    ) -> Option<Result<ReplyWithExit, ClusterError>> {
        match self.core.shard_table.route(&envelope.address.shard_id) {
            Route::Local => self.deliver_persisted_local(envelope, wait).await,
            Route::Remote(address) => {
                if wait {
                    match self.runners.send(&address, envelope).await {
                        Ok(stream) => match final_reply(stream, &address).await {
                            Ok(reply) => Some(Ok(reply)),
                            Err(_) => None,
                        },
                        Err(_) => None,
                    }
                } else {
                    let _ = self.runners.notify(&address, envelope).await;
                    None
                }
            }
            Route::Pending => None,
        }
    }

    async fn deliver_persisted_local(
        &self,
        envelope: EnvelopeRequest,
        wait: bool,
    ) -> Option<Result<ReplyWithExit, ClusterError>> {
        let request_id = envelope.request_id;
        let manager = match self.manager(&envelope.address.entity_type) {
            Ok(manager) => manager,
            Err(err) => {
                self.core.record_failure(request_id, &err.to_string()).await;
                return Some(Err(err));
            }
        };
        if !self.core.in_flight.enter(request_id) {
            return None;
        }
        let (sink, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (ReplySink::Once(tx), Some(rx))
        } else {
            (ReplySink::Nobody, None)
        };
        if let Err((_, _)) = manager.deliver(MailboxItem { envelope, sink }) {
            self.core.in_flight.abandon(request_id);
            return None;
        }
        match rx?.await {
            Ok(Outcome::Reply(reply)) => Some(Ok(reply)),
            _ => None,
        }
    }

    async fn notify_persisted(&self, envelope: EnvelopeRequest) -> Result<(), ClusterError> {
        if let SaveOutcome::New = self.save_persisted(&envelope).await? {
            if envelope.is_due(Utc::now()) {
                let _ = self.deliver_persisted_now(envelope, false).await;
            }
        }
        Ok(())
    }

    async fn notify_plain(&self, mut envelope: EnvelopeRequest) -> Result<(), ClusterError> {
        let retries = self.core.config.send_retry_count;
        let mut attempt = 0;
        loop {
            let err = match self.core.shard_table.route(&envelope.address.shard_id) {
                Route::Local => {
                    let manager = self.manager(&envelope.address.entity_type)?;
                    match manager.deliver(MailboxItem {
                        envelope,
                        sink: ReplySink::Nobody,
                    }) {
                        Ok(()) => return Ok(()),
                        Err((err, item)) => {
                            envelope = item.envelope;
                            err
                        }
                    }
                }
                Route::Remote(address) => {
                    match self.runners.notify(&address, envelope.clone()).await {
                        Ok(()) => return Ok(()),
                        Err(err) => err,
                    }
                }
                Route::Pending => self.not_routable(&envelope),
            };
            if !err.is_routing() || attempt >= retries {
                return Err(err);
            }
            tokio::time::sleep(self.retry_backoff(attempt)).await;
            attempt += 1;
        }
    }

    // The envelope comes back by value on refusal, so a routing retry needs no clone.
    #[allow(clippy::result_large_err)]
    fn local_stream(
        &self,
        envelope: EnvelopeRequest,
    ) -> Result<ReplyStream, (ClusterError, EnvelopeRequest)> {
        let manager = match self.manager(&envelope.address.entity_type) {
            Ok(m) => m,
            Err(err) => return Err((err, envelope)),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        match manager.deliver(MailboxItem {
            envelope,
            sink: ReplySink::Stream(tx),
        }) {
            Ok(()) => Ok(until_exit(tokio_stream_from(rx))),
            Err((err, item)) => Err((err, item.envelope)),
        }
    }

    /// Handles a request that arrived from another runner.
    async fn inbound_send(&self, envelope: EnvelopeRequest) -> Result<ReplyStream, ClusterError> {
        if self.core.is_stopping() || !self.core.shard_table.is_held(&envelope.address.shard_id) {
            return Err(self.not_routable(&envelope));
        }
        if envelope.streaming {
            return self.local_stream(envelope).map_err(|(err, _)| err);
        }
        let manager = self.manager(&envelope.address.entity_type)?;
        let request_id = envelope.request_id;
        let persisted = envelope.persisted;
        if persisted && !self.core.in_flight.enter(request_id) {
            // Already being handled here (the storage poll was faster): wait for its reply.
            let reply = self.join_reply(request_id).await?;
            return Ok(single_reply(reply));
        }
        let (tx, rx) = oneshot::channel();
        if let Err((err, _)) = manager.deliver(MailboxItem {
            envelope,
            sink: ReplySink::Once(tx),
        }) {
            if persisted {
                self.core.in_flight.abandon(request_id);
            }
            return Err(err);
        }
        match rx.await {
            Ok(Outcome::Reply(reply)) => Ok(single_reply(reply)),
            Ok(Outcome::Refused(err, _)) => Err(err),
            Err(_) => Err(self.lost_reply()),
        }
    }
}

enum SaveOutcome {
    New,
    Answered(ReplyWithExit),
    Pending(Snowflake),
}

fn single_reply(reply: ReplyWithExit) -> ReplyStream {
    futures::stream::once(async move { Ok(Reply::WithExit(reply)) }).boxed()
}

fn tokio_stream_from(mut rx: mpsc::UnboundedReceiver<Result<Reply, ClusterError>>) -> ReplyStream {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Ends a reply stream after its final reply.
fn until_exit(stream: ReplyStream) -> ReplyStream {
    let mut done = false;
    stream
        .take_while(move |item| {
            let keep = !done;
            if matches!(item, Ok(Reply::WithExit(_)) | Err(_)) {
                done = true;
            }
            futures::future::ready(keep)
        })
        .boxed()
}

/// Reads a reply stream to its final reply.
async fn final_reply(
    mut stream: ReplyStream,
    from: &RunnerAddress,
) -> Result<ReplyWithExit, ClusterError> {
    while let Some(item) = stream.next().await {
        if let Reply::WithExit(reply) = item? {
            return Ok(reply);
        }
    }
    Err(ClusterError::RunnerUnavailable {
        address: from.clone(),
        reason: "the reply stream ended without a final reply".into(),
    })
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
        self.check_open()?;
        self.attach_trace(&mut envelope);
        self.core.metrics.messages_sent.inc();
        let span = tracing::debug_span!(
            "cruster.send",
            entity_type = %envelope.address.entity_type,
            entity_id = %envelope.address.entity_id,
            tag = %envelope.tag,
            request_id = %envelope.request_id,
            persisted = envelope.persisted,
        );
        if envelope.persisted {
            self.send_persisted(envelope).instrument(span).await
        } else {
            self.send_plain(envelope).instrument(span).await
        }
    }

    async fn send_stream(
        &self,
        mut envelope: EnvelopeRequest,
    ) -> Result<ReplyStream, ClusterError> {
        self.check_open()?;
        self.attach_trace(&mut envelope);
        self.core.metrics.messages_sent.inc();
        if envelope.persisted {
            self.save_persisted(&envelope).await?;
        }
        let retries = self.core.config.send_retry_count;
        let mut attempt = 0;
        loop {
            let err = match self.core.shard_table.route(&envelope.address.shard_id) {
                Route::Local => match self.local_stream(envelope) {
                    Ok(stream) => return Ok(stream),
                    Err((err, back)) => {
                        envelope = back;
                        err
                    }
                },
                Route::Remote(address) => match self.runners.send(&address, envelope.clone()).await
                {
                    Ok(stream) => return Ok(until_exit(stream)),
                    Err(err) => err,
                },
                Route::Pending => self.not_routable(&envelope),
            };
            if !err.is_routing() || attempt >= retries {
                return Err(err);
            }
            tokio::time::sleep(self.retry_backoff(attempt)).await;
            attempt += 1;
        }
    }

    async fn notify(&self, mut envelope: EnvelopeRequest) -> Result<(), ClusterError> {
        self.check_open()?;
        self.attach_trace(&mut envelope);
        self.core.metrics.messages_sent.inc();
        if envelope.persisted {
            self.notify_persisted(envelope).await
        } else {
            self.notify_plain(envelope).await
        }
    }

    async fn poll_reply(
        &self,
        request_id: Snowflake,
    ) -> Result<Option<ReplyWithExit>, ClusterError> {
        let storage = self.core.storage()?;
        let replies = storage.replies_for(request_id).await;
        self.core.storage_result(&replies);
        Ok(replies?.into_iter().find_map(|r| match r {
            Reply::WithExit(exit) => Some(exit),
            Reply::Chunk(_) => None,
        }))
    }

    async fn join_reply(&self, request_id: Snowflake) -> Result<ReplyWithExit, ClusterError> {
        let storage = self.core.storage()?.clone();
        let interval = self.core.config.storage_poll_interval;
        let mut wait = Duration::from_millis(5).min(interval);
        loop {
            let mut waiter = self.core.waiters.wait(request_id);
            if let Some(reply) = self.poll_reply(request_id).await? {
                return Ok(reply);
            }
            if let Some(stored) = storage.request(request_id).await? {
                if stored.dead_lettered {
                    return Err(ClusterError::PersistenceError {
                        reason: format!(
                            "request {request_id} was dead-lettered after {} failed attempts; \
                             inspect it with MessageStorage::dead_letters",
                            stored.attempts
                        ),
                        source: None,
                    });
                }
            }
            tokio::select! {
                reply = &mut waiter.rx => {
                    if let Ok(reply) = reply {
                        return Ok(reply);
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = self.core.killed.cancelled() => return Err(ClusterError::ShuttingDown),
            }
            wait = (wait * 2).min(interval);
        }
    }

    async fn ack_chunk(&self, ack: AckChunk) -> Result<(), ClusterError> {
        match self.core.shard_table.route(&ack.address.shard_id) {
            Route::Local => {
                self.manager(&ack.address.entity_type)?.ack(&ack);
                Ok(())
            }
            Route::Remote(address) => self.runners.ack_chunk(&address, ack).await,
            Route::Pending => Err(ClusterError::ShardNotOwned {
                shard_id: ack.address.shard_id.clone(),
            }),
        }
    }

    async fn interrupt(&self, interrupt: Interrupt) -> Result<(), ClusterError> {
        match self.core.shard_table.route(&interrupt.address.shard_id) {
            Route::Local => {
                self.manager(&interrupt.address.entity_type)?
                    .interrupt(&interrupt.address.entity_id, interrupt.request_id);
                Ok(())
            }
            Route::Remote(address) => self.runners.interrupt(&address, interrupt).await,
            Route::Pending => Err(ClusterError::ShardNotOwned {
                shard_id: interrupt.address.shard_id.clone(),
            }),
        }
    }

    async fn register_entity(&self, entity: Arc<dyn Entity>) -> Result<(), ClusterError> {
        let manager = EntityManager::new(self.core.clone(), entity)?;
        let group = manager.shard_group.clone();
        self.registry.insert(manager.clone())?;
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
        self.inbound_send(envelope).await
    }

    async fn handle_notify(&self, envelope: EnvelopeRequest) -> Result<(), ClusterError> {
        if self.core.is_stopping() || !self.core.shard_table.is_held(&envelope.address.shard_id) {
            return Err(self.not_routable(&envelope));
        }
        if envelope.persisted {
            let _ = self.deliver_persisted_local(envelope, false).await;
            return Ok(());
        }
        let manager = self.manager(&envelope.address.entity_type)?;
        manager
            .deliver(MailboxItem {
                envelope,
                sink: ReplySink::Nobody,
            })
            .map_err(|(err, _)| err)
    }

    async fn handle_ack(&self, ack: AckChunk) -> Result<(), ClusterError> {
        self.manager(&ack.address.entity_type)?.ack(&ack);
        Ok(())
    }

    async fn handle_interrupt(&self, interrupt: Interrupt) -> Result<(), ClusterError> {
        self.manager(&interrupt.address.entity_type)?
            .interrupt(&interrupt.address.entity_id, interrupt.request_id);
        Ok(())
    }
}
