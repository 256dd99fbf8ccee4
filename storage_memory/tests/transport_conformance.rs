//! The in-process transport against the `Runners` conformance suite, once with the
//! network's client as the concrete `InProcessRunners` and once through `Arc<dyn Runners>`.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use cruster_storage_memory::{InProcessNetwork, InProcessRunners};
use cruster_transport::conformance::{self, TransportHarness};
use cruster_transport::{RunnerInbound, Runners};
use cruster_types::RunnerAddress;

/// Serves inbounds on one `InProcessNetwork`; `stop` unregisters, as a crashed runner.
struct InProcessHarness {
    network: InProcessNetwork,
    next_port: AtomicU16,
    client: Arc<dyn Runners>,
}

impl InProcessHarness {
    /// A harness whose client is `client_of(network)`.
    fn new(client_of: impl FnOnce(&InProcessNetwork) -> Arc<dyn Runners>) -> Self {
        let network = InProcessNetwork::new();
        InProcessHarness {
            client: client_of(&network),
            network,
            next_port: AtomicU16::new(7000),
        }
    }

    fn concrete() -> Self {
        Self::new(|network| {
            let runners: InProcessRunners = network.runners();
            Arc::new(runners)
        })
    }

    fn as_dyn() -> Self {
        Self::new(|network| Arc::new(network.runners()) as Arc<dyn Runners>)
    }
}

#[async_trait]
impl TransportHarness for InProcessHarness {
    async fn serve(&self, inbound: Arc<dyn RunnerInbound>) -> RunnerAddress {
        let port = self.next_port.fetch_add(1, Ordering::Relaxed);
        let address = RunnerAddress::new("in-process", port);
        self.network.register(address.clone(), inbound);
        address
    }

    fn client(&self) -> Arc<dyn Runners> {
        Arc::clone(&self.client)
    }

    async fn stop(&self, address: &RunnerAddress) {
        self.network.unregister(address);
    }
}

/// One test per conformance function and kind of client.
macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        mod direct {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    conformance::$name(&InProcessHarness::concrete()).await;
                }
            )*
        }
        mod as_dyn {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let harness: Arc<dyn TransportHarness> = Arc::new(InProcessHarness::as_dyn());
                    conformance::$name(&*harness).await;
                }
            )*
        }
    };
}

conformance_tests!(
    send_returns_the_reply_exit,
    envelope_fields_arrive_intact,
    streaming_reply_yields_chunks_in_order_then_one_exit,
    inbound_errors_keep_their_variant,
    notify_reaches_the_inbound,
    ack_and_interrupt_are_forwarded,
    pushed_replies_reach_the_inbound,
    ping_succeeds_for_a_live_runner,
    unknown_runner_is_unavailable,
    stopped_runner_is_unavailable,
    runner_stopping_mid_request_ends_the_reply_with_unavailable,
    concurrent_sends_get_their_own_replies,
    large_payloads_survive,
    each_runner_receives_only_its_own_messages,
    forget_then_send_reconnects,
    random_envelopes_arrive_intact,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes() {
    conformance::run_all(|| async { InProcessHarness::concrete() }).await;
}
