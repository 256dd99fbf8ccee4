//! Round-trip latency of the delivery modes on a memory-backed single runner, beside a bare
//! tokio mpsc + oneshot round trip measured in the same run as the reference.
#![allow(clippy::expect_used, missing_docs)] // a benchmark binary: failing to set up is fatal

use std::time::Duration;

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
        b.to_async(&rt).iter(|| {
            let tx = tx.clone();
            async move {
                let (rtx, rrx) = oneshot::channel();
                let _ = tx.send((1, rtx)).await;
                rrx.await.unwrap_or(0)
            }
        })
    });
}

fn plain_send(c: &mut Criterion) {
    let rt = runtime();
    let (_runner, client) = rt.block_on(echo_node()).expect("echo node");
    let id = EntityId::new("bench-1");
    c.bench_function("send (plain) round trip", |b| {
        b.to_async(&rt).iter(|| {
            let client = client.clone();
            let id = id.clone();
            async move { client.send::<_, u64>(&id, "echo", &7u64).await.unwrap_or(0) }
        })
    });
}

fn persisted_send(c: &mut Criterion) {
    let rt = runtime();
    let (_runner, client) = rt.block_on(echo_node()).expect("echo node");
    let id = EntityId::new("bench-p");
    c.bench_function("send_persisted round trip (memory storage)", |b| {
        b.to_async(&rt).iter(|| {
            let client = client.clone();
            let id = id.clone();
            async move {
                client
                    .send_persisted::<_, u64>(&id, "echo", &7u64, false)
                    .await
                    .unwrap_or(0)
            }
        })
    });
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
