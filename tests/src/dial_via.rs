//! Reaching some peers through other addresses: [`DialVia`] wraps a runner's transport
//! ([`Runners`]) and its health checks ([`RunnerHealth`]) and rewrites the address of each
//! call before handing it on. `cruster-node --dial-via` uses it so a test can put a proxy
//! of its own on the path from one runner to the others (a partition cuts both ways).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use cruster::ports::runner_storage::RunnerHealth;
use cruster::prelude::ClusterError;
use cruster::transport::{ReplyStream, Runners};
use cruster::types::{AckChunk, EnvelopeRequest, Interrupt, ReplyWithExit, RunnerAddress};

/// `inner`, reaching each peer in `via`'s keys at the address it maps to.
pub struct DialVia<T: ?Sized> {
    inner: Arc<T>,
    via: HashMap<RunnerAddress, RunnerAddress>,
}

impl<T: ?Sized> DialVia<T> {
    /// `inner`, dialling `via[peer]` wherever it would dial `peer`.
    pub fn new(inner: Arc<T>, via: HashMap<RunnerAddress, RunnerAddress>) -> Self {
        DialVia { inner, via }
    }

    /// Where a call to `to` goes.
    fn route<'a>(&'a self, to: &'a RunnerAddress) -> &'a RunnerAddress {
        self.via.get(to).unwrap_or(to)
    }
}

/// Parses `PEER=VIA[,PEER=VIA…]` (each a `host:port`).
///
/// # Errors
/// A pair without `=`, or an address that does not parse.
pub fn parse_dial_via(spec: &str) -> Result<HashMap<RunnerAddress, RunnerAddress>, String> {
    spec.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (peer, via) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not PEER=VIA"))?;
            let parse = |text: &str| {
                text.trim()
                    .parse::<RunnerAddress>()
                    .map_err(|e| format!("bad address `{text}`: {e}"))
            };
            Ok((parse(peer)?, parse(via)?))
        })
        .collect()
}

#[async_trait]
impl<T: Runners + ?Sized> Runners for DialVia<T> {
    async fn send(
        &self,
        to: &RunnerAddress,
        envelope: EnvelopeRequest,
    ) -> Result<ReplyStream, ClusterError> {
        self.inner.send(self.route(to), envelope).await
    }

    async fn notify(
        &self,
        to: &RunnerAddress,
        envelope: EnvelopeRequest,
    ) -> Result<(), ClusterError> {
        self.inner.notify(self.route(to), envelope).await
    }

    async fn ack_chunk(&self, to: &RunnerAddress, ack: AckChunk) -> Result<(), ClusterError> {
        self.inner.ack_chunk(self.route(to), ack).await
    }

    async fn interrupt(
        &self,
        to: &RunnerAddress,
        interrupt: Interrupt,
    ) -> Result<(), ClusterError> {
        self.inner.interrupt(self.route(to), interrupt).await
    }

    async fn push_reply(
        &self,
        to: &RunnerAddress,
        reply: ReplyWithExit,
    ) -> Result<(), ClusterError> {
        self.inner.push_reply(self.route(to), reply).await
    }

    async fn ping(&self, to: &RunnerAddress) -> Result<(), ClusterError> {
        self.inner.ping(self.route(to)).await
    }

    async fn forget(&self, to: &RunnerAddress) {
        self.inner.forget(self.route(to)).await
    }
}

#[async_trait]
impl<T: RunnerHealth + ?Sized> RunnerHealth for DialVia<T> {
    async fn is_alive(&self, address: &RunnerAddress) -> bool {
        self.inner.is_alive(self.route(address)).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pairs_parse_and_bad_ones_are_named() {
        let via =
            parse_dial_via("127.0.0.1:7001=127.0.0.1:8001, 127.0.0.1:7002=127.0.0.1:8002").unwrap();
        assert_eq!(via.len(), 2);
        assert_eq!(
            via[&"127.0.0.1:7001".parse::<RunnerAddress>().unwrap()],
            "127.0.0.1:8001".parse::<RunnerAddress>().unwrap()
        );
        assert!(parse_dial_via("").unwrap().is_empty());
        let err = parse_dial_via("127.0.0.1:7001").unwrap_err();
        assert!(err.contains("PEER=VIA"), "{err}");
        let err = parse_dial_via("127.0.0.1:7001=nowhere").unwrap_err();
        assert!(err.contains("nowhere"), "{err}");
    }
}
