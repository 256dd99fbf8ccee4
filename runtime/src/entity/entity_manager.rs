//! The entity manager of one entity type: activation, mailboxes, concurrency, idle
//! eviction, interrupts and streaming replies.
//!
//! Owns the live instances of its type (`shard → entity id → instance`); an instance runs a
//! task only while it has requests (see [`super::instance`]). A full mailbox is refused at once with `MailboxFull`.
//! Idle instances are evicted by a reaper that looks only at the instances due (see
//! [`super::idle_queue`]): an eviction costs O(1), and live instances that are not idle cost
//! a reap tick nothing. The maps give their memory back as instances leave. Instances of a shard that moves away are drained
//! (and, past the deadline, their interruptible handlers aborted) before the shard's lock is
//! released; instances of a shard that is lost are aborted at once. Activation checks shard
//! ownership under the shard's map entry, so a shard being stopped never gains a new
//! instance. Never holds a lock across an await.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cruster_sharding::Entity;
use cruster_types::{
    AckChunk, ClusterError, EntityAddress, EntityId, EntityType, ShardId, Snowflake,
};
use dashmap::DashMap;
use futures::StreamExt;
use prometheus::{IntCounter, IntGauge};
use tracing::Instrument;

use crate::entity::idle_queue::IdleQueue;
use crate::entity::instance::{Instance, InstanceRuntime, PushRefused, Pushed, RunEnd};
use crate::entity::mailbox::MailboxItem;
use crate::inspection::{BusyEntity, EntityTypeLoad};
use crate::runtime_core::RuntimeCore;

pub(crate) struct EntityManager {
    core: Arc<RuntimeCore>,
    /// What the instances' tasks share.
    runtime: Arc<InstanceRuntime>,
    entity_type: EntityType,
    pub(crate) shard_group: Arc<str>,
    mailbox_capacity: usize,
    max_idle: Duration,
    /// Live instances, by shard then entity id, so a shard that moves is stopped in
    /// O(its instances).
    instances: DashMap<ShardId, HashMap<EntityId, Arc<Instance>>>,
    /// Every live instance once, by when it may have been idle for `max_idle`.
    idle_queue: IdleQueue<Weak<Instance>>,
    mailbox_gauge: IntGauge,
    evicted_counter: IntCounter,
    idle_checks_counter: IntCounter,
}

/// How many idle instances being stopped one task passivates at once.
const PASSIVATIONS_AT_ONCE: usize = 64;

/// A map that keeps less than a quarter of its slots in use gives the rest back (above
/// this many slots; smaller maps are not worth the rehash).
const SHRINK_ABOVE_CAPACITY: usize = 64;

