//! Retention on a `SingleRunner` (memory, PostgreSQL, SQLite): a sweep deletes processed
//! messages, finished executions with their journals, and fired timers, and leaves pending
//! messages, dead letters and unfinished executions; a steady load of persisted sends keeps
//! the stored rows bounded; a keyed send repeated within retention returns the first reply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use cruster::ports::message_storage::{AttemptFailure, MessageStorage};
use cruster::ports::workflow_storage::{
    ActivityKey, DurableTimer, ExecutionRecord, ExecutionStatus, JournalEntry,
};
use cruster::prelude::*;
use cruster::storage::memory::MemoryMessageStorage;
use cruster::types::{EntityAddress, EntityType, EnvelopeRequest, ExitResult};
use sql_support::{pg_i64, PgTestDb, SqliteTestDb};

/// Answers how many times it ran so far (so a repeated request that ran again is seen).
#[entity]
#[derive(Clone)]
struct Echo {
    runs: Arc<AtomicU64>,
}

#[entity_impl]
impl Echo {
    #[rpc(persisted)]
    pub async fn echo(&self, text: String) -> Result<String, ClusterError> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(format!("{text} #{run}"))
    }
}

/// A retention of `retention` for every kind; the background sweep runs every
/// `sweep_interval`.
fn config(retention: Duration, sweep_interval: Duration) -> ShardingConfig {
    ShardingConfig {
        storage_poll_interval: Duration::from_millis(50),
        retention_processed_messages: retention,
        retention_finished_workflows: retention,
        retention_fired_timers: retention,
        retention_sweep_interval: sweep_interval,
        ..Default::default()
    }
}

/// Long enough for the scenario's set-up to finish well within it on a loaded machine.
const SHORT: Duration = Duration::from_secs(2);
/// Background sweeps never run during a test that sweeps by hand.
const NEVER: Duration = Duration::from_secs(3600);

async fn echo_client(runner: &SingleRunner) -> (EntityClient, Arc<AtomicU64>) {
    let runs = Arc::new(AtomicU64::new(0));
    Echo { runs: runs.clone() }
        .register(runner.sharding().clone())
        .await
        .unwrap();
    let client = EntityClient::new(runner.sharding().clone(), EntityType::new("Echo"));
    (client, runs)
}

/// A persisted request to an entity type nobody registered: the poll leaves it pending.
fn orphan_request(runner: &SingleRunner, id: &str) -> EnvelopeRequest {
    let sharding = runner.sharding();
    let entity_id = EntityId::new(id);
    let address = EntityAddress {
        shard_id: sharding.shard_id(&EntityType::new("Nobody"), &entity_id),
        entity_type: EntityType::new("Nobody"),
        entity_id,
    };
    let mut envelope = EnvelopeRequest::new(
        sharding.next_request_id(),
        address,
        "work",
        Bytes::from_static(b"x"),
    );
    envelope.persisted = true;
    envelope
}

fn journal_entry(execution_id: &str) -> JournalEntry {
    JournalEntry {
        execution_id: execution_id.into(),
        key: ActivityKey {
            name: "step".into(),
            sequence: 0,
        },
        result: ExitResult::Success(Bytes::from_static(b"done")),
        attempts: 1,
        recorded_at: Utc::now(),
    }
}

fn fired_timer(execution_id: &str, address: EntityAddress) -> DurableTimer {
    DurableTimer {
        execution_id: execution_id.into(),
        timer_key: "sleep/0".into(),
        address,
        fire_at: Utc::now(),
        completed: true,
    }
}

