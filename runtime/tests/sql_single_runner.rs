//! `SingleRunner` on a real database: the README's `Counter` on PostgreSQL, persisted work
//! surviving a restart (PostgreSQL and SQLite), the exclusive single-node lease, and a pool
//! that cannot connect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster::prelude::*;
use cruster::sqlx::{self, PgPool};
use cruster::types::EntityType;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sql_support::{pg_exec, PgTestDb, SqliteTestDb};
use tokio::sync::Notify;

// ---------------------------------------------------------------------------------------
// The README's Counter, as written there.

#[derive(Serialize, Deserialize)]
struct IncrementRequest {
    entity_id: String,
    amount: i64,
}

#[derive(Serialize, Deserialize)]
struct GetCounterRequest {
    entity_id: String,
}

#[entity]
#[derive(Clone)]
struct Counter {
    pool: PgPool,
}

#[entity_impl]
impl Counter {
    // Persisted RPC: at-least-once delivery for writes
    #[rpc(persisted)]
    pub async fn increment(&self, request: IncrementRequest) -> Result<i64, ClusterError> {
        let (value,): (i64,) = sqlx::query_as(
            "INSERT INTO counters (id, value) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET value = counters.value + $2
             RETURNING value",
        )
        .bind(&request.entity_id)
        .bind(request.amount)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| ClusterError::PersistenceError {
            reason: e.to_string(),
            source: Some(Box::new(e)),
        })?;
        Ok(value)
    }

    // Non-persisted RPC: best-effort delivery for reads
    #[rpc]
    pub async fn get(&self, request: GetCounterRequest) -> Result<i64, ClusterError> {
        let result: Option<(i64,)> = sqlx::query_as("SELECT value FROM counters WHERE id = $1")
            .bind(&request.entity_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| ClusterError::PersistenceError {
                reason: e.to_string(),
                source: Some(Box::new(e)),
            })?;
        Ok(result.map(|r| r.0).unwrap_or(0))
    }
}

fn fast_config() -> ShardingConfig {
    ShardingConfig {
        storage_poll_interval: Duration::from_millis(50),
        ..Default::default()
    }
}

