//! [`MemoryMessageStorage`]: persisted requests and replies held in process memory.
//!
//! This file owns the in-memory translation of the `MessageStorage` contract and nothing
//! else: no retries, routing or polling policy. It never holds a lock across an `.await`
//! (every lock is a `parking_lot` lock taken for a short synchronous section), and no
//! operation scans every message ever stored.
//!
//! # Layout
//!
//! * Requests, their replies and their delivery state live in [`PARTITIONS`] partitions
//!   chosen by request id, each behind its own mutex, so runners saving and answering
//!   different requests rarely meet on a lock. Every operation keyed by request id is a
//!   hash-map lookup in one partition.
//! * Each partition indexes its unprocessed requests per shard (a `BTreeSet` by request
//!   id for immediate requests, and one by `(due instant, request id)` for those with a
//!   `deliver_at` or a retry instant), so a poll reads only the asked shards, starts after
//!   its cursor and stops at `limit`.
//! * `dedupe_key`s are indexed per entity (entity type + entity id) in their own partitions.
//!   Locks are always taken request partition first, dedupe partition second.
//! * Processed requests are kept for de-duplication up to a retention count, oldest
//!   processed evicted first (a FIFO of processed ids with the instant each became
//!   processed). `delete_processed_before` reads the FIFO's prefix up to its cutoff, so
//!   the runtime's retention sweep deletes by age too. Unprocessed requests and dead
//!   letters are never evicted.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cruster_message_storage::{
    AttemptFailure, AttemptStart, DeadLetter, FailedAttempt, FinishedRequest, MessageCounts,
    MessageStorage, PollQuery, SaveResult, StoredRequest,
};
use cruster_types::{
    ClusterError, EntityAddress, EntityId, EntityType, EnvelopeRequest, Reply, ReplyChunk,
    ReplyWithExit, ShardId, Snowflake,
};
use parking_lot::Mutex;

/// How many request partitions (and dedupe partitions) the storage uses.
pub const PARTITIONS: usize = 16;

/// How many processed requests [`MemoryMessageStorage::new`] keeps for de-duplication.
pub const DEFAULT_PROCESSED_RETENTION: usize = 100_000;

/// `MessageStorage` in process memory: concurrent, complete, bounded, not durable.
///
/// Processed requests (and their replies) are kept so that a retried send is still
/// recognised as a duplicate and answered with the stored reply; beyond the retention
/// count the oldest processed ones are forgotten. Unprocessed requests and dead letters
/// are kept until they are processed or cleared.
///
/// ```
/// use cruster_message_storage::{MessageStorage, SaveResult};
/// use cruster_storage_memory::MemoryMessageStorage;
/// use cruster_types::*;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let storage = MemoryMessageStorage::with_retention(10_000);
/// let address = EntityAddress {
///     shard_id: ShardId::new("default", 1),
///     entity_type: EntityType::new("Counter"),
///     entity_id: EntityId::new("c-1"),
/// };
/// let mut envelope = EnvelopeRequest::new(Snowflake(7), address, "increment", bytes::Bytes::new());
/// envelope.persisted = true;
/// assert_eq!(storage.save_request(&envelope).await.unwrap(), SaveResult::Saved);
/// assert!(matches!(
///     storage.save_request(&envelope).await.unwrap(),
///     SaveResult::Duplicate { original_request_id: Snowflake(7), reply: None }
/// ));
/// # });
/// ```
pub struct MemoryMessageStorage {
    partitions: Box<[Mutex<Partition>]>,
    dedupe: Box<[Mutex<HashMap<DedupeKey, Snowflake>>]>,
    retention: Mutex<Retention>,
    hasher: RandomState,
}

impl MemoryMessageStorage {
    /// An empty storage keeping [`DEFAULT_PROCESSED_RETENTION`] processed requests.
    pub fn new() -> Self {
        Self::with_retention(DEFAULT_PROCESSED_RETENTION)
    }

