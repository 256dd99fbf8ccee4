//! Conformance suite of the [`Runners`] transport and the [`RunnerInbound`] it feeds.
//!
//! Each `pub async fn` below checks one behaviour of the contract in the crate docs and is
//! named for it: replies and streams come back whole and in order, errors raised on the
//! receiving side keep their variant, notifications, acks and interrupts reach the
//! inbound, unreachable or stopped runners answer `RunnerUnavailable`, and concurrent and
//! large messages survive.
//!
//! A transport needs a receiving side, so the suite brings its own: [`EchoInbound`]
//! answers every request with its payload, streams chunks for streaming requests, records
//! what it receives, and can be told to fail. The transport under test supplies a
//! [`TransportHarness`] that serves an inbound at an address (a real server on loopback
//! for a network transport) and hands out clients.
//!
//! # Running it
//!
//! Enable the `conformance` feature in the transport's dev-dependencies, then call the
//! functions one per test:
//!
//! ```ignore
//! use cruster_transport::conformance;
//!
//! #[tokio::test]
//! async fn send_returns_the_reply_exit() {
//!     conformance::send_returns_the_reply_exit(&MyHarness::new().await).await;
//! }
//! ```
//!
//! or run everything with [`run_all`], giving a factory of fresh harnesses. Every wait
//! is bounded (a few seconds), so a transport that loses a reply fails instead of hanging.
//! [`concurrent_sends_get_their_own_replies`] spawns tasks; a multi-thread runtime makes
//! them race for real. The property test generates its 32 cases up front and sends them
//! concurrently; a failure prints the envelope rather than a shrunk one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::DateTime;
use cruster_types::{
    AckChunk, ClusterError, EntityAddress, EntityId, EntityType, EnvelopeRequest, ExitResult,
    Interrupt, Reply, ReplyChunk, ReplyWithExit, RunnerAddress, ShardId, Snowflake, TraceContext,
    WireError,
};
use futures::stream::{self, StreamExt};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use crate::{ReplyStream, RunnerInbound, Runners};

/// What a transport provides to run the suite: servers for inbounds, and clients.
///
/// ```ignore
/// struct LoopbackHarness { /* servers by address */ }
///
/// #[async_trait::async_trait]
/// impl TransportHarness for LoopbackHarness {
///     async fn serve(&self, inbound: Arc<dyn RunnerInbound>) -> RunnerAddress {
///         // bind 127.0.0.1:0, start a server calling `inbound`, return its address
///     }
///     fn client(&self) -> Arc<dyn Runners> { Arc::new(MyRunners::new()) }
///     async fn stop(&self, address: &RunnerAddress) { /* abort that server */ }
/// }
/// ```
#[async_trait]
pub trait TransportHarness: Send + Sync {
    /// Starts a runner whose inbound side is `inbound`; returns the address clients reach
    /// it at. Messages may be sent as soon as this returns.
    async fn serve(&self, inbound: Arc<dyn RunnerInbound>) -> RunnerAddress;

    /// A client of the transport (a shared one or a new one; either is fine).
    fn client(&self) -> Arc<dyn Runners>;

    /// Stops the runner at `address` abruptly, as a crash would: requests in flight are
    /// not drained, and the address stops answering.
    async fn stop(&self, address: &RunnerAddress);

    /// An address where no runner is served. The default, `127.0.0.1:1`, is a port no
    /// test machine listens on.
    fn unreachable_address(&self) -> RunnerAddress {
        RunnerAddress::new("127.0.0.1", 1)
    }
}

/// How [`EchoInbound`] reports a failure it was told to raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailAs {
    /// As the `Err` of `handle_send` / `handle_notify` (refused before the handler runs).
    Call,
    /// As a reply stream whose final reply is a failure (`ExitResult::Failure`). Notifies
    /// still fail as a call, having no reply.
    FinalReply,
}

/// The test inbound of the suite: echoes payloads back and records what it receives.
///
/// * A request answers one `Reply::WithExit` whose success is the request payload.
/// * A streaming request first answers [`EchoInbound::stream_chunks`] chunks, sequence
///   `0..n`, each carrying the payload and the sequence number (big-endian `u32`).
/// * A request tagged [`EchoInbound::HANG_TAG`] answers chunk 0 and then nothing, as a
///   handler that never finishes.
/// * [`EchoInbound::fail_with`] makes sends and notifies fail with a given error.
///
/// ```
/// use cruster_transport::conformance::{EchoInbound, FailAs};
/// use cruster_types::ClusterError;
/// let inbound = EchoInbound::new();
/// inbound.fail_with(&ClusterError::ShuttingDown, FailAs::Call);
/// assert!(inbound.sends().is_empty());
/// ```
#[derive(Debug)]
pub struct EchoInbound {
    stream_chunks: u32,
    failure: Mutex<Option<(WireError, FailAs)>>,
    received: Mutex<Received>,
}

