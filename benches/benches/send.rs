//! Round-trip latency of the delivery modes on a memory-backed single runner, beside a bare
//! tokio mpsc + oneshot round trip measured in the same run as the reference.
#![allow(clippy::expect_used, missing_docs)] // a benchmark binary: failing to set up is fatal

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use cruster::types::EntityId;
use cruster_benches::echo_node;
use tokio::sync::{mpsc, oneshot};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn reference_mpsc_oneshot(c: &mut Criterion) {
    let rt = runtime();
    let tx = rt.block_on(async {
        let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(1024);
        tokio::spawn(async move {
            while let Some((v, reply)) = rx.recv().await {
                let _ = reply.send(v);
            }
        });
        tx
    });
    c.bench_function("reference: tokio mpsc + oneshot round trip", |b| {
        b.iter_custom(|iters| {
            let tx = tx.clone();
            in_task(&rt, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let (rtx, rrx) = oneshot::channel();
                    let _ = tx.send((1, rtx)).await;
                    let _ = rrx.await;
                }
                start.elapsed()
            })
        })
    });
}

fn plain_send(c: &mut Criterion) {
    let rt = runtime();
    let (_runner, client) = rt.block_on(echo_node()).expect("echo node");
    let id = EntityId::new("bench-1");
    c.bench_function("send (plain) round trip", |b| {
        b.iter_custom(|iters| {
            let client = client.clone();
            let id = id.clone();
            in_task(&rt, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let _ = client.send::<_, u64>(&id, "echo", &7u64).await;
                }
                start.elapsed()
            })
        })
    });
}

fn persisted_send(c: &mut Criterion) {
    let rt = runtime();
    let (_runner, client) = rt.block_on(echo_node()).expect("echo node");
    let id = EntityId::new("bench-p");
    c.bench_function("send_persisted round trip (memory storage)", |b| {
        b.iter_custom(|iters| {
            let client = client.clone();
            let id = id.clone();
            in_task(&rt, async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let _ = client
                        .send_persisted::<_, u64>(&id, "echo", &7u64, false)
                        .await;
                }
                start.elapsed()
            })
        })
    });
}

/// Runs `fut` as a task on the runtime's workers (as application code would) and returns
/// what it measured, so the figures do not include waking a thread outside the runtime.
fn in_task(
    rt: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = Duration> + Send + 'static,
) -> Duration {
    rt.block_on(async move { tokio::spawn(fut).await.unwrap_or_default() })
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = reference_mpsc_oneshot, plain_send, persisted_send
}
criterion_main!(benches);
