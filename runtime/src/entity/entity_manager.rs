//! The entity manager of one entity type: activation, mailboxes, concurrency, idle
//! eviction, interrupts and streaming replies.
//!
//! Owns the live instances of its type (`entity id → instance`). Each instance is one task
//! reading a bounded mailbox and running up to `concurrency` handlers at once (no task per
//! message). A full mailbox is refused at once with `MailboxFull`. Idle instances are evicted
//! by a reaper; instances of a shard that moves away are stopped and drained before the
//! shard's lock is released. Never holds a lock across an await.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cruster_sharding::{Entity, EntityContext, EntityHandler, IncomingRequest};
use cruster_types::{
    AckChunk, ClusterError, EntityAddress, EntityId, EntityType, EnvelopeRequest, ExitResult,
    Reply, ReplyChunk, ReplyWithExit, ShardId, Snowflake,
};
use dashmap::DashMap;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use parking_lot::Mutex;
use prometheus::IntGauge;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::entity::mailbox::{MailboxItem, ReplySink};
use crate::runtime_core::RuntimeCore;

use cruster_sharding::STREAM_WINDOW;

pub(crate) struct EntityManager {
    core: Arc<RuntimeCore>,
    entity: Arc<dyn Entity>,
    entity_type: EntityType,
    pub(crate) shard_group: Arc<str>,
    mailbox_capacity: usize,
    concurrency: usize,
    max_idle: Duration,
    instances: DashMap<EntityId, Arc<Instance>>,
    active_gauge: IntGauge,
    mailbox_gauge: IntGauge,
    epoch: Instant,
}

struct Instance {
    address: EntityAddress,
    tx: mpsc::Sender<MailboxItem>,
    stop: CancellationToken,
    /// Mirrors `stop` for the per-message check (an atomic load, no lock).
    stopped: std::sync::atomic::AtomicBool,
    finished: CancellationToken,
    last_active_ms: AtomicU64,
    pending: AtomicUsize,
    interrupts: Mutex<HashMap<Snowflake, CancellationToken>>,
    streams: Mutex<HashMap<Snowflake, StreamWindow>>,
}

struct StreamWindow {
    permits: Arc<Semaphore>,
    acked: Option<u32>,
}

impl EntityManager {
    pub(crate) fn new(
        core: Arc<RuntimeCore>,
        entity: Arc<dyn Entity>,
    ) -> Result<Arc<Self>, ClusterError> {
        let entity_type = entity.entity_type();
        if entity_type.as_str().is_empty() {
            return Err(ClusterError::InvalidConfig {
                field: "entity name".into(),
                reason: "an entity type name cannot be empty".into(),
            });
        }
        let options = entity.options();
        let config = &core.config;
        let mailbox_capacity = options
            .mailbox_capacity
            .unwrap_or(config.entity_mailbox_capacity);
        if mailbox_capacity == 0 {
            return Err(ClusterError::InvalidConfig {
                field: format!("mailbox_capacity of {entity_type}"),
                reason: "must be at least 1".into(),
            });
        }
        let max_idle = options.max_idle_time.unwrap_or(config.entity_max_idle_time);
        if max_idle.is_zero() {
            return Err(ClusterError::InvalidConfig {
                field: format!("max_idle_time of {entity_type}"),
                reason: "must be more than zero".into(),
            });
        }
        let shard_group: Arc<str> = Arc::from(
            options
                .shard_group
                .as_deref()
                .unwrap_or(cruster_types::DEFAULT_SHARD_GROUP),
        );
        let label = [entity_type.as_str()];
        Ok(Arc::new(EntityManager {
            active_gauge: core.metrics.active_entities.with_label_values(&label),
            mailbox_gauge: core.metrics.mailbox_depth.with_label_values(&label),
            concurrency: options
                .concurrency
                .unwrap_or(config.entity_max_concurrent_requests),
            core,
            entity,
            entity_type,
            shard_group,
            mailbox_capacity,
            max_idle,
            instances: DashMap::new(),
            epoch: Instant::now(),
        }))
    }

