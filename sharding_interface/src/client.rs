//! [`EntityClient`]: every delivery mode, typed, over `Arc<dyn Sharding>`.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cruster_types::{
    wire, AckChunk, ClusterError, EntityAddress, EntityId, EntityType, EnvelopeRequest, Reply,
    ReplyWithExit, Snowflake,
};
use futures::stream::{BoxStream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Sharding;

/// A client for one entity type. Cheap to clone (two `Arc`s).
///
/// Requests and responses are MessagePack-encoded with serde. Handler failures come back
/// as the `ClusterError` the handler returned.
#[derive(Clone)]
pub struct EntityClient {
    sharding: Arc<dyn Sharding>,
    entity_type: EntityType,
}

impl std::fmt::Debug for EntityClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityClient")
            .field("entity_type", &self.entity_type)
            .finish()
    }
}

/// A stream consumer acknowledges every this-many chunks; a producer may run at most
/// [`STREAM_WINDOW`] chunks ahead of the last acknowledgement.
pub const STREAM_ACK_INTERVAL: u32 = 64;

/// How many unacknowledged chunks a streaming handler may produce before it waits.
pub const STREAM_WINDOW: usize = 256;

fn decode_exit<Res: DeserializeOwned>(reply: ReplyWithExit) -> Result<Res, ClusterError> {
    let bytes = reply.exit.into_result()?;
    wire::decode(&bytes)
}

/// The de-duplication key of a keyed persisted request: distinct per tag and key (the
/// entity address scopes it further in storage).
fn dedupe_key(tag: &str, key: &str) -> String {
    format!("{tag}\u{1f}{key}")
}

impl EntityClient {
    /// A client for `entity_type`.
    pub fn new(sharding: Arc<dyn Sharding>, entity_type: EntityType) -> Self {
        EntityClient {
            sharding,
            entity_type,
        }
    }

    /// The entity type this client talks to.
    pub fn entity_type(&self) -> &EntityType {
        &self.entity_type
    }

    /// The cluster behind this client.
    pub fn sharding(&self) -> &Arc<dyn Sharding> {
        &self.sharding
    }

    /// The address of an entity of this type.
    pub fn address(&self, entity_id: &EntityId) -> EntityAddress {
        EntityAddress {
            shard_id: self.sharding.shard_id(&self.entity_type, entity_id),
            entity_type: self.entity_type.clone(),
            entity_id: entity_id.clone(),
        }
    }

    /// Builds the envelope of a request (for callers that need to set fields by hand).
    ///
    /// # Errors
    /// `MalformedMessage` if the request cannot be encoded.
    pub fn envelope<Req: Serialize + ?Sized>(
        &self,
        entity_id: &EntityId,
        tag: impl Into<Cow<'static, str>>,
        request: &Req,
    ) -> Result<EnvelopeRequest, ClusterError> {
        let payload = wire::encode(request)?;
        Ok(EnvelopeRequest::new(
            self.sharding.next_request_id(),
            self.address(entity_id),
            tag,
            payload,
        ))
    }

    /// Best-effort request, waiting for the reply (at-most-once).
    pub async fn send<Req: Serialize + ?Sized, Res: DeserializeOwned>(
        &self,
        entity_id: &EntityId,
        tag: impl Into<Cow<'static, str>>,
        request: &Req,
    ) -> Result<Res, ClusterError> {
        let envelope = self.envelope(entity_id, tag, request)?;
        decode_exit(self.sharding.send(envelope).await?)
    }

    /// Persisted request, waiting for the reply (at-least-once). With `uninterruptible`, the
    /// handler keeps running when the caller goes away.
    pub async fn send_persisted<Req: Serialize + ?Sized, Res: DeserializeOwned>(
        &self,
        entity_id: &EntityId,
        tag: impl Into<Cow<'static, str>>,
        request: &Req,
        uninterruptible: bool,
    ) -> Result<Res, ClusterError> {
        let mut envelope = self.envelope(entity_id, tag, request)?;
        envelope.persisted = true;
        envelope.uninterruptible = uninterruptible;
        decode_exit(self.sharding.send(envelope).await?)
    }

    /// Persisted request with an idempotency key: sending the same key again (same entity,
    /// same tag) returns the first request's reply and runs nothing again.
    pub async fn send_persisted_with_key<Req: Serialize + ?Sized, Res: DeserializeOwned>(
        &self,
        entity_id: &EntityId,
        tag: impl Into<Cow<'static, str>>,
        request: &Req,
        key: &str,
        uninterruptible: bool,
    ) -> Result<Res, ClusterError> {
        let envelope =
            self.persisted_envelope_with_key(entity_id, tag, request, key, uninterruptible)?;
        decode_exit(self.sharding.send(envelope).await?)
    }

    /// The envelope [`EntityClient::send_persisted_with_key`] sends, for callers that need
    /// its request id (the workflow client waits for later answers under it).
    ///
    /// # Errors
    /// `MalformedMessage` if the request cannot be encoded.
    pub fn persisted_envelope_with_key<Req: Serialize + ?Sized>(
        &self,
        entity_id: &EntityId,
        tag: impl Into<Cow<'static, str>>,
        request: &Req,
        key: &str,
        uninterruptible: bool,
    ) -> Result<EnvelopeRequest, ClusterError> {
        let mut envelope = self.envelope(entity_id, tag, request)?;
        envelope.persisted = true;
        envelope.uninterruptible = uninterruptible;
        envelope.dedupe_key = Some(dedupe_key(&envelope.tag, key));
        Ok(envelope)
    }

