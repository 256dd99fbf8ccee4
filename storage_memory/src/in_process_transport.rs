//! [`InProcessNetwork`] and [`InProcessRunners`]: the `Runners` transport between runtimes
//! that live in one process.
//!
//! Owns the registry address → inbound side of every runner of the process. A send looks
//! the target up under a read lock held only for the lookup, then calls its inbound
//! directly on the caller's task: no serialisation, no channel, no task per message.
//! Envelopes are handed over by value, as a network would copy them.
//!
//! Unregistering a runner (a clean stop, or a simulated crash) cancels its token: requests
//! in flight to it end with `RunnerUnavailable` instead of waiting for replies that will
//! never come, and later messages get `RunnerUnavailable` at once.
//!
//! Never holds the registry lock across an await, and never spawns a task.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use cruster_transport::{ReplyStream, RunnerInbound, Runners};
use cruster_types::{
    AckChunk, ClusterError, EnvelopeRequest, Interrupt, Reply, ReplyWithExit, RunnerAddress,
};
use futures::{Future, Stream, StreamExt};
use parking_lot::RwLock;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The runners of one process, by address. Cheap to clone: clones share the registry.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use cruster_storage_memory::InProcessNetwork;
/// use cruster_transport::Runners;
/// use cruster_types::{ClusterError, RunnerAddress};
///
/// let network = InProcessNetwork::new();
/// let runners = network.runners();
/// let nobody = RunnerAddress::new("127.0.0.1", 9000);
/// let err = runners.ping(&nobody).await.unwrap_err();
/// assert!(matches!(err, ClusterError::RunnerUnavailable { .. }));
/// // network.register(nobody, inbound) would make it reachable.
/// # });
/// ```
#[derive(Clone, Default)]
pub struct InProcessNetwork {
    registry: Arc<RwLock<HashMap<RunnerAddress, Endpoint>>>,
}

/// A registered runner: its inbound side and the token its unregistration cancels.
#[derive(Clone)]
struct Endpoint {
    inbound: Arc<dyn RunnerInbound>,
    gone: CancellationToken,
}

impl fmt::Debug for InProcessNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut addresses: Vec<RunnerAddress> = self.registry.read().keys().cloned().collect();
        addresses.sort();
        f.debug_struct("InProcessNetwork")
            .field("runners", &addresses)
            .finish()
    }
}

impl InProcessNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `inbound` reachable at `address`. A runner already registered there is
    /// replaced, and its requests in flight end with `RunnerUnavailable`.
    pub fn register(&self, address: RunnerAddress, inbound: Arc<dyn RunnerInbound>) {
        let endpoint = Endpoint {
            inbound,
            gone: CancellationToken::new(),
        };
        let replaced = self.registry.write().insert(address, endpoint);
        if let Some(old) = replaced {
            old.gone.cancel();
        }
    }

    /// Removes the runner at `address`, as when it stops or crashes: later messages to it
    /// get `RunnerUnavailable`, and so do its requests in flight that have not yet
    /// produced their final reply. Returns whether a runner was registered there.
    pub fn unregister(&self, address: &RunnerAddress) -> bool {
        let removed = self.registry.write().remove(address);
        match removed {
            Some(endpoint) => {
                endpoint.gone.cancel();
                true
            }
            None => false,
        }
    }

    /// Whether a runner is registered at `address`.
    pub fn is_registered(&self, address: &RunnerAddress) -> bool {
        self.registry.read().contains_key(address)
    }

    /// A `Runners` client sending to the runners of this network.
    pub fn runners(&self) -> InProcessRunners {
        InProcessRunners {
            network: self.clone(),
        }
    }

    fn endpoint(&self, address: &RunnerAddress) -> Result<Endpoint, ClusterError> {
        self.registry.read().get(address).cloned().ok_or_else(|| {
            unavailable(
                address,
                "no runner is registered at this address in this process",
            )
        })
    }
}

fn unavailable(address: &RunnerAddress, reason: &str) -> ClusterError {
    ClusterError::RunnerUnavailable {
        address: address.clone(),
        reason: reason.to_owned(),
    }
}

const LEFT_IN_FLIGHT: &str = "the runner left while the request was in flight";

/// [`Runners`] over an [`InProcessNetwork`]: calls the target's inbound side directly.
#[derive(Clone, Debug)]
pub struct InProcessRunners {
    network: InProcessNetwork,
}

impl InProcessRunners {
    /// Runs `call` against the inbound at `to`, unless the runner leaves first.
    async fn call<T, Fut>(
        &self,
        to: &RunnerAddress,
        call: impl FnOnce(Arc<dyn RunnerInbound>) -> Fut,
    ) -> Result<T, ClusterError>
    where
        Fut: Future<Output = Result<T, ClusterError>>,
    {
        let endpoint = self.network.endpoint(to)?;
        tokio::select! {
            biased;
            result = call(endpoint.inbound) => result,
            () = endpoint.gone.cancelled() => Err(unavailable(to, LEFT_IN_FLIGHT)),
        }
    }
}