    pub(crate) fn entity_type(&self) -> &EntityType {
        &self.entity_type
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Queues a request for its entity, activating the entity if needed. On refusal the
    /// item comes back by value, so a routing retry needs no clone.
    #[allow(clippy::result_large_err)]
    pub(crate) fn deliver(
        self: &Arc<Self>,
        item: MailboxItem,
    ) -> Result<(), (ClusterError, MailboxItem)> {
        let mut item = item;
        for _ in 0..3 {
            let instance = match self.instances.get(&item.envelope.address.entity_id) {
                Some(instance) => instance.clone(),
                None => match self.activate(&item.envelope.address) {
                    Ok(instance) => instance,
                    Err(err) => return Err((err, item)),
                },
            };
            instance.pending.fetch_add(1, Ordering::AcqRel);
            match instance.tx.try_send(item) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(back)) => {
                    instance.pending.fetch_sub(1, Ordering::AcqRel);
                    return Err((
                        ClusterError::MailboxFull {
                            entity_type: self.entity_type.clone(),
                            entity_id: back.envelope.address.entity_id.clone(),
                            capacity: self.mailbox_capacity,
                        },
                        back,
                    ));
                }
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    // The instance is stopping (evicted or its shard is moving): forget it
                    // and try a fresh one, which re-checks shard ownership.
                    instance.pending.fetch_sub(1, Ordering::AcqRel);
                    self.instances
                        .remove_if(&back.envelope.address.entity_id, |_, v| {
                            Arc::ptr_eq(v, &instance)
                        });
                    item = back;
                }
            }
        }
        let shard_id = item.envelope.address.shard_id.clone();
        Err((ClusterError::ShardNotOwned { shard_id }, item))
    }

    fn activate(self: &Arc<Self>, address: &EntityAddress) -> Result<Arc<Instance>, ClusterError> {
        if self.core.is_stopping() {
            return Err(ClusterError::ShardNotOwned {
                shard_id: address.shard_id.clone(),
            });
        }
        if !self.core.shard_table.is_held(&address.shard_id) {
            return Err(ClusterError::ShardNotOwned {
                shard_id: address.shard_id.clone(),
            });
        }
        let entry = self
            .instances
            .entry(address.entity_id.clone())
            .or_insert_with(|| self.spawn_instance(address.clone()));
        Ok(entry.clone())
    }

    fn spawn_instance(self: &Arc<Self>, address: EntityAddress) -> Arc<Instance> {
        let (tx, rx) = mpsc::channel(self.mailbox_capacity);
        let instance = Arc::new(Instance {
            address,
            tx,
            stop: CancellationToken::new(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            finished: CancellationToken::new(),
            last_active_ms: AtomicU64::new(self.now_ms()),
            pending: AtomicUsize::new(0),
            interrupts: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
        });
        self.active_gauge.inc();
        let manager = self.clone();
        let inst = instance.clone();
        let span = tracing::debug_span!("cruster.entity", entity_type = %self.entity_type, entity_id = %instance.address.entity_id);
        self.core.spawn(
            async move {
                let finished = inst.finished.clone();
                manager.run_instance(inst, rx).await;
                finished.cancel();
            }
            .instrument(span),
        );
        instance
    }

    async fn run_instance(
        self: Arc<Self>,
        instance: Arc<Instance>,
        mut rx: mpsc::Receiver<MailboxItem>,
    ) {
        let ctx = EntityContext {
            address: instance.address.clone(),
            runner_address: self.core.config.runner_address.clone(),
            sharding: match self.core.sharding() {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        let handler = match self.entity.spawn(ctx).await {
            Ok(handler) => handler,
            Err(err) => {
                tracing::warn!(%err, "entity failed to start; failing its queued messages");
                self.instances
                    .remove_if(&instance.address.entity_id, |_, v| {
                        Arc::ptr_eq(v, &instance)
                    });
                rx.close();
                while let Ok(item) = rx.try_recv() {
                    self.finish_failed(
                        item,
                        ClusterError::handler(format!(
                            "entity {} failed to start: {err}",
                            instance.address
                        )),
                    )
                    .await;
                }
                self.active_gauge.dec();
                return;
            }
        };
        let limit = if self.concurrency == 0 {
            usize::MAX
        } else {
            self.concurrency
        };
        let mut running = FuturesUnordered::new();
        // Created once: polling it again is cheap, re-creating it each message is not.
        let stop = instance.stop.cancelled();
        tokio::pin!(stop);
        if limit == 1 {
            // One at a time (the default): run each request inline, no per-message
            // allocation. A ready message is taken without polling `stop`; the flag is
            // checked after it, so a stopped instance refuses what is still queued.
            loop {
                let item = tokio::select! {
                    biased;
                    item = rx.recv() => item,
                    _ = &mut stop => break,
                };
                let Some(item) = item else { break };
                if instance.stopped.load(Ordering::Acquire) {
                    instance.pending.fetch_sub(1, Ordering::AcqRel);
                    if item.envelope.persisted {
                        self.core.in_flight.abandon(item.envelope.request_id);
                    }
                    let shard_id = item.envelope.address.shard_id.clone();
                    item.fail(ClusterError::ShardNotOwned { shard_id });
                    break;
                }
                self.process(&instance, &handler, item).await;
            }
        } else {
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    Some(()) = running.next(), if !running.is_empty() => {}
                    item = rx.recv(), if running.len() < limit => match item {
                        Some(item) => {
                                    running.push(self.process(&instance, &handler, item));
                        }
                        None => break,
                    },
                }
            }
        }
        // Stopping: refuse what is queued (the caller retries with the new owner; persisted
        // requests stay unprocessed in storage), let running handlers finish.
        rx.close();
        while let Ok(item) = rx.try_recv() {
            instance.pending.fetch_sub(1, Ordering::AcqRel);
            if item.envelope.persisted {
                self.core.in_flight.abandon(item.envelope.request_id);
            }
            let shard_id = item.envelope.address.shard_id.clone();
            item.fail(ClusterError::ShardNotOwned { shard_id });
        }
        while running.next().await.is_some() {}
        handler.on_passivate().await;
        self.active_gauge.dec();
    }

    async fn finish_failed(&self, item: MailboxItem, err: ClusterError) {
        if item.envelope.persisted {
            self.core
                .record_failure(item.envelope.request_id, &err.to_string())
                .await;
        }
        item.fail(err);
    }

    async fn process(
        &self,
        instance: &Instance,
        handler: &Arc<dyn EntityHandler>,
        item: MailboxItem,
    ) {
        let parent = crate::trace_context::parent_of(&item.envelope);
        let span = tracing::debug_span!(
            "cruster.handle",
            tag = %item.envelope.tag,
            request_id = %item.envelope.request_id,
            persisted = item.envelope.persisted,
            remote_parent = parent,
        );
        async {
            if item.envelope.streaming {
                self.process_stream(instance, handler.clone(), item).await;
            } else {
                self.process_request(instance, handler.as_ref(), item).await;
            }
        }
        .instrument(span)
        .await;
        instance
            .last_active_ms
            .store(self.now_ms(), Ordering::Relaxed);
        instance.pending.fetch_sub(1, Ordering::AcqRel);
    }

    fn interrupt_token(
        &self,
        instance: &Instance,
        envelope: &EnvelopeRequest,
    ) -> Option<CancellationToken> {
        if envelope.uninterruptible || !envelope.persisted {
            return None;
        }
        let token = CancellationToken::new();
        instance
            .interrupts
            .lock()
            .insert(envelope.request_id, token.clone());
        Some(token)
    }

    async fn process_request(
        &self,
        instance: &Instance,
        handler: &dyn EntityHandler,
        item: MailboxItem,
    ) {
        let MailboxItem { envelope, mut sink } = item;
        let request_id = envelope.request_id;
        let persisted = envelope.persisted;
        let interruptible_by_caller = !persisted && !envelope.uninterruptible;
        let interrupt = self.interrupt_token(instance, &envelope);
        // No token (and no allocation) for requests nobody can interrupt by id.
        let interrupted = async {
            match &interrupt {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let handled = AssertUnwindSafe(handler.handle(IncomingRequest { envelope })).catch_unwind();
        let outcome = tokio::select! {
            result = handled => result.map_err(|panic| panic_message(&panic)),
            _ = caller_gone(&mut sink), if interruptible_by_caller => Ok(Err(ClusterError::Interrupted { request_id })),
            _ = interrupted => Ok(Err(ClusterError::Interrupted { request_id })),
        };
        if interrupt.is_some() {
            instance.interrupts.lock().remove(&request_id);
        }
        let exit = match outcome {
            Ok(Ok(bytes)) => ExitResult::Success(bytes),
            Ok(Err(err @ ClusterError::PersistenceError { .. })) if persisted => {
                // A storage failure is not the handler's answer: count a failed delivery
                // and let the storage poll retry it (dead-lettered at the limit). The
                // caller keeps waiting for the stored reply.
                tracing::warn!(%err, %request_id, "persisted handler hit a storage error; will retry");
                self.core.record_failure(request_id, &err.to_string()).await;
                drop(sink);
                return;
            }
            Ok(Err(err)) => ExitResult::failure(&err),
            Err(panic) => {
                let err = ClusterError::handler(format!(
                    "handler of {} panicked: {panic}",
                    instance.address
                ));
                tracing::error!(%err, "entity handler panicked");
                if persisted {
                    // A defect, not an answer: count the attempt; the poll retries it.
                    self.core.record_failure(request_id, &err.to_string()).await;
                    drop(sink);
                    return;
                }
                ExitResult::failure(&err)
            }
        };
        let reply = ReplyWithExit { request_id, exit };
        if persisted {
            if let Err(err) = self.core.store_reply(&reply).await {
                tracing::warn!(%err, %request_id, "could not store a reply; the request stays unprocessed and will be retried");
                self.core.in_flight.abandon(request_id);
                sink.fail_with(request_id, err);
                return;
            }
        }
        sink.reply(reply);
    }

    async fn process_stream(
        &self,
        instance: &Instance,
        handler: Arc<dyn EntityHandler>,
        item: MailboxItem,
    ) {
        let MailboxItem { envelope, sink } = item;
        let request_id = envelope.request_id;
        let persisted = envelope.persisted;
        let ReplySink::Stream(tx) = sink else {
            // A streaming envelope without a stream sink (a notify): run it to the end.
            let result = handler.handle_stream(IncomingRequest { envelope }).await;
            if let Ok(mut stream) = result {
                while stream.next().await.is_some() {}
            }
            return;
        };
        let permits = Arc::new(Semaphore::new(STREAM_WINDOW));
        instance.streams.lock().insert(
            request_id,
            StreamWindow {
                permits: permits.clone(),
                acked: None,
            },
        );
        let result = handler.handle_stream(IncomingRequest { envelope }).await;
        let exit = match result {
            Err(err) => ExitResult::failure(&err),
            Ok(mut stream) => {
                let mut sequence = 0u32;
                let mut exit = ExitResult::Success(Bytes::new());
                loop {
                    let next = tokio::select! {
                        next = stream.next() => next,
                        _ = tx.closed() => {
                            exit = ExitResult::failure(&ClusterError::Interrupted { request_id });
                            break;
                        }
                    };
                    let Some(value) = next else { break };
                    match value {
                        Err(err) => {
                            exit = ExitResult::failure(&err);
                            break;
                        }
                        Ok(bytes) => {
                            let Ok(permit) = permits.acquire().await else {
                                break;
                            };
                            permit.forget();
                            let chunk = ReplyChunk {
                                request_id,
                                sequence,
                                values: vec![bytes],
                            };
                            sequence += 1;
                            if persisted {
                                if let Ok(storage) = self.core.storage() {
                                    let saved =
                                        storage.save_reply(&Reply::Chunk(chunk.clone())).await;
                                    self.core.storage_result(&saved);
                                }
                            }
                            if tx.send(Ok(Reply::Chunk(chunk))).is_err() {
                                exit =
                                    ExitResult::failure(&ClusterError::Interrupted { request_id });
                                break;
                            }
                        }
                    }
                }
                exit
            }
        };
        instance.streams.lock().remove(&request_id);
        let reply = ReplyWithExit { request_id, exit };
        if persisted {
            if let Err(err) = self.core.store_reply(&reply).await {
                tracing::warn!(%err, %request_id, "could not store the end of a persisted stream");
            }
        }
        let _ = tx.send(Ok(Reply::WithExit(reply)));
    }

    /// Interrupts a request of one of this type's instances. Returns whether it was found.
    pub(crate) fn interrupt(&self, entity_id: &EntityId, request_id: Snowflake) -> bool {
        let Some(instance) = self.instances.get(entity_id).map(|i| i.clone()) else {
            return false;
        };
        let token = instance.interrupts.lock().remove(&request_id);
        match token {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Records a stream acknowledgement, letting the producer run further ahead.
    pub(crate) fn ack(&self, ack: &AckChunk) {
        let Some(instance) = self
            .instances
            .get(&ack.address.entity_id)
            .map(|i| i.clone())
        else {
            return;
        };
        let mut streams = instance.streams.lock();
        if let Some(window) = streams.get_mut(&ack.request_id) {
            let newly = match window.acked {
                None => ack.sequence as usize + 1,
                Some(prev) if ack.sequence > prev => (ack.sequence - prev) as usize,
                Some(_) => 0,
            };
            if newly > 0 {
                window.acked = Some(ack.sequence);
                window.permits.add_permits(newly);
            }
        }
    }

    /// Evicts instances idle for longer than `max_idle` with nothing queued or running,
    /// and samples the mailbox-depth gauge (sampling keeps two contended atomic updates per
    /// message off the hot path).
    pub(crate) fn evict_idle(&self) -> usize {
        let now = self.now_ms();
        let max_idle = self.max_idle.as_millis() as u64;
        let mut evicted = Vec::new();
        let mut queued: usize = 0;
        self.instances.retain(|_, instance| {
            queued += instance.tx.max_capacity() - instance.tx.capacity();
            let idle = now.saturating_sub(instance.last_active_ms.load(Ordering::Relaxed));
            let keep = idle < max_idle || instance.pending.load(Ordering::Acquire) > 0;
            if !keep {
                evicted.push(instance.clone());
            }
            keep
        });
        self.mailbox_gauge
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
        for instance in &evicted {
            instance.stopped.store(true, Ordering::Release);
            instance.stop.cancel();
        }
        evicted.len()
    }

    /// How often the reaper should look for idle instances.
    pub(crate) fn reap_interval(&self) -> Duration {
        (self.max_idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(5))
    }

    /// Stops the instances of `shards` and waits (up to `deadline`) for them to drain.
    pub(crate) async fn stop_shards(&self, shards: &[ShardId], deadline: Duration) {
        let mut stopped = Vec::new();
        self.instances.retain(|_, instance| {
            let moving = shards.contains(&instance.address.shard_id);
            if moving {
                stopped.push(instance.clone());
            }
            !moving
        });
        self.stop_and_wait(stopped, deadline).await;
    }

    async fn stop_and_wait(&self, instances: Vec<Arc<Instance>>, deadline: Duration) {
        for instance in &instances {
            instance.stopped.store(true, Ordering::Release);
            instance.stop.cancel();
        }
        let all = futures::future::join_all(instances.iter().map(|i| i.finished.cancelled()));
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(entity_type = %self.entity_type, "entity instances did not drain before the deadline; interrupting them");
            for instance in &instances {
                for (_, token) in instance.interrupts.lock().drain() {
                    token.cancel();
                }
            }
        }
    }

    /// Live instances (for tests and metrics).
    pub(crate) fn active_count(&self) -> usize {
        self.instances.len()
    }
}

async fn caller_gone(sink: &mut ReplySink) {
    match sink {
        ReplySink::Once(tx) => tx.closed().await,
        ReplySink::Stream(tx) => tx.closed().await,
        ReplySink::Nobody => std::future::pending().await,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

impl ReplySink {
    fn fail_with(self, request_id: Snowflake, err: ClusterError) {
        self.reply(ReplyWithExit {
            request_id,
            exit: ExitResult::failure(&err),
        });
    }
}