    /// Best-effort fire-and-forget.
    pub async fn notify<Req: Serialize + ?Sized>(
        &self,
        entity_id: &EntityId,
        tag: impl Into<Cow<'static, str>>,
        request: &Req,
    ) -> Result<(), ClusterError> {
        let mut envelope = self.envelope(entity_id, tag, request)?;
        envelope.expects_reply = false;
        self.sharding.notify(envelope).await
    }

    /// Persisted fire-and-forget: returns once the request is stored. The returned request
    /// id can be given to [`EntityClient::poll_reply`] / [`EntityClient::join_reply`].
    pub async fn notify_persisted<Req: Serialize + ?Sized>(
        &self,
        entity_id: &EntityId,
        tag: impl Into<Cow<'static, str>>,
        request: &Req,
    ) -> Result<Snowflake, ClusterError> {
        let mut envelope = self.envelope(entity_id, tag, request)?;
        envelope.persisted = true;
        envelope.expects_reply = false;
        let id = envelope.request_id;
        self.sharding.notify(envelope).await?;
        Ok(id)
    }

    /// Persisted fire-and-forget with an idempotency key. Returns the request id (of the
    /// first request with this key, once the runtime resolved it through `poll_reply`).
    pub async fn notify_persisted_with_key<Req: Serialize + ?Sized>(
        &self,
        entity_id: &EntityId,
        tag: impl Into<Cow<'static, str>>,
        request: &Req,
        key: &str,
    ) -> Result<Snowflake, ClusterError> {
        let mut envelope = self.envelope(entity_id, tag, request)?;
        envelope.persisted = true;
        envelope.expects_reply = false;
        envelope.dedupe_key = Some(dedupe_key(&envelope.tag, key));
        let id = envelope.request_id;
        self.sharding.notify(envelope).await?;
        Ok(id)
    }

    /// Persisted request delivered no earlier than `deliver_at`; waits for the reply.
    pub async fn send_at<Req: Serialize + ?Sized, Res: DeserializeOwned>(
        &self,
        entity_id: &EntityId,
        tag: impl Into<Cow<'static, str>>,
        request: &Req,
        deliver_at: DateTime<Utc>,
    ) -> Result<Res, ClusterError> {
        let mut envelope = self.envelope(entity_id, tag, request)?;
        envelope.persisted = true;
        envelope.deliver_at = Some(deliver_at);
        decode_exit(self.sharding.send(envelope).await?)
    }

    /// Persisted fire-and-forget delivered no earlier than `deliver_at`. Returns the request id.
    pub async fn notify_at<Req: Serialize + ?Sized>(
        &self,
        entity_id: &EntityId,
        tag: impl Into<Cow<'static, str>>,
        request: &Req,
        deliver_at: DateTime<Utc>,
    ) -> Result<Snowflake, ClusterError> {
        let mut envelope = self.envelope(entity_id, tag, request)?;
        envelope.persisted = true;
        envelope.expects_reply = false;
        envelope.deliver_at = Some(deliver_at);
        let id = envelope.request_id;
        self.sharding.notify(envelope).await?;
        Ok(id)
    }

    /// Streaming request: the values of the handler's stream, in order.
    pub async fn send_stream<Req: Serialize + ?Sized, Res: DeserializeOwned + Send + 'static>(
        &self,
        entity_id: &EntityId,
        tag: impl Into<Cow<'static, str>>,
        request: &Req,
    ) -> Result<BoxStream<'static, Result<Res, ClusterError>>, ClusterError> {
        let mut envelope = self.envelope(entity_id, tag, request)?;
        envelope.streaming = true;
        let request_id = envelope.request_id;
        let address = envelope.address.clone();
        let replies = self.sharding.send_stream(envelope).await?;
        let sharding = self.sharding.clone();
        let values = replies
            .then(move |reply| {
                let sharding = sharding.clone();
                let address = address.clone();
                async move {
                    if let Ok(Reply::Chunk(chunk)) = &reply {
                        if (chunk.sequence + 1) % STREAM_ACK_INTERVAL == 0 {
                            // Lets the producer run further ahead; a lost ack only slows it.
                            let _ = sharding
                                .ack_chunk(AckChunk {
                                    request_id,
                                    address,
                                    sequence: chunk.sequence,
                                })
                                .await;
                        }
                    }
                    let items: Vec<Result<Res, ClusterError>> = match reply {
                        Ok(Reply::Chunk(chunk)) => {
                            chunk.values.iter().map(|v| wire::decode(v)).collect()
                        }
                        Ok(Reply::WithExit(exit)) => match exit.exit.into_result() {
                            Ok(_) => Vec::new(),
                            Err(err) => vec![Err(err)],
                        },
                        Err(err) => vec![Err(err)],
                    };
                    futures::stream::iter(items)
                }
            })
            .flatten();
        Ok(values.boxed())
    }

    /// The reply of a persisted request, if it has finished.
    pub async fn poll_reply<Res: DeserializeOwned>(
        &self,
        request_id: Snowflake,
    ) -> Result<Option<Res>, ClusterError> {
        match self.sharding.poll_reply(request_id).await? {
            Some(reply) => decode_exit(reply).map(Some),
            None => Ok(None),
        }
    }

    /// Waits for the reply of a persisted request.
    pub async fn join_reply<Res: DeserializeOwned>(
        &self,
        request_id: Snowflake,
    ) -> Result<Res, ClusterError> {
        decode_exit(self.sharding.join_reply(request_id).await?)
    }
}