#[derive(Debug, Default)]
struct Received {
    sends: Vec<EnvelopeRequest>,
    notifies: Vec<EnvelopeRequest>,
    acks: Vec<AckChunk>,
    interrupts: Vec<Interrupt>,
    stored_replies: Vec<ReplyWithExit>,
}

impl Default for EchoInbound {
    fn default() -> Self {
        Self::new()
    }
}

impl EchoInbound {
    /// The tag of a request that answers chunk 0 and then never finishes.
    pub const HANG_TAG: &'static str = "conformance.hang";

    /// An inbound streaming 5 chunks per streaming request.
    pub fn new() -> Self {
        Self::with_stream_chunks(5)
    }

    /// An inbound streaming `chunks` chunks per streaming request.
    pub fn with_stream_chunks(chunks: u32) -> Self {
        EchoInbound {
            stream_chunks: chunks,
            failure: Mutex::new(None),
            received: Mutex::new(Received::default()),
        }
    }

    /// How many chunks a streaming request answers before its exit.
    pub fn stream_chunks(&self) -> u32 {
        self.stream_chunks
    }

    /// From now on, sends and notifies fail with `error`, reported as `how` says.
    pub fn fail_with(&self, error: &ClusterError, how: FailAs) {
        *self.failure.lock().unwrap() = Some((error.to_wire(), how));
    }

    /// From now on, sends and notifies succeed again.
    pub fn stop_failing(&self) {
        *self.failure.lock().unwrap() = None;
    }

    /// The requests received by `handle_send`, in arrival order.
    pub fn sends(&self) -> Vec<EnvelopeRequest> {
        self.received.lock().unwrap().sends.clone()
    }

    /// The requests received by `handle_notify`, in arrival order.
    pub fn notifies(&self) -> Vec<EnvelopeRequest> {
        self.received.lock().unwrap().notifies.clone()
    }

    /// The chunk acknowledgements received, in arrival order.
    pub fn acks(&self) -> Vec<AckChunk> {
        self.received.lock().unwrap().acks.clone()
    }

    /// The interrupts received, in arrival order.
    pub fn interrupts(&self) -> Vec<Interrupt> {
        self.received.lock().unwrap().interrupts.clone()
    }

    /// The stored replies pushed to this runner, in arrival order.
    pub fn stored_replies(&self) -> Vec<ReplyWithExit> {
        self.received.lock().unwrap().stored_replies.clone()
    }

    fn failure(&self) -> Option<(WireError, FailAs)> {
        self.failure.lock().unwrap().clone()
    }

    fn replies_to(&self, envelope: &EnvelopeRequest) -> Vec<Reply> {
        let request_id = envelope.request_id;
        let mut replies = Vec::new();
        if envelope.streaming || envelope.tag == Self::HANG_TAG {
            let chunks = if envelope.tag == Self::HANG_TAG {
                1
            } else {
                self.stream_chunks
            };
            replies.extend((0..chunks).map(|sequence| {
                Reply::Chunk(ReplyChunk {
                    request_id,
                    sequence,
                    values: vec![
                        envelope.payload.clone(),
                        Bytes::copy_from_slice(&sequence.to_be_bytes()),
                    ],
                })
            }));
        }
        if envelope.tag != Self::HANG_TAG {
            replies.push(Reply::WithExit(ReplyWithExit {
                request_id,
                exit: ExitResult::Success(envelope.payload.clone()),
            }));
        }
        replies
    }
}

#[async_trait]
impl RunnerInbound for EchoInbound {
    async fn handle_send(&self, envelope: EnvelopeRequest) -> Result<ReplyStream, ClusterError> {
        self.received.lock().unwrap().sends.push(envelope.clone());
        let hang = envelope.tag == Self::HANG_TAG;
        let replies = match self.failure() {
            Some((error, FailAs::Call)) => return Err(error.into()),
            Some((error, FailAs::FinalReply)) => vec![Reply::WithExit(ReplyWithExit {
                request_id: envelope.request_id,
                exit: ExitResult::Failure(error),
            })],
            None => self.replies_to(&envelope),
        };
        // Yield between replies so they are produced over time, as a handler would.
        let produced = stream::iter(replies).then(|reply| async move {
            tokio::task::yield_now().await;
            Ok(reply)
        });
        if hang {
            Ok(produced.chain(stream::pending()).boxed())
        } else {
            Ok(produced.boxed())
        }
    }

