//! [`Router`]: plain (non-persisted) delivery: find the shard's owner, hand the request to
//! the local entity manager or to the owner over the transport, retry what was refused.
//!
//! # At most once
//! A plain request is retried only when it is known not to have run: refused by routing
//! here (`ShardNotOwned`, no owner yet), refused by the local entity before its handler
//! started, or refused by the transport before it reached the other runner (`send`/`notify`
//! returning `RunnerUnavailable`, as the transport contract promises). Once a request may
//! have reached a handler, a lost answer ends in [`ClusterError::DeliveryUnknown`] and is
//! never sent again.
//!
//! Owns no task and no lock; reads the shard table (lock-free) on every attempt.

use std::sync::Arc;
use std::time::Duration;

use cruster_sharding::ReplyStream;
use cruster_transport::Runners;
use cruster_types::{ClusterError, EnvelopeRequest, Reply, ReplyWithExit, RunnerAddress};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::delivery::reply_stream::{from_channel, until_exit};
use crate::entity::entity_manager::EntityManager;
use crate::entity::mailbox::{MailboxItem, Outcome, ReplySink};
use crate::entity::registry::EntityRegistry;
use crate::runtime_core::RuntimeCore;
use crate::sharding::shard_table::Route;

pub(crate) struct Router {
    pub(crate) core: Arc<RuntimeCore>,
    pub(crate) runners: Arc<dyn Runners>,
    pub(crate) registry: Arc<EntityRegistry>,
}

/// What one attempt of a plain send came to.
enum Attempt {
    /// Finished: the reply, or an error that must not be retried.
    Done(Result<ReplyWithExit, ClusterError>),
    /// Not delivered (the envelope comes back): retry if attempts remain.
    Refused(ClusterError, EnvelopeRequest),
}

impl Router {
    pub(crate) fn manager(
        &self,
        entity_type: &cruster_types::EntityType,
    ) -> Result<Arc<EntityManager>, ClusterError> {
        self.registry.require(entity_type)
    }

    pub(crate) fn not_routable(envelope: &EnvelopeRequest) -> ClusterError {
        ClusterError::ShardNotOwned {
            shard_id: envelope.address.shard_id.clone(),
        }
    }

    fn retry_backoff(&self, attempt: u32) -> Duration {
        self.core
            .config
            .send_retry_backoff
            .saturating_mul(2u32.saturating_pow(attempt.min(10)))
    }

    /// Waits before routing attempt `attempt + 1`, or says that no attempt is left.
    async fn may_retry(&self, err: &ClusterError, attempt: u32) -> bool {
        if !err.is_routing() || attempt >= self.core.config.send_retry_count {
            return false;
        }
        tokio::time::sleep(self.retry_backoff(attempt)).await;
        true
    }

    /// The error for a request whose handler may have started but whose answer was lost.
    pub(crate) fn unknown_outcome(
        address: &RunnerAddress,
        envelope_id: cruster_types::Snowflake,
        reason: impl Into<String>,
    ) -> ClusterError {
        ClusterError::DeliveryUnknown {
            address: address.clone(),
            request_id: envelope_id,
            reason: reason.into(),
        }
    }

    /// Delivers a plain request and waits for its reply.
    pub(crate) async fn send(
        &self,
        mut envelope: EnvelopeRequest,
    ) -> Result<ReplyWithExit, ClusterError> {
        let mut attempt = 0;
        loop {
            let (err, back) = match self.send_once(envelope).await {
                Attempt::Done(result) => return result,
                Attempt::Refused(err, back) => (err, back),
            };
            if !self.may_retry(&err, attempt).await {
                return Err(err);
            }
            envelope = back;
            attempt += 1;
        }
    }

    async fn send_once(&self, envelope: EnvelopeRequest) -> Attempt {
        match self.core.shard_table.route(&envelope.address.shard_id) {
            Route::Local => {
                let manager = match self.manager(&envelope.address.entity_type) {
                    Ok(manager) => manager,
                    Err(err) => return Attempt::Done(Err(err)),
                };
                let request_id = envelope.request_id;
                let (tx, rx) = oneshot::channel();
                if let Err((err, item)) = manager.deliver(MailboxItem {
                    envelope,
                    sink: ReplySink::Once(tx),
                }) {
                    return Attempt::Refused(err, item.envelope);
                }
                match rx.await {
                    Ok(Outcome::Reply(reply)) => Attempt::Done(Ok(reply)),
                    Ok(Outcome::Refused(err, back)) => Attempt::Refused(err, *back),
                    Err(_) => Attempt::Done(Err(Self::unknown_outcome(
                        &self.core.config.runner_address,
                        request_id,
                        "this runner stopped its entity before the handler answered",
                    ))),
                }
            }
            Route::Remote(address) => {
                let request_id = envelope.request_id;
                match self.runners.send(&address, envelope.clone()).await {
                    Ok(stream) => remote_final_reply(stream, &address, request_id, envelope).await,
                    // The transport refused before the other runner got it: safe to retry.
                    Err(err) => Attempt::Refused(err, envelope),
                }
            }
            Route::Pending => {
                let err = Self::not_routable(&envelope);
                Attempt::Refused(err, envelope)
            }
        }
    }

