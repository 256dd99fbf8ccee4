//! Limits, deadlines and failures of the gRPC transport beyond the conformance suite:
//! size limits name the limit, unresponsive peers are unavailable within the connect
//! timeout, slow answers hit the request deadline, a dropped reply stream cancels the
//! request on the server, and closing the server lets a graceful shutdown finish.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cruster_runner_storage::RunnerHealth;
use cruster_transport::conformance::EchoInbound;
use cruster_transport::conformance::TransportHarness;
use cruster_transport::{ReplyStream, RunnerInbound, Runners};
use cruster_transport_grpc::{GrpcRunnerHealth, GrpcRunnerServer, GrpcRunners};
use cruster_types::{
    AckChunk, ClusterError, EntityAddress, EntityId, EntityType, EnvelopeRequest, ExitResult,
    Interrupt, Reply, ReplyChunk, ReplyWithExit, RunnerAddress, ShardId, Snowflake,
};
use futures::StreamExt;
use support::LoopbackHarness;

fn entity() -> EntityAddress {
    EntityAddress {
        shard_id: ShardId::new("failures", 1),
        entity_type: EntityType::new("Echo"),
        entity_id: EntityId::new("e"),
    }
}

fn envelope(id: i64, payload: impl Into<Bytes>) -> EnvelopeRequest {
    EnvelopeRequest::new(Snowflake(id), entity(), "echo", payload.into())
}

fn assert_malformed_naming(err: &ClusterError, limit: usize) {
    assert!(
        matches!(err, ClusterError::MalformedMessage { .. }),
        "expected MalformedMessage, got {err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("limit of {limit} bytes")),
        "the error does not name the limit of {limit} bytes: {text}"
    );
}

