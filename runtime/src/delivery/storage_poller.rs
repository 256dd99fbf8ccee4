//! The storage poll: picks up persisted messages that were not delivered on the happy
//! path (a crash, a rebalance, a full mailbox) and those whose `deliver_at` has come.
//!
//! Owns one loop per runner. Each round reads the unprocessed messages of the shards this
//! runner holds, in one storage call, and hands to the entity managers those that are not
//! already in flight here. It never delivers a message of a shard it does not hold, and it
//! never holds a lock across an await.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use cruster_types::ClusterError;
use tokio::sync::Notify;

use crate::delivery::persisted::PersistedDelivery;
use crate::entity::mailbox::{MailboxItem, ReplySink};
use crate::entity::registry::EntityRegistry;
use crate::runtime_core::RuntimeCore;

pub(crate) struct StoragePoller {
    core: Arc<RuntimeCore>,
    registry: Arc<EntityRegistry>,
    persisted: Arc<PersistedDelivery>,
    pub(crate) wake: Arc<Notify>,
}

impl StoragePoller {
    pub(crate) fn new(
        core: Arc<RuntimeCore>,
        registry: Arc<EntityRegistry>,
        persisted: Arc<PersistedDelivery>,
    ) -> Self {
        StoragePoller {
            core,
            registry,
            persisted,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Runs until the runner stops.
    pub(crate) async fn run(self) {
        let interval = self.core.config.storage_poll_interval;
        // Give a freshly started runner one interval to register its entity types.
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = self.wake.notified() => {}
            _ = self.core.stopping.cancelled() => return,
        }
        loop {
            if let Err(err) = self.poll_once().await {
                tracing::warn!(%err, "storage poll failed; retrying next interval");
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.wake.notified() => {}
                _ = self.core.stopping.cancelled() => return,
            }
        }
    }

    /// One round. Returns how many messages were handed to entities.
    pub(crate) async fn poll_once(&self) -> Result<usize, ClusterError> {
        let Ok(storage) = self.core.storage() else {
            return Ok(0);
        };
        let shards = self.core.shard_table.held();
        if shards.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let result = storage
            .unprocessed(
                &shards,
                Utc::now(),
                self.core.config.storage_poll_batch_size,
            )
            .await;
        self.core.storage_result(&result);
        let messages = result?;
        let mut delivered = 0;
        for stored in messages {
            let envelope = stored.envelope;
            if !self.core.shard_table.is_held(&envelope.address.shard_id) {
                continue;
            }
            if !self.core.in_flight.enter(envelope.request_id) {
                continue;
            }
            let Some(manager) = self.registry.get(&envelope.address.entity_type) else {
                self.core.in_flight.abandon(envelope.request_id);
                self.persisted.unknown_type(&envelope.address.entity_type);
                continue;
            };
            if stored.attempts > 0 {
                self.core.metrics.messages_retried.inc();
            }
            let request_id = envelope.request_id;
            match manager.deliver(MailboxItem {
                envelope,
                sink: ReplySink::Nobody,
            }) {
                Ok(()) => delivered += 1,
                Err((ClusterError::MailboxFull { .. }, _))
                | Err((ClusterError::ShardNotOwned { .. }, _)) => {
                    // Back-pressure or a move under way: leave it for a later round.
                    self.core.in_flight.abandon(request_id);
                }
                Err((err, _)) => self.core.record_failure(request_id, &err.to_string()).await,
            }
        }
        self.core.in_flight.prune_completed_before(started);
        Ok(delivered)
    }
}
