//! [`Inbound`]: what this runner does with a request that another runner sent it (the
//! runtime's side of the `RunnerInbound` port).
//!
//! Only the holder of a shard runs its requests: anything for a shard this runner does not
//! hold (or while it stops) is refused with `ShardNotOwned`, which the sender retries
//! against the new owner. A persisted request already in flight here is not run twice: the
//! sender is answered from its stored reply.

use std::sync::Arc;

use cruster_sharding::ReplyStream;
use cruster_types::{AckChunk, ClusterError, EnvelopeRequest, Interrupt, ReplyWithExit};
use tokio::sync::oneshot;

use crate::delivery::persisted::PersistedDelivery;
use crate::delivery::reply_stream::single_reply;
use crate::delivery::router::Router;
use crate::entity::mailbox::{MailboxItem, Outcome, ReplySink};
use crate::runtime_core::RuntimeCore;

pub(crate) struct Inbound {
    pub(crate) core: Arc<RuntimeCore>,
    pub(crate) router: Arc<Router>,
    pub(crate) persisted: Arc<PersistedDelivery>,
}

impl Inbound {
    fn check_owner(&self, envelope: &EnvelopeRequest) -> Result<(), ClusterError> {
        if self.core.is_stopping() || !self.core.shard_table.is_held(&envelope.address.shard_id) {
            return Err(Router::not_routable(envelope));
        }
        Ok(())
    }

    /// Runs a request from another runner and returns its replies.
    pub(crate) async fn send(
        &self,
        envelope: EnvelopeRequest,
    ) -> Result<ReplyStream, ClusterError> {
        self.check_owner(&envelope)?;
        if envelope.streaming {
            return self.router.local_stream(envelope).map_err(|(err, _)| err);
        }
        let manager = self.router.manager(&envelope.address.entity_type)?;
        let request_id = envelope.request_id;
        let persisted = envelope.persisted;
        let shard_id = envelope.address.shard_id.clone();
        if persisted && !self.core.in_flight.enter(request_id) {
            // Already being handled here (the storage poll was faster): wait for its reply.
            let reply = self.persisted.join_reply(request_id).await?;
            return Ok(single_reply(reply));
        }
        let (tx, rx) = oneshot::channel();
        if let Err((err, _)) = manager.deliver(MailboxItem {
            envelope,
            sink: ReplySink::Once(tx),
        }) {
            if persisted {
                self.core.in_flight.abandon(request_id);
            }
            return Err(err);
        }
        match rx.await {
            Ok(Outcome::Reply(reply)) => Ok(single_reply(reply)),
            Ok(Outcome::Refused(err, _)) => Err(err),
            // Stopped before it answered (its shard moved): the new owner runs it again and
            // stores the reply, which the sender waits for.
            Err(_) if persisted => Err(ClusterError::ShardNotOwned { shard_id }),
            Err(_) => Err(Router::unknown_outcome(
                &self.core.config.runner_address,
                request_id,
                "the receiving runner stopped the entity before the handler answered",
            )),
        }
    }

    /// Accepts a request from another runner whose reply nobody waits for.
    pub(crate) async fn notify(&self, envelope: EnvelopeRequest) -> Result<(), ClusterError> {
        self.check_owner(&envelope)?;
        if envelope.persisted {
            let _ = self.persisted.deliver_local(envelope, false).await;
            return Ok(());
        }
        let manager = self.router.manager(&envelope.address.entity_type)?;
        manager
            .deliver(MailboxItem {
                envelope,
                sink: ReplySink::Nobody,
            })
            .map_err(|(err, _)| err)
    }

    /// A stream acknowledgement for a local entity.
    pub(crate) fn ack(&self, ack: &AckChunk) -> Result<(), ClusterError> {
        self.router.manager(&ack.address.entity_type)?.ack(ack);
        Ok(())
    }

    /// An interrupt for a local entity's request.
    pub(crate) fn interrupt(&self, interrupt: &Interrupt) -> Result<(), ClusterError> {
        self.router
            .manager(&interrupt.address.entity_type)?
            .interrupt(&interrupt.address, interrupt.request_id);
        Ok(())
    }

    /// A stored reply pushed by the runner that stored it, or the final answer of a
    /// workflow `execute` whose execution stopped there: wakes their waiters here.
    pub(crate) fn stored_reply(&self, reply: &ReplyWithExit) {
        self.core
            .metrics
            .replies_pushed
            .with_label_values(&["received"])
            .inc();
        self.core.waiters.reply_stored(reply);
        self.core.pushed_results.complete(&reply.request_id, reply);
    }
}