fn shrink_if_sparse<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > SHRINK_ABOVE_CAPACITY && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
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
        let runtime = Arc::new(InstanceRuntime {
            core: core.clone(),
            entity,
            concurrency: options
                .concurrency
                .unwrap_or(config.entity_max_concurrent_requests),
            active_gauge: core.metrics.active_entities.with_label_values(&label),
            epoch: core.config.clock.instant(),
            pending_count: Default::default(),
        });
        Ok(Arc::new(EntityManager {
            mailbox_gauge: core.metrics.mailbox_depth.with_label_values(&label),
            evicted_counter: core.metrics.entities_evicted.with_label_values(&label),
            idle_checks_counter: core.metrics.idle_checks.with_label_values(&label),
            idle_queue: IdleQueue::new((reap_interval_of(max_idle).as_millis() as u64 / 4).max(1)),
            core,
            runtime,
            entity_type,
            shard_group,
            mailbox_capacity,
            max_idle,
            instances: DashMap::new(),
        }))
    }

    pub(crate) fn entity_type(&self) -> &EntityType {
        &self.entity_type
    }

    fn now_ms(&self) -> u64 {
        self.runtime.now_ms()
    }

    fn instance(&self, address: &EntityAddress) -> Option<Arc<Instance>> {
        self.instances
            .get(&address.shard_id)
            .and_then(|shard| shard.get(&address.entity_id).cloned())
    }

    fn instance_by_id(&self, shard_id: &ShardId, entity_id: &EntityId) -> Option<Arc<Instance>> {
        self.instances
            .get(shard_id)
            .and_then(|shard| shard.get(entity_id).cloned())
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
            let instance = match self.instance(&item.envelope.address) {
                Some(instance) => instance,
                None => match self.activate(&item.envelope.address) {
                    Ok(instance) => instance,
                    Err(err) => return Err((err, item)),
                },
            };
            if instance.pending.fetch_add(1, Ordering::AcqRel) == 0 {
                instance
                    .busy_since_ms
                    .store(self.now_ms(), Ordering::Relaxed);
            }
            self.runtime.pending_count.add(instance.pending_stripe);
            match instance.push(item) {
                Ok(Pushed::Queued) => return Ok(()),
                Ok(Pushed::StartTask) => {
                    self.serve(instance);
                    return Ok(());
                }
                Err(PushRefused::Full(back)) => {
                    instance.pending.fetch_sub(1, Ordering::AcqRel);
                    self.runtime.pending_count.remove(instance.pending_stripe);
                    return Err((
                        ClusterError::MailboxFull {
                            entity_type: self.entity_type.clone(),
                            entity_id: back.envelope.address.entity_id.clone(),
                            capacity: self.mailbox_capacity,
                        },
                        back,
                    ));
                }
                Err(PushRefused::Closed(back)) => {
                    // The instance is stopping (evicted or its shard is moving): forget it
                    // and try a fresh one, which re-checks shard ownership.
                    instance.pending.fetch_sub(1, Ordering::AcqRel);
                    self.runtime.pending_count.remove(instance.pending_stripe);
                    self.forget(&instance);
                    item = back;
                }
            }
        }
        let shard_id = item.envelope.address.shard_id.clone();
        Err((ClusterError::ShardNotOwned { shard_id }, item))
    }

    /// How many more requests the mailbox of `address` takes now: its capacity when the
    /// entity is not active. A snapshot (the storage poll sizes its deliveries with it); a
    /// concurrent send may take the room first, and `deliver` then refuses as usual.
    pub(crate) fn mailbox_room(&self, address: &EntityAddress) -> usize {
        self.instance(address)
            .map_or(self.mailbox_capacity, |instance| instance.room())
    }

    /// Removes an instance from the map if it is still the one there.
    pub(crate) fn forget(&self, instance: &Arc<Instance>) {
        let shard_id = &instance.address.shard_id;
        let emptied = match self.instances.get_mut(shard_id) {
            Some(mut shard) => {
                if shard
                    .get(&instance.address.entity_id)
                    .is_some_and(|current| Arc::ptr_eq(current, instance))
                {
                    shard.remove(&instance.address.entity_id);
                    shrink_if_sparse(&mut shard);
                }
                shard.is_empty()
            }
            None => false,
        };
        if emptied {
            self.instances
                .remove_if(shard_id, |_, shard| shard.is_empty());
        }
    }

    fn activate(self: &Arc<Self>, address: &EntityAddress) -> Result<Arc<Instance>, ClusterError> {
        let refused = || ClusterError::ShardNotOwned {
            shard_id: address.shard_id.clone(),
        };
        if self.core.is_stopping() {
            return Err(refused());
        }
        // Ownership is checked while the shard's entry is locked: `stop_shards` and
        // `abort_shards` mark the shard not held *before* they take the entry, so an
        // instance is never created for a shard that is being stopped.
        let mut shard = self.instances.entry(address.shard_id.clone()).or_default();
        if !self.core.shard_table.is_held(&address.shard_id) {
            return Err(refused());
        }
        if let Some(instance) = shard.get(&address.entity_id) {
            return Ok(instance.clone());
        }
        let instance = self.spawn_instance(self.shared_address(address));
        shard.insert(instance.address.entity_id.clone(), instance.clone());
        drop(shard);
        let activated_ms = instance.last_active_ms.load(Ordering::Relaxed);
        self.idle_queue
            .push(activated_ms + self.max_idle_ms(), Arc::downgrade(&instance));
        Ok(instance)
    }

    /// `address` with the type's own entity type and shard group strings, so a live
    /// instance holds no copies of them (a request's address may carry its own).
    fn shared_address(&self, address: &EntityAddress) -> EntityAddress {
        let group = if *address.shard_id.group == *self.shard_group {
            self.shard_group.clone()
        } else {
            address.shard_id.group.clone()
        };
        let entity_type = if address.entity_type == self.entity_type {
            self.entity_type.clone()
        } else {
            address.entity_type.clone()
        };
        EntityAddress {
            shard_id: ShardId {
                group,
                id: address.shard_id.id,
            },
            entity_type,
            entity_id: address.entity_id.clone(),
        }
    }

    fn spawn_instance(self: &Arc<Self>, address: EntityAddress) -> Arc<Instance> {
        let fence = self.core.fences.token(&address.shard_id);
        let drain_deadline = self.core.fences.drain_token(&address.shard_id);
        let stripe = self.runtime.pending_count.stripe_for_new_instance();
        let instance = Arc::new(Instance::new(
            address,
            self.mailbox_capacity,
            self.now_ms(),
            fence,
            drain_deadline,
            stripe,
        ));
        self.runtime.active_gauge.inc();
        instance
    }

    /// Starts a task serving `instance` (the caller claimed it: no other task serves it).
    fn serve(self: &Arc<Self>, instance: Arc<Instance>) {
        let manager = self.clone();
        let span = tracing::debug_span!("cruster.entity", entity_type = %self.entity_type, entity_id = %instance.address.entity_id);
        let fut = async move {
            match manager.runtime.clone().run(instance.clone()).await {
                RunEnd::Idle => {}
                RunEnd::Stopped => instance.mark_ended(),
                RunEnd::FailedToStart => {
                    manager.forget(&instance);
                    instance.mark_ended();
                }
            }
        }
        .instrument(span);
        self.core.spawn(fut);
    }

    /// Stops `instances`. A task serving one ends it; those no task serves (idle ones)
    /// are passivated by one task, [`PASSIVATIONS_AT_ONCE`] at a time, so that evicting a
    /// million idle instances at once starts one task, not a million.
    fn stop_instances(self: &Arc<Self>, instances: &[Arc<Instance>]) {
        let idle: Vec<Arc<Instance>> = instances
            .iter()
            .filter(|instance| instance.stop())
            .cloned()
            .collect();
        if idle.is_empty() {
            return;
        }
        let runtime = self.runtime.clone();
        let span = tracing::debug_span!("cruster.passivate", entity_type = %self.entity_type, instances = idle.len());
        self.core.spawn(
            async move {
                futures::stream::iter(idle)
                    .for_each_concurrent(PASSIVATIONS_AT_ONCE, |instance| {
                        let runtime = &runtime;
                        async move { runtime.passivate_stopped(&instance).await }
                    })
                    .await;
            }
            .instrument(span),
        );
    }

    /// Interrupts a request of one of this type's instances. Returns whether it was found.
    pub(crate) fn interrupt(&self, address: &EntityAddress, request_id: Snowflake) -> bool {
        let Some(instance) = self.instance(address) else {
            return false;
        };
        match instance.take_interrupt(request_id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Records a stream acknowledgement, letting the producer run further ahead.
    pub(crate) fn ack(&self, ack: &AckChunk) {
        let Some(instance) = self.instance_by_id(&ack.address.shard_id, &ack.address.entity_id)
        else {
            return;
        };
        instance.with_stream(ack.request_id, |window| {
            let newly = match window.acked {
                None => ack.sequence as usize + 1,
                Some(prev) if ack.sequence > prev => (ack.sequence - prev) as usize,
                Some(_) => 0,
            };
            if newly > 0 {
                window.acked = Some(ack.sequence);
                window.permits.add_permits(newly);
            }
        });
    }

    fn max_idle_ms(&self) -> u64 {
        self.max_idle.as_millis() as u64
    }

    /// Evicts the instances idle for longer than `max_idle` with nothing queued or running,
    /// and samples the mailbox-depth gauge (sampling keeps two contended atomic updates per
    /// message off the hot path). Reads the clock once, here.
    pub(crate) fn evict_idle(self: &Arc<Self>) -> usize {
        let now = self.now_ms();
        self.evict_idle_at(now)
    }

    /// [`Self::evict_idle`] at the instant `now_ms` of the instances' clock. Looks only at
    /// the instances due by the idle queue: each is evicted (O(1)) or, active since it was
    /// queued, queued again under its new due instant.
    fn evict_idle_at(self: &Arc<Self>, now_ms: u64) -> usize {
        let max_idle = self.max_idle_ms();
        let due = self.idle_queue.take_due(now_ms);
        let checked = due.len();
        let mut evicted = Vec::new();
        let mut emptied_shards = Vec::new();
        for weak in due {
            // Gone, or already out of the map (its shard left, it failed to start): its
            // entry ends here.
            let Some(instance) = weak.upgrade() else {
                continue;
            };
            if instance.stopped.load(Ordering::Acquire) {
                continue;
            }
            let last_active = instance.last_active_ms.load(Ordering::Relaxed);
            let idle_for = now_ms.saturating_sub(last_active);
            if instance.pending.load(Ordering::Acquire) > 0 {
                // Busy: idle at the earliest `max_idle` from now.
                self.idle_queue.push(now_ms + max_idle, weak);
                continue;
            }
            if idle_for < max_idle {
                self.idle_queue.push(last_active + max_idle, weak);
                continue;
            }
            let shard_id = &instance.address.shard_id;
            let Some(mut shard) = self.instances.get_mut(shard_id) else {
                continue;
            };
            if !shard
                .get(&instance.address.entity_id)
                .is_some_and(|current| Arc::ptr_eq(current, &instance))
            {
                continue;
            }
            // Checked again under the shard's entry: a send that found the instance may
            // just have queued a request.
            if instance.pending.load(Ordering::Acquire) > 0 {
                drop(shard);
                self.idle_queue.push(now_ms + max_idle, weak);
                continue;
            }
            shard.remove(&instance.address.entity_id);
            shrink_if_sparse(&mut shard);
            if shard.is_empty() {
                emptied_shards.push(shard_id.clone());
            }
            drop(shard);
            evicted.push(instance);
        }
        for shard_id in &emptied_shards {
            self.instances
                .remove_if(shard_id, |_, shard| shard.is_empty());
        }
        if !emptied_shards.is_empty() {
            self.instances.shrink_to_fit();
        }
        let pending = self.runtime.pending_count.total();
        self.mailbox_gauge
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.idle_checks_counter.inc_by(checked as u64);
        self.evicted_counter.inc_by(evicted.len() as u64);
        self.stop_instances(&evicted);
        evicted.len()
    }

    /// How often the reaper should look for idle instances.
    pub(crate) fn reap_interval(&self) -> Duration {
        reap_interval_of(self.max_idle)
    }

    /// Takes the instances of `shards` out of the map (the caller has already marked the
    /// shards not held). Costs O(instances of those shards).
    fn take_shards(&self, shards: &[ShardId]) -> Vec<Arc<Instance>> {
        let mut taken = Vec::new();
        for shard in shards {
            if let Some((_, instances)) = self.instances.remove(shard) {
                taken.extend(instances.into_values());
            }
        }
        if !taken.is_empty() {
            self.instances.shrink_to_fit();
        }
        taken
    }

    /// Drains the instances of `shards`: they stop taking messages, running handlers get
    /// `deadline` to finish, then the interruptible ones are aborted (nothing stored; their
    /// requests run again on the new owner). Returns once every instance has ended, which
    /// may be later than the deadline while uninterruptible handlers finish.
    pub(crate) async fn stop_shards(self: &Arc<Self>, shards: &[ShardId], deadline: Duration) {
        let instances = self.take_shards(shards);
        if instances.is_empty() {
            return;
        }
        self.stop_instances(&instances);
        let all_finished = || futures::future::join_all(instances.iter().map(|i| i.ended()));
        if tokio::time::timeout(deadline, all_finished()).await.is_ok() {
            return;
        }
        tracing::warn!(
            entity_type = %self.entity_type,
            "entity instances did not drain before the deadline; aborting their interruptible handlers"
        );
        self.core.fences.end_drains(shards);
        all_finished().await;
    }

    /// Ends the instances of `shards`, whose fence has fired (the shard is lost): their
    /// handlers, uninterruptible ones included, are aborted and nothing is stored for them.
    pub(crate) async fn abort_shards(self: &Arc<Self>, shards: &[ShardId]) {
        let instances = self.take_shards(shards);
        self.stop_instances(&instances);
        let all = futures::future::join_all(instances.iter().map(|i| i.ended()));
        if tokio::time::timeout(Duration::from_secs(1), all)
            .await
            .is_err()
        {
            tracing::error!(entity_type = %self.entity_type, "aborted entity instances did not end within 1 s (a handler blocks its thread?)");
        }
    }

    /// The load of this type: live instances, requests queued or running, and every busy
    /// instance with its pending count.
    pub(crate) fn load(&self) -> (EntityTypeLoad, Vec<BusyEntity>) {
        let mut active = 0;
        let mut mailbox_depth = 0;
        let mut busy = Vec::new();
        for shard in self.instances.iter() {
            active += shard.len();
            for instance in shard.values() {
                let pending = instance.pending.load(Ordering::Acquire);
                if pending > 0 {
                    mailbox_depth += pending;
                    busy.push(BusyEntity {
                        address: instance.address.clone(),
                        pending,
                    });
                }
            }
        }
        let load = EntityTypeLoad {
            entity_type: self.entity_type.clone(),
            active,
            mailbox_depth,
        };
        (load, busy)
    }

    /// Progress of this type's deliveries: requests pending, the instant a request last
    /// finished (or an instance started), and the earliest instant a busy instance became
    /// busy. Instants are read from the instances' millisecond clock.
    pub(crate) fn progress(&self) -> (usize, Option<Instant>, Option<Instant>) {
        let epoch = self.runtime.epoch;
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        let mut pending_total = 0;
        let mut last_progress: Option<u64> = None;
        let mut earliest_busy: Option<u64> = None;
        for shard in self.instances.iter() {
            for instance in shard.values() {
                let last = instance.last_active_ms.load(Ordering::Relaxed);
                last_progress = Some(last_progress.map_or(last, |l| l.max(last)));
                let pending = instance.pending.load(Ordering::Acquire);
                if pending > 0 {
                    pending_total += pending;
                    let since = instance.busy_since_ms.load(Ordering::Relaxed);
                    earliest_busy = Some(earliest_busy.map_or(since, |e| e.min(since)));
                }
            }
        }
        (pending_total, last_progress.map(at), earliest_busy.map(at))
    }

    /// Live instances (for tests and metrics).
    pub(crate) fn active_count(&self) -> usize {
        self.instances.iter().map(|shard| shard.len()).sum()
    }
}

/// How often the reaper of a type with this idle time looks for idle instances.
fn reap_interval_of(max_idle: Duration) -> Duration {
    (max_idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use bytes::Bytes;
    use cruster_sharding::{
        EntityClient, EntityContext, EntityHandler, EntityOptions, IncomingRequest, Sharding,
    };

    use crate::single_node::single_runner::SingleRunner;

    /// Idle for an hour before eviction: the background reaper never evicts during a test,
    /// which drives eviction itself with instants of its choosing.
    const MAX_IDLE: Duration = Duration::from_secs(3600);

    struct Touched;
    struct TouchedHandler;

    #[async_trait]
    impl Entity for Touched {
        fn entity_type(&self) -> EntityType {
            EntityType::new("Touched")
        }

        fn options(&self) -> EntityOptions {
            EntityOptions {
                max_idle_time: Some(MAX_IDLE),
                ..Default::default()
            }
        }

        async fn spawn(
            &self,
            _ctx: EntityContext,
        ) -> Result<Arc<dyn cruster_sharding::EntityHandler>, ClusterError> {
            Ok(Arc::new(TouchedHandler))
        }
    }

    #[async_trait]
    impl EntityHandler for TouchedHandler {
        async fn handle(&self, request: IncomingRequest) -> Result<Bytes, ClusterError> {
            Ok(request.envelope.payload)
        }
    }

    async fn runner_touching(entities: usize) -> (SingleRunner, Arc<EntityManager>) {
        let runner = SingleRunner::builder().build().await.unwrap();
        runner
            .sharding()
            .register_entity(Arc::new(Touched))
            .await
            .unwrap();
        let client = EntityClient::new(runner.sharding().clone(), EntityType::new("Touched"));
        let callers = 32;
        let tasks: Vec<_> = (0..callers)
            .map(|caller| {
                let client = client.clone();
                tokio::spawn(async move {
                    for n in (caller..entities).step_by(callers) {
                        let id = EntityId::new(format!("touched-{n}"));
                        let _: u64 = client.send(&id, "touch", &(n as u64)).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let manager = runner
            .sharding()
            .entity_manager(&EntityType::new("Touched"))
            .unwrap();
        assert_eq!(manager.active_count(), entities);
        (runner, manager)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn evicting_many_idle_entities_looks_only_at_them_and_empties_the_maps() {
        const ENTITIES: usize = 100_000;
        let (runner, manager) = runner_touching(ENTITIES).await;
        let checks = || manager.idle_checks_counter.get();
        let now = manager.now_ms();

        // Nothing is idle yet: a reap tick looks at none of the 100,000 live instances.
        assert_eq!(manager.evict_idle_at(now), 0);
        assert_eq!(
            checks(),
            0,
            "a tick with nothing due looked at live instances"
        );

        // All idle: each is looked at once and evicted.
        let later = now + MAX_IDLE.as_millis() as u64 + 10_000;
        assert_eq!(manager.evict_idle_at(later), ENTITIES);
        assert_eq!(checks(), ENTITIES as u64, "one look per evicted instance");
        assert_eq!(manager.evicted_counter.get(), ENTITIES as u64);
        assert_eq!(manager.active_count(), 0);
        assert!(manager.instances.is_empty(), "shard entries are removed");
        assert!(
            manager.instances.capacity() <= SHRINK_ABOVE_CAPACITY,
            "the shard map keeps {} slots after every instance left",
            manager.instances.capacity()
        );
        assert_eq!(manager.idle_queue.len(), 0, "the idle queue is empty");
        assert_eq!(manager.evict_idle_at(later + 1), 0);
        assert_eq!(checks(), ENTITIES as u64, "nothing left to look at");

        // The instances' tasks end.
        let gauge = &manager.runtime.active_gauge;
        let deadline = Instant::now() + Duration::from_secs(30);
        while gauge.get() > 0 {
            assert!(
                Instant::now() < deadline,
                "{} evicted instances still running after 30 s",
                gauge.get()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        runner.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_active_since_it_was_queued_is_queued_again_not_evicted() {
        let (runner, manager) = runner_touching(2).await;
        let now = manager.now_ms();
        let max_idle = MAX_IDLE.as_millis() as u64;
        // One of them was active 60 s after the other.
        let address = EntityAddress {
            shard_id: ShardId::new(
                cruster_types::DEFAULT_SHARD_GROUP,
                cruster_types::shard_for_entity(
                    "touched-1",
                    runner.sharding().config().shards_per_group,
                ),
            ),
            entity_type: EntityType::new("Touched"),
            entity_id: EntityId::new("touched-1"),
        };
        let active = manager.instance(&address).unwrap();
        active.last_active_ms.store(now + 60_000, Ordering::Relaxed);

        let first_due = now + max_idle + 10_000;
        assert_eq!(manager.evict_idle_at(first_due), 1, "only the idle one");
        assert_eq!(manager.idle_checks_counter.get(), 2);
        assert_eq!(manager.active_count(), 1);
        assert!(manager.instance(&address).is_some());
        assert_eq!(
            manager.idle_queue.len(),
            1,
            "the active one is queued again"
        );

        assert_eq!(manager.evict_idle_at(now + 60_000 + max_idle + 10_000), 1);
        assert_eq!(manager.active_count(), 0);
        runner.shutdown().await.unwrap();
    }
}