#[tokio::test]
async fn readme_counter_persists_increments_in_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let pool = db.pool().await;
    pg_exec(
        &pool,
        "CREATE TABLE counters (id TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    )
    .await;
    let runner = SingleRunner::builder()
        .config(fast_config())
        .postgres(pool.clone())
        .build()
        .await
        .unwrap();

    let counter = Counter { pool: pool.clone() }
        .register(runner.sharding().clone())
        .await
        .unwrap();
    let entity_id = EntityId::new("counter-1");
    let value = counter
        .increment(
            &entity_id,
            &IncrementRequest {
                entity_id: "counter-1".into(),
                amount: 5,
            },
        )
        .await
        .unwrap();
    assert_eq!(value, 5);
    let value = counter
        .get(
            &entity_id,
            &GetCounterRequest {
                entity_id: "counter-1".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(value, 5);
    let value = counter
        .increment(
            &entity_id,
            &IncrementRequest {
                entity_id: "counter-1".into(),
                amount: 3,
            },
        )
        .await
        .unwrap();
    assert_eq!(value, 8);

    // The persisted request and its reply are rows of the runtime's own tables.
    let stored = sql_support::pg_i64(
        &pool,
        "SELECT COUNT(*) FROM cruster_messages WHERE processed",
    )
    .await;
    assert_eq!(stored, 2, "both increments stored and marked processed");
    runner.shutdown().await.unwrap();
    pool.close().await;
    db.drop_schema().await;
}

// ---------------------------------------------------------------------------------------
// Restart durability.

/// Records what it handled; an item starting with `block` parks the handler forever when
/// `park` is set (the runner is then killed under it).
#[entity]
#[derive(Clone)]
struct Recorder {
    handled: Arc<Mutex<Vec<String>>>,
    park: bool,
    parked: Arc<Notify>,
}

#[entity_impl]
impl Recorder {
    #[rpc(persisted)]
    pub async fn record(&self, item: String) -> Result<String, ClusterError> {
        if self.park && item.starts_with("block") {
            self.parked.notify_one();
            std::future::pending::<()>().await;
        }
        self.handled.lock().push(item.clone());
        Ok(format!("recorded {item}"))
    }
}

impl Recorder {
    fn new(park: bool) -> Recorder {
        Recorder {
            handled: Arc::default(),
            park,
            parked: Arc::new(Notify::new()),
        }
    }
}

/// The scenario both dialects run: one runner stores a reply and crashes with a request
/// in flight; the next runner on the same database returns the stored reply without
/// running the handler again, and finishes the request left behind.
async fn persisted_work_survives_a_restart(
    build: impl Fn(ShardingConfig, Duration, bool) -> BuildFuture,
) {
    const TTL: Duration = Duration::from_millis(600);
    let first = Recorder::new(true);
    let runner = build(fast_config(), TTL, false).await.unwrap();
    let client = first
        .clone()
        .register(runner.sharding().clone())
        .await
        .unwrap();
    let raw = EntityClient::new(runner.sharding().clone(), EntityType::new("Recorder"));

    let id = EntityId::new("r-1");
    let reply: String = raw
        .send_persisted_with_key(&id, "record", &"a", "key-a", false)
        .await
        .unwrap();
    assert_eq!(reply, "recorded a");
    let parked = first.parked.clone();
    let waiting = parked.notified();
    let left_behind = raw
        .notify_persisted(&EntityId::new("r-2"), "record", &"block-b")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the first runner started the request");
    drop(client);
    // A crash: tasks stop, nothing is released; the lease expires after its TTL.
    runner.sharding().kill();
    drop(runner);

    let second = Recorder::new(false);
    let started = Instant::now();
    let runner = build(fast_config(), TTL, true).await.unwrap();
    assert!(
        started.elapsed() < TTL * 5,
        "the standby took over after the crashed node's lease expired ({:?})",
        started.elapsed()
    );
    second
        .clone()
        .register(runner.sharding().clone())
        .await
        .unwrap();
    let raw = EntityClient::new(runner.sharding().clone(), EntityType::new("Recorder"));
    let joined: String = tokio::time::timeout(Duration::from_secs(10), raw.join_reply(left_behind))
        .await
        .expect("the request left behind is redelivered after the restart")
        .unwrap();
    assert_eq!(joined, "recorded block-b");

    let again: String = raw
        .send_persisted_with_key(&id, "record", &"a-again", "key-a", false)
        .await
        .unwrap();
    assert_eq!(again, "recorded a", "the stored reply of the first runner");
    assert_eq!(
        second.handled.lock().clone(),
        ["block-b"],
        "the second runner ran only the request left behind"
    );
    runner.shutdown().await.unwrap();
}

type BuildFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<SingleRunner, ClusterError>> + Send>>;

#[tokio::test]
async fn persisted_work_survives_a_restart_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let db = Arc::new(db);
    let for_build = db.clone();
    let builder = move |config, ttl, standby| -> BuildFuture {
        let db = for_build.clone();
        Box::pin(async move {
            SingleRunner::builder()
                .config(config)
                .postgres(db.pool().await)
                .lease_ttl(ttl)
                .standby(standby)
                .build()
                .await
        })
    };
    persisted_work_survives_a_restart(&builder).await;
    drop(builder);
    if let Ok(db) = Arc::try_unwrap(db) {
        db.drop_schema().await;
    }
}

#[tokio::test]
async fn persisted_work_survives_a_restart_on_sqlite() {
    let db = Arc::new(SqliteTestDb::new());
    let builder = move |config, ttl, standby| -> BuildFuture {
        let db = db.clone();
        Box::pin(async move {
            SingleRunner::builder()
                .config(config)
                .sqlite(db.pool().await)
                .lease_ttl(ttl)
                .standby(standby)
                .build()
                .await
        })
    };
    persisted_work_survives_a_restart(builder).await;
}

// ---------------------------------------------------------------------------------------
// The single-node lease.

async fn second_node_is_refused_then_standby_takes_over(
    build: impl Fn(bool) -> BuildFuture + Send + Sync + 'static,
) {
    let build = Arc::new(build);
    let first = build(false).await.unwrap();
    let holder = first
        .lease_holder()
        .await
        .expect("a SQL runner holds a lease");
    assert!(
        holder.contains(&format!("pid {}", std::process::id())),
        "holder id names the process: {holder}"
    );

    let started = Instant::now();
    let err = build(false).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "fails fast ({:?})",
        started.elapsed()
    );
    match &err {
        ClusterError::InvalidConfig { field, reason } => {
            assert_eq!(field, "single_node_lease");
            assert!(reason.contains(&holder), "names the holder: {reason}");
            assert!(reason.contains("standby"), "says what to do: {reason}");
        }
        other => panic!("expected InvalidConfig(single_node_lease), got {other:?}"),
    }

    let standby = tokio::spawn({
        let build = build.clone();
        async move {
            let runner = build(true).await?;
            Ok::<_, ClusterError>(runner)
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !standby.is_finished(),
        "the standby waits while the lease is held"
    );
    first.shutdown().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(3), standby)
        .await
        .expect("the standby starts once the first node released the lease")
        .unwrap()
        .unwrap();
    let second_holder = second.lease_holder().await.unwrap();
    assert_ne!(second_holder, holder);
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn second_node_on_postgres_is_refused_and_a_standby_takes_over() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let db = Arc::new(db);
    let for_build = db.clone();
    second_node_is_refused_then_standby_takes_over(move |standby| {
        let db = for_build.clone();
        Box::pin(async move {
            SingleRunner::builder()
                .postgres(db.pool().await)
                .standby(standby)
                .build()
                .await
        })
    })
    .await;
}

#[tokio::test]
async fn second_node_on_sqlite_is_refused_and_a_standby_takes_over() {
    let db = Arc::new(SqliteTestDb::new());
    second_node_is_refused_then_standby_takes_over(move |standby| {
        let db = db.clone();
        Box::pin(async move {
            SingleRunner::builder()
                .sqlite(db.pool().await)
                .standby(standby)
                .build()
                .await
        })
    })
    .await;
}

#[tokio::test]
async fn lease_of_a_killed_node_expires_after_its_ttl() {
    let db = SqliteTestDb::new();
    let first = SingleRunner::builder()
        .sqlite(db.pool().await)
        .lease_ttl(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    first.sharding().kill();
    drop(first);
    // Still held right after the crash...
    let err = SingleRunner::builder()
        .sqlite(db.pool().await)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::InvalidConfig { ref field, .. } if field == "single_node_lease")
    );
    // ...and free once the TTL has passed without renewal.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = SingleRunner::builder()
        .sqlite(db.pool().await)
        .build()
        .await
        .unwrap();
    second.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Bad input.

#[tokio::test]
async fn postgres_pool_that_cannot_connect_is_a_clear_persistence_error() {
    // Nothing listens on port 1; the pool is lazy, so the failure surfaces in `build`.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://cruster:cruster@127.0.0.1:1/cruster")
        .unwrap();
    let started = Instant::now();
    let err = SingleRunner::builder()
        .postgres(pool)
        .build()
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    match &err {
        ClusterError::PersistenceError { reason, source } => {
            assert!(
                reason.contains("PostgreSQL"),
                "names the database: {reason}"
            );
            assert!(source.is_some(), "keeps the cause");
        }
        other => panic!("expected PersistenceError, got {other:?}"),
    }
}

#[tokio::test]
async fn lease_ttl_that_is_too_short_is_rejected() {
    let db = SqliteTestDb::new();
    let err = SingleRunner::builder()
        .sqlite(db.pool().await)
        .lease_ttl(Duration::from_millis(1))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::InvalidConfig { ref field, .. } if field == "lease_ttl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_is_taken_shuts_itself_down() {
    let db = SqliteTestDb::new();
    let pool = db.pool().await;
    let runner = SingleRunner::builder()
        .config(fast_config())
        .sqlite(pool.clone())
        .lease_ttl(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    assert!(!runner.sharding().owned_shards().is_empty());
    // Another node steals the lease (as after a long pause of this one).
    sql_support::sqlite_exec(
        &pool,
        "UPDATE cruster_single_node_lease SET holder = 'another-node', \
         expires_at_ms = expires_at_ms + 600000",
    )
    .await;
    let stopped = sql_support::eventually(Duration::from_secs(5), || {
        let sharding = runner.sharding().clone();
        async move { sharding.owned_shards().is_empty() }
    })
    .await;
    assert!(stopped, "a node that lost its lease must stop serving");
    let client = EntityClient::new(runner.sharding().clone(), EntityType::new("Anything"));
    let err = client
        .send::<_, String>(&EntityId::new("x"), "echo", &"x")
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::ShuttingDown), "{err}");
}
