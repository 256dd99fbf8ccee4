//! Load generator: callers on distinct entities for a fixed time, on a memory-backed single
//! runner, beside a bare tokio mpsc + oneshot round trip measured the same way in the same
//! run. Prints throughput and latency percentiles per mode, for 1 caller and for N.
//!
//! `cargo run --release -p cruster-benches --bin load -- [callers] [seconds]`

use std::time::{Duration, Instant};

use cruster::prelude::*;
use cruster::types::EntityId;
use cruster_benches::echo_node;
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Copy)]
enum Mode {
    Reference,
    Plain,
    Persisted,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Reference => "reference: mpsc+oneshot",
            Mode::Plain => "send",
            Mode::Persisted => "send_persisted (memory)",
        }
    }
}

type Echo = mpsc::Sender<(u64, oneshot::Sender<u64>)>;

fn reference_echo() -> Echo {
    let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(1024);
    tokio::spawn(async move {
        while let Some((v, reply)) = rx.recv().await {
            let _ = reply.send(v);
        }
    });
    tx
}

async fn one_call(mode: Mode, client: &EntityClient, echo: &Echo, id: &EntityId) -> bool {
    match mode {
        Mode::Reference => {
            let (tx, rx) = oneshot::channel();
            echo.send((1, tx)).await.is_ok() && rx.await.is_ok()
        }
        Mode::Plain => client.send::<_, u64>(id, "echo", &1u64).await.is_ok(),
        Mode::Persisted => client
            .send_persisted::<_, u64>(id, "echo", &1u64, false)
            .await
            .is_ok(),
    }
}

async fn run(mode: Mode, callers: usize, duration: Duration) -> anyhow::Result<()> {
    let (runner, client) = echo_node().await?;
    let echo = reference_echo();
    // Warm up: activate the entities.
    for c in 0..callers {
        let id = EntityId::new(format!("load-{c}"));
        one_call(mode, &client, &echo, &id).await;
    }
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for c in 0..callers {
        let client = client.clone();
        let echo = echo.clone();
        tasks.push(tokio::spawn(async move {
            let id = EntityId::new(format!("load-{c}"));
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let start = Instant::now();
                if !one_call(mode, &client, &echo, &id).await {
                    errors += 1;
                }
                latencies.push(start.elapsed());
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{:<26} callers={callers:<4} {:>11.0} calls/s  p50={:>9.2?} p99={:>9.2?} errors={errors}",
        mode.name(),
        all.len() as f64 / duration.as_secs_f64(),
        pct(0.50),
        pct(0.99),
    );
    runner.shutdown().await?;
    Ok(())
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
        for n in [1, callers] {
            for mode in [Mode::Reference, Mode::Plain, Mode::Persisted] {
                // Run inside a task, as application code would.
                tokio::spawn(run(mode, n, duration)).await??;
            }
        }
        anyhow::Ok(())
    })
}
