//! Redelivery of persisted messages: the poll is fair (a hot entity's backlog does not hold
//! back the others), failures back off exponentially, attempt counts follow a message when
//! its shard moves, and a message that crashes its runner is dead-lettered after its
//! attempts instead of crash-looping. On `SingleRunner`, `MemoryCluster` and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cruster::ports::message_storage::MessageStorage;
use cruster::prelude::*;
use cruster::single_runner::SingleRunnerBuilder;
use cruster::storage::memory::MemoryMessageStorage;
use cruster::storage::sql_message::SqlMessageStorage;
use cruster::testing::MemoryCluster;
use cruster::types::{
    shard_for_entity, wire, EntityAddress, EnvelopeRequest, RunnerAddress, ShardId, Snowflake,
    DEFAULT_SHARD_GROUP,
};
use parking_lot::Mutex;
use sql_support::{eventually, PgTestDb};
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------------
// The probe entity
// ---------------------------------------------------------------------------------------

/// One handler run.
#[derive(Clone, Debug)]
struct Run {
    entity_id: String,
    tag: String,
    runner: String,
    at: Instant,
}

/// What every probe handler saw, shared by all runners of a test.
#[derive(Default)]
struct ProbeLog {
    runs: Mutex<Vec<Run>>,
    /// When the "outage" handler starts succeeding (set by its first run).
    outage_ends: Mutex<Option<Instant>>,
    /// Told the runner address whenever a "hang" handler starts.
    hangs: Mutex<Option<mpsc::UnboundedSender<String>>>,
}

impl ProbeLog {
    fn runs_of(&self, tag: &str) -> Vec<Run> {
        self.runs
            .lock()
            .iter()
            .filter(|r| r.tag == tag)
            .cloned()
            .collect()
    }

    fn entities_run(&self, tag: &str) -> std::collections::HashSet<String> {
        self.runs_of(tag).into_iter().map(|r| r.entity_id).collect()
    }
}

/// Tags: `slow(u64 ms)`, `record(())`, `outage(u64 ms)` (fails with a storage error until
/// that long after its first run), `always-fail(())` (a storage error every time),
/// `hang(())` (reports its runner, then never finishes).
#[derive(Clone)]
struct Probe {
    log: Arc<ProbeLog>,
}

const PROBE: &str = "Probe";

struct ProbeHandler {
    entity_id: String,
    runner: String,
    log: Arc<ProbeLog>,
}

#[async_trait]
impl Entity for Probe {
    fn entity_type(&self) -> EntityType {
        EntityType::new(PROBE)
    }

    async fn spawn(&self, ctx: EntityContext) -> Result<Arc<dyn EntityHandler>, ClusterError> {
        Ok(Arc::new(ProbeHandler {
            entity_id: ctx.address.entity_id.to_string(),
            runner: ctx.runner_address.to_string(),
            log: self.log.clone(),
        }))
    }
}

#[async_trait]
impl EntityHandler for ProbeHandler {
    async fn handle(&self, request: IncomingRequest) -> Result<Bytes, ClusterError> {
        self.log.runs.lock().push(Run {
            entity_id: self.entity_id.clone(),
            tag: request.tag().to_string(),
            runner: self.runner.clone(),
            at: Instant::now(),
        });
        let storage_error = |what: &str| ClusterError::PersistenceError {
            reason: format!("injected: {what}"),
            source: None,
        };
        match request.tag() {
            "slow" => {
                let ms: u64 = request.decode()?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                wire::encode(&())
            }
            "record" => wire::encode(&()),
            "outage" => {
                let ms: u64 = request.decode()?;
                let ends = *self
                    .log
                    .outage_ends
                    .lock()
                    .get_or_insert_with(|| Instant::now() + Duration::from_millis(ms));
                if Instant::now() < ends {
                    return Err(storage_error("the database is down"));
                }
                wire::encode(&"recovered".to_string())
            }
            "always-fail" => Err(storage_error("always")),
            "hang" => {
                if let Some(tx) = self.log.hangs.lock().as_ref() {
                    let _ = tx.send(self.runner.clone());
                }
                std::future::pending().await
            }
            other => Err(ClusterError::UnknownTag {
                entity_type: request.address().entity_type.clone(),
                tag: other.to_string(),
            }),
        }
    }
}

