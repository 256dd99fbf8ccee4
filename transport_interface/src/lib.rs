//! The `Runners` port: how one runner talks to another.
//!
//! # Contract
//!
//! The outbound side, [`Runners`], delivers messages to the runner at an address; the
//! inbound side, [`RunnerInbound`], is implemented by the runtime and is what a transport
//! server calls when a message arrives.
//!
//! * [`Runners::send`] delivers a request and returns the stream of its replies: chunks
//!   (for streaming requests) in sequence order, then exactly one `Reply::WithExit`, after
//!   which the stream ends. Errors the receiving runtime raises before the handler runs
//!   (`ShardNotOwned`, `EntityNotRegistered`, `MailboxFull`, ...) arrive as the `Err` of the
//!   call or as a failed final reply, with their variant intact.
//! * [`Runners::notify`] delivers a request without waiting for a reply; `Ok` means the
//!   receiving runtime accepted it.
//! * [`Runners::ack_chunk`], [`Runners::interrupt`] are forwarded to the inbound side.
//! * [`Runners::push_reply`] hands the stored final reply of a persisted request to the
//!   runner whose caller waits for it (the runner that made the request id); `Ok` means the
//!   receiving runtime took it. A push is an optimisation: a lost push leaves the caller to
//!   its storage fallback, so it is never retried.
//! * [`Runners::ping`] answers `Ok` when the runner at `address` is reachable.
//! * A runner that cannot be reached gives `ClusterError::RunnerUnavailable` naming it.
//!   `send` and `notify` return `Err(RunnerUnavailable)` only when the request surely did
//!   not reach the receiving runtime (the runtime then retries it elsewhere); once it may
//!   have, a lost answer is `Err(DeliveryUnknown)` from the call, or an error inside the
//!   reply stream, and is never retried (plain sends are at most once).
//! * Dropping a reply stream tells the receiver that the caller is gone (a transport may
//!   turn that into an interrupt for interruptible requests).
//!
//! Transports run [`conformance`] (feature `conformance`).
#![deny(missing_docs)]

#[cfg(feature = "conformance")]
pub mod conformance;

use async_trait::async_trait;
use cruster_types::{
    AckChunk, ClusterError, EnvelopeRequest, Interrupt, Reply, ReplyWithExit, RunnerAddress,
};
use futures::stream::BoxStream;

/// The replies to one request, ending after its `Reply::WithExit`.
pub type ReplyStream = BoxStream<'static, Result<Reply, ClusterError>>;

/// Outbound messaging to other runners. Held as `Arc<dyn Runners>`.
#[async_trait]
pub trait Runners: Send + Sync + 'static {
    /// Sends a request to the runner at `to` and returns its reply stream.
    ///
    /// # Errors
    /// `RunnerUnavailable` if `to` cannot be reached; any error the receiver raised.
    async fn send(
        &self,
        to: &RunnerAddress,
        envelope: EnvelopeRequest,
    ) -> Result<ReplyStream, ClusterError>;

    /// Sends a request without waiting for its reply.
    async fn notify(
        &self,
        to: &RunnerAddress,
        envelope: EnvelopeRequest,
    ) -> Result<(), ClusterError>;

    /// Acknowledges a streamed chunk.
    async fn ack_chunk(&self, to: &RunnerAddress, ack: AckChunk) -> Result<(), ClusterError>;

    /// Interrupts a request in flight.
    async fn interrupt(&self, to: &RunnerAddress, interrupt: Interrupt)
        -> Result<(), ClusterError>;

    /// Tells the runner at `to` that the final reply of one of its persisted requests was
    /// stored, so its waiting caller is answered without reading storage.
    ///
    /// # Errors
    /// `RunnerUnavailable` if `to` cannot be reached; `MalformedMessage` or a size error if
    /// the reply cannot be carried.
    async fn push_reply(
        &self,
        to: &RunnerAddress,
        reply: ReplyWithExit,
    ) -> Result<(), ClusterError>;

    /// Checks that the runner at `to` answers.
    async fn ping(&self, to: &RunnerAddress) -> Result<(), ClusterError>;

    /// Forgets pooled connections to a runner that left.
    async fn forget(&self, to: &RunnerAddress);
}

/// The receiving side of the transport, implemented by the runtime.
#[async_trait]
pub trait RunnerInbound: Send + Sync + 'static {
    /// Handles a request and returns its replies.
    async fn handle_send(&self, envelope: EnvelopeRequest) -> Result<ReplyStream, ClusterError>;

    /// Accepts a request whose reply nobody waits for.
    async fn handle_notify(&self, envelope: EnvelopeRequest) -> Result<(), ClusterError>;

    /// Handles a chunk acknowledgement.
    async fn handle_ack(&self, ack: AckChunk) -> Result<(), ClusterError>;

    /// Handles an interrupt.
    async fn handle_interrupt(&self, interrupt: Interrupt) -> Result<(), ClusterError>;

    /// Takes a stored final reply pushed by the runner that stored it (see
    /// [`Runners::push_reply`]) and wakes whoever waits for it here. A reply nobody waits
    /// for is ignored.
    async fn handle_stored_reply(&self, reply: ReplyWithExit) -> Result<(), ClusterError>;
}
