//! [`GrpcRunners`]: the client side of the transport, one pooled connection per peer.
//!
//! Owns the peers by address. A peer holds a lazily connected tonic channel, its current
//! session, and the reconnection state (failed attempts, the earliest next attempt). The
//! peer map's lock is held only to look a peer up or insert one; connecting happens under
//! the peer's own async lock, so one slow peer delays nobody else, and concurrent callers
//! to a disconnected peer wait for one connection attempt rather than making one each.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use cruster_transport::{ReplyStream, Runners};
use cruster_types::{
    wire, AckChunk, ClusterError, EnvelopeRequest, Interrupt, ReplyWithExit, RunnerAddress,
};
use futures::StreamExt;
use parking_lot::RwLock;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::config::GrpcRunnersBuilder;
use crate::frame::{check_size, metadata_of};
use crate::proto::runner_client::RunnerClient;
use crate::proto::{client_frame, PingRequest};
use crate::session::{GrpcReplyStream, Session};

/// The `Runners` port over gRPC: sends to other runners through one pooled HTTP/2
/// connection per peer, with requests multiplexed over a long-lived stream.
///
/// Held by the runtime as `Arc<dyn Runners>`; share one per process. Connections are made
/// on first use and live until the peer is forgotten or the client dropped. Must be used
/// from within a tokio runtime (connections run tasks on it).
///
/// ```
/// # #[tokio::main] async fn main() {
/// use std::sync::Arc;
/// use cruster_transport::Runners;
/// use cruster_transport_grpc::GrpcRunners;
/// use cruster_types::{ClusterError, RunnerAddress};
///
/// let runners: Arc<dyn Runners> = Arc::new(GrpcRunners::new());
/// // Nothing listens on port 1: the peer is unavailable, at once.
/// let err = runners.ping(&RunnerAddress::new("127.0.0.1", 1)).await.unwrap_err();
/// assert!(matches!(err, ClusterError::RunnerUnavailable { .. }));
/// # }
/// ```
pub struct GrpcRunners {
    config: Arc<GrpcRunnersBuilder>,
    peers: RwLock<HashMap<RunnerAddress, Arc<Peer>>>,
}

impl fmt::Debug for GrpcRunners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut peers: Vec<RunnerAddress> = self.peers.read().keys().cloned().collect();
        peers.sort();
        f.debug_struct("GrpcRunners")
            .field("config", &self.config)
            .field("peers", &peers)
            .finish()
    }
}

impl Default for GrpcRunners {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcRunners {
    /// A client with the default options (see [`GrpcRunnersBuilder`]).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Options for a client.
    pub fn builder() -> GrpcRunnersBuilder {
        GrpcRunnersBuilder::default()
    }

    pub(crate) fn from_config(config: Arc<GrpcRunnersBuilder>) -> Self {
        GrpcRunners {
            config,
            peers: RwLock::new(HashMap::new()),
        }
    }

    /// The peer at `to`, created (not yet connected) on first use.
    fn peer(&self, to: &RunnerAddress) -> Result<Arc<Peer>, ClusterError> {
        if let Some(peer) = self.peers.read().get(to) {
            return Ok(Arc::clone(peer));
        }
        let created = Arc::new(Peer::new(to.clone(), Arc::clone(&self.config))?);
        let mut peers = self.peers.write();
        Ok(Arc::clone(peers.entry(to.clone()).or_insert(created)))
    }

    /// Starts a call carrying `body` to `to`.
    async fn start(
        &self,
        to: &RunnerAddress,
        body: client_frame::Body,
        metadata: Vec<crate::proto::MetadataEntry>,
    ) -> Result<crate::session::Call, ClusterError> {
        let session = self.peer(to)?.session().await?;
        session.start(body, metadata)
    }

    fn encode_checked<T: serde::Serialize>(
        &self,
        what: &str,
        value: &T,
    ) -> Result<bytes::Bytes, ClusterError> {
        let bytes = wire::encode(value)?;
        check_size(
            what,
            &bytes,
            self.config.max_message_size,
            "max_message_size",
        )?;
        Ok(bytes)
    }
}

#[async_trait]
impl Runners for GrpcRunners {
    async fn send(
        &self,
        to: &RunnerAddress,
        envelope: EnvelopeRequest,
    ) -> Result<ReplyStream, ClusterError> {
        let bytes = self.encode_checked("the request envelope", &envelope)?;
        let metadata = metadata_of(&envelope.trace);
        let call = self
            .start(to, client_frame::Body::Send(bytes), metadata)
            .await?;
        let replies = GrpcReplyStream::new(
            call,
            envelope.request_id,
            self.config.request_timeout,
            self.config.max_message_size,
        );
        Ok(replies.first_answer().await?.boxed())
    }

    async fn notify(
        &self,
        to: &RunnerAddress,
        envelope: EnvelopeRequest,
    ) -> Result<(), ClusterError> {
        let bytes = self.encode_checked("the notified envelope", &envelope)?;
        let metadata = metadata_of(&envelope.trace);
        self.start(to, client_frame::Body::Notify(bytes), metadata)
            .await?
            .accepted(self.config.request_timeout, "a notify")
            .await
    }

    async fn ack_chunk(&self, to: &RunnerAddress, ack: AckChunk) -> Result<(), ClusterError> {
        let bytes = self.encode_checked("the chunk acknowledgement", &ack)?;
        self.start(to, client_frame::Body::AckChunk(bytes), Vec::new())
            .await?
            .accepted(self.config.request_timeout, "a chunk acknowledgement")
            .await
    }

