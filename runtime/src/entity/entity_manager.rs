//! The entity manager of one entity type: activation, mailboxes, concurrency, idle
//! eviction, interrupts and streaming replies.
//!
//! Owns the live instances of its type (`shard → entity id → instance`); each instance is
//! one task (see [`super::instance`]). A full mailbox is refused at once with `MailboxFull`.
//! Idle instances are evicted by a reaper. Instances of a shard that moves away are drained
//! (and, past the deadline, their interruptible handlers aborted) before the shard's lock is
//! released; instances of a shard that is lost are aborted at once. Activation checks shard
//! ownership under the shard's map entry, so a shard being stopped never gains a new
//! instance. Never holds a lock across an await.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster_sharding::Entity;
use cruster_types::{
    AckChunk, ClusterError, EntityAddress, EntityId, EntityType, ShardId, Snowflake,
};
use dashmap::DashMap;
use prometheus::IntGauge;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::entity::instance::{Instance, InstanceRuntime, RunEnd};
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
    mailbox_gauge: IntGauge,
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
        });
        Ok(Arc::new(EntityManager {
            mailbox_gauge: core.metrics.mailbox_depth.with_label_values(&label),
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
            .map_or(self.mailbox_capacity, |instance| instance.tx.capacity())
    }

    /// Removes an instance from the map if it is still the one there.
    pub(crate) fn forget(&self, instance: &Arc<Instance>) {
        if let Some(mut shard) = self.instances.get_mut(&instance.address.shard_id) {
            if shard
                .get(&instance.address.entity_id)
                .is_some_and(|current| Arc::ptr_eq(current, instance))
            {
                shard.remove(&instance.address.entity_id);
            }
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
        let instance = self.spawn_instance(address.clone());
        shard.insert(address.entity_id.clone(), instance.clone());
        Ok(instance)
    }

    fn spawn_instance(self: &Arc<Self>, address: EntityAddress) -> Arc<Instance> {
        let (tx, rx) = mpsc::channel(self.mailbox_capacity);
        let fence = self.core.fences.token(&address.shard_id);
        let instance = Arc::new(Instance::new(address, tx, self.now_ms(), fence));
        self.runtime.active_gauge.inc();
        let manager = self.clone();
        let inst = instance.clone();
        let span = tracing::debug_span!("cruster.entity", entity_type = %self.entity_type, entity_id = %instance.address.entity_id);
        self.core.spawn(
            async move {
                let finished = inst.finished.clone();
                if let RunEnd::FailedToStart = manager.runtime.clone().run(inst.clone(), rx).await {
                    manager.forget(&inst);
                }
                finished.cancel();
            }
            .instrument(span),
        );
        instance
    }

    /// Interrupts a request of one of this type's instances. Returns whether it was found.
    pub(crate) fn interrupt(&self, address: &EntityAddress, request_id: Snowflake) -> bool {
        let Some(instance) = self.instance(address) else {
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
        let Some(instance) = self.instance_by_id(&ack.address.shard_id, &ack.address.entity_id)
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
        self.instances.retain(|_, shard| {
            shard.retain(|_, instance| {
                queued += instance.tx.max_capacity() - instance.tx.capacity();
                let idle = now.saturating_sub(instance.last_active_ms.load(Ordering::Relaxed));
                let keep = idle < max_idle || instance.pending.load(Ordering::Acquire) > 0;
                if !keep {
                    evicted.push(instance.clone());
                }
                keep
            });
            !shard.is_empty()
        });
        self.mailbox_gauge
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
        for instance in &evicted {
            instance.stop();
        }
        evicted.len()
    }

    /// How often the reaper should look for idle instances.
    pub(crate) fn reap_interval(&self) -> Duration {
        (self.max_idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(5))
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
        taken
    }

    /// Drains the instances of `shards`: they stop taking messages, running handlers get
    /// `deadline` to finish, then the interruptible ones are aborted (nothing stored; their
    /// requests run again on the new owner). Returns once every instance has ended, which
    /// may be later than the deadline while uninterruptible handlers finish.
    pub(crate) async fn stop_shards(&self, shards: &[ShardId], deadline: Duration) {
        let instances = self.take_shards(shards);
        if instances.is_empty() {
            return;
        }
        for instance in &instances {
            instance.stop();
        }
        let all_finished =
            || futures::future::join_all(instances.iter().map(|i| i.finished.cancelled()));
        if tokio::time::timeout(deadline, all_finished()).await.is_ok() {
            return;
        }
        tracing::warn!(
            entity_type = %self.entity_type,
            "entity instances did not drain before the deadline; aborting their interruptible handlers"
        );
        for instance in &instances {
            instance.abort_interruptible.cancel();
        }
        all_finished().await;
    }

    /// Ends the instances of `shards`, whose fence has fired (the shard is lost): their
    /// handlers, uninterruptible ones included, are aborted and nothing is stored for them.
    pub(crate) async fn abort_shards(&self, shards: &[ShardId]) {
        let instances = self.take_shards(shards);
        for instance in &instances {
            instance.stop();
        }
        let all = futures::future::join_all(instances.iter().map(|i| i.finished.cancelled()));
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
