//! The gRPC transport against the `Runners` conformance suite, over real loopback
//! sockets: once with the concrete `GrpcRunners` client and once through `Arc<dyn Runners>`
//! and `Arc<dyn TransportHarness>`.

mod support;

use std::sync::Arc;

use cruster_transport::conformance::{self, TransportHarness};
use cruster_transport::Runners;
use cruster_transport_grpc::GrpcRunners;
use support::LoopbackHarness;

fn concrete() -> LoopbackHarness {
    let client: GrpcRunners = GrpcRunners::new();
    LoopbackHarness::new(Arc::new(client))
}

fn as_dyn() -> Arc<dyn TransportHarness> {
    let client: Arc<dyn Runners> = Arc::new(GrpcRunners::builder().build());
    Arc::new(LoopbackHarness::new(client))
}

/// One test per conformance function and kind of client.
macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        mod direct {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    conformance::$name(&concrete()).await;
                }
            )*
        }
        mod through_dyn {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    conformance::$name(&*as_dyn()).await;
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
    conformance::run_all(|| async { concrete() }).await;
}
