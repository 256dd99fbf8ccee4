//! The storage poll: picks up persisted messages that were not delivered on the happy
//! path (a crash, a rebalance, a full mailbox), those whose `deliver_at` has come, and
//! those whose redelivery backoff after a failure has passed.
//!
//! Owns one loop per runner, its keyset cursor and the set of entities whose mailboxes it
//! found full during the current pass over the backlog. Each round:
//!
//! 1. when the cursor is at the start (a new pass), forgets the saturated entities;
//! 2. reads one page of due, unprocessed requests of the shards this runner holds, after
//!    the cursor and without the saturated entities, in one storage call. The cursor moves
//!    to the page's last id; a page shorter than the batch size wraps it to the start. So
//!    requests in flight here, or queued behind a full mailbox, do not fill every page
//!    (a hot entity's backlog costs the others at most one round), and a round reads about
//!    one batch, not the whole backlog. An entity skipped for the rest of a pass is read
//!    from its oldest request again in the next pass, so its requests keep their order;
//! 3. keeps the requests it can hand over now: not in flight here, of a known entity type,
//!    with room in their entity's mailbox (an entity found full joins the saturated set);
//! 4. counts their attempts in storage *before* delivering them, in one call: a request
//!    that already used `storage_message_max_retries` attempts is dead-lettered there
//!    instead of delivered, so a message that crashes its runner cannot loop forever;
//! 5. hands the rest to the entity managers.
//!
//! A backlog is drained page after page without waiting for the interval, but the poll
//! never has more than `storage_poll_batch_size` of its deliveries unfinished: a page is
//! only as large as the room left, and the next page waits until half the batch finished.
//! So memory is bounded by the batch (and the mailboxes it fills), not by the backlog.
//! Deliveries that stay unfinished for a whole interval (handlers that hang) leave room for
//! a tenth of a batch per interval, so they cannot stop the redelivery of other entities.
//!
//! It also gives back to storage the counted attempts that ended without an outcome
//! through no fault of the message (refused, or stopped as their shard left). It never
//! delivers a message of a shard it does not hold, and never holds a lock across an await.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster_message_storage::{AttemptStart, PollQuery, StoredRequest};
use cruster_types::{ClusterError, EntityAddress, EntityId, EntityType, Snowflake};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::delivery::persisted::PersistedDelivery;
use crate::entity::entity_manager::EntityManager;
use crate::entity::mailbox::{MailboxItem, ReplySink};
use crate::entity::registry::EntityRegistry;
use crate::runtime_core::RuntimeCore;

/// The dead-letter reason of a request whose attempts were used up by deliveries that
/// never reported an outcome.
const ATTEMPTS_USED_UP: &str = "all delivery attempts were used without an outcome (the last \
     one never finished: its runner may have crashed while handling it)";

/// How often a stopping runner still gives back attempts of handlers its drain stopped.
const REFUND_INTERVAL: Duration = Duration::from_millis(50);

/// What one poll round did.
pub(crate) struct PollRound {
    /// Messages handed to entities.
    pub(crate) delivered: usize,
    /// The page was full: more may be due right now.
    pub(crate) page_full: bool,
}

pub(crate) struct StoragePoller {
    core: Arc<RuntimeCore>,
    registry: Arc<EntityRegistry>,
    persisted: Arc<PersistedDelivery>,
    pub(crate) wake: Arc<Notify>,
    /// Owned by the poll loop; locked only for short synchronous sections.
    state: Mutex<PollState>,
}

#[derive(Default)]
struct PollState {
    /// Where the next page starts (`None`: the oldest request).
    cursor: Option<Snowflake>,
    /// Entities whose mailboxes were full: left out of the pages until they have room.
    saturated: Vec<EntityAddress>,
}

/// An entity, whatever shard it was addressed through.
type EntityKey = (EntityType, EntityId);

