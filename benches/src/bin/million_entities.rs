//! Many entities on one runner: 1,000,000 distinct entity ids touched once each with a
//! plain `send` on a memory-backed `SingleRunner`, then left idle until idle eviction
//! takes them all.
//!
//! `cargo run --release -p cruster-benches --bin million_entities [-- ENTITIES | --quick]`
//!
//! Prints the resident memory (RSS) while they are live and after eviction, each relative
//! to the RSS before the runner started, as bytes per entity beside a bare
//! `HashMap<String, u64>` holding the same ids (built after the runner is gone); and the
//! CPU time per activation (a send to a new entity) beside a send to a live entity, and
//! per eviction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cruster::prelude::*;
use cruster::types::{EntityId, EntityType};
use cruster_benches::counting_allocator::{
    allocated, peak_allocated_bytes, reset_peak_allocated, CountingAllocator,
};
use cruster_benches::process_memory::{cpu_time, give_back_free_memory, mib, rss_bytes};

/// Counts what the process holds, to print bytes per entity beside the RSS.
#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const CALLERS: usize = 64;

/// An entity that answers every request with its payload and is evicted after `idle`.
struct Touched {
    idle: Duration,
}

struct TouchedHandler;

#[async_trait]
impl Entity for Touched {
    fn entity_type(&self) -> EntityType {
        EntityType::new("Touched")
    }

    fn options(&self) -> EntityOptions {
        EntityOptions {
            max_idle_time: Some(self.idle),
            ..Default::default()
        }
    }

    async fn spawn(&self, _ctx: EntityContext) -> Result<Arc<dyn EntityHandler>, ClusterError> {
        Ok(Arc::new(TouchedHandler))
    }
}

#[async_trait]
impl EntityHandler for TouchedHandler {
    async fn handle(&self, request: IncomingRequest) -> Result<Bytes, ClusterError> {
        Ok(request.envelope.payload)
    }
}

fn entity_id(n: usize) -> EntityId {
    EntityId::new(format!("entity-{n:07}"))
}