/// The scenario every backend runs.
async fn sweep_deletes_only_what_is_past_retention(runner: &SingleRunner) {
    let sharding = runner.sharding();
    let storage: Arc<dyn MessageStorage> = sharding.message_storage().unwrap().clone();
    let journal = sharding.workflow_storage().unwrap().clone();
    let engine = sharding.workflow_engine().unwrap().clone();
    let (client, _) = echo_client(runner).await;

    // Five processed requests, one pending, one dead letter.
    let mut processed = Vec::new();
    for n in 0..5 {
        let mut envelope = client
            .envelope(&EntityId::new(format!("e-{n}")), "echo", &"hi".to_string())
            .unwrap();
        envelope.persisted = true;
        processed.push(envelope.request_id);
        sharding.send(envelope).await.unwrap();
    }
    let pending = orphan_request(runner, "pending");
    storage.save_request(&pending).await.unwrap();
    let dead = orphan_request(runner, "dead");
    storage.save_request(&dead).await.unwrap();
    let failure = AttemptFailure {
        reason: "boom",
        max_attempts: 1,
        retry_at: Utc::now(),
        counted: false,
    };
    storage
        .record_failed_attempt(dead.request_id, &failure)
        .await
        .unwrap();

    // A finished and an unfinished execution, each with a journal entry and a fired timer,
    // and a fired timer whose execution is gone.
    let address = pending.address.clone();
    let request = Bytes::from_static(b"request");
    let mut done = ExecutionRecord::new("done", "order", request.clone(), Utc::now());
    done.status = ExecutionStatus::Completed;
    let running = ExecutionRecord::new("running", "order", request, Utc::now());
    for record in [&done, &running] {
        engine.upsert_execution(record).await.unwrap();
        let entry = journal_entry(&record.execution_id);
        let tx = journal
            .begin_activity(&record.execution_id, &entry.key)
            .await
            .unwrap();
        tx.commit(&entry).await.unwrap();
        engine
            .schedule_timer(&fired_timer(&record.execution_id, address.clone()))
            .await
            .unwrap();
    }
    engine
        .schedule_timer(&fired_timer("gone", address))
        .await
        .unwrap();

    let early = sharding.sweep_retention().await.unwrap();
    assert_eq!(
        (early.messages, early.executions, early.timers),
        (0, 0, 0),
        "nothing is past retention yet: {early:?}"
    );

    tokio::time::sleep(SHORT + Duration::from_millis(100)).await;
    let sweep = sharding.sweep_retention().await.unwrap();
    assert_eq!(
        (
            sweep.messages,
            sweep.executions,
            sweep.timers,
            sweep.complete
        ),
        (5, 1, 1, true),
        "{sweep:?}"
    );

    for id in &processed {
        assert_eq!(storage.request(*id).await.unwrap(), None, "{id} deleted");
        assert!(storage.replies_for(*id).await.unwrap().is_empty());
    }
    let still_pending = storage.request(pending.request_id).await.unwrap().unwrap();
    assert!(!still_pending.processed && !still_pending.dead_lettered);
    let dead_letters = storage.dead_letters(10).await.unwrap();
    assert_eq!(
        dead_letters.len(),
        1,
        "the dead letter stays: {dead_letters:?}"
    );

    assert_eq!(engine.execution("done").await.unwrap(), None);
    assert!(journal.journal("done").await.unwrap().is_empty());
    assert_eq!(engine.timer("done", "sleep/0").await.unwrap(), None);
    assert_eq!(engine.timer("gone", "sleep/0").await.unwrap(), None);
    assert!(engine.execution("running").await.unwrap().is_some());
    assert_eq!(journal.journal("running").await.unwrap().len(), 1);
    assert!(engine.timer("running", "sleep/0").await.unwrap().is_some());

    let metrics = sharding.metrics();
    for (kind, rows) in [("messages", 5), ("executions", 1), ("timers", 1)] {
        assert_eq!(
            metrics
                .retention_rows_deleted
                .with_label_values(&[kind])
                .get(),
            rows,
            "{kind}"
        );
    }
    let text = metrics.encode_text().unwrap();
    assert!(text.contains("cruster_retention_rows_deleted_total{kind=\"messages\"} 5"));
    assert!(text.contains("cruster_retention_lag_seconds 0"), "{text}");
}

#[tokio::test]
async fn sweep_deletes_only_what_is_past_retention_in_memory() {
    let runner = SingleRunner::builder()
        .config(config(SHORT, NEVER))
        .build()
        .await
        .unwrap();
    sweep_deletes_only_what_is_past_retention(&runner).await;
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn sweep_deletes_only_what_is_past_retention_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let pool = db.pool().await;
    let runner = SingleRunner::builder()
        .config(config(SHORT, NEVER))
        .postgres(pool.clone())
        .build()
        .await
        .unwrap();
    sweep_deletes_only_what_is_past_retention(&runner).await;
    runner.shutdown().await.unwrap();
    pool.close().await;
    db.drop_schema().await;
}

#[tokio::test]
async fn sweep_deletes_only_what_is_past_retention_on_sqlite() {
    let db = SqliteTestDb::new();
    let runner = SingleRunner::builder()
        .config(config(SHORT, NEVER))
        .sqlite(db.pool().await)
        .build()
        .await
        .unwrap();
    sweep_deletes_only_what_is_past_retention(&runner).await;
    runner.shutdown().await.unwrap();
}

/// Within retention a keyed send is answered with the first reply and runs nothing; after
/// retention (and a sweep) the key is forgotten and a repeat runs as a new request.
async fn keyed_send_within_retention_returns_the_first_reply(runner: &SingleRunner) {
    let (client, runs) = echo_client(runner).await;
    let entity = EntityId::new("keyed");
    let send = || async {
        client
            .send_persisted_with_key::<_, String>(&entity, "echo", &"pay".to_string(), "k-1", false)
            .await
            .unwrap()
    };
    let first = send().await;
    assert_eq!(first, "pay #1");
    runner.sharding().sweep_retention().await.unwrap();
    assert_eq!(send().await, first, "within retention: the first reply");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");

    tokio::time::sleep(KEYED_RETENTION + Duration::from_millis(100)).await;
    let sweep = runner.sharding().sweep_retention().await.unwrap();
    assert_eq!(sweep.messages, 1, "{sweep:?}");
    assert_eq!(send().await, "pay #2", "after retention: a new request");
}

const KEYED_RETENTION: Duration = Duration::from_secs(2);