async fn final_payload(replies: ReplyStream) -> Result<Bytes, ClusterError> {
    let replies: Vec<_> = replies.collect().await;
    match replies.last() {
        Some(Ok(Reply::WithExit(ReplyWithExit {
            exit: ExitResult::Success(bytes),
            ..
        }))) => Ok(bytes.clone()),
        Some(Ok(Reply::WithExit(ReplyWithExit {
            exit: ExitResult::Failure(err),
            ..
        }))) => Err(err.clone().into()),
        Some(Err(err)) => Err(ClusterError::handler(err.to_string())),
        other => panic!("no final reply: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_over_the_client_limit_is_refused_naming_the_limit() {
    let harness = LoopbackHarness::with_default_client();
    let address = harness.serve(Arc::new(EchoInbound::new())).await;
    let client = harness.client();
    let big = Bytes::from(vec![7_u8; 5 * 1024 * 1024]);

    let err = client
        .send(&address, envelope(1, big.clone()))
        .await
        .err()
        .expect("a 5 MiB envelope was sent");
    assert_malformed_naming(&err, 4 * 1024 * 1024);
    let err = client.notify(&address, envelope(2, big)).await.unwrap_err();
    assert_malformed_naming(&err, 4 * 1024 * 1024);

    let replies = client.send(&address, envelope(3, "small")).await.unwrap();
    assert_eq!(final_payload(replies).await.unwrap(), Bytes::from("small"));
    harness.stop(&address).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_smaller_limit_refuses_naming_its_limit_and_keeps_the_session() {
    let client = GrpcRunners::builder()
        .max_message_size(16 * 1024 * 1024)
        .build();
    let harness = LoopbackHarness::new(Arc::new(client)).server_limit(1024 * 1024);
    let inbound = Arc::new(EchoInbound::new());
    let address = harness.serve(inbound.clone()).await;
    let client = harness.client();

    let err = client
        .send(&address, envelope(1, vec![1_u8; 1536 * 1024]))
        .await
        .err()
        .expect("the server took an envelope over its limit");
    assert_malformed_naming(&err, 1024 * 1024);
    assert!(
        inbound.sends().is_empty(),
        "the refused request reached the inbound"
    );

    // The session survives the refusal: the next request is answered.
    let replies = client.send(&address, envelope(2, "after")).await.unwrap();
    assert_eq!(final_payload(replies).await.unwrap(), Bytes::from("after"));
    harness.stop(&address).await;
}

/// Answers every request with a reply `reply_size` bytes long.
struct BigReplies {
    reply_size: usize,
}

#[async_trait]
impl RunnerInbound for BigReplies {
    async fn handle_send(&self, envelope: EnvelopeRequest) -> Result<ReplyStream, ClusterError> {
        let reply = Reply::WithExit(ReplyWithExit {
            request_id: envelope.request_id,
            exit: ExitResult::Success(Bytes::from(vec![0_u8; self.reply_size])),
        });
        Ok(futures::stream::iter([Ok(reply)]).boxed())
    }
    async fn handle_notify(&self, _: EnvelopeRequest) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn handle_ack(&self, _: AckChunk) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn handle_interrupt(&self, _: Interrupt) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn handle_stored_reply(&self, _: ReplyWithExit) -> Result<(), ClusterError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_the_server_limit_ends_the_call_with_an_error_naming_it() {
    let harness = LoopbackHarness::with_default_client().server_limit(1024 * 1024);
    let address = harness
        .serve(Arc::new(BigReplies {
            reply_size: 2 * 1024 * 1024,
        }))
        .await;
    let replies = harness
        .client()
        .send(&address, envelope(1, "x"))
        .await
        .expect("the request itself is small");
    let replies: Vec<_> = replies.collect().await;
    match replies.as_slice() {
        [Err(err)] => assert_malformed_naming(err, 1024 * 1024),
        other => panic!("expected one error naming the limit, got {other:?}"),
    }
    harness.stop(&address).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_accepts_tcp_but_never_answers_is_unavailable_within_the_connect_timeout() {
    // Bound and listening, never accepting: the kernel completes TCP handshakes, nobody
    // speaks HTTP/2.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let address = RunnerAddress::new("127.0.0.1", port);
    let client = Arc::new(
        GrpcRunners::builder()
            .connect_timeout(Duration::from_millis(300))
            .request_timeout(Duration::from_millis(600))
            .build(),
    );

    let started = Instant::now();
    let err = client
        .send(&address, envelope(1, "x"))
        .await
        .err()
        .expect("a silent peer answered");
    assert!(
        matches!(&err, ClusterError::RunnerUnavailable { address: named, .. } if *named == address),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let err = client.ping(&address).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::RunnerUnavailable { .. }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    let health = GrpcRunnerHealth::new(client.clone());
    assert!(!health.is_alive(&address).await);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_connection_messages_fail_fast_until_the_backoff_passes() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let address = RunnerAddress::new("127.0.0.1", port);
    let client = GrpcRunners::builder()
        .reconnect_backoff(Duration::from_millis(300))
        .build();

    let first = client.notify(&address, envelope(1, "x")).await.unwrap_err();
    assert!(
        matches!(first, ClusterError::RunnerUnavailable { .. }),
        "{first:?}"
    );
    let started = Instant::now();
    let second = client.notify(&address, envelope(2, "x")).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(
        matches!(&second, ClusterError::RunnerUnavailable { reason, .. } if reason.contains("not reconnecting")),
        "{second:?}"
    );

    // A runner that starts there is reached once the backoff has passed.
    let server = support::server_runtime();
    let socket = serve_at(&server, port);
    assert_eq!(socket.port(), port);
    tokio::time::sleep(Duration::from_millis(350)).await;
    client.notify(&address, envelope(3, "x")).await.unwrap();
    server.shutdown_background();
}

/// Serves an echo inbound on a given loopback port.
fn serve_at(runtime: &tokio::runtime::Runtime, port: u16) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let socket = listener.local_addr().unwrap();
    let server = GrpcRunnerServer::new(Arc::new(EchoInbound::new()));
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tonic::transport::Server::builder()
            .add_service(server.into_service())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    socket
}

/// Streams one chunk, then nothing; records when its reply stream is dropped.
struct DropWatch {
    dropped: Arc<AtomicBool>,
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl RunnerInbound for DropWatch {
    async fn handle_send(&self, envelope: EnvelopeRequest) -> Result<ReplyStream, ClusterError> {
        let guard = SetOnDrop(Arc::clone(&self.dropped));
        let chunk = Reply::Chunk(ReplyChunk {
            request_id: envelope.request_id,
            sequence: 0,
            values: vec![envelope.payload],
        });
        let replies = futures::stream::iter([Ok(chunk)]).chain(futures::stream::pending());
        Ok(replies
            .map(move |reply| {
                let _keep = &guard;
                reply
            })
            .boxed())
    }
    async fn handle_notify(&self, _: EnvelopeRequest) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn handle_ack(&self, _: AckChunk) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn handle_interrupt(&self, _: Interrupt) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn handle_stored_reply(&self, _: ReplyWithExit) -> Result<(), ClusterError> {
        Ok(())
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: not within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_reply_stream_drops_the_request_on_the_server() {
    let harness = LoopbackHarness::with_default_client();
    let dropped = Arc::new(AtomicBool::new(false));
    let address = harness
        .serve(Arc::new(DropWatch {
            dropped: dropped.clone(),
        }))
        .await;
    let mut replies = harness
        .client()
        .send(&address, envelope(1, "x"))
        .await
        .unwrap();
    assert!(matches!(replies.next().await, Some(Ok(Reply::Chunk(_)))));
    assert!(!dropped.load(Ordering::SeqCst));
    drop(replies);
    eventually("the server dropping the request", || {
        dropped.load(Ordering::SeqCst)
    })
    .await;
    harness.stop(&address).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_request_timeout_ends_the_stream_with_timeout() {
    let client = GrpcRunners::builder()
        .request_timeout(Duration::from_millis(200))
        .build();
    let harness = LoopbackHarness::new(Arc::new(client));
    let dropped = Arc::new(AtomicBool::new(false));
    let address = harness
        .serve(Arc::new(DropWatch {
            dropped: dropped.clone(),
        }))
        .await;
    let mut replies = harness
        .client()
        .send(&address, envelope(1, "x"))
        .await
        .unwrap();
    assert!(matches!(replies.next().await, Some(Ok(Reply::Chunk(_)))));
    let started = Instant::now();
    let next = replies.next().await;
    assert!(
        matches!(next, Some(Err(ClusterError::Timeout { .. }))),
        "{next:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        replies.next().await.is_none(),
        "the stream goes on after the timeout"
    );
    // The peer is told to drop the request.
    eventually("the server dropping the timed-out request", || {
        dropped.load(Ordering::SeqCst)
    })
    .await;
    harness.stop(&address).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_server_lets_a_graceful_shutdown_finish() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let address = RunnerAddress::new("127.0.0.1", port);
    let server = GrpcRunnerServer::new(Arc::new(EchoInbound::new()));
    let closer = server.closer();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server.into_service())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    let _ = stopped.await;
                    closer.close();
                },
            ),
    );

    // A session is open (and idle) when the shutdown starts.
    let client = GrpcRunners::new();
    let replies = client.send(&address, envelope(1, "x")).await.unwrap();
    assert_eq!(final_payload(replies).await.unwrap(), Bytes::from("x"));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("the graceful shutdown did not finish")
        .unwrap()
        .unwrap();
    let err = client.ping(&address).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::RunnerUnavailable { .. }),
        "{err:?}"
    );
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<GrpcRunners>();
    send_sync::<GrpcRunnerHealth>();
    send_sync::<GrpcRunnerServer>();
    send_sync::<cruster_transport_grpc::ServerCloser>();
    send_sync::<cruster_transport_grpc::GrpcRunnerService>();
    fn send<T: Send>(_: &T) {}
    let runners = GrpcRunners::new();
    let address = RunnerAddress::new("127.0.0.1", 1);
    send(&runners.send(&address, envelope(1, "x")));
    send(&runners.ping(&address));
}
