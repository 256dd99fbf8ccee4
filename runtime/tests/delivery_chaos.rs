//! A seeded random schedule of persisted traffic, graceful stops, kills and restarts on a
//! four-runner `MemoryCluster`. Afterwards: every acknowledged request was applied at least
//! once, none was ever applied on two runners at once, every answer a caller got is the
//! handler's real answer (never a stored interruption), and nothing was dead-lettered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cruster::prelude::*;
use cruster::testing::MemoryCluster;
use cruster::types::{wire, EntityType};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RUNNERS: usize = 4;

/// What every runner's handlers did.
#[derive(Default)]
struct Ledger {
    running: Mutex<HashSet<String>>,
    applied: Mutex<HashMap<String, usize>>,
    overlaps: Mutex<Vec<String>>,
    started: AtomicUsize,
}

struct Running(Arc<Ledger>, String);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.lock().remove(&self.1);
    }
}

#[derive(Clone)]
struct Chaos {
    ledger: Arc<Ledger>,
}

struct ChaosHandler {
    ledger: Arc<Ledger>,
}

#[async_trait]
impl Entity for Chaos {
    fn entity_type(&self) -> EntityType {
        EntityType::new("Chaos")
    }

    async fn spawn(&self, _ctx: EntityContext) -> Result<Arc<dyn EntityHandler>, ClusterError> {
        Ok(Arc::new(ChaosHandler {
            ledger: self.ledger.clone(),
        }))
    }
}

#[async_trait]
impl EntityHandler for ChaosHandler {
    async fn handle(&self, request: IncomingRequest) -> Result<Bytes, ClusterError> {
        let (key, work_ms): (String, u64) = request.decode()?;
        if !self.ledger.running.lock().insert(key.clone()) {
            self.ledger.overlaps.lock().push(key.clone());
        }
        let _running = Running(self.ledger.clone(), key.clone());
        self.ledger.started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(work_ms)).await;
        *self.ledger.applied.lock().entry(key.clone()).or_default() += 1;
        wire::encode(&format!("applied:{key}"))
    }
}