    async fn handle_notify(&self, envelope: EnvelopeRequest) -> Result<(), ClusterError> {
        if let Some((error, _)) = self.failure() {
            return Err(error.into());
        }
        self.received.lock().unwrap().notifies.push(envelope);
        Ok(())
    }

    async fn handle_ack(&self, ack: AckChunk) -> Result<(), ClusterError> {
        self.received.lock().unwrap().acks.push(ack);
        Ok(())
    }

    async fn handle_interrupt(&self, interrupt: Interrupt) -> Result<(), ClusterError> {
        self.received.lock().unwrap().interrupts.push(interrupt);
        Ok(())
    }

    async fn handle_stored_reply(&self, reply: ReplyWithExit) -> Result<(), ClusterError> {
        self.received.lock().unwrap().stored_replies.push(reply);
        Ok(())
    }
}

/// How long any single step of the suite may take.
const STEP: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: no answer within {STEP:?}"),
    }
}

fn entity(n: i64) -> EntityAddress {
    EntityAddress {
        shard_id: ShardId::new("conformance", 7),
        entity_type: EntityType::new("Echo"),
        entity_id: EntityId::new(format!("echo-{n}")),
    }
}

fn envelope(id: i64, payload: impl Into<Bytes>) -> EnvelopeRequest {
    EnvelopeRequest::new(Snowflake(id), entity(id), "echo", payload.into())
}

fn streaming(id: i64, payload: impl Into<Bytes>) -> EnvelopeRequest {
    EnvelopeRequest {
        streaming: true,
        ..envelope(id, payload)
    }
}

async fn serve_echo<H: TransportHarness + ?Sized>(
    harness: &H,
) -> (Arc<EchoInbound>, RunnerAddress) {
    let inbound = Arc::new(EchoInbound::new());
    let address = harness.serve(inbound.clone()).await;
    (inbound, address)
}

/// Reads a reply stream to its end; panics if it does not end in time.
async fn read_to_end(what: &str, replies: ReplyStream) -> Vec<Result<Reply, ClusterError>> {
    within(what, replies.collect::<Vec<_>>()).await
}

/// Reads a reply stream that must succeed: its chunks, then its exit payload. Panics unless
/// it is chunks in order, then exactly one successful exit for `request_id`, then the end.
async fn expect_success(
    what: &str,
    request_id: Snowflake,
    replies: ReplyStream,
) -> (Vec<ReplyChunk>, Bytes) {
    let replies = read_to_end(what, replies).await;
    let summary = describe(&replies);
    let mut chunks = Vec::new();
    let mut exit = None;
    for (index, reply) in replies.into_iter().enumerate() {
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => panic!("{what}: reply {index} is an error: {err}; replies: {summary}"),
        };
        assert_eq!(
            reply.request_id(),
            request_id,
            "{what}: reply {index} names another request; replies: {summary}"
        );
        assert!(
            exit.is_none(),
            "{what}: a reply came after the exit; replies: {summary}"
        );
        match reply {
            Reply::Chunk(chunk) => {
                let expected = u32::try_from(chunks.len()).unwrap();
                assert_eq!(
                    chunk.sequence, expected,
                    "{what}: chunk out of order; replies: {summary}"
                );
                chunks.push(chunk);
            }
            Reply::WithExit(ReplyWithExit {
                exit: ExitResult::Success(bytes),
                ..
            }) => exit = Some(bytes),
            Reply::WithExit(ReplyWithExit {
                exit: ExitResult::Failure(err),
                ..
            }) => {
                panic!("{what}: the request failed: {err}; replies: {summary}")
            }
        }
    }
    let exit = exit
        .unwrap_or_else(|| panic!("{what}: the stream ended without an exit; replies: {summary}"));
    (chunks, exit)
}

/// The error a failed request reports, whichever way the transport carried it: the `Err`
/// of the call, an `Err` in the stream, or a failed final reply.
async fn failure_of(what: &str, result: Result<ReplyStream, ClusterError>) -> ClusterError {
    let replies = match result {
        Err(err) => return err,
        Ok(replies) => read_to_end(what, replies).await,
    };
    let summary = describe(&replies);
    for reply in replies {
        match reply {
            Err(err) => return err,
            Ok(Reply::WithExit(ReplyWithExit {
                exit: ExitResult::Failure(err),
                ..
            })) => return err.into(),
            Ok(_) => {}
        }
    }
    panic!("{what}: expected a failure, got replies: {summary}")
}

