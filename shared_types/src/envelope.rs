//! Messages sent to entities: requests, chunk acknowledgements and interrupts.

use std::borrow::Cow;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::EntityAddress;
use crate::snowflake::Snowflake;

/// Trace context carried with a message so spans on the receiving runner join the
/// sender's trace (W3C `traceparent` style key/value pairs; empty when tracing is off).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext(pub Vec<(String, String)>);

impl TraceContext {
    /// Whether there is nothing to carry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A request to an entity: the unit that is routed, persisted and delivered.
///
/// ```
/// use cruster_types::*;
/// let address = EntityAddress {
///     shard_id: ShardId::new("default", 3),
///     entity_type: EntityType::new("Counter"),
///     entity_id: EntityId::new("c-1"),
/// };
/// let envelope = EnvelopeRequest::new(Snowflake(1), address, "get", bytes::Bytes::new());
/// assert!(!envelope.persisted);
/// let bytes = wire::encode_envelope(&envelope).unwrap();
/// assert_eq!(wire::decode_envelope(&bytes).unwrap(), envelope);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeRequest {
    /// Unique id of this request; replies refer to it.
    pub request_id: Snowflake,
    /// The target entity.
    pub address: EntityAddress,
    /// The RPC to invoke.
    pub tag: Cow<'static, str>,
    /// The MessagePack-encoded request.
    pub payload: Bytes,
    /// Whether the request is stored in message storage before delivery (at-least-once).
    pub persisted: bool,
    /// Whether the caller going away must not interrupt the handler.
    pub uninterruptible: bool,
    /// Whether the caller expects a stream of chunks rather than one reply.
    pub streaming: bool,
    /// Whether the caller waits for a reply (`send`) or not (`notify`).
    pub expects_reply: bool,
    /// Do not deliver before this instant.
    pub deliver_at: Option<DateTime<Utc>>,
    /// De-duplication key of a persisted request: a second save with the same key is a
    /// duplicate of the first and gets the first one's reply.
    pub dedupe_key: Option<String>,
    /// Trace context of the sender.
    pub trace: TraceContext,
}

impl EnvelopeRequest {
    /// A plain (non-persisted, reply-expecting) request.
    pub fn new(
        request_id: Snowflake,
        address: EntityAddress,
        tag: impl Into<Cow<'static, str>>,
        payload: Bytes,
    ) -> Self {
        EnvelopeRequest {
            request_id,
            address,
            tag: tag.into(),
            payload,
            persisted: false,
            uninterruptible: false,
            streaming: false,
            expects_reply: true,
            deliver_at: None,
            dedupe_key: None,
            trace: TraceContext::default(),
        }
    }

    /// Whether the request may be delivered at `now`.
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        self.deliver_at.is_none_or(|at| at <= now)
    }
}

/// Acknowledges that the receiver of a streamed reply has processed chunk `sequence`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckChunk {
    /// The streaming request.
    pub request_id: Snowflake,
    /// The entity serving the stream.
    pub address: EntityAddress,
    /// The sequence number of the last chunk processed.
    pub sequence: u32,
}

/// Asks the runner serving a request to stop it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interrupt {
    /// The request to stop.
    pub request_id: Snowflake,
    /// The entity serving it.
    pub address: EntityAddress,
}