/// What the callers saw.
#[derive(Default)]
struct Calls {
    acknowledged: Mutex<HashSet<String>>,
    answers: Mutex<Vec<(String, Result<String, String>)>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_stops_kills_and_restarts_lose_and_duplicate_nothing_at_once() {
    let seed: u64 = std::env::var("CRUSTER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00c0_ffee);
    eprintln!("chaos seed {seed} (set CRUSTER_CHAOS_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let ledger = Arc::new(Ledger::default());
    let setup_ledger = ledger.clone();
    let config = ShardingConfig {
        runner_lock_ttl: Duration::from_millis(600),
        storage_poll_interval: Duration::from_millis(50),
        shutdown_timeout: Duration::from_millis(150),
        storage_message_max_retries: 1_000,
        send_retry_count: 8,
        send_retry_backoff: Duration::from_millis(20),
        ..Default::default()
    };
    let cluster = Arc::new(
        MemoryCluster::builder()
            .runners(RUNNERS)
            .config(config)
            .setup(move |sharding: Arc<ShardingImpl>| {
                let ledger = setup_ledger.clone();
                async move { sharding.register_entity(Arc::new(Chaos { ledger })).await }
            })
            .build()
            .await
            .unwrap(),
    );
    cluster
        .wait_until_balanced(Duration::from_secs(10))
        .await
        .unwrap();

    let calls = Arc::new(Calls::default());
    let mut tasks = Vec::new();
    let (mut stops, mut kills, mut restarts) = (0, 0, 0);
    let mut next_key = 0usize;
    // Slots whose graceful stop is still draining: a runner restarted at the same address
    // before then would take over the locks of the one still draining.
    let draining: Arc<Mutex<HashSet<usize>>> = Arc::default();
    for _step in 0..40 {
        // A burst of persisted requests from random live runners.
        for _ in 0..rng.random_range(5..20) {
            let live: Vec<usize> = (0..RUNNERS).filter(|&i| cluster.is_running(i)).collect();
            let from = live[rng.random_range(0..live.len())];
            let key = format!("k{next_key}");
            next_key += 1;
            let entity = EntityId::new(format!("e{}", rng.random_range(0..30)));
            let work_ms: u64 = if rng.random_bool(0.1) {
                400
            } else {
                rng.random_range(0..20)
            };
            let client = EntityClient::new(cluster.runner(from), EntityType::new("Chaos"));
            let calls = calls.clone();
            let wait = rng.random_bool(0.5);
            tasks.push(tokio::spawn(async move {
                if wait {
                    let answer = client
                        .send_persisted::<_, String>(
                            &entity,
                            "apply",
                            &(key.clone(), work_ms),
                            false,
                        )
                        .await;
                    if let Ok(answer) = &answer {
                        calls.acknowledged.lock().insert(key.clone());
                        assert_eq!(answer, &format!("applied:{key}"));
                    }
                    calls
                        .answers
                        .lock()
                        .push((key, answer.map_err(|e| e.to_string())));
                } else if client
                    .notify_persisted(&entity, "apply", &(key.clone(), work_ms))
                    .await
                    .is_ok()
                {
                    calls.acknowledged.lock().insert(key);
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
        // A fault now and then, keeping at least one runner up.
        let running: Vec<usize> = (0..RUNNERS).filter(|&i| cluster.is_running(i)).collect();
        let stopped: Vec<usize> = (0..RUNNERS)
            .filter(|&i| !cluster.is_running(i) && !draining.lock().contains(&i))
            .collect();
        match rng.random_range(0..10) {
            0..=1 if running.len() > 1 => {
                let victim = running[rng.random_range(0..running.len())];
                let cluster = cluster.clone();
                let draining = draining.clone();
                draining.lock().insert(victim);
                // Graceful stops run beside the traffic, as a rolling deploy does.
                tokio::spawn(async move {
                    cluster.stop_runner(victim).await.unwrap();
                    draining.lock().remove(&victim);
                });
                stops += 1;
            }
            2 if running.len() > 1 => {
                cluster.kill_runner(running[rng.random_range(0..running.len())]);
                kills += 1;
            }
            3..=4 if !stopped.is_empty() => {
                let back = stopped[rng.random_range(0..stopped.len())];
                if cluster.start_runner(back).await.is_ok() {
                    restarts += 1;
                }
            }
            _ => {}
        }
    }
    // Everything comes back; every acknowledged request must then be applied.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while !draining.lock().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..RUNNERS {
        if !cluster.is_running(i) {
            let _ = cluster.start_runner(i).await;
        }
    }
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let applied = ledger.applied.lock().clone();
        let missing: Vec<String> = calls
            .acknowledged
            .lock()
            .iter()
            .filter(|k| !applied.contains_key(*k))
            .cloned()
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let applied = ledger.applied.lock().clone();
    let repeats: usize = applied.values().map(|n| n - 1).sum();
    let dead = cluster
        .runner(0)
        .message_storage()
        .unwrap()
        .dead_letters(100)
        .await
        .unwrap();
    let answers = calls.answers.lock().clone();
    let interrupted: Vec<_> = answers
        .iter()
        .filter(|(_, a)| matches!(a, Err(e) if e.contains("interrupted")))
        .collect();
    eprintln!(
        "chaos: {} requests, {} acknowledged, {} applied ({} applied twice), {} handler \
         starts (aborted ones run again); {} graceful stops, {} kills, {} restarts; {} caller \
         errors",
        next_key,
        calls.acknowledged.lock().len(),
        applied.len(),
        repeats,
        ledger.started.load(Ordering::SeqCst),
        stops,
        kills,
        restarts,
        answers.iter().filter(|(_, a)| a.is_err()).count()
    );
    let mut kinds: Vec<&str> = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().err())
        .map(|e| e.split(':').next().unwrap_or(""))
        .collect();
    kinds.sort();
    kinds.dedup();
    eprintln!("caller errors seen (callers whose own runner stopped): {kinds:?}");
    assert!(
        missing.is_empty(),
        "acknowledged but never applied: {missing:?}"
    );
    assert!(
        ledger.overlaps.lock().is_empty(),
        "applied on two runners at once: {:?}",
        ledger.overlaps.lock()
    );
    assert!(
        interrupted.is_empty(),
        "callers were answered with interruptions: {interrupted:?}"
    );
    assert!(dead.is_empty(), "dead-lettered: {dead:?}");
    cluster.shutdown().await.unwrap();
}