    /// Delivers a plain request nobody waits for.
    pub(crate) async fn notify(&self, mut envelope: EnvelopeRequest) -> Result<(), ClusterError> {
        let mut attempt = 0;
        loop {
            let err = match self.core.shard_table.route(&envelope.address.shard_id) {
                Route::Local => {
                    let manager = self.manager(&envelope.address.entity_type)?;
                    match manager.deliver(MailboxItem {
                        envelope,
                        sink: ReplySink::Nobody,
                    }) {
                        Ok(()) => return Ok(()),
                        Err((err, item)) => {
                            envelope = item.envelope;
                            err
                        }
                    }
                }
                Route::Remote(address) => {
                    match self.runners.notify(&address, envelope.clone()).await {
                        Ok(()) => return Ok(()),
                        Err(err) => err,
                    }
                }
                Route::Pending => Self::not_routable(&envelope),
            };
            if !self.may_retry(&err, attempt).await {
                return Err(err);
            }
            attempt += 1;
        }
    }

    /// Delivers a plain streaming request and returns its reply stream.
    pub(crate) async fn stream(
        &self,
        mut envelope: EnvelopeRequest,
    ) -> Result<ReplyStream, ClusterError> {
        let mut attempt = 0;
        loop {
            let err = match self.core.shard_table.route(&envelope.address.shard_id) {
                Route::Local => match self.local_stream(envelope) {
                    Ok(stream) => return Ok(stream),
                    Err((err, back)) => {
                        envelope = back;
                        err
                    }
                },
                Route::Remote(address) => match self.runners.send(&address, envelope.clone()).await
                {
                    Ok(stream) => return Ok(until_exit(stream)),
                    Err(err) => err,
                },
                Route::Pending => Self::not_routable(&envelope),
            };
            if !self.may_retry(&err, attempt).await {
                return Err(err);
            }
            attempt += 1;
        }
    }

    /// Queues a streaming request for a local entity. The envelope comes back by value on
    /// refusal, so a routing retry needs no clone.
    #[allow(clippy::result_large_err)]
    pub(crate) fn local_stream(
        &self,
        envelope: EnvelopeRequest,
    ) -> Result<ReplyStream, (ClusterError, EnvelopeRequest)> {
        let manager = match self.manager(&envelope.address.entity_type) {
            Ok(m) => m,
            Err(err) => return Err((err, envelope)),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        match manager.deliver(MailboxItem {
            envelope,
            sink: ReplySink::Stream(tx),
        }) {
            Ok(()) => Ok(until_exit(from_channel(rx))),
            Err((err, item)) => Err((err, item.envelope)),
        }
    }
}

/// Reads the reply stream of a request sent to another runner. A refusal by the receiving
/// runtime (`ShardNotOwned`: it did not run the handler) may be retried; a stream that
/// breaks or ends early leaves the outcome unknown.
async fn remote_final_reply(
    mut stream: ReplyStream,
    from: &RunnerAddress,
    request_id: cruster_types::Snowflake,
    envelope: EnvelopeRequest,
) -> Attempt {
    while let Some(item) = stream.next().await {
        match item {
            Ok(Reply::WithExit(reply)) => return Attempt::Done(Ok(reply)),
            Ok(Reply::Chunk(_)) => {}
            Err(err @ ClusterError::ShardNotOwned { .. }) => {
                return Attempt::Refused(err, envelope)
            }
            Err(ClusterError::RunnerUnavailable { reason, .. }) => {
                return Attempt::Done(Err(Router::unknown_outcome(from, request_id, reason)))
            }
            Err(err) => return Attempt::Done(Err(err)),
        }
    }
    Attempt::Done(Err(Router::unknown_outcome(
        from,
        request_id,
        "the reply stream ended without a final reply",
    )))
}