fn key_of(address: &EntityAddress) -> EntityKey {
    (address.entity_type.clone(), address.entity_id.clone())
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
            state: Mutex::new(PollState::default()),
        }
    }

    /// Runs until the runner stops; then, until it is killed, only gives back the attempts
    /// of handlers the drain stopped.
    pub(crate) async fn run(self) {
        let interval = self.core.config.storage_poll_interval;
        // The poll keeps its real cadence and also runs whenever a virtual clock moves; the
        // clock waits until the deliveries it handed over have finished.
        let in_flight_core = self.core.clone();
        let mut clock_ticks = self
            .core
            .config
            .clock
            .ticks(Some(Arc::new(move || in_flight_core.in_flight.active())));
        // Give a freshly started runner one interval to register its entity types.
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = self.wake.notified() => {}
            _ = clock_ticks.next() => {}
            _ = self.core.stopping.cancelled() => return,
        }
        loop {
            match self.poll_once().await {
                Ok(round) if round.page_full && round.delivered > 0 => {
                    // A backlog: the next page as soon as half the batch finished.
                    if !self.wait_for_room(interval).await {
                        break;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(%err, "storage poll failed; retrying next interval"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.wake.notified() => {}
                _ = clock_ticks.next() => {}
                _ = self.core.stopping.cancelled() => break,
            }
        }
        drop(clock_ticks);
        loop {
            self.give_back_attempts().await;
            tokio::select! {
                _ = tokio::time::sleep(REFUND_INTERVAL) => {}
                _ = self.core.killed.cancelled() => return,
            }
        }
    }

    /// Waits until at most half a batch of the poll's deliveries is unfinished, or
    /// `interval` passed. Returns `false` when the runner stops.
    async fn wait_for_room(&self, interval: Duration) -> bool {
        let half = self.core.config.storage_poll_batch_size / 2;
        let deadline = tokio::time::Instant::now() + interval;
        while self.core.in_flight.poll_outstanding() > half {
            tokio::select! {
                _ = self.core.in_flight.poll_delivery_finished() => {}
                _ = tokio::time::sleep_until(deadline) => return true,
                _ = self.core.stopping.cancelled() => return false,
            }
        }
        !self.core.stopping.is_cancelled()
    }

    /// Gives back to storage the counted attempts that ended without an outcome through no
    /// fault of their message. On failure they are kept for the next round.
    async fn give_back_attempts(&self) {
        let refunds = self.core.in_flight.take_refunds();
        if refunds.is_empty() {
            return;
        }
        let Ok(storage) = self.core.storage() else {
            return;
        };
        let result = storage.release_attempts(&refunds).await;
        self.core.storage_result(&result);
        if let Err(err) = result {
            tracing::debug!(%err, "could not give back attempts; retrying next round");
            for request_id in refunds {
                self.core.in_flight.queue_refund(request_id);
            }
        }
    }

    /// One round: reads at most the room left in the batch.
    pub(crate) async fn poll_once(&self) -> Result<PollRound, ClusterError> {
        let idle = PollRound {
            delivered: 0,
            page_full: false,
        };
        let Ok(storage) = self.core.storage() else {
            return Ok(idle);
        };
        self.give_back_attempts().await;
        let shards = self.core.shard_table.held();
        if shards.is_empty() {
            return Ok(idle);
        }
        let started = Instant::now();
        let (after, skipped) = {
            let mut state = self.state.lock();
            if state.cursor.is_none() {
                state.saturated.clear();
            }
            (state.cursor, state.saturated.clone())
        };
        let batch = self.core.config.storage_poll_batch_size;
        let limit = batch
            .saturating_sub(self.core.in_flight.poll_outstanding())
            .max(batch / 10)
            .max(1);
        let query = PollQuery::new(&shards, self.core.config.clock.now(), limit)
            .after(after)
            .skipping(&skipped);
        let result = storage.poll_unprocessed(&query).await;
        self.core.storage_result(&result);
        let page = result?;
        let next_cursor = if page.len() < limit {
            None
        } else {
            page.last().map(|stored| stored.envelope.request_id)
        };

        let (chosen, newly_saturated) = self.choose(page);
        {
            let mut state = self.state.lock();
            state.cursor = next_cursor;
            state.saturated.extend(newly_saturated);
        }
        let delivered = self.count_and_deliver(chosen).await?;
        self.core.in_flight.prune_completed_before(started);
        Ok(PollRound {
            delivered,
            page_full: next_cursor.is_some(),
        })
    }

    /// The requests of a page this runner can hand over now (entered in the in-flight
    /// set), and the entities found without mailbox room.
    #[allow(clippy::type_complexity)]
    fn choose(
        &self,
        page: Vec<StoredRequest>,
    ) -> (Vec<(StoredRequest, Arc<EntityManager>)>, Vec<EntityAddress>) {
        let mut room: HashMap<EntityKey, usize> = HashMap::new();
        let mut full: HashSet<EntityKey> = HashSet::new();
        let mut newly_saturated = Vec::new();
        let mut chosen = Vec::new();
        for stored in page {
            let address = &stored.envelope.address;
            if !self.core.shard_table.is_held(&address.shard_id) {
                continue;
            }
            let Some(manager) = self.registry.get(&address.entity_type) else {
                self.persisted.unknown_type(&address.entity_type);
                continue;
            };
            let request_id = stored.envelope.request_id;
            if !self.core.in_flight.enter(request_id) {
                continue;
            }
            let key = key_of(address);
            let left = room
                .entry(key.clone())
                .or_insert_with(|| manager.mailbox_room(address));
            if *left == 0 {
                self.core.in_flight.abandon(request_id);
                if full.insert(key) {
                    newly_saturated.push(address.clone());
                }
                continue;
            }
            *left -= 1;
            chosen.push((stored, manager));
        }
        (chosen, newly_saturated)
    }

    /// Counts the attempts of the chosen requests (one storage call), then delivers those
    /// storage says to deliver.
    async fn count_and_deliver(
        &self,
        chosen: Vec<(StoredRequest, Arc<EntityManager>)>,
    ) -> Result<usize, ClusterError> {
        if chosen.is_empty() {
            return Ok(0);
        }
        let storage = self.core.storage()?;
        let ids: Vec<Snowflake> = chosen.iter().map(|(s, _)| s.envelope.request_id).collect();
        let result = storage
            .start_attempts(
                &ids,
                self.core.config.storage_message_max_retries,
                ATTEMPTS_USED_UP,
            )
            .await;
        self.core.storage_result(&result);
        let answers = match result {
            Ok(answers) => answers,
            Err(err) => {
                // Nothing may be delivered whose attempt was not counted.
                for request_id in ids {
                    self.core.in_flight.abandon(request_id);
                }
                return Err(err);
            }
        };
        let mut delivered = 0;
        let mut refused = Vec::new();
        for ((stored, manager), answer) in chosen.into_iter().zip(answers) {
            let request_id = stored.envelope.request_id;
            match answer {
                AttemptStart::Deliver { attempt, .. } => {
                    self.core.in_flight.mark_counted(request_id, attempt);
                    if stored.attempts > 0 {
                        self.core.metrics.messages_retried.inc();
                    }
                    let item = MailboxItem {
                        envelope: stored.envelope,
                        sink: ReplySink::Nobody,
                    };
                    match manager.deliver(item) {
                        Ok(()) => delivered += 1,
                        Err((ClusterError::MailboxFull { .. }, item)) => {
                            // Filled by a concurrent send since the room was looked at: not
                            // an attempt; the entity waits out its backlog.
                            self.core.in_flight.abandon(request_id);
                            refused.push(item.envelope.address);
                        }
                        Err((ClusterError::ShardNotOwned { .. }, _)) => {
                            // A move under way: the new owner delivers it.
                            self.core.in_flight.abandon(request_id);
                        }
                        Err((err, _)) => {
                            self.core.record_failure(request_id, &err.to_string()).await;
                        }
                    }
                }
                AttemptStart::DeadLettered { attempts, .. } => {
                    self.core.in_flight.fail(request_id);
                    self.core.metrics.messages_dead_lettered.inc();
                    tracing::warn!(
                        %request_id,
                        attempts,
                        "persisted message dead-lettered: its attempts were used up by \
                         deliveries that never finished"
                    );
                }
                AttemptStart::NotPending { .. } => {
                    self.core.in_flight.fail(request_id);
                }
            }
        }
        if !refused.is_empty() {
            let mut state = self.state.lock();
            for address in refused {
                let key = key_of(&address);
                if !state.saturated.iter().any(|a| key_of(a) == key) {
                    state.saturated.push(address);
                }
            }
        }
        Ok(delivered)
    }
}
