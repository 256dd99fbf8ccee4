//! [`PersistedDelivery`]: save → deliver → reply for persisted requests (`send_persisted`,
//! `notify_persisted`, `send_at`, workflow calls), and waiting for stored replies.
//!
//! A request is saved first (a duplicate request id or dedupe key finds the first one),
//! then delivered at once to the shard's owner; its final reply is stored before anyone is
//! told. Whatever this path cannot deliver (no owner yet, a full mailbox, a lost runner)
//! stays unprocessed in storage for the owner's poll: a caller then waits for the stored
//! reply, never for an error about a message that will still run.
//!
//! Owns no task and holds no lock across an await.

use std::collections::HashSet;
use std::sync::Arc;

use cruster_message_storage::{FinishedRequest, SaveResult};
use cruster_types::{ClusterError, EntityType, EnvelopeRequest, Reply, ReplyWithExit, Snowflake};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::delivery::reply_stream::final_reply;
use crate::delivery::router::Router;
use crate::delivery::waiter_registry::ReplyOutcome;
use crate::entity::mailbox::{MailboxItem, Outcome, ReplySink};
use crate::runtime_core::RuntimeCore;
use crate::sharding::shard_table::Route;

pub(crate) struct PersistedDelivery {
    core: Arc<RuntimeCore>,
    router: Arc<Router>,
    /// Entity types already reported as unknown here (each is logged once).
    unknown_types: Mutex<HashSet<EntityType>>,
}

/// What saving a persisted request found.
enum SaveOutcome {
    /// Stored now: deliver it.
    New,
    /// A duplicate whose first request has its final reply.
    Answered(ReplyWithExit),
    /// A duplicate whose first request (this id) is still pending.
    Pending(Snowflake),
}

impl PersistedDelivery {
    pub(crate) fn new(core: Arc<RuntimeCore>, router: Arc<Router>) -> Self {
        PersistedDelivery {
            core,
            router,
            unknown_types: Mutex::new(HashSet::new()),
        }
    }

    async fn save(&self, envelope: &EnvelopeRequest) -> Result<SaveOutcome, ClusterError> {
        let storage = self.core.storage()?;
        let saved = storage.save_request(envelope).await;
        self.core.storage_result(&saved);
        match saved? {
            SaveResult::Saved => {
                self.core.metrics.messages_persisted.inc();
                Ok(SaveOutcome::New)
            }
            SaveResult::Duplicate {
                reply: Some(reply), ..
            } => Ok(SaveOutcome::Answered(reply)),
            SaveResult::Duplicate {
                original_request_id,
                reply: None,
            } => Ok(SaveOutcome::Pending(original_request_id)),
        }
    }

    /// `send_persisted`: saves, delivers, and returns the stored final reply.
    pub(crate) async fn send(
        &self,
        envelope: EnvelopeRequest,
    ) -> Result<ReplyWithExit, ClusterError> {
        match self.save(&envelope).await? {
            SaveOutcome::Answered(reply) => return Ok(reply),
            SaveOutcome::Pending(original) => return self.join_reply(original).await,
            SaveOutcome::New => {}
        }
        let request_id = envelope.request_id;
        if !self.is_due(&envelope) {
            return self.join_reply(request_id).await;
        }
        match self.deliver_now(envelope, true).await {
            Some(reply) => Ok(reply),
            None => self.join_reply(request_id).await,
        }
    }

    /// `notify_persisted` / `notify_at`: saves and delivers; `Ok` once stored.
    pub(crate) async fn notify(&self, envelope: EnvelopeRequest) -> Result<(), ClusterError> {
        if let SaveOutcome::New = self.save(&envelope).await? {
            if self.is_due(&envelope) {
                let _ = self.deliver_now(envelope, false).await;
            }
        }
        Ok(())
    }

    /// Whether a stored request is due now (on the runner's clock). One that is not is
    /// left to the storage poll; the clock is told when it becomes due.
    fn is_due(&self, envelope: &EnvelopeRequest) -> bool {
        let clock = &self.core.config.clock;
        let due = envelope.is_due(clock.now());
        if let (false, Some(at)) = (due, envelope.deliver_at) {
            clock.due_at(at);
        }
        due
    }

    /// Delivers a stored request at once. `Some(reply)` when its final reply was stored
    /// and returned; `None` when the storage poll (of this runner or of the owner) will
    /// deliver it, or already has, and the caller waits for the stored reply.
    async fn deliver_now(&self, envelope: EnvelopeRequest, wait: bool) -> Option<ReplyWithExit> {
        match self.core.shard_table.route(&envelope.address.shard_id) {
            Route::Local => self.deliver_local(envelope, wait).await,
            Route::Remote(address) => {
                if wait {
                    let stream = self.router.runners.send(&address, envelope).await.ok()?;
                    final_reply(stream, &address).await.ok()
                } else {
                    let _ = self.router.runners.notify(&address, envelope).await;
                    None
                }
            }
            Route::Pending => None,
        }
    }