#[tokio::test]
async fn keyed_send_within_retention_returns_the_first_reply_in_memory() {
    let runner = SingleRunner::builder()
        .config(config(KEYED_RETENTION, NEVER))
        .build()
        .await
        .unwrap();
    keyed_send_within_retention_returns_the_first_reply(&runner).await;
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn keyed_send_within_retention_returns_the_first_reply_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let pool = db.pool().await;
    let runner = SingleRunner::builder()
        .config(config(KEYED_RETENTION, NEVER))
        .postgres(pool.clone())
        .build()
        .await
        .unwrap();
    keyed_send_within_retention_returns_the_first_reply(&runner).await;
    runner.shutdown().await.unwrap();
    pool.close().await;
    db.drop_schema().await;
}

#[tokio::test]
async fn keyed_send_within_retention_returns_the_first_reply_on_sqlite() {
    let db = SqliteTestDb::new();
    let runner = SingleRunner::builder()
        .config(config(KEYED_RETENTION, NEVER))
        .sqlite(db.pool().await)
        .build()
        .await
        .unwrap();
    keyed_send_within_retention_returns_the_first_reply(&runner).await;
    runner.shutdown().await.unwrap();
}

/// Sends `total` persisted requests from `callers` tasks while `sample` reads the stored
/// row count; answers the largest count seen.
async fn steady_load<F, Fut>(client: &EntityClient, total: usize, callers: usize, sample: F) -> u64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..callers)
        .map(|caller| {
            let client = client.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let entity = EntityId::new(format!("load-{caller}"));
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    client
                        .send_persisted::<_, String>(&entity, "echo", &"x".to_string(), false)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let done = Arc::new(tokio::sync::Notify::new());
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut most = 0;
            loop {
                most = most.max(sample().await);
                tokio::select! {
                    _ = done.notified() => return most,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
    };
    for sender in senders {
        sender.await.unwrap();
    }
    done.notify_one();
    sampler.await.unwrap()
}

/// 200,000 persisted sends on memory with a 200 ms retention swept every 50 ms: the
/// processed requests kept never exceed a fraction of the load, and none are left once the
/// retention has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_keeps_the_memory_backend_bounded() {
    const TOTAL: usize = 200_000;
    const BOUND: u64 = 40_000;
    let storage = Arc::new(MemoryMessageStorage::with_retention(usize::MAX));
    let runner = SingleRunner::builder()
        .config(config(
            Duration::from_millis(200),
            Duration::from_millis(50),
        ))
        .message_storage(storage.clone())
        .build()
        .await
        .unwrap();
    let (client, runs) = echo_client(&runner).await;
    let sampled = storage.clone();
    let most = steady_load(&client, TOTAL, 32, move || {
        let storage = sampled.clone();
        async move { storage.retained_processed() as u64 }
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), TOTAL as u64);
    eprintln!("memory: {TOTAL} persisted sends, at most {most} processed requests kept");
    assert!(
        most <= BOUND,
        "at most {BOUND} processed requests kept during the load, saw {most}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    runner.sharding().sweep_retention().await.unwrap();
    assert_eq!(storage.retained_processed(), 0, "all past retention now");
    let deleted = runner
        .sharding()
        .metrics()
        .retention_rows_deleted
        .with_label_values(&["messages"])
        .get();
    let persisted = runner.sharding().metrics().messages_persisted.get();
    eprintln!("memory: {persisted} requests saved as new, {deleted} deleted by retention");
    assert!(
        deleted >= TOTAL as u64,
        "every processed request was deleted: {deleted} of {TOTAL}"
    );
    runner.shutdown().await.unwrap();
}

/// The same on PostgreSQL with 5,000 sends (a debug build on a shared 2-core machine makes
/// a few hundred persisted sends a second here): the rows of `cruster_messages` and
/// `cruster_replies` stay bounded while the load runs and are gone after retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_keeps_the_postgres_tables_bounded() {
    const TOTAL: usize = 5_000;
    const BOUND: u64 = 2_500;
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let pool = db.pool().await;
    let runner = SingleRunner::builder()
        .config(config(
            Duration::from_millis(200),
            Duration::from_millis(50),
        ))
        .postgres(pool.clone())
        .build()
        .await
        .unwrap();
    let (client, _) = echo_client(&runner).await;
    let counting = db.pool().await;
    let sampled = counting.clone();
    let most = steady_load(&client, TOTAL, 16, move || {
        let pool = sampled.clone();
        async move {
            let messages = pg_i64(&pool, "SELECT COUNT(*) FROM cruster_messages").await;
            let replies = pg_i64(&pool, "SELECT COUNT(*) FROM cruster_replies").await;
            messages.max(replies) as u64
        }
    })
    .await;
    eprintln!("PostgreSQL: {TOTAL} persisted sends, at most {most} rows in a table");
    assert!(
        most <= BOUND,
        "at most {BOUND} rows per table during the load, saw {most}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    runner.sharding().sweep_retention().await.unwrap();
    for table in ["cruster_messages", "cruster_replies"] {
        let rows = pg_i64(&counting, &format!("SELECT COUNT(*) FROM {table}")).await;
        assert_eq!(rows, 0, "{table} is empty once retention has passed");
    }
    runner.shutdown().await.unwrap();
    counting.close().await;
    pool.close().await;
    db.drop_schema().await;
}