/// Sends one request to each of `ids` from `CALLERS` concurrent callers; returns the wall
/// time and the CPU time it took.
async fn touch(
    client: &EntityClient,
    ids: impl Fn(usize) -> EntityId + Send + Sync + Clone + 'static,
    count: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let cpu_before = cpu_time();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let client = client.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = caller;
            while n < count {
                let _: u64 = client.send(&ids(n), "touch", &(n as u64)).await?;
                n += CALLERS;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((started.elapsed(), cpu_time().saturating_sub(cpu_before)))
}

fn live(runner: &SingleRunner) -> usize {
    runner
        .sharding()
        .active_entities()
        .get(&EntityType::new("Touched"))
        .copied()
        .unwrap_or(0)
}

async fn run(entities: usize, idle: Duration) -> anyhow::Result<()> {
    let rss_before = rss_bytes();
    let allocated_before = allocated();
    reset_peak_allocated();
    let runner = SingleRunner::builder().build().await?;
    runner
        .sharding()
        .register_entity(Arc::new(Touched { idle }))
        .await?;
    let client = EntityClient::new(runner.sharding().clone(), EntityType::new("Touched"));

    // Reference: the same number of sends to one live entity per caller.
    let (_, warm_cpu) = touch(&client, |n| entity_id(n % CALLERS), entities.min(200_000)).await?;
    let warm_per_send = warm_cpu / entities.min(200_000) as u32;
    println!(
        "warm-up (sends to {CALLERS} live entities): RSS {:.1} MiB over the baseline, \
         allocated at its peak {:.1} MiB, now {:.1} MiB",
        mib(rss_bytes().saturating_sub(rss_before)),
        mib(peak_allocated_bytes().saturating_sub(allocated_before.bytes) as u64),
        mib(allocated().since(allocated_before).bytes as u64)
    );

    for round in 1..=2 {
        // The second round touches new ids: it shows whether the memory freed by the first
        // eviction is reused.
        let offset = (round - 1) * entities;
        let ids = move |n: usize| entity_id(offset + n);
        reset_peak_allocated();
        let (touch_wall, touch_cpu) = touch(&client, ids, entities).await?;
        let live_count = live(&runner);
        let rss_live = rss_bytes().saturating_sub(rss_before);
        println!(
            "round {round}: touched {entities} new entities in {touch_wall:.2?} ({:.0}/s with \
             {CALLERS} callers), {live_count} live",
            entities as f64 / touch_wall.as_secs_f64()
        );
        println!(
            "  activation (send to a new entity): {:>8.2?} CPU per entity   reference: send to \
             a live entity {:>8.2?} CPU",
            touch_cpu / entities as u32,
            warm_per_send
        );
        // A task ends as soon as its mailbox is empty: the idle entities hold none.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tasks_idle = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        println!("  tokio tasks alive with {live_count} idle live entities: {tasks_idle}");
        println!(
            "  RSS live: {:>8.1} MiB over the {:.1} MiB before the runner ({:.0} bytes per live \
             entity)",
            mib(rss_live),
            mib(rss_before),
            rss_live as f64 / live_count.max(1) as f64
        );
        let held_live = allocated().since(allocated_before);
        println!(
            "  allocated at the peak of the touch: {:>8.1} MiB",
            mib(peak_allocated_bytes().saturating_sub(allocated_before.bytes) as u64)
        );
        println!(
            "  allocated live: {:>8.1} MiB in {} blocks ({:.0} bytes and {:.1} blocks per live \
             entity, before the allocator's headers and rounding)",
            mib(held_live.bytes as u64),
            held_live.blocks,
            held_live.bytes as f64 / live_count.max(1) as f64,
            held_live.blocks as f64 / live_count.max(1) as f64
        );

        // Idle eviction: wait (bounded) until no instance is left.
        let cpu_before = cpu_time();
        let waited = Instant::now();
        let limit = idle * 4 + Duration::from_secs(30);
        while live(&runner) > 0 {
            anyhow::ensure!(
                waited.elapsed() < limit,
                "{} entities still live {limit:?} after the touch (idle time {idle:?})",
                live(&runner)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let evict_cpu = cpu_time().saturating_sub(cpu_before);
        // Let the evicted instances' tasks end (bounded).
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let settled = Instant::now();
        while tasks() > tasks_idle && settled.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "  tokio tasks alive {:.2?} after the last eviction: {}",
            settled.elapsed(),
            tasks()
        );
        let rss_after = rss_bytes().saturating_sub(rss_before);
        println!(
            "  eviction: all gone {:.2?} after the touch; {:>8.2?} CPU per evicted entity \
             (the whole process while it waited)",
            waited.elapsed(),
            evict_cpu / live_count.max(1) as u32
        );
        println!(
            "  RSS after idle eviction (glibc keeps what was freed): {:>8.1} MiB over the \
             baseline ({:.0} % of live)",
            mib(rss_after),
            100.0 * rss_after as f64 / rss_live.max(1) as f64
        );
        give_back_free_memory();
        let rss_trimmed = rss_bytes().saturating_sub(rss_before);
        println!(
            "  RSS after idle eviction and malloc_trim(0): {:>8.1} MiB over the baseline ({:.0} \
             % of live)",
            mib(rss_trimmed),
            100.0 * rss_trimmed as f64 / rss_live.max(1) as f64
        );
        let held_after = allocated().since(allocated_before);
        println!(
            "  allocated after idle eviction: {:>8.1} MiB in {} blocks",
            mib(held_after.bytes as u64),
            held_after.blocks
        );
    }
    runner.shutdown().await?;
    drop(client);
    drop(runner);

    // Reference: a bare map of the same ids, counted from its table and its strings.
    let mut map: HashMap<String, u64> = HashMap::new();
    for n in 0..entities {
        map.insert(format!("entity-{n:07}"), n as u64);
    }
    let table = map.capacity() * (std::mem::size_of::<(String, u64)>() + 1);
    // Each id is a heap allocation of its length, rounded up to glibc's 16-byte chunks
    // with their 8-byte header.
    let strings: usize = map.keys().map(|k| (k.len() + 8).div_ceil(16) * 16).sum();
    println!(
        "  reference: HashMap<String, u64> of the same {} ids: {:.1} MiB ({:.0} bytes per entry)",
        map.len(),
        mib((table + strings) as u64),
        (table + strings) as f64 / entities as f64
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let entities: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(if quick { 10_000 } else { 1_000_000 });
    // Long enough that the first entities are still live when the last is touched.
    let idle = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(30)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async { tokio::spawn(run(entities, idle)).await? })
}