    /// Hands a stored request to the local entity manager, unless it is already in flight
    /// here. `Some(reply)` only when the final reply was stored.
    pub(crate) async fn deliver_local(
        &self,
        envelope: EnvelopeRequest,
        wait: bool,
    ) -> Option<ReplyWithExit> {
        let request_id = envelope.request_id;
        let Some(manager) = self.router.registry.get(&envelope.address.entity_type) else {
            self.unknown_type(&envelope.address.entity_type);
            return None;
        };
        if !self.core.in_flight.enter(request_id) {
            return None;
        }
        let (sink, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (ReplySink::Once(tx), Some(rx))
        } else {
            (ReplySink::Nobody, None)
        };
        if manager.deliver(MailboxItem { envelope, sink }).is_err() {
            self.core.in_flight.abandon(request_id);
            return None;
        }
        match rx?.await {
            Ok(Outcome::Reply(reply)) => Some(reply),
            _ => None,
        }
    }

    /// A persisted message for an entity type this runner does not have (a rolling deploy,
    /// a type registered late) is left for later, never counted as a failed attempt.
    pub(crate) fn unknown_type(&self, entity_type: &EntityType) {
        let first = self.unknown_types.lock().insert(entity_type.clone());
        if first {
            tracing::warn!(
                %entity_type,
                "no handler for entity type on this runner: its persisted messages stay \
                 pending until a runner that registers it takes them"
            );
        }
    }

    /// Forgets that an entity type was unknown (it has just been registered).
    pub(crate) fn type_registered(&self, entity_type: &EntityType) {
        self.unknown_types.lock().remove(entity_type);
    }

    /// The stored final reply of a request, if any.
    pub(crate) async fn poll_reply(
        &self,
        request_id: Snowflake,
    ) -> Result<Option<ReplyWithExit>, ClusterError> {
        let storage = self.core.storage()?;
        let replies = storage.replies_for(request_id).await;
        self.core.storage_result(&replies);
        Ok(replies?.into_iter().find_map(|r| match r {
            Reply::WithExit(exit) => Some(exit),
            Reply::Chunk(_) => None,
        }))
    }

    /// Waits for the final reply of a persisted request. Storage is read once, when the
    /// wait begins (the reply may be stored already); afterwards the caller is woken when
    /// this runner stores the reply, when the runner that stores it pushes it here (for a
    /// request made here), or by this runner's fallback check, which reads storage once per
    /// `waiter_fallback_interval` for all of its waiting callers together (see
    /// `waiter_fallback.rs`). So a waiting caller costs no storage reads of its own. A
    /// dead-lettered request ends the wait with an error saying so.
    ///
    /// # Cancel safety
    /// Dropping the future drops the caller's registration; nothing else changes.
    pub(crate) async fn join_reply(
        &self,
        request_id: Snowflake,
    ) -> Result<ReplyWithExit, ClusterError> {
        let mut waiter = self.core.waiters.wait(request_id);
        let storage = self.core.storage()?;
        let finished = storage.finished_requests(&[request_id]).await;
        self.core.storage_result(&finished);
        match finished {
            Ok(finished) => {
                if let Some(finished) = finished.into_iter().next() {
                    return match finished {
                        FinishedRequest::Answered(reply) => Ok(reply),
                        FinishedRequest::DeadLettered { attempts, .. } => {
                            Err(dead_lettered(request_id, attempts))
                        }
                    };
                }
            }
            Err(err @ ClusterError::PersistenceError { .. }) => {
                tracing::debug!(%err, %request_id, "reading a stored reply failed; the fallback check reads it again");
            }
            Err(err) => return Err(err),
        }
        loop {
            tokio::select! {
                outcome = &mut waiter.rx => match outcome {
                    Ok(ReplyOutcome::Reply(reply)) => return Ok(reply),
                    Ok(ReplyOutcome::DeadLettered { attempts }) => {
                        return Err(dead_lettered(request_id, attempts))
                    }
                    // The registration was dropped without an outcome: register again.
                    Err(_) => waiter = self.core.waiters.wait(request_id),
                },
                _ = self.core.killed.cancelled() => return Err(ClusterError::ShuttingDown),
            }
        }
    }
}

/// The error of a caller whose request was dead-lettered.
fn dead_lettered(request_id: Snowflake, attempts: u32) -> ClusterError {
    ClusterError::PersistenceError {
        reason: format!(
            "request {request_id} was dead-lettered after {attempts} failed attempts; \
             inspect it with MessageStorage::dead_letters"
        ),
        source: None,
    }
}
