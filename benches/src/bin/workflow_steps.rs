//! Workflow throughput on memory storage: concurrent callers each run workflow executions of
//! `steps` trivial activities, back to back, on a single runner. Prints journaled activity
//! steps per second and executions per second (each execution also stores its request, its
//! execution record and its reply).
//!
//! `cargo run --release -p cruster-benches --bin workflow_steps -- [callers] [steps] [seconds]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster::prelude::*;

#[workflow]
#[derive(Clone)]
struct StepsWorkflow;

#[workflow_impl(key = |req: &(u64, u32)| req.0, hash = false)]
impl StepsWorkflow {
    async fn execute(&self, request: (u64, u32)) -> Result<u64, ClusterError> {
        let mut sum = 0;
        for i in 0..request.1 {
            sum += self.step(u64::from(i)).await?;
        }
        Ok(sum)
    }

    #[activity]
    async fn step(&self, i: u64) -> Result<u64, ClusterError> {
        Ok(i)
    }
}

async fn run(callers: usize, steps: u32, duration: Duration) -> anyhow::Result<()> {
    let runner = SingleRunner::builder().build().await?;
    let client = StepsWorkflow.register(runner.sharding().clone()).await?;
    let next_id = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let client = client.clone();
        let next_id = next_id.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                match client.execute(&(id, steps)).await {
                    Ok(_) => done += 1,
                    Err(_) => errors += 1,
                }
            }
            (done, errors)
        }));
    }
    let (mut executions, mut errors) = (0u64, 0u64);
    for task in tasks {
        let (d, e) = task.await?;
        executions += d;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total_steps = executions * u64::from(steps);
    println!(
        "workflows (memory) callers={callers:<4} steps={steps:<3} {:>10.0} steps/s {:>9.0} executions/s  errors={errors}",
        total_steps as f64 / elapsed,
        executions as f64 / elapsed,
    );
    runner.shutdown().await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let callers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let steps: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let seconds: f64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        for n in [1, callers] {
            tokio::spawn(run(n, steps, Duration::from_secs_f64(seconds))).await??;
        }
        anyhow::Ok(())
    })
}