/// A short description of replies for failure messages (payloads by length only).
fn describe(replies: &[Result<Reply, ClusterError>]) -> String {
    let items: Vec<String> = replies
        .iter()
        .map(|reply| match reply {
            Ok(Reply::Chunk(c)) => format!(
                "chunk(request {}, seq {}, {} values)",
                c.request_id,
                c.sequence,
                c.values.len()
            ),
            Ok(Reply::WithExit(ReplyWithExit {
                request_id,
                exit: ExitResult::Success(b),
            })) => {
                format!("exit(request {request_id}, success {} bytes)", b.len())
            }
            Ok(Reply::WithExit(ReplyWithExit {
                request_id,
                exit: ExitResult::Failure(e),
            })) => {
                format!("exit(request {request_id}, failure {e:?})")
            }
            Err(err) => format!("error({err:?})"),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn assert_unavailable(what: &str, err: &ClusterError, address: &RunnerAddress) {
    assert!(
        matches!(err, ClusterError::RunnerUnavailable { address: named, .. } if named == address),
        "{what}: expected RunnerUnavailable naming {address}, got: {err:?}"
    );
}

/// Polls `recorded` until it returns something, for at most [`STEP`].
async fn eventually_recorded<T: std::fmt::Debug>(
    what: &str,
    recorded: impl Fn() -> Vec<T>,
) -> Vec<T> {
    within(what, async {
        loop {
            let seen = recorded();
            if !seen.is_empty() {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// `send` returns a stream holding exactly one successful exit, for the request sent,
/// carrying what the inbound answered.
pub async fn send_returns_the_reply_exit<H: TransportHarness + ?Sized>(harness: &H) {
    let (inbound, address) = serve_echo(harness).await;
    let client = harness.client();
    let replies = within("send", client.send(&address, envelope(1, "hello")))
        .await
        .unwrap();
    let (chunks, exit) = expect_success("send", Snowflake(1), replies).await;
    assert!(
        chunks.is_empty(),
        "a non-streaming request got chunks: {chunks:?}"
    );
    assert_eq!(
        exit,
        Bytes::from("hello"),
        "the exit does not carry the reply"
    );
    assert_eq!(
        inbound.sends().len(),
        1,
        "the inbound saw {:?}",
        inbound.sends()
    );
    harness.stop(&address).await;
}

/// Every field of a request reaches the inbound unchanged.
pub async fn envelope_fields_arrive_intact<H: TransportHarness + ?Sized>(harness: &H) {
    let (inbound, address) = serve_echo(harness).await;
    let sent = EnvelopeRequest {
        request_id: Snowflake(i64::MAX - 3),
        address: EntityAddress {
            shard_id: ShardId::new("group:with:colons", 1023),
            entity_type: EntityType::new("Ünïcode/Type"),
            entity_id: EntityId::new("id with spaces ✓"),
        },
        tag: Cow::Owned("rpc.name/v2".to_string()),
        payload: Bytes::from_static(&[0, 255, 1, 254, 0]),
        persisted: true,
        uninterruptible: true,
        streaming: false,
        expects_reply: true,
        deliver_at: DateTime::from_timestamp_millis(1_767_225_600_123),
        dedupe_key: Some("order-42/charge".to_string()),
        trace: TraceContext(vec![
            (
                "traceparent".to_string(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
            ),
            ("tracestate".to_string(), String::new()),
        ]),
    };
    let replies = within("send", harness.client().send(&address, sent.clone()))
        .await
        .unwrap();
    expect_success("send", sent.request_id, replies).await;
    assert_eq!(
        inbound.sends(),
        vec![sent],
        "the inbound received a different request"
    );
    harness.stop(&address).await;
}

/// A streaming request's chunks arrive in sequence order, then exactly one exit, then
/// the stream ends.
pub async fn streaming_reply_yields_chunks_in_order_then_one_exit<H: TransportHarness + ?Sized>(
    harness: &H,
) {
    let inbound = Arc::new(EchoInbound::with_stream_chunks(20));
    let address = harness.serve(inbound.clone()).await;
    let replies = within(
        "streaming send",
        harness.client().send(&address, streaming(2, "tick")),
    )
    .await
    .unwrap();
    let (chunks, exit) = expect_success("streaming send", Snowflake(2), replies).await;
    let sequences: Vec<u32> = chunks.iter().map(|c| c.sequence).collect();
    assert_eq!(
        sequences,
        (0..20).collect::<Vec<_>>(),
        "chunks missing or out of order"
    );
    for chunk in &chunks {
        let expected = vec![
            Bytes::from("tick"),
            Bytes::copy_from_slice(&chunk.sequence.to_be_bytes()),
        ];
        assert_eq!(
            chunk.values, expected,
            "chunk {} lost its values",
            chunk.sequence
        );
    }
    assert_eq!(exit, Bytes::from("tick"));
    harness.stop(&address).await;
}

/// Errors raised on the receiving side (`ShardNotOwned`, `MailboxFull`,
/// `EntityNotRegistered`), whether refused at the call or failed in the final reply,
/// reach the caller with their variant and fields; a refused notify is an `Err`.
pub async fn inbound_errors_keep_their_variant<H: TransportHarness + ?Sized>(harness: &H) {
    let (inbound, address) = serve_echo(harness).await;
    let client = harness.client();
    let raised = [
        ClusterError::ShardNotOwned {
            shard_id: ShardId::new("conformance", 3),
        },
        ClusterError::MailboxFull {
            entity_type: EntityType::new("Echo"),
            entity_id: EntityId::new("full"),
            capacity: 128,
        },
        ClusterError::EntityNotRegistered {
            entity_type: EntityType::new("Ghost"),
        },
    ];
    let mut id = 100;
    for error in &raised {
        for how in [FailAs::Call, FailAs::FinalReply] {
            id += 1;
            inbound.fail_with(error, how);
            let what = format!("send refused with {error:?} as {how:?}");
            let result = within(&what, client.send(&address, envelope(id, "x"))).await;
            let got = failure_of(&what, result).await;
            assert_eq!(
                got.to_wire(),
                error.to_wire(),
                "{what}: the error changed on the way: {got:?}"
            );
        }
        let what = format!("notify refused with {error:?}");
        let got = within(&what, client.notify(&address, envelope(id + 50, "x"))).await;
        let got = got.expect_err("a refused notify answered Ok");
        assert_eq!(
            got.to_wire(),
            error.to_wire(),
            "{what}: the error changed on the way: {got:?}"
        );
    }
    inbound.stop_failing();
    let replies = within(
        "send after failures",
        client.send(&address, envelope(999, "ok")),
    )
    .await
    .unwrap();
    expect_success("send after failures", Snowflake(999), replies).await;
    harness.stop(&address).await;
}

/// `notify` returns `Ok` once the inbound accepted the request, which it then holds.
pub async fn notify_reaches_the_inbound<H: TransportHarness + ?Sized>(harness: &H) {
    let (inbound, address) = serve_echo(harness).await;
    let sent = EnvelopeRequest {
        expects_reply: false,
        ..envelope(3, "fire and forget")
    };
    within("notify", harness.client().notify(&address, sent.clone()))
        .await
        .unwrap();
    assert_eq!(
        inbound.notifies(),
        vec![sent],
        "the inbound did not accept the notify"
    );
    assert!(
        inbound.sends().is_empty(),
        "a notify arrived as a send: {:?}",
        inbound.sends()
    );
    harness.stop(&address).await;
}

/// Chunk acknowledgements and interrupts reach the inbound unchanged.
pub async fn ack_and_interrupt_are_forwarded<H: TransportHarness + ?Sized>(harness: &H) {
    let (inbound, address) = serve_echo(harness).await;
    let client = harness.client();
    let ack = AckChunk {
        request_id: Snowflake(4),
        address: entity(4),
        sequence: 17,
    };
    let interrupt = Interrupt {
        request_id: Snowflake(5),
        address: entity(5),
    };
    within("ack_chunk", client.ack_chunk(&address, ack.clone()))
        .await
        .unwrap();
    within("interrupt", client.interrupt(&address, interrupt.clone()))
        .await
        .unwrap();
    assert_eq!(
        eventually_recorded("the ack", || inbound.acks()).await,
        vec![ack]
    );
    assert_eq!(
        eventually_recorded("the interrupt", || inbound.interrupts()).await,
        vec![interrupt]
    );
    harness.stop(&address).await;
}

/// Pushed stored replies reach the inbound unchanged, successes and failures alike.
pub async fn pushed_replies_reach_the_inbound<H: TransportHarness + ?Sized>(harness: &H) {
    let (inbound, address) = serve_echo(harness).await;
    let client = harness.client();
    let success = ReplyWithExit {
        request_id: Snowflake(41),
        exit: ExitResult::Success(Bytes::from_static(b"stored answer")),
    };
    let failure = ReplyWithExit {
        request_id: Snowflake(42),
        exit: ExitResult::failure(&ClusterError::MailboxFull {
            entity_type: EntityType::new("Echo"),
            entity_id: EntityId::new("echo-42"),
            capacity: 3,
        }),
    };
    for reply in [&success, &failure] {
        within("push_reply", client.push_reply(&address, reply.clone()))
            .await
            .unwrap();
    }
    assert_eq!(
        eventually_recorded("the pushed replies", || {
            let pushed = inbound.stored_replies();
            if pushed.len() < 2 {
                Vec::new()
            } else {
                pushed
            }
        })
        .await,
        vec![success, failure]
    );
    assert!(
        inbound.sends().is_empty() && inbound.notifies().is_empty(),
        "a pushed reply arrived as a request"
    );
    harness.stop(&address).await;
}

/// `ping` answers `Ok` for a served runner.
pub async fn ping_succeeds_for_a_live_runner<H: TransportHarness + ?Sized>(harness: &H) {
    let (_inbound, address) = serve_echo(harness).await;
    within("ping", harness.client().ping(&address))
        .await
        .unwrap();
    harness.stop(&address).await;
}

/// Every operation to an address where no runner is served fails with
/// `RunnerUnavailable` naming that address.
pub async fn unknown_runner_is_unavailable<H: TransportHarness + ?Sized>(harness: &H) {
    let nobody = harness.unreachable_address();
    let client = harness.client();
    let sent = within("send", client.send(&nobody, envelope(6, "x"))).await;
    assert_unavailable("send", &failure_of("send", sent).await, &nobody);
    let notified = within("notify", client.notify(&nobody, envelope(7, "x"))).await;
    assert_unavailable("notify", &notified.unwrap_err(), &nobody);
    let pinged = within("ping", client.ping(&nobody)).await;
    assert_unavailable("ping", &pinged.unwrap_err(), &nobody);
    let ack = AckChunk {
        request_id: Snowflake(8),
        address: entity(8),
        sequence: 0,
    };
    let acked = within("ack_chunk", client.ack_chunk(&nobody, ack)).await;
    assert_unavailable("ack_chunk", &acked.unwrap_err(), &nobody);
    let interrupt = Interrupt {
        request_id: Snowflake(9),
        address: entity(9),
    };
    let interrupted = within("interrupt", client.interrupt(&nobody, interrupt)).await;
    assert_unavailable("interrupt", &interrupted.unwrap_err(), &nobody);
    let reply = ReplyWithExit {
        request_id: Snowflake(10),
        exit: ExitResult::Success(Bytes::new()),
    };
    let pushed = within("push_reply", client.push_reply(&nobody, reply)).await;
    assert_unavailable("push_reply", &pushed.unwrap_err(), &nobody);
}

/// After a runner stops, send, notify and ping to it fail with `RunnerUnavailable`, even
/// from a client that talked to it before.
pub async fn stopped_runner_is_unavailable<H: TransportHarness + ?Sized>(harness: &H) {
    let (_inbound, address) = serve_echo(harness).await;
    let client = harness.client();
    within("ping before stop", client.ping(&address))
        .await
        .unwrap();
    let replies = within("send before stop", client.send(&address, envelope(10, "x")))
        .await
        .unwrap();
    expect_success("send before stop", Snowflake(10), replies).await;

    harness.stop(&address).await;
    let sent = within("send after stop", client.send(&address, envelope(11, "x"))).await;
    assert_unavailable(
        "send after stop",
        &failure_of("send after stop", sent).await,
        &address,
    );
    let notified = within(
        "notify after stop",
        client.notify(&address, envelope(12, "x")),
    )
    .await;
    assert_unavailable("notify after stop", &notified.unwrap_err(), &address);
    let pinged = within("ping after stop", client.ping(&address)).await;
    assert_unavailable("ping after stop", &pinged.unwrap_err(), &address);
}

/// A request in flight when its runner stops ends with `RunnerUnavailable`, and its
/// stream then ends: the caller is never left waiting.
pub async fn runner_stopping_mid_request_ends_the_reply_with_unavailable<
    H: TransportHarness + ?Sized,
>(
    harness: &H,
) {
    let (_inbound, address) = serve_echo(harness).await;
    let never_finishes = EnvelopeRequest::new(
        Snowflake(13),
        entity(13),
        EchoInbound::HANG_TAG,
        Bytes::from("x"),
    );
    let mut replies = within("send", harness.client().send(&address, never_finishes))
        .await
        .unwrap();
    let first = within("the first chunk", replies.next()).await;
    assert!(
        matches!(
            first,
            Some(Ok(Reply::Chunk(ReplyChunk { sequence: 0, .. })))
        ),
        "expected chunk 0 of the hanging request, got {first:?}"
    );

    harness.stop(&address).await;
    let rest = read_to_end("the reply after the runner stopped", replies).await;
    let summary = describe(&rest);
    match rest.as_slice() {
        [Err(err)] => assert_unavailable("the reply after the runner stopped", err, &address),
        _ => panic!("expected exactly one RunnerUnavailable, then the end; got {summary}"),
    }
}

/// Many tasks sending at once on one client each get their own replies, streamed or not.
pub async fn concurrent_sends_get_their_own_replies<H: TransportHarness + ?Sized>(harness: &H) {
    let inbound = Arc::new(EchoInbound::with_stream_chunks(3));
    let address = harness.serve(inbound.clone()).await;
    let client = harness.client();
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..64_i64 {
        let client = Arc::clone(&client);
        let address = address.clone();
        tasks.spawn(async move {
            let payload = format!("payload of request {id}");
            let sent = if id % 2 == 0 {
                envelope(id, payload.clone())
            } else {
                streaming(id, payload.clone())
            };
            let what = format!("concurrent send {id}");
            let replies = within(&what, client.send(&address, sent)).await.unwrap();
            let (chunks, exit) = expect_success(&what, Snowflake(id), replies).await;
            (id, payload, chunks.len(), exit)
        });
    }
    let mut answered = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, payload, chunks, exit) = joined.unwrap();
        assert_eq!(
            exit,
            Bytes::from(payload),
            "request {id} got someone else's reply"
        );
        let expected_chunks = if id % 2 == 0 { 0 } else { 3 };
        assert_eq!(chunks, expected_chunks, "request {id} got {chunks} chunks");
        answered.insert(id, ());
    }
    assert_eq!(
        answered.len(),
        64,
        "answered: {:?}",
        answered.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        inbound.sends().len(),
        64,
        "the inbound saw {} sends",
        inbound.sends().len()
    );
    harness.stop(&address).await;
}

/// A 1 MiB payload survives a send, a streamed chunk and a notify byte for byte.
pub async fn large_payloads_survive<H: TransportHarness + ?Sized>(harness: &H) {
    let inbound = Arc::new(EchoInbound::with_stream_chunks(1));
    let address = harness.serve(inbound.clone()).await;
    let client = harness.client();
    let big: Bytes = (0..1_usize << 20)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();

    let replies = within(
        "large send",
        client.send(&address, envelope(14, big.clone())),
    )
    .await
    .unwrap();
    let (_, exit) = expect_success("large send", Snowflake(14), replies).await;
    assert!(
        exit == big,
        "the 1 MiB reply changed ({} bytes came back)",
        exit.len()
    );

    let replies = within(
        "large stream",
        client.send(&address, streaming(15, big.clone())),
    )
    .await
    .unwrap();
    let (chunks, _) = expect_success("large stream", Snowflake(15), replies).await;
    let first_value = chunks
        .first()
        .and_then(|c| c.values.first())
        .cloned()
        .unwrap_or_default();
    assert!(
        first_value == big,
        "the 1 MiB chunk changed ({} bytes came back)",
        first_value.len()
    );

    within(
        "large notify",
        client.notify(&address, envelope(16, big.clone())),
    )
    .await
    .unwrap();
    let received = inbound.notifies();
    assert!(
        received.len() == 1 && received[0].payload == big,
        "the 1 MiB notify changed ({:?} bytes arrived)",
        received.iter().map(|e| e.payload.len()).collect::<Vec<_>>()
    );
    harness.stop(&address).await;
}

/// With several runners served, each receives only what was addressed to it.
pub async fn each_runner_receives_only_its_own_messages<H: TransportHarness + ?Sized>(harness: &H) {
    let (first, first_address) = serve_echo(harness).await;
    let (second, second_address) = serve_echo(harness).await;
    assert_ne!(
        first_address, second_address,
        "two runners were served at one address"
    );
    let client = harness.client();
    for (id, to) in [
        (20, &first_address),
        (21, &second_address),
        (22, &second_address),
    ] {
        let replies = within("send", client.send(to, envelope(id, "x")))
            .await
            .unwrap();
        expect_success("send", Snowflake(id), replies).await;
    }
    let ids = |inbound: &EchoInbound| {
        inbound
            .sends()
            .iter()
            .map(|e| e.request_id.0)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), vec![20], "first runner received");
    assert_eq!(ids(&second), vec![21, 22], "second runner received");
    harness.stop(&first_address).await;
    harness.stop(&second_address).await;
}

/// `forget` drops pooled state only: the next send to a live runner still succeeds.
pub async fn forget_then_send_reconnects<H: TransportHarness + ?Sized>(harness: &H) {
    let (_inbound, address) = serve_echo(harness).await;
    let client = harness.client();
    let replies = within("send", client.send(&address, envelope(30, "x")))
        .await
        .unwrap();
    expect_success("send", Snowflake(30), replies).await;
    within("forget", client.forget(&address)).await;
    let replies = within(
        "send after forget",
        client.send(&address, envelope(31, "y")),
    )
    .await
    .unwrap();
    let (_, exit) = expect_success("send after forget", Snowflake(31), replies).await;
    assert_eq!(exit, Bytes::from("y"));
    harness.stop(&address).await;
}

fn any_envelope() -> impl Strategy<Value = EnvelopeRequest> {
    let flags = (any::<bool>(), any::<bool>(), any::<bool>());
    let optional = (
        proptest::option::of(0_i64..4_102_444_800_000),
        proptest::option::of("\\PC{0,16}"),
        proptest::collection::vec(("[a-z-]{1,12}", "\\PC{0,24}"), 0..3),
    );
    (
        "\\PC{1,24}",
        "\\PC{1,16}",
        proptest::collection::vec(any::<u8>(), 0..4096),
        flags,
        optional,
    )
        .prop_map(|(tag, entity_id, payload, flags, optional)| {
            let (persisted, uninterruptible, streaming) = flags;
            let (deliver_at, dedupe_key, trace) = optional;
            EnvelopeRequest {
                request_id: Snowflake(0),
                address: EntityAddress {
                    shard_id: ShardId::new("conformance", 1),
                    entity_type: EntityType::new("Echo"),
                    entity_id: EntityId::new(entity_id),
                },
                tag: Cow::Owned(tag),
                payload: payload.into(),
                persisted,
                uninterruptible,
                streaming,
                expects_reply: true,
                deliver_at: deliver_at.and_then(DateTime::from_timestamp_millis),
                dedupe_key,
                trace: TraceContext(trace),
            }
        })
        .prop_filter("the hang tag is not a random request", |e| {
            e.tag != EchoInbound::HANG_TAG
        })
}

/// Randomly generated requests (tags, ids, payloads, flags, schedules, trace context)
/// arrive intact and are echoed back (32 generated cases, sent concurrently).
pub async fn random_envelopes_arrive_intact<H: TransportHarness + ?Sized>(harness: &H) {
    let inbound = Arc::new(EchoInbound::with_stream_chunks(2));
    let address = harness.serve(inbound.clone()).await;
    let client = harness.client();
    let mut generator = TestRunner::default();
    let strategy = any_envelope();
    let cases: Vec<EnvelopeRequest> = (0..32_i64)
        .map(|id| EnvelopeRequest {
            request_id: Snowflake(1000 + id),
            ..strategy
                .new_tree(&mut generator)
                .expect("generate a case")
                .current()
        })
        .collect();

    futures::future::join_all(cases.iter().map(|sent| {
        let client = Arc::clone(&client);
        let address = address.clone();
        async move {
            let what = format!("random envelope {sent:?}");
            let replies = within(&what, client.send(&address, sent.clone()))
                .await
                .unwrap();
            let (chunks, exit) = expect_success(&what, sent.request_id, replies).await;
            assert_eq!(exit, sent.payload, "{what}: the echoed payload changed");
            let expected_chunks = if sent.streaming { 2 } else { 0 };
            assert_eq!(chunks.len(), expected_chunks, "{what}: chunk count");
        }
    }))
    .await;

    let received: BTreeMap<Snowflake, EnvelopeRequest> = inbound
        .sends()
        .into_iter()
        .map(|e| (e.request_id, e))
        .collect();
    for sent in &cases {
        assert_eq!(
            received.get(&sent.request_id),
            Some(sent),
            "the inbound received a different request"
        );
    }
    harness.stop(&address).await;
}

/// Runs every function of the suite, each with a fresh harness from `new_harness`.
pub async fn run_all<H, F, Fut>(mut new_harness: F)
where
    H: TransportHarness,
    F: FnMut() -> Fut,
    Fut: Future<Output = H>,
{
    send_returns_the_reply_exit(&new_harness().await).await;
    envelope_fields_arrive_intact(&new_harness().await).await;
    streaming_reply_yields_chunks_in_order_then_one_exit(&new_harness().await).await;
    inbound_errors_keep_their_variant(&new_harness().await).await;
    notify_reaches_the_inbound(&new_harness().await).await;
    ack_and_interrupt_are_forwarded(&new_harness().await).await;
    pushed_replies_reach_the_inbound(&new_harness().await).await;
    ping_succeeds_for_a_live_runner(&new_harness().await).await;
    unknown_runner_is_unavailable(&new_harness().await).await;
    stopped_runner_is_unavailable(&new_harness().await).await;
    runner_stopping_mid_request_ends_the_reply_with_unavailable(&new_harness().await).await;
    concurrent_sends_get_their_own_replies(&new_harness().await).await;
    large_payloads_survive(&new_harness().await).await;
    each_runner_receives_only_its_own_messages(&new_harness().await).await;
    forget_then_send_reconnects(&new_harness().await).await;
    random_envelopes_arrive_intact(&new_harness().await).await;
}
