//! Cross-runner `send` over the gRPC transport, beside a bare tonic unary echo measured
//! the same way in the same run.
//!
//! Both run in this one process, on loopback (127.0.0.1), client and server as tasks of
//! one tokio runtime with 2 worker threads; each has one HTTP/2 connection.
//!
//! * reference: a tonic unary call (the runner protocol's `Ping`, whose handler echoes its
//!   payload) carrying as many bytes as the envelope of a send: one HTTP/2 stream per call.
//! * send: `GrpcRunners::send` to a `GrpcRunnerServer` whose inbound answers every request
//!   with its payload, reading the reply stream to its end: requests multiplexed over one
//!   long-lived stream.
//!
//! Prints calls/s and p50/p99 for 1 caller and for N callers (64 by default), then the
//! ratios the targets are stated in: send p50 / echo p50 with 1 caller (target ≤ 1.3) and
//! send calls/s / echo calls/s with N callers (target ≥ 2).
//!
//! `cargo run --release -p cruster-benches --bin grpc_send -- [callers] [seconds]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cruster::tonic;
use cruster::transport::grpc::proto::runner_client::RunnerClient;
use cruster::transport::grpc::proto::PingRequest;
use cruster::transport::grpc::{GrpcRunnerServer, GrpcRunners};
use cruster::transport::{ReplyStream, RunnerInbound, Runners};
use cruster::types::{
    wire, AckChunk, ClusterError, EntityAddress, EntityId, EntityType, EnvelopeRequest, ExitResult,
    Interrupt, Reply, ReplyWithExit, RunnerAddress, ShardId, Snowflake,
};
use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};

/// Answers every request with its payload.
struct EchoInbound;

#[async_trait]
impl RunnerInbound for EchoInbound {
    async fn handle_send(&self, envelope: EnvelopeRequest) -> Result<ReplyStream, ClusterError> {
        let reply = Reply::WithExit(ReplyWithExit {
            request_id: envelope.request_id,
            exit: ExitResult::Success(envelope.payload),
        });
        Ok(futures::stream::once(async move { Ok(reply) }).boxed())
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

#[derive(Clone, Copy)]
enum Mode {
    Echo,
    Send,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Echo => "reference: tonic unary echo",
            Mode::Send => "GrpcRunners::send",
        }
    }
}

#[derive(Clone)]
struct Target {
    echo: RunnerClient<Channel>,
    runners: Arc<GrpcRunners>,
    address: RunnerAddress,
    echo_payload: Bytes,
}

fn envelope(id: i64) -> EnvelopeRequest {
    let address = EntityAddress {
        shard_id: ShardId::new("default", 1),
        entity_type: EntityType::new("Echo"),
        entity_id: EntityId::new("bench-1"),
    };
    // A MessagePack u64, as an `EntityClient::send(.., &7u64)` would carry.
    EnvelopeRequest::new(Snowflake(id), address, "echo", Bytes::from_static(&[7]))
}

async fn one_call(mode: Mode, target: &Target, id: i64) -> bool {
    match mode {
        Mode::Echo => {
            let request = PingRequest {
                payload: target.echo_payload.clone(),
            };
            target.echo.clone().ping(request).await.is_ok()
        }
        Mode::Send => match target.runners.send(&target.address, envelope(id)).await {
            Ok(replies) => {
                let replies: Vec<_> = replies.collect().await;
                matches!(replies.as_slice(), [Ok(Reply::WithExit(_))])
            }
            Err(_) => false,
        },
    }
}

struct Figures {
    calls_per_second: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

async fn run(
    mode: Mode,
    target: &Target,
    callers: usize,
    duration: Duration,
) -> anyhow::Result<Figures> {
    for id in 0..200 {
        one_call(mode, target, id).await;
    }
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = 0_u64;
            let mut id = (caller as i64) << 32;
            while Instant::now() < deadline {
                id += 1;
                let start = Instant::now();
                if !one_call(mode, &target, id).await {
                    errors += 1;
                }
                latencies.push(start.elapsed());
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, failed) = task.await?;
        all.extend(latencies);
        errors += failed;
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let figures = Figures {
        calls_per_second: all.len() as f64 / duration.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        errors,
    };
    println!(
        "{:<28} callers={callers:<4} {:>9.0} calls/s  p50={:>9.2?} p99={:>9.2?} errors={}",
        mode.name(),
        figures.calls_per_second,
        figures.p50,
        figures.p99,
        figures.errors,
    );
    Ok(figures)
}

async fn start() -> anyhow::Result<Target> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let socket = listener.local_addr()?;
    let server = GrpcRunnerServer::new(Arc::new(EchoInbound));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server.into_service())
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    let channel = Endpoint::from_shared(format!("http://{socket}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(Target {
        echo: RunnerClient::new(channel),
        runners: Arc::new(GrpcRunners::new()),
        address: RunnerAddress::new("127.0.0.1", socket.port()),
        echo_payload: wire::encode_envelope(&envelope(1))?,
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let callers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let seconds: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let duration = Duration::from_secs_f64(seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let target = start().await?;
        println!(
            "one process, loopback, 2 worker threads; echo payload {} bytes (an encoded envelope)",
            target.echo_payload.len()
        );
        let echo_one = run(Mode::Echo, &target, 1, duration).await?;
        let send_one = run(Mode::Send, &target, 1, duration).await?;
        let echo_many = run(Mode::Echo, &target, callers, duration).await?;
        let send_many = run(Mode::Send, &target, callers, duration).await?;
        println!(
            "ratio send/echo p50, 1 caller:          {:.2} (target <= 1.3)",
            send_one.p50.as_secs_f64() / echo_one.p50.as_secs_f64()
        );
        println!(
            "ratio send/echo calls/s, {callers} callers: {:.2} (target >= 2)",
            send_many.calls_per_second / echo_many.calls_per_second
        );
        anyhow::Ok(())
    })
}