#[async_trait]
impl Runners for InProcessRunners {
    async fn send(
        &self,
        to: &RunnerAddress,
        envelope: EnvelopeRequest,
    ) -> Result<ReplyStream, ClusterError> {
        let endpoint = self.network.endpoint(to)?;
        let request_id = envelope.request_id;
        let replies = tokio::select! {
            biased;
            result = endpoint.inbound.handle_send(envelope) => result?,
            // The receiver had the request: it may have run, so this is no refusal.
            () = endpoint.gone.cancelled() => {
                return Err(ClusterError::DeliveryUnknown {
                    address: to.clone(),
                    request_id,
                    reason: LEFT_IN_FLIGHT.to_owned(),
                })
            }
        };
        Ok(UntilRunnerLeaves {
            replies,
            gone: Box::pin(endpoint.gone.cancelled_owned()),
            address: to.clone(),
            finished: false,
        }
        .boxed())
    }

    async fn notify(
        &self,
        to: &RunnerAddress,
        envelope: EnvelopeRequest,
    ) -> Result<(), ClusterError> {
        self.call(to, |inbound| async move {
            inbound.handle_notify(envelope).await
        })
        .await
    }

    async fn ack_chunk(&self, to: &RunnerAddress, ack: AckChunk) -> Result<(), ClusterError> {
        self.call(to, |inbound| async move { inbound.handle_ack(ack).await })
            .await
    }

    async fn interrupt(
        &self,
        to: &RunnerAddress,
        interrupt: Interrupt,
    ) -> Result<(), ClusterError> {
        self.call(to, |inbound| async move {
            inbound.handle_interrupt(interrupt).await
        })
        .await
    }

    async fn push_reply(
        &self,
        to: &RunnerAddress,
        reply: ReplyWithExit,
    ) -> Result<(), ClusterError> {
        self.call(to, |inbound| async move {
            inbound.handle_stored_reply(reply).await
        })
        .await
    }

    async fn ping(&self, to: &RunnerAddress) -> Result<(), ClusterError> {
        self.network.endpoint(to).map(|_| ())
    }

    /// Nothing to forget: there are no pooled connections in process.
    async fn forget(&self, _to: &RunnerAddress) {}
}

/// A reply stream that ends with `RunnerUnavailable` if its runner leaves before the
/// final reply, and that ends right after the final reply (as the contract promises, even
/// if the inbound's stream would go on).
struct UntilRunnerLeaves {
    replies: ReplyStream,
    gone: Pin<Box<WaitForCancellationFutureOwned>>,
    address: RunnerAddress,
    finished: bool,
}

impl Stream for UntilRunnerLeaves {
    type Item = Result<Reply, ClusterError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        // Replies already produced win over the runner leaving.
        match self.replies.poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => {
                if matches!(item, Ok(Reply::WithExit(_))) {
                    self.finished = true;
                }
                return Poll::Ready(Some(item));
            }
            Poll::Ready(None) => {
                self.finished = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        match self.gone.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.finished = true;
                Poll::Ready(Some(Err(unavailable(&self.address, LEFT_IN_FLIGHT))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use cruster_transport::conformance::EchoInbound;
    use cruster_types::{EntityAddress, EntityId, EntityType, ShardId, Snowflake};

    use super::*;

    fn hanging_request() -> EnvelopeRequest {
        let address = EntityAddress {
            shard_id: ShardId::new("default", 0),
            entity_type: EntityType::new("Echo"),
            entity_id: EntityId::new("e"),
        };
        EnvelopeRequest::new(Snowflake(1), address, EchoInbound::HANG_TAG, Bytes::new())
    }

    #[tokio::test]
    async fn replacing_a_runner_ends_requests_in_flight_to_the_old_one() {
        let network = InProcessNetwork::new();
        let address = RunnerAddress::new("in-process", 1);
        network.register(address.clone(), Arc::new(EchoInbound::new()));
        let runners = network.runners();
        let mut replies = runners.send(&address, hanging_request()).await.unwrap();
        assert!(matches!(replies.next().await, Some(Ok(Reply::Chunk(_)))));

        network.register(address.clone(), Arc::new(EchoInbound::new()));
        let ended = replies.next().await;
        assert!(
            matches!(ended, Some(Err(ClusterError::RunnerUnavailable { .. }))),
            "got {ended:?}"
        );
        assert!(replies.next().await.is_none());
        runners.ping(&address).await.unwrap();
    }

    #[tokio::test]
    async fn unregister_reports_whether_a_runner_was_there() {
        let network = InProcessNetwork::new();
        let address = RunnerAddress::new("in-process", 1);
        network.register(address.clone(), Arc::new(EchoInbound::new()));
        assert!(network.is_registered(&address));
        assert!(network.unregister(&address));
        assert!(!network.unregister(&address));
        assert!(!network.is_registered(&address));
    }
}