async fn register_probe(sharding: &Arc<ShardingImpl>, log: &Arc<ProbeLog>) {
    sharding
        .register_entity(Arc::new(Probe { log: log.clone() }))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// (a) A hot entity's backlog does not hold back the others
// ---------------------------------------------------------------------------------------

const HOT_BACKLOG: i64 = 5_000;
const COLD_ENTITIES: i64 = 50;
const HOT_POLL_INTERVAL: Duration = Duration::from_millis(200);

fn hot_backlog_config() -> ShardingConfig {
    ShardingConfig {
        storage_poll_interval: HOT_POLL_INTERVAL,
        entity_mailbox_capacity: 100,
        shutdown_timeout: Duration::from_millis(300),
        ..Default::default()
    }
}

/// Writes the backlog straight into storage, as a runner that died before delivering
/// would have left it: 5,000 slow requests to one entity, older than one request to each
/// of 50 other entities.
async fn write_backlog(storage: &dyn MessageStorage) {
    let entity_type = EntityType::new(PROBE);
    let shards_per_group = hot_backlog_config().shards_per_group;
    let envelope = |id: i64, entity: String, tag: &'static str, payload: Bytes| {
        let entity_id = EntityId::new(entity);
        let shard = shard_for_entity(entity_id.as_str(), shards_per_group);
        let address = EntityAddress {
            shard_id: ShardId::new(DEFAULT_SHARD_GROUP, shard),
            entity_type: entity_type.clone(),
            entity_id,
        };
        let mut envelope = EnvelopeRequest::new(Snowflake(id), address, tag, payload);
        envelope.persisted = true;
        envelope.expects_reply = false;
        envelope
    };
    let slow = wire::encode(&10u64).unwrap();
    let mut envelopes: Vec<EnvelopeRequest> = (1..=HOT_BACKLOG)
        .map(|id| envelope(id, "hot".into(), "slow", slow.clone()))
        .collect();
    envelopes.extend((1..=COLD_ENTITIES).map(|n| {
        envelope(
            HOT_BACKLOG + n,
            format!("cold-{n}"),
            "record",
            wire::encode(&()).unwrap(),
        )
    }));
    for chunk in envelopes.chunks(250) {
        futures::future::try_join_all(chunk.iter().map(|e| storage.save_request(e)))
            .await
            .unwrap();
    }
}