    async fn interrupt(
        &self,
        to: &RunnerAddress,
        interrupt: Interrupt,
    ) -> Result<(), ClusterError> {
        let bytes = self.encode_checked("the interrupt", &interrupt)?;
        self.start(to, client_frame::Body::Interrupt(bytes), Vec::new())
            .await?
            .accepted(self.config.request_timeout, "an interrupt")
            .await
    }

    async fn push_reply(
        &self,
        to: &RunnerAddress,
        reply: ReplyWithExit,
    ) -> Result<(), ClusterError> {
        let bytes = self.encode_checked("the pushed reply", &reply)?;
        self.start(to, client_frame::Body::StoredReply(bytes), Vec::new())
            .await?
            .accepted(self.config.request_timeout, "a pushed reply")
            .await
    }

    async fn ping(&self, to: &RunnerAddress) -> Result<(), ClusterError> {
        self.peer(to)?.ping().await
    }

    async fn forget(&self, to: &RunnerAddress) {
        let forgotten = self.peers.write().remove(to);
        drop(forgotten);
    }
}

/// One peer: its channel, its current session, and when to try connecting again.
struct Peer {
    address: RunnerAddress,
    config: Arc<GrpcRunnersBuilder>,
    channel: Channel,
    session: ArcSwapOption<Session>,
    reconnect: tokio::sync::Mutex<Reconnect>,
}

#[derive(Default)]
struct Reconnect {
    failures: u32,
    not_before: Option<Instant>,
    last_error: String,
}

impl Peer {
    fn new(address: RunnerAddress, config: Arc<GrpcRunnersBuilder>) -> Result<Self, ClusterError> {
        let channel = endpoint(&address, &config)?.connect_lazy();
        Ok(Peer {
            address,
            config,
            channel,
            session: ArcSwapOption::empty(),
            reconnect: tokio::sync::Mutex::new(Reconnect::default()),
        })
    }

    fn unavailable(&self, reason: String) -> ClusterError {
        ClusterError::RunnerUnavailable {
            address: self.address.clone(),
            reason,
        }
    }

    /// The open session, opening one if needed (unless a backoff after failed attempts
    /// is still running).
    async fn session(&self) -> Result<Arc<Session>, ClusterError> {
        if let Some(session) = self.session.load_full() {
            if session.is_open() {
                return Ok(session);
            }
        }
        let mut reconnect = self.reconnect.lock().await;
        // Another caller may have connected while this one waited for the lock.
        if let Some(session) = self.session.load_full() {
            if session.is_open() {
                return Ok(session);
            }
        }
        let now = Instant::now();
        if let Some(not_before) = reconnect.not_before.filter(|at| *at > now) {
            return Err(self.unavailable(format!(
                "not reconnecting for another {:?} after {} failed attempt(s); last: {}",
                not_before - now,
                reconnect.failures,
                reconnect.last_error
            )));
        }
        let timeout = self.config.connect_timeout;
        let opened = tokio::time::timeout(
            timeout,
            Session::open(self.channel.clone(), self.address.clone(), &self.config),
        )
        .await;
        let error = match opened {
            Ok(Ok(session)) => {
                *reconnect = Reconnect::default();
                self.session.store(Some(Arc::clone(&session)));
                return Ok(session);
            }
            Ok(Err(status)) => describe_status("cannot connect", &status),
            Err(_) => {
                format!("cannot connect: no answer within the connect timeout of {timeout:?}")
            }
        };
        self.session.store(None);
        reconnect.failures = reconnect.failures.saturating_add(1);
        reconnect.not_before = Some(Instant::now() + self.config.backoff_after(reconnect.failures));
        reconnect.last_error.clone_from(&error);
        Err(self.unavailable(error))
    }

    async fn ping(&self) -> Result<(), ClusterError> {
        let mut request = tonic::Request::new(PingRequest::default());
        let timeout = self
            .config
            .request_timeout
            .min(self.config.connect_timeout * 2);
        request.set_timeout(timeout);
        let mut client = RunnerClient::new(self.channel.clone());
        match tokio::time::timeout(timeout, client.ping(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(self.unavailable(describe_status("ping failed", &status))),
            Err(_) => Err(self.unavailable(format!("ping: no answer within {timeout:?}"))),
        }
    }
}

fn describe_status(what: &str, status: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut text = format!("{what} ({:?}: {})", status.code(), status.message());
    let mut source = status.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The tonic endpoint of a peer, with the client's timeouts, keep-alive and TLS.
fn endpoint(
    address: &RunnerAddress,
    config: &GrpcRunnersBuilder,
) -> Result<Endpoint, ClusterError> {
    #[cfg(feature = "tls")]
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    #[cfg(not(feature = "tls"))]
    let scheme = "http";
    let invalid = |err: &dyn std::fmt::Display| ClusterError::RunnerUnavailable {
        address: address.clone(),
        reason: format!("not a valid address to connect to: {err}"),
    };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|err| invalid(&err))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(config.keep_alive_interval)
        .keep_alive_timeout(config.keep_alive_timeout)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(WINDOW));
    #[cfg(feature = "tls")]
    let endpoint = match &config.tls {
        Some(tls) => endpoint
            .tls_config(tls.clone())
            .map_err(|err| invalid(&err))?,
        None => endpoint,
    };
    Ok(endpoint)
}

/// HTTP/2 flow-control windows: large enough that a multi-megabyte message, or many
/// requests in flight, do not stall on window updates.
const WINDOW: u32 = 8 * 1024 * 1024;
