//! Load generator: N concurrent callers on distinct entities for a fixed time, on a
//! memory-backed single runner. Prints throughput and latency percentiles per mode.
//!
//! `cargo run --release -p cruster-benches --bin load -- [callers] [seconds]`

use std::time::{Duration, Instant};

use cruster::types::EntityId;
use cruster_benches::echo_node;

#[derive(Clone, Copy)]
enum Mode {
    Plain,
    Persisted,
}

async fn run(mode: Mode, callers: usize, seconds: u64) -> anyhow::Result<()> {
    let (runner, client) = echo_node().await?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..callers {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let id = EntityId::new(format!("load-{c}"));
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let start = Instant::now();
                let result = match mode {
                    Mode::Plain => client.send::<_, u64>(&id, "echo", &1u64).await,
                    Mode::Persisted => {
                        client
                            .send_persisted::<_, u64>(&id, "echo", &1u64, false)
                            .await
                    }
                };
                if result.is_err() {
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
    let name = match mode {
        Mode::Plain => "send",
        Mode::Persisted => "send_persisted (memory)",
    };
    println!(
        "{name:<26} callers={callers:<4} {:>10.0} req/s  p50={:>8.2?} p99={:>8.2?} errors={errors}",
        all.len() as f64 / seconds as f64,
        pct(0.50),
        pct(0.99),
    );
    runner.shutdown().await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let callers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        run(Mode::Plain, callers, seconds).await?;
        run(Mode::Persisted, callers, seconds).await?;
        anyhow::Ok(())
    })
}