/// Writes the backlog into `storage`, starts a runner on it, registers the entity (before
/// the runner's first poll) and measures how long the 50 cold entities wait.
async fn hot_backlog_scenario(storage: &dyn MessageStorage, builder: SingleRunnerBuilder) {
    let log = Arc::new(ProbeLog::default());
    write_backlog(storage).await;
    let runner = builder.config(hot_backlog_config()).build().await.unwrap();
    let sharding = runner.sharding().clone();
    let storage = sharding.message_storage().unwrap().clone();
    let registered = Instant::now();
    register_probe(&sharding, &log).await;
    // The first poll (one interval after the start) saturates the hot entity with the
    // oldest 100 of its messages; the cold entities must follow in the next round, not
    // after the hot backlog drains (50 s at 10 ms a message).
    let budget = HOT_POLL_INTERVAL * 4 + Duration::from_millis(1_200);
    let all_cold = async {
        while log.entities_run("record").len() < COLD_ENTITIES as usize {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let waited = tokio::time::timeout(budget, all_cold).await;
    let elapsed = registered.elapsed();
    let hot_runs = log.runs_of("slow").len();
    let cold_done = log.entities_run("record").len();
    assert!(
        waited.is_ok(),
        "after {elapsed:?} only {cold_done} of {COLD_ENTITIES} cold entities were handled \
         ({hot_runs} hot messages ran meanwhile); the hot backlog held them back"
    );
    println!(
        "all {COLD_ENTITIES} cold entities handled {elapsed:?} after registration, \
         {hot_runs} hot messages handled meanwhile (poll interval {HOT_POLL_INTERVAL:?})"
    );
    assert!(hot_runs > 0, "the hot entity is served too");

    // Skipping the saturated entity counted no attempts for it: its waiting messages show
    // none, and nothing is dead-lettered.
    assert!(storage.dead_letters(10).await.unwrap().is_empty());
    let last_hot = storage
        .request(Snowflake(HOT_BACKLOG))
        .await
        .unwrap()
        .expect("the last hot message is still stored");
    assert_eq!(
        (last_hot.attempts, last_hot.processed),
        (0, false),
        "a message passed over while its entity was saturated: {last_hot:?}"
    );
    runner.sharding().kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_entity_backlog_does_not_hold_back_other_entities() {
    let storage: Arc<dyn MessageStorage> = Arc::new(MemoryMessageStorage::new());
    hot_backlog_scenario(
        &*storage,
        SingleRunner::builder().message_storage(storage.clone()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_entity_backlog_does_not_hold_back_other_entities_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let pool = db.pool().await;
    let storage = SqlMessageStorage::new(pool.clone());
    storage.migrate().await.unwrap();
    hot_backlog_scenario(&storage, SingleRunner::builder().postgres(pool.clone())).await;
    pool.close().await;
    db.drop_schema().await;
}

// ---------------------------------------------------------------------------------------
// (b) A storage outage of a few seconds dead-letters nothing; retries back off
// ---------------------------------------------------------------------------------------

async fn outage_scenario(builder: SingleRunnerBuilder) {
    let log = Arc::new(ProbeLog::default());
    // Default backoff (1 s doubling, capped at 60 s) and retry limit (10); a fast poll, so
    // only the backoff spaces the retries.
    let config = ShardingConfig {
        storage_poll_interval: Duration::from_millis(50),
        ..Default::default()
    };
    assert_eq!(config.storage_retry_backoff_base, Duration::from_secs(1));
    let runner = builder.config(config).build().await.unwrap();
    let sharding = runner.sharding().clone();
    register_probe(&sharding, &log).await;
    let client = EntityClient::new(sharding.clone(), EntityType::new(PROBE));

    let answer: String = tokio::time::timeout(
        Duration::from_secs(30),
        client.send_persisted(&EntityId::new("db-user"), "outage", &5_000u64, false),
    )
    .await
    .expect("the request is answered once storage recovers")
    .expect("a 5 s outage must not dead-letter the request");
    assert_eq!(answer, "recovered");

    let runs = log.runs_of("outage");
    let gaps: Vec<Duration> = runs.windows(2).map(|w| w[1].at - w[0].at).collect();
    println!("{} attempts, spaced {gaps:?}", runs.len(), gaps = gaps);
    // Attempts at about 0, 1, 3 and 7 s: the fourth is after the outage.
    assert_eq!(
        runs.len(),
        4,
        "attempts spaced 1 s, 2 s, 4 s; got gaps {gaps:?}"
    );
    for (n, gap) in gaps.iter().enumerate() {
        let backoff = Duration::from_secs(1 << n);
        assert!(
            *gap >= backoff - Duration::from_millis(20),
            "retry {} came {gap:?} after the previous attempt, before its backoff of \
             {backoff:?} (gaps {gaps:?})",
            n + 1
        );
    }
    let storage = sharding.message_storage().unwrap();
    assert!(storage.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(sharding.metrics().messages_dead_lettered.get(), 0);
    assert_eq!(sharding.metrics().messages_retried.get(), 3);
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn storage_outage_of_five_seconds_dead_letters_nothing_and_retries_back_off() {
    outage_scenario(SingleRunner::builder()).await;
}

#[tokio::test]
async fn storage_outage_of_five_seconds_dead_letters_nothing_and_retries_back_off_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let pool = db.pool().await;
    outage_scenario(SingleRunner::builder().postgres(pool.clone())).await;
    pool.close().await;
    db.drop_schema().await;
}

// ---------------------------------------------------------------------------------------
// (c) Attempt counts survive a shard move
// ---------------------------------------------------------------------------------------

fn cluster_config(max_attempts: u32, backoff: Duration) -> ShardingConfig {
    ShardingConfig {
        storage_poll_interval: Duration::from_millis(50),
        storage_message_max_retries: max_attempts,
        storage_retry_backoff_base: backoff,
        storage_retry_backoff_max: backoff,
        runner_lock_ttl: Duration::from_millis(500),
        shutdown_timeout: Duration::from_millis(300),
        ..Default::default()
    }
}

async fn probe_cluster(config: ShardingConfig, log: &Arc<ProbeLog>) -> MemoryCluster {
    let log = log.clone();
    let cluster = MemoryCluster::builder()
        .runners(2)
        .config(config)
        .setup(move |sharding| {
            let log = log.clone();
            async move { sharding.register_entity(Arc::new(Probe { log })).await }
        })
        .build()
        .await
        .unwrap();
    cluster
        .wait_until_balanced(Duration::from_secs(10))
        .await
        .unwrap();
    cluster
}

/// An entity id whose shard runner `i` holds.
fn entity_on(cluster: &MemoryCluster, i: usize) -> EntityId {
    let runner = cluster.runner(i);
    let owned = runner.owned_shards();
    (0..)
        .map(|n| EntityId::new(format!("moving-{n}")))
        .find(|id| owned.contains(&runner.shard_id(&EntityType::new(PROBE), id)))
        .expect("runner i holds some shard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_survive_a_shard_move_and_dead_letter_at_the_limit() {
    const MAX: u32 = 6;
    const ON_FIRST: usize = 3;
    let log = Arc::new(ProbeLog::default());
    let cluster = probe_cluster(cluster_config(MAX, Duration::from_millis(250)), &log).await;
    let id = entity_on(&cluster, 0);
    let client = EntityClient::new(cluster.runner(0), EntityType::new(PROBE));
    client
        .notify_persisted(&id, "always-fail", &())
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            let enough = log.runs_of("always-fail").len() >= ON_FIRST;
            async move { enough }
        })
        .await,
        "runner 0 failed it {ON_FIRST} times"
    );
    cluster.stop_runner(0).await.unwrap();

    let storage = cluster.message_storage.clone();
    assert!(
        eventually(Duration::from_secs(15), || {
            let storage = storage.clone();
            async move { !storage.dead_letters(10).await.unwrap().is_empty() }
        })
        .await,
        "runner 1 dead-letters it; runs so far: {:?}",
        log.runs_of("always-fail")
    );
    let runs = log.runs_of("always-fail");
    let first = MemoryCluster::address(0).to_string();
    let on_first = runs.iter().filter(|r| r.runner == first).count();
    let on_second = runs.len() - on_first;
    println!("{on_first} attempts on runner 0, {on_second} on runner 1 after the move");
    assert!(on_first >= ON_FIRST && on_second >= 1, "{runs:?}");
    assert_eq!(
        runs.len(),
        MAX as usize,
        "the limit counts the attempts of both runners ({on_first} + {on_second}), not \
         {MAX} more after the move"
    );
    let dead = storage.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, MAX);
    // Nothing more runs once it is dead.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(log.runs_of("always-fail").len(), MAX as usize);
    cluster.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// (d) A message that crashes its runner is dead-lettered, not crash-looped
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_that_crashes_its_runner_is_dead_lettered_after_its_attempts() {
    const MAX: u32 = 3;
    let log = Arc::new(ProbeLog::default());
    let (tx, mut hangs) = mpsc::unbounded_channel();
    *log.hangs.lock() = Some(tx);
    let cluster = probe_cluster(cluster_config(MAX, Duration::from_millis(50)), &log).await;
    let client = EntityClient::new(cluster.runner(0), EntityType::new(PROBE));
    client
        .notify_persisted(&EntityId::new("poison"), "hang", &())
        .await
        .unwrap();

    let storage = cluster.message_storage.clone();
    let mut crashes = 0;
    let addresses: Vec<RunnerAddress> = (0..2).map(MemoryCluster::address).collect();
    loop {
        if !storage.dead_letters(10).await.unwrap().is_empty() {
            break;
        }
        let ran_on = tokio::select! {
            ran_on = hangs.recv() => ran_on.expect("the log keeps its sender"),
            _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
        };
        assert!(
            crashes <= MAX as usize + 1,
            "still crash-looping after {crashes} crashes; runs: {:?}",
            log.runs_of("hang")
        );
        // The handler "crashes the process": kill its runner, then start it again.
        let slot = addresses
            .iter()
            .position(|a| a.to_string() == ran_on)
            .expect("a runner of the cluster");
        cluster.kill_runner(slot);
        cluster.start_runner(slot).await.unwrap();
        crashes += 1;
    }
    let dead = storage.dead_letters(10).await.unwrap();
    let runs = log.runs_of("hang").len();
    println!(
        "dead-lettered after {runs} runs and {crashes} crashes: {:?}",
        dead[0].reason
    );
    assert_eq!(dead[0].attempts, MAX);
    // The first delivery (save → deliver) is counted when it reports a failure; a crash
    // reports nothing, so every redelivery counts before it runs: at most MAX + 1 runs.
    assert!(runs <= MAX as usize + 1, "{runs} runs for {MAX} attempts");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        log.runs_of("hang").len(),
        runs,
        "nothing runs after the dead letter"
    );
    for i in 0..2 {
        cluster.kill_runner(i);
    }
}
