//! [`GrpcRunnersBuilder`]: the options of the client side, with their defaults.

use std::sync::Arc;
use std::time::Duration;

use crate::client::GrpcRunners;

/// The default largest message (an encoded envelope or reply): 4 MiB, gRPC's usual limit.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Room for the protobuf framing and per-request metadata around one message, so a message
/// of exactly the limit still fits through tonic's own size check.
pub(crate) const FRAME_HEADROOM: usize = 64 * 1024;

/// Options of a [`GrpcRunners`] client.
///
/// ```
/// use std::time::Duration;
/// use cruster_transport_grpc::GrpcRunners;
///
/// let runners = GrpcRunners::builder()
///     .connect_timeout(Duration::from_secs(1))
///     .request_timeout(Duration::from_secs(10))
///     .max_message_size(8 * 1024 * 1024)
///     .build();
/// # drop(runners);
/// ```
#[derive(Clone, Debug)]
pub struct GrpcRunnersBuilder {
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) max_message_size: usize,
    pub(crate) reconnect_backoff: Duration,
    pub(crate) max_reconnect_backoff: Duration,
    pub(crate) keep_alive_interval: Duration,
    pub(crate) keep_alive_timeout: Duration,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Default for GrpcRunnersBuilder {
    fn default() -> Self {
        GrpcRunnersBuilder {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            reconnect_backoff: Duration::from_millis(50),
            max_reconnect_backoff: Duration::from_secs(2),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl GrpcRunnersBuilder {
    /// How long connecting to a peer (TCP, TLS, HTTP/2 and opening the session) may take
    /// before the message fails with `RunnerUnavailable` (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a caller waits for each answer from a peer: the first reply of a send (or
    /// its refusal), each next chunk of a stream, the acceptance of a notify, ack or
    /// interrupt, a ping (default 30 s). Past it, the call ends with `Timeout` and the peer
    /// is told to drop the request.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The largest encoded envelope this client sends, and the largest reply it accepts
    /// (default [`DEFAULT_MAX_MESSAGE_SIZE`], 4 MiB). A larger envelope is refused with
    /// `MalformedMessage` naming the limit, before anything is sent.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// The pause after a failed connection attempt before the next one (default 50 ms),
    /// doubled after each further failure up to [`Self::max_reconnect_backoff`]. Messages
    /// to the peer meanwhile fail at once with `RunnerUnavailable`.
    pub fn reconnect_backoff(mut self, backoff: Duration) -> Self {
        self.reconnect_backoff = backoff;
        self
    }

    /// The longest pause between connection attempts to an unreachable peer (default 2 s).
    pub fn max_reconnect_backoff(mut self, backoff: Duration) -> Self {
        self.max_reconnect_backoff = backoff;
        self
    }

    /// How often an idle connection is checked with an HTTP/2 ping (default 10 s), and how
    /// long the answer may take (default 5 s) before the connection counts as broken and
    /// its requests in flight end with `RunnerUnavailable`. This is what detects a peer
    /// that vanished without closing its sockets (a network partition).
    pub fn keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive_interval = interval;
        self.keep_alive_timeout = timeout;
        self
    }

    /// Connects to peers over TLS with this configuration (feature `tls`). Give it the CA
    /// that signed the peers' certificates, and an identity for client authentication if
    /// the servers ask for one.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: tonic::transport::ClientTlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// The client.
    pub fn build(self) -> GrpcRunners {
        GrpcRunners::from_config(Arc::new(self))
    }

    /// The backoff before the connection attempt that follows `failures` failed ones.
    pub(crate) fn backoff_after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.reconnect_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_reconnect_backoff)
    }

    /// tonic's own message size limit: ours plus room for the framing.
    pub(crate) fn tonic_message_limit(&self) -> usize {
        self.max_message_size.saturating_add(FRAME_HEADROOM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let config = GrpcRunnersBuilder::default()
            .reconnect_backoff(Duration::from_millis(50))
            .max_reconnect_backoff(Duration::from_millis(300));
        let pauses: Vec<u128> = (1..=6)
            .map(|failures| config.backoff_after(failures).as_millis())
            .collect();
        assert_eq!(pauses, vec![50, 100, 200, 300, 300, 300]);
    }
}
