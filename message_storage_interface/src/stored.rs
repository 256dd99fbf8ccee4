//! Records that message storage hands back.

use chrono::{DateTime, Utc};
use cruster_types::{
    EntityAddress, EntityType, EnvelopeRequest, ReplyWithExit, ShardId, Snowflake,
};

/// The answer to [`crate::MessageStorage::save_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaveResult {
    /// The request is new and was stored.
    Saved,
    /// The request (same id, or same address + `dedupe_key`) was stored before.
    Duplicate {
        /// The id of the request stored first.
        original_request_id: Snowflake,
        /// Its final reply, if it has one already.
        reply: Option<ReplyWithExit>,
    },
}

/// A stored request and its delivery state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRequest {
    /// The request as saved.
    pub envelope: EnvelopeRequest,
    /// Delivery attempts counted so far: failed ones, and redeliveries counted when they
    /// started (see [`crate::MessageStorage::start_attempts`]).
    pub attempts: u32,
    /// Whether a final reply was stored (or it was marked processed).
    pub processed: bool,
    /// Whether it was dead-lettered.
    pub dead_lettered: bool,
}

/// What [`crate::MessageStorage::record_failed_attempt`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedAttempt {
    /// Counted; the request stays unprocessed and will be retried.
    WillRetry {
        /// Failed attempts so far.
        attempts: u32,
    },
    /// The limit was reached: the request is now a dead letter.
    DeadLettered {
        /// Failed attempts in all.
        attempts: u32,
    },
    /// The request is unknown, already processed or already dead (nothing counted).
    NotPending,
}

/// A request that failed too often and is kept for inspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The request.
    pub envelope: EnvelopeRequest,
    /// Failed attempts in all.
    pub attempts: u32,
    /// The last failure's text.
    pub reason: String,
    /// When it was dead-lettered.
    pub dead_lettered_at: DateTime<Utc>,
}

/// One page of [`crate::MessageStorage::poll_unprocessed`].
///
/// ```
/// use chrono::Utc;
/// use cruster_message_storage::PollQuery;
/// use cruster_types::{ShardId, Snowflake};
///
/// let shards = [ShardId::new("default", 1)];
/// let query = PollQuery::new(&shards, Utc::now(), 100).after(Some(Snowflake(41)));
/// assert_eq!(query.after, Some(Snowflake(41)));
/// assert!(query.skip_entities.is_empty());
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct PollQuery<'a> {
    /// The shards whose requests are wanted.
    pub shards: &'a [ShardId],
    /// The instant `deliver_at` and retry instants are compared with.
    pub now: DateTime<Utc>,
    /// The most requests answered.
    pub limit: usize,
    /// Only requests with a greater id (the keyset cursor); `None` starts from the oldest.
    pub after: Option<Snowflake>,
    /// Entities (entity type + entity id; the shard is ignored) whose requests are left
    /// out, e.g. because their mailboxes are full.
    pub skip_entities: &'a [EntityAddress],
}

impl<'a> PollQuery<'a> {
    /// The oldest `limit` due requests of `shards`, skipping nothing.
    pub fn new(shards: &'a [ShardId], now: DateTime<Utc>, limit: usize) -> Self {
        PollQuery {
            shards,
            now,
            limit,
            after: None,
            skip_entities: &[],
        }
    }

    /// Continues after `after` (`None`: from the oldest).
    #[must_use]
    pub fn after(self, after: Option<Snowflake>) -> Self {
        PollQuery { after, ..self }
    }

    /// Leaves out the requests of `entities`.
    #[must_use]
    pub fn skipping(self, entities: &'a [EntityAddress]) -> Self {
        PollQuery {
            skip_entities: entities,
            ..self
        }
    }

    /// Whether `request` belongs to this page's filter: after the cursor and not addressed
    /// to a skipped entity (shards and due-ness are checked by the caller). A helper for
    /// backends that filter in memory.
    pub fn admits(&self, request: &EnvelopeRequest) -> bool {
        self.after.is_none_or(|after| request.request_id > after)
            && !self.skip_entities.iter().any(|skipped| {
                skipped.entity_type == request.address.entity_type
                    && skipped.entity_id == request.address.entity_id
            })
    }
}

/// What [`crate::MessageStorage::start_attempts`] did with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptStart {
    /// Counted: deliver it now, as attempt number `attempt` (1 = the first).
    Deliver {
        /// The request.
        request_id: Snowflake,
        /// The attempt about to be made.
        attempt: u32,
    },
    /// It had used all its attempts: it is now a dead letter; do not deliver it.
    DeadLettered {
        /// The request.
        request_id: Snowflake,
        /// Attempts in all.
        attempts: u32,
    },
    /// Unknown, already processed or already dead: nothing counted, do not deliver it.
    NotPending {
        /// The request.
        request_id: Snowflake,
    },
}

/// A failed delivery, as [`crate::MessageStorage::record_failed_attempt`] records it.
#[derive(Clone, Copy, Debug)]
pub struct AttemptFailure<'a> {
    /// Why it failed (kept as the dead letter's reason).
    pub reason: &'a str,
    /// The attempts after which the request is dead-lettered.
    pub max_attempts: u32,
    /// Not due again before this instant (the caller's backoff).
    pub retry_at: DateTime<Utc>,
    /// The attempt was already counted by [`crate::MessageStorage::start_attempts`]: do not
    /// count it again.
    pub counted: bool,
}

/// How many stored requests of one shard and entity type wait, are being retried or are
/// dead, as [`crate::MessageStorage::message_counts`] answers.
///
/// ```
/// use cruster_message_storage::MessageCounts;
/// use cruster_types::{EntityType, ShardId};
///
/// let counts = MessageCounts {
///     shard_id: ShardId::new("default", 3),
///     entity_type: EntityType::new("Counter"),
///     pending: 4,
///     retrying: 1,
///     dead_lettered: 2,
/// };
/// assert_eq!(counts.pending - counts.retrying, 3, "never attempted yet");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageCounts {
    /// The shard the requests are addressed to.
    pub shard_id: ShardId,
    /// Their entity type.
    pub entity_type: EntityType,
    /// Unprocessed requests that are not dead letters (due or not), retrying ones included.
    pub pending: u64,
    /// Of the pending ones, those with at least one counted attempt.
    pub retrying: u64,
    /// Dead letters.
    pub dead_lettered: u64,
}

/// Where a request that callers wait for ended, as
/// [`crate::MessageStorage::finished_requests`] answers it.
///
/// ```
/// use cruster_message_storage::FinishedRequest;
/// use cruster_types::Snowflake;
///
/// let finished = FinishedRequest::DeadLettered { request_id: Snowflake(7), attempts: 10 };
/// assert_eq!(finished.request_id(), Snowflake(7));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishedRequest {
    /// Its final reply is stored.
    Answered(ReplyWithExit),
    /// It was dead-lettered (and has no final reply): it will not run again unless an
    /// operator retries it.
    DeadLettered {
        /// The request.
        request_id: Snowflake,
        /// The attempts it used.
        attempts: u32,
    },
}

impl FinishedRequest {
    /// The request this answer is about.
    pub fn request_id(&self) -> Snowflake {
        match self {
            FinishedRequest::Answered(reply) => reply.request_id,
            FinishedRequest::DeadLettered { request_id, .. } => *request_id,
        }
    }
}