    /// An empty storage keeping at most `max_processed` processed requests (and their
    /// replies) for de-duplication, forgetting the oldest processed ones first.
    ///
    /// ```
    /// use cruster_storage_memory::MemoryMessageStorage;
    /// let storage = MemoryMessageStorage::with_retention(1_000);
    /// assert_eq!(storage.max_processed(), 1_000);
    /// ```
    pub fn with_retention(max_processed: usize) -> Self {
        MemoryMessageStorage {
            partitions: (0..PARTITIONS)
                .map(|_| Mutex::new(Partition::default()))
                .collect(),
            dedupe: (0..PARTITIONS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            retention: Mutex::new(Retention {
                max_processed,
                processed: VecDeque::new(),
            }),
            hasher: RandomState::new(),
        }
    }

    /// How many processed requests are kept for de-duplication.
    pub fn max_processed(&self) -> usize {
        self.retention.lock().max_processed
    }

    /// How many processed requests (or final replies of unknown requests) are currently
    /// kept for de-duplication; never more than [`MemoryMessageStorage::max_processed`].
    pub fn retained_processed(&self) -> usize {
        self.retention.lock().processed.len()
    }

    fn partition(&self, request_id: Snowflake) -> &Mutex<Partition> {
        // Snowflakes of one millisecond differ in their low bits only: mix before picking.
        let mixed = (request_id.0 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.partitions[(mixed >> 32) as usize % self.partitions.len()]
    }

    fn dedupe_partition(&self, key: &DedupeKey) -> &Mutex<HashMap<DedupeKey, Snowflake>> {
        &self.dedupe[self.hasher.hash_one(key) as usize % self.dedupe.len()]
    }

    fn final_reply(&self, request_id: Snowflake) -> Option<ReplyWithExit> {
        self.partition(request_id)
            .lock()
            .replies
            .get(&request_id)
            .and_then(|replies| replies.final_reply.clone())
    }

    /// Queues a newly processed id for eviction and evicts whatever exceeds the retention.
    fn retain_processed(&self, request_id: Snowflake) {
        let evicted: Vec<(Snowflake, DateTime<Utc>)> = {
            let mut retention = self.retention.lock();
            retention.processed.push_back((request_id, Utc::now()));
            let excess = retention
                .processed
                .len()
                .saturating_sub(retention.max_processed);
            retention.processed.drain(..excess).collect()
        };
        for (request_id, _) in evicted {
            self.evict(request_id);
        }
    }

    /// Forgets a processed request of one of `shards` (or the replies of an unknown
    /// request, which belong to no shard yet). Answers whether a processed request was
    /// deleted; `None` when the id is not this call's to delete (another shard's, or no
    /// longer processed).
    fn evict_in(&self, request_id: Snowflake, shards: &HashSet<&ShardId>) -> Option<bool> {
        let mut partition = self.partition(request_id).lock();
        match partition.requests.get(&request_id) {
            Some(record)
                if record.state == RequestState::Processed
                    && shards.contains(&record.envelope.address.shard_id) =>
            {
                if let Some(record) = partition.remove_request(request_id) {
                    self.forget_dedupe_key(&record.envelope);
                }
                partition.replies.remove(&request_id);
                Some(true)
            }
            Some(_) => None,
            None => {
                partition.replies.remove(&request_id);
                Some(false)
            }
        }
    }

    /// Forgets a processed request (or the replies of an unknown one).
    fn evict(&self, request_id: Snowflake) {
        let mut partition = self.partition(request_id).lock();
        match partition.requests.get(&request_id) {
            Some(record) if record.state != RequestState::Processed => return,
            Some(_) => {
                if let Some(record) = partition.remove_request(request_id) {
                    self.forget_dedupe_key(&record.envelope);
                }
            }
            None => {}
        }
        partition.replies.remove(&request_id);
    }

    /// Removes the dedupe entry of `envelope` if it still names this request. Called with
    /// the request's partition locked (request partition first, dedupe partition second).
    fn forget_dedupe_key(&self, envelope: &EnvelopeRequest) {
        if let Some(key) = DedupeKey::of(envelope) {
            let mut index = self.dedupe_partition(&key).lock();
            if index.get(&key) == Some(&envelope.request_id) {
                index.remove(&key);
            }
        }
    }
}

impl Default for MemoryMessageStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryMessageStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let retention = self.retention.lock();
        f.debug_struct("MemoryMessageStorage")
            .field("max_processed", &retention.max_processed)
            .field("retained_processed", &retention.processed.len())
            .finish_non_exhaustive()
    }
}

