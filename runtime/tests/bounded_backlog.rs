//! A persisted backlog written while no runner was up drains on one runner with the storage
//! poll never holding more than `storage_poll_batch_size` of its deliveries unfinished,
//! whatever the size of the backlog (memory and PostgreSQL).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cruster::ports::message_storage::MessageStorage;
use cruster::prelude::*;
use cruster::single_runner::SingleRunnerBuilder;
use cruster::storage::memory::MemoryMessageStorage;
use cruster::storage::sql_message::SqlMessageStorage;
use cruster::types::{
    shard_for_entity, wire, EntityAddress, EnvelopeRequest, ShardId, Snowflake, DEFAULT_SHARD_GROUP,
};
use prometheus::IntGauge;
use sql_support::PgTestDb;

const BACKLOG: u64 = 6_000;
const ENTITIES: u64 = 300;
const BATCH: usize = 200;

fn config() -> ShardingConfig {
    ShardingConfig {
        storage_poll_batch_size: BATCH,
        // Long, so the drain must go on page after page without waiting for it.
        storage_poll_interval: Duration::from_secs(1),
        ..Default::default()
    }
}

/// Records, at every request it handles, how many of the poll's deliveries were unfinished.
struct Drained {
    handled: Arc<AtomicU64>,
    most_in_flight: Arc<AtomicI64>,
    gauge: IntGauge,
}

struct DrainedHandler {
    handled: Arc<AtomicU64>,
    most_in_flight: Arc<AtomicI64>,
    gauge: IntGauge,
}

#[async_trait]
impl Entity for Drained {
    fn entity_type(&self) -> EntityType {
        EntityType::new("Drained")
    }

    async fn spawn(&self, _ctx: EntityContext) -> Result<Arc<dyn EntityHandler>, ClusterError> {
        Ok(Arc::new(DrainedHandler {
            handled: self.handled.clone(),
            most_in_flight: self.most_in_flight.clone(),
            gauge: self.gauge.clone(),
        }))
    }
}

#[async_trait]
impl EntityHandler for DrainedHandler {
    async fn handle(&self, request: IncomingRequest) -> Result<Bytes, ClusterError> {
        self.most_in_flight
            .fetch_max(self.gauge.get(), Ordering::Relaxed);
        // Yield once, so deliveries overlap as they would with real work.
        tokio::task::yield_now().await;
        self.handled.fetch_add(1, Ordering::Relaxed);
        Ok(request.envelope.payload)
    }
}

/// Writes the backlog straight into storage, as writers with no runner up would.
async fn write_backlog(storage: &dyn MessageStorage) {
    let shards_per_group = config().shards_per_group;
    let envelopes: Vec<EnvelopeRequest> = (1..=BACKLOG)
        .map(|n| {
            let entity_id = EntityId::new(format!("backlog-{}", n % ENTITIES));
            let shard = shard_for_entity(entity_id.as_str(), shards_per_group);
            let address = EntityAddress {
                shard_id: ShardId::new(DEFAULT_SHARD_GROUP, shard),
                entity_type: EntityType::new("Drained"),
                entity_id,
            };
            let mut envelope = EnvelopeRequest::new(
                Snowflake(n as i64),
                address,
                "drain",
                wire::encode(&n).unwrap(),
            );
            envelope.persisted = true;
            envelope.expects_reply = false;
            envelope
        })
        .collect();
    for chunk in envelopes.chunks(500) {
        futures::future::try_join_all(chunk.iter().map(|e| storage.save_request(e)))
            .await
            .unwrap();
    }
}

async fn drain_scenario(storage: &dyn MessageStorage, builder: SingleRunnerBuilder) {
    write_backlog(storage).await;
    let runner = builder.config(config()).build().await.unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let most_in_flight = Arc::new(AtomicI64::new(0));
    let gauge = runner.sharding().metrics().poll_in_flight.clone();
    runner
        .sharding()
        .register_entity(Arc::new(Drained {
            handled: handled.clone(),
            most_in_flight: most_in_flight.clone(),
            gauge: gauge.clone(),
        }))
        .await
        .unwrap();
    let started = Instant::now();
    while handled.load(Ordering::Relaxed) < BACKLOG {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the backlog did not drain in 90 s: {} of {BACKLOG} handled",
            handled.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let most = most_in_flight.load(Ordering::Relaxed);
    assert!(
        most > 0 && most <= BATCH as i64,
        "the poll had {most} deliveries unfinished at once; the bound is the batch, {BATCH}"
    );
    // Every request answered once drained; nothing left behind.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending: u64 = storage
            .message_counts()
            .await
            .unwrap()
            .iter()
            .map(|counts| counts.pending + counts.retrying + counts.dead_lettered)
            .sum();
        if pending == 0 && gauge.get() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} requests still unprocessed and {} poll deliveries unfinished 30 s after \
             every request was handled",
            gauge.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_with_at_most_one_batch_of_poll_deliveries_unfinished() {
    let storage: Arc<dyn MessageStorage> = Arc::new(MemoryMessageStorage::new());
    drain_scenario(
        &*storage,
        SingleRunner::builder().message_storage(storage.clone()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_with_at_most_one_batch_of_poll_deliveries_unfinished_on_postgres() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let pool = db.pool().await;
    let storage = SqlMessageStorage::new(pool.clone());
    storage.migrate().await.unwrap();
    drain_scenario(&storage, SingleRunner::builder().postgres(pool.clone())).await;
    pool.close().await;
    db.drop_schema().await;
}
