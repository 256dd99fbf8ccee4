//! Records that message storage hands back.

use chrono::{DateTime, Utc};
use cruster_types::{EnvelopeRequest, ReplyWithExit, Snowflake};

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
    /// Failed delivery attempts so far.
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