/// The entity a `dedupe_key` is scoped to, and the key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DedupeKey {
    entity: EntityKey,
    key: String,
}

impl DedupeKey {
    fn of(envelope: &EnvelopeRequest) -> Option<Self> {
        envelope.dedupe_key.as_ref().map(|key| DedupeKey {
            entity: EntityKey::of(&envelope.address),
            key: key.clone(),
        })
    }
}

/// An entity regardless of the shard it was addressed through.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EntityKey {
    entity_type: EntityType,
    entity_id: EntityId,
}

impl EntityKey {
    fn of(address: &EntityAddress) -> Self {
        EntityKey {
            entity_type: address.entity_type.clone(),
            entity_id: address.entity_id.clone(),
        }
    }
}

struct Retention {
    max_processed: usize,
    /// Processed request ids with the instant they became processed, oldest first.
    processed: VecDeque<(Snowflake, DateTime<Utc>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestState {
    Pending,
    Processed,
    Dead,
}

struct RequestRecord {
    envelope: EnvelopeRequest,
    attempts: u32,
    state: RequestState,
    /// Set when the request was marked processed while dead-lettered: it stays a dead letter.
    processed_while_dead: bool,
    /// Not due before this instant (set by a failed attempt).
    retry_at: Option<DateTime<Utc>>,
}

impl RequestRecord {
    /// When the request is due: the later of `deliver_at` and the retry instant.
    fn due_at(&self) -> Option<DateTime<Utc>> {
        self.envelope.deliver_at.max(self.retry_at)
    }

    fn to_stored(&self) -> StoredRequest {
        StoredRequest {
            envelope: self.envelope.clone(),
            attempts: self.attempts,
            processed: self.state == RequestState::Processed || self.processed_while_dead,
            dead_lettered: self.state == RequestState::Dead,
        }
    }
}

#[derive(Default)]
struct StoredReplies {
    chunks: BTreeMap<u32, ReplyChunk>,
    final_reply: Option<ReplyWithExit>,
}

/// Pending requests of one shard within one partition.
#[derive(Default)]
struct ShardQueue {
    immediate: BTreeSet<Snowflake>,
    scheduled: BTreeSet<(DateTime<Utc>, Snowflake)>,
}

impl ShardQueue {
    fn insert(&mut self, due_at: Option<DateTime<Utc>>, request_id: Snowflake) {
        match due_at {
            None => self.immediate.insert(request_id),
            Some(at) => self.scheduled.insert((at, request_id)),
        };
    }

    fn remove(&mut self, due_at: Option<DateTime<Utc>>, request_id: Snowflake) {
        match due_at {
            None => self.immediate.remove(&request_id),
            Some(at) => self.scheduled.remove(&(at, request_id)),
        };
    }

    fn is_empty(&self) -> bool {
        self.immediate.is_empty() && self.scheduled.is_empty()
    }

    /// The first `query.limit` due ids the query admits (`admits` looks at the record),
    /// by id.
    fn due(
        &self,
        query: &PollQuery<'_>,
        admits: impl Fn(Snowflake) -> bool,
        into: &mut Vec<Snowflake>,
    ) {
        let start = into.len();
        let from = match query.after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        into.extend(
            self.immediate
                .range((from, std::ops::Bound::Unbounded))
                .copied()
                .filter(|id| admits(*id))
                .take(query.limit),
        );
        // Scheduled requests are ordered by time; the due ones are a prefix. They are
        // collected whole, as their id order is not their time order.
        into.extend(
            self.scheduled
                .iter()
                .take_while(|(at, _)| *at <= query.now)
                .map(|(_, id)| *id)
                .filter(|id| query.after.is_none_or(|after| *id > after) && admits(*id)),
        );
        into[start..].sort_unstable();
        into.truncate(start + query.limit);
    }
}

struct DeadInfo {
    reason: String,
    dead_lettered_at: DateTime<Utc>,
}

#[derive(Default)]
struct Partition {
    requests: HashMap<Snowflake, RequestRecord>,
    replies: HashMap<Snowflake, StoredReplies>,
    pending: HashMap<ShardId, ShardQueue>,
    dead: BTreeMap<Snowflake, DeadInfo>,
    by_entity: HashMap<EntityKey, HashSet<Snowflake>>,
}

impl Partition {
    fn unindex_pending(&mut self, shard: &ShardId, due_at: Option<DateTime<Utc>>, id: Snowflake) {
        if let Some(queue) = self.pending.get_mut(shard) {
            queue.remove(due_at, id);
            if queue.is_empty() {
                self.pending.remove(shard);
            }
        }
    }

    /// Takes a pending request out of the poll's index and makes it a dead letter.
    fn dead_letter(&mut self, request_id: Snowflake, reason: &str) {
        let Some(record) = self.requests.get_mut(&request_id) else {
            return;
        };
        record.state = RequestState::Dead;
        let (shard, due_at) = (record.envelope.address.shard_id.clone(), record.due_at());
        self.unindex_pending(&shard, due_at, request_id);
        self.dead.insert(
            request_id,
            DeadInfo {
                reason: reason.to_owned(),
                dead_lettered_at: Utc::now(),
            },
        );
    }

    /// Removes a request and every index entry of it except its dedupe key and replies.
    fn remove_request(&mut self, request_id: Snowflake) -> Option<RequestRecord> {
        let record = self.requests.remove(&request_id)?;
        match record.state {
            RequestState::Pending => self.unindex_pending(
                &record.envelope.address.shard_id,
                record.due_at(),
                request_id,
            ),
            RequestState::Dead => {
                self.dead.remove(&request_id);
            }
            RequestState::Processed => {}
        }
        let entity = EntityKey::of(&record.envelope.address);
        if let Some(ids) = self.by_entity.get_mut(&entity) {
            ids.remove(&request_id);
            if ids.is_empty() {
                self.by_entity.remove(&entity);
            }
        }
        Some(record)
    }

    /// Takes a dead letter back: pending again with zero attempts and no retry instant, or
    /// processed when it was marked processed while dead. `None` when it is not a dead
    /// letter; otherwise whether it became processed.
    fn take_back(&mut self, request_id: Snowflake) -> Option<bool> {
        let record = self.requests.get_mut(&request_id)?;
        if record.state != RequestState::Dead {
            return None;
        }
        self.dead.remove(&request_id);
        record.attempts = 0;
        record.retry_at = None;
        if record.processed_while_dead {
            record.state = RequestState::Processed;
            record.processed_while_dead = false;
            return Some(true);
        }
        record.state = RequestState::Pending;
        let (shard, due_at) = (record.envelope.address.shard_id.clone(), record.due_at());
        self.pending
            .entry(shard)
            .or_default()
            .insert(due_at, request_id);
        Some(false)
    }

    /// Marks a pending request processed; `true` if it was pending.
    fn finish(&mut self, request_id: Snowflake) -> bool {
        let Some(record) = self.requests.get_mut(&request_id) else {
            return false;
        };
        match record.state {
            RequestState::Pending => {
                record.state = RequestState::Processed;
                let (shard, due_at) = (record.envelope.address.shard_id.clone(), record.due_at());
                self.unindex_pending(&shard, due_at, request_id);
                true
            }
            RequestState::Dead => {
                record.processed_while_dead = true;
                false
            }
            RequestState::Processed => false,
        }
    }
}

fn merge_first<T>(mut items: Vec<T>, limit: usize, key: impl Fn(&T) -> Snowflake) -> Vec<T> {
    items.sort_unstable_by_key(|item| key(item));
    items.truncate(limit);
    items
}

#[async_trait]
impl MessageStorage for MemoryMessageStorage {
    async fn save_request(&self, envelope: &EnvelopeRequest) -> Result<SaveResult, ClusterError> {
        let request_id = envelope.request_id;
        let duplicate_of = {
            let mut partition = self.partition(request_id).lock();
            if partition.requests.contains_key(&request_id) {
                let reply = partition
                    .replies
                    .get(&request_id)
                    .and_then(|replies| replies.final_reply.clone());
                return Ok(SaveResult::Duplicate {
                    original_request_id: request_id,
                    reply,
                });
            }
            let first = DedupeKey::of(envelope).and_then(|key| {
                match self.dedupe_partition(&key).lock().entry(key) {
                    Entry::Occupied(first) => Some(*first.get()),
                    Entry::Vacant(slot) => {
                        slot.insert(request_id);
                        None
                    }
                }
            });
            if first.is_none() {
                // A final reply saved before its request (by another runner) counts.
                let answered = partition
                    .replies
                    .get(&request_id)
                    .is_some_and(|replies| replies.final_reply.is_some());
                let state = if answered {
                    RequestState::Processed
                } else {
                    partition
                        .pending
                        .entry(envelope.address.shard_id.clone())
                        .or_default()
                        .insert(envelope.deliver_at, request_id);
                    RequestState::Pending
                };
                partition
                    .by_entity
                    .entry(EntityKey::of(&envelope.address))
                    .or_default()
                    .insert(request_id);
                partition.requests.insert(
                    request_id,
                    RequestRecord {
                        envelope: envelope.clone(),
                        attempts: 0,
                        state,
                        processed_while_dead: false,
                        retry_at: None,
                    },
                );
            }
            first
        };
        Ok(match duplicate_of {
            None => SaveResult::Saved,
            Some(original_request_id) => SaveResult::Duplicate {
                original_request_id,
                reply: self.final_reply(original_request_id),
            },
        })
    }

    async fn save_reply(&self, reply: &Reply) -> Result<(), ClusterError> {
        let request_id = reply.request_id();
        let newly_processed = {
            let mut partition = self.partition(request_id).lock();
            let replies = partition.replies.entry(request_id).or_default();
            match reply {
                Reply::Chunk(chunk) => {
                    replies
                        .chunks
                        .entry(chunk.sequence)
                        .or_insert_with(|| chunk.clone());
                    false
                }
                Reply::WithExit(_) if replies.final_reply.is_some() => false,
                Reply::WithExit(final_reply) => {
                    replies.final_reply = Some(final_reply.clone());
                    if partition.requests.contains_key(&request_id) {
                        partition.finish(request_id)
                    } else {
                        // Kept (and counted against the retention) until its request shows up.
                        true
                    }
                }
            }
        };
        if newly_processed {
            self.retain_processed(request_id);
        }
        Ok(())
    }

    async fn replies_for(&self, request_id: Snowflake) -> Result<Vec<Reply>, ClusterError> {
        let partition = self.partition(request_id).lock();
        let Some(replies) = partition.replies.get(&request_id) else {
            return Ok(Vec::new());
        };
        let mut all: Vec<Reply> = replies
            .chunks
            .values()
            .map(|chunk| Reply::Chunk(chunk.clone()))
            .collect();
        all.extend(replies.final_reply.clone().map(Reply::WithExit));
        Ok(all)
    }

    async fn request(&self, request_id: Snowflake) -> Result<Option<StoredRequest>, ClusterError> {
        Ok(self
            .partition(request_id)
            .lock()
            .requests
            .get(&request_id)
            .map(RequestRecord::to_stored))
    }

    async fn finished_requests(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<FinishedRequest>, ClusterError> {
        let mut finished = Vec::new();
        for &request_id in request_ids {
            let partition = self.partition(request_id).lock();
            let reply = partition
                .replies
                .get(&request_id)
                .and_then(|replies| replies.final_reply.clone());
            if let Some(reply) = reply {
                finished.push(FinishedRequest::Answered(reply));
            } else if let Some(record) = partition.requests.get(&request_id) {
                if record.state == RequestState::Dead {
                    finished.push(FinishedRequest::DeadLettered {
                        request_id,
                        attempts: record.attempts,
                    });
                }
            }
        }
        Ok(finished)
    }

    async fn poll_unprocessed(
        &self,
        query: &PollQuery<'_>,
    ) -> Result<Vec<StoredRequest>, ClusterError> {
        let mut found: Vec<StoredRequest> = Vec::new();
        let mut ids = Vec::new();
        for partition in self.partitions.iter() {
            let partition = partition.lock();
            ids.clear();
            let admits = |id: Snowflake| {
                query.skip_entities.is_empty()
                    || partition
                        .requests
                        .get(&id)
                        .is_some_and(|record| query.admits(&record.envelope))
            };
            for shard in query.shards {
                if let Some(queue) = partition.pending.get(shard) {
                    queue.due(query, admits, &mut ids);
                }
            }
            ids.sort_unstable();
            ids.dedup();
            found.extend(
                ids.iter()
                    .take(query.limit)
                    .filter_map(|id| partition.requests.get(id))
                    .map(RequestRecord::to_stored),
            );
        }
        Ok(merge_first(found, query.limit, |r| r.envelope.request_id))
    }

    async fn mark_processed(&self, request_id: Snowflake) -> Result<(), ClusterError> {
        let newly_processed = self.partition(request_id).lock().finish(request_id);
        if newly_processed {
            self.retain_processed(request_id);
        }
        Ok(())
    }

    async fn start_attempts(
        &self,
        request_ids: &[Snowflake],
        max_attempts: u32,
        reason: &str,
    ) -> Result<Vec<AttemptStart>, ClusterError> {
        let mut answers = Vec::with_capacity(request_ids.len());
        for &request_id in request_ids {
            let mut partition = self.partition(request_id).lock();
            let answer = match partition.requests.get_mut(&request_id) {
                Some(record) if record.state == RequestState::Pending => {
                    if record.attempts >= max_attempts {
                        let attempts = record.attempts;
                        partition.dead_letter(request_id, reason);
                        AttemptStart::DeadLettered {
                            request_id,
                            attempts,
                        }
                    } else {
                        record.attempts = record.attempts.saturating_add(1);
                        AttemptStart::Deliver {
                            request_id,
                            attempt: record.attempts,
                        }
                    }
                }
                _ => AttemptStart::NotPending { request_id },
            };
            answers.push(answer);
        }
        Ok(answers)
    }

    async fn release_attempts(&self, request_ids: &[Snowflake]) -> Result<(), ClusterError> {
        for &request_id in request_ids {
            let mut partition = self.partition(request_id).lock();
            if let Some(record) = partition.requests.get_mut(&request_id) {
                if record.state == RequestState::Pending {
                    record.attempts = record.attempts.saturating_sub(1);
                }
            }
        }
        Ok(())
    }

    async fn record_failed_attempt(
        &self,
        request_id: Snowflake,
        failure: &AttemptFailure<'_>,
    ) -> Result<FailedAttempt, ClusterError> {
        let mut partition = self.partition(request_id).lock();
        let Some(record) = partition.requests.get_mut(&request_id) else {
            return Ok(FailedAttempt::NotPending);
        };
        if record.state != RequestState::Pending {
            return Ok(FailedAttempt::NotPending);
        }
        if !failure.counted {
            record.attempts = record.attempts.saturating_add(1);
        }
        let attempts = record.attempts;
        if attempts >= failure.max_attempts {
            partition.dead_letter(request_id, failure.reason);
            return Ok(FailedAttempt::DeadLettered { attempts });
        }
        let (shard, old_due) = (record.envelope.address.shard_id.clone(), record.due_at());
        record.retry_at = Some(failure.retry_at);
        let new_due = record.due_at();
        partition.unindex_pending(&shard, old_due, request_id);
        partition
            .pending
            .entry(shard)
            .or_default()
            .insert(new_due, request_id);
        Ok(FailedAttempt::WillRetry { attempts })
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, ClusterError> {
        let mut found = Vec::new();
        for partition in self.partitions.iter() {
            let partition = partition.lock();
            found.extend(partition.dead.iter().take(limit).filter_map(|(id, dead)| {
                let record = partition.requests.get(id)?;
                Some(DeadLetter {
                    envelope: record.envelope.clone(),
                    attempts: record.attempts,
                    reason: dead.reason.clone(),
                    dead_lettered_at: dead.dead_lettered_at,
                })
            }));
        }
        Ok(merge_first(found, limit, |d| d.envelope.request_id))
    }

    async fn retry_dead_letters(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<Snowflake>, ClusterError> {
        let mut retried = Vec::new();
        for &request_id in request_ids {
            let became_processed = {
                let mut partition = self.partition(request_id).lock();
                match partition.take_back(request_id) {
                    Some(became_processed) => became_processed,
                    None => continue,
                }
            };
            if became_processed {
                self.retain_processed(request_id);
            }
            retried.push(request_id);
        }
        Ok(retried)
    }

    async fn purge_dead_letters(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<Snowflake>, ClusterError> {
        let mut purged = Vec::new();
        for &request_id in request_ids {
            let mut partition = self.partition(request_id).lock();
            let is_dead = partition
                .requests
                .get(&request_id)
                .is_some_and(|record| record.state == RequestState::Dead);
            if !is_dead {
                continue;
            }
            if let Some(record) = partition.remove_request(request_id) {
                self.forget_dedupe_key(&record.envelope);
            }
            partition.replies.remove(&request_id);
            purged.push(request_id);
        }
        Ok(purged)
    }

    async fn delete_processed_before(
        &self,
        shards: &[ShardId],
        processed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, ClusterError> {
        let wanted: HashSet<&ShardId> = shards.iter().collect();
        // The processed FIFO is in processing order: the candidates are its prefix up to
        // the cutoff. Copied out so no partition lock is taken under the retention lock.
        let candidates: Vec<Snowflake> = self
            .retention
            .lock()
            .processed
            .iter()
            .take_while(|(_, at)| *at <= processed_before)
            .map(|(id, _)| *id)
            .collect();
        let mut forgotten = HashSet::new();
        let mut deleted = 0u64;
        for request_id in candidates {
            if deleted as usize >= limit {
                break;
            }
            if let Some(was_request) = self.evict_in(request_id, &wanted) {
                forgotten.insert(request_id);
                deleted += u64::from(was_request);
            }
        }
        if !forgotten.is_empty() {
            let mut retention = self.retention.lock();
            retention
                .processed
                .retain(|(id, at)| *at > processed_before || !forgotten.contains(id));
        }
        Ok(deleted)
    }

    async fn message_counts(&self) -> Result<Vec<MessageCounts>, ClusterError> {
        let mut counts: BTreeMap<(ShardId, EntityType), MessageCounts> = BTreeMap::new();
        for partition in self.partitions.iter() {
            let partition = partition.lock();
            let pending = partition.pending.values().flat_map(|queue| {
                queue
                    .immediate
                    .iter()
                    .chain(queue.scheduled.iter().map(|(_, id)| id))
            });
            for record in pending
                .chain(partition.dead.keys())
                .filter_map(|id| partition.requests.get(id))
            {
                let address = &record.envelope.address;
                let entry = counts
                    .entry((address.shard_id.clone(), address.entity_type.clone()))
                    .or_insert_with(|| MessageCounts {
                        shard_id: address.shard_id.clone(),
                        entity_type: address.entity_type.clone(),
                        pending: 0,
                        retrying: 0,
                        dead_lettered: 0,
                    });
                if record.state == RequestState::Dead {
                    entry.dead_lettered += 1;
                } else {
                    entry.pending += 1;
                    if record.attempts > 0 {
                        entry.retrying += 1;
                    }
                }
            }
        }
        Ok(counts.into_values().collect())
    }

    async fn clear_address(&self, address: &EntityAddress) -> Result<(), ClusterError> {
        let entity = EntityKey::of(address);
        for partition in self.partitions.iter() {
            let mut partition = partition.lock();
            let Some(ids) = partition.by_entity.get(&entity) else {
                continue;
            };
            let ids: Vec<Snowflake> = ids.iter().copied().collect();
            for request_id in ids {
                if let Some(record) = partition.remove_request(request_id) {
                    self.forget_dedupe_key(&record.envelope);
                }
                partition.replies.remove(&request_id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cruster_types::ExitResult;

    fn envelope(id: i64, entity: &str, dedupe_key: Option<&str>) -> EnvelopeRequest {
        let address = EntityAddress {
            shard_id: ShardId::new("unit", 0),
            entity_type: EntityType::new("Unit"),
            entity_id: EntityId::new(entity),
        };
        let mut envelope = EnvelopeRequest::new(Snowflake(id), address, "t", Bytes::new());
        envelope.persisted = true;
        envelope.dedupe_key = dedupe_key.map(str::to_owned);
        envelope
    }

    fn final_reply(id: i64) -> Reply {
        Reply::WithExit(ReplyWithExit {
            request_id: Snowflake(id),
            exit: ExitResult::Success(Bytes::from(id.to_string())),
        })
    }

    #[tokio::test]
    async fn processed_requests_beyond_the_retention_are_forgotten_oldest_first() {
        let storage = MemoryMessageStorage::with_retention(10);
        for id in 1..=50 {
            storage
                .save_request(&envelope(id, "e", Some(&format!("k{id}"))))
                .await
                .unwrap();
        }
        // 30 processed, 20 left pending, of which 5 dead-lettered.
        for id in 1..=30 {
            storage.save_reply(&final_reply(id)).await.unwrap();
        }
        for id in 31..=35 {
            let failure = AttemptFailure {
                reason: "boom",
                max_attempts: 1,
                retry_at: Utc::now(),
                counted: false,
            };
            storage
                .record_failed_attempt(Snowflake(id), &failure)
                .await
                .unwrap();
        }
        assert_eq!(storage.retained_processed(), 10);
        for id in 1..=20 {
            assert_eq!(
                storage.request(Snowflake(id)).await.unwrap(),
                None,
                "request {id}"
            );
            assert!(storage.replies_for(Snowflake(id)).await.unwrap().is_empty());
        }
        for id in 21..=30 {
            let result = storage
                .save_request(&envelope(id + 1000, "e", Some(&format!("k{id}"))))
                .await
                .unwrap();
            assert!(
                matches!(result, SaveResult::Duplicate { original_request_id, reply: Some(_) }
                    if original_request_id == Snowflake(id)),
                "request {id} should still dedupe, got {result:?}"
            );
        }
        let pending = storage
            .unprocessed(&[ShardId::new("unit", 0)], Utc::now(), 100)
            .await
            .unwrap();
        assert_eq!(pending.len(), 15, "pending requests are never evicted");
        assert_eq!(storage.dead_letters(100).await.unwrap().len(), 5);
        // Evicted dedupe keys no longer match: a new request with one is saved.
        let result = storage
            .save_request(&envelope(2000, "e", Some("k1")))
            .await
            .unwrap();
        assert_eq!(result, SaveResult::Saved);
    }

    #[tokio::test]
    async fn final_replies_of_unknown_requests_count_against_the_retention() {
        let storage = MemoryMessageStorage::with_retention(3);
        for id in 1..=10 {
            storage.save_reply(&final_reply(id)).await.unwrap();
        }
        assert_eq!(storage.retained_processed(), 3);
        assert!(storage.replies_for(Snowflake(1)).await.unwrap().is_empty());
        assert_eq!(storage.replies_for(Snowflake(10)).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn zero_retention_forgets_processed_requests_at_once() {
        let storage = MemoryMessageStorage::with_retention(0);
        storage.save_request(&envelope(1, "e", None)).await.unwrap();
        storage.mark_processed(Snowflake(1)).await.unwrap();
        assert_eq!(storage.request(Snowflake(1)).await.unwrap(), None);
        assert_eq!(storage.retained_processed(), 0);
    }
}
