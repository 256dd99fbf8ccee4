//! Delivery correctness on PostgreSQL: a drain interruption is not an answer (two runners
//! sharing one database), and a pool fully busy with application work is not a lost
//! single-node lease.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;
mod support;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cruster::prelude::*;
use cruster::sqlx::postgres::PgPoolOptions;
use cruster::storage::memory::MemoryRunnerStorage;
use cruster::storage::sql_message::SqlMessageStorage;
use cruster::transport::in_process::InProcessNetwork;
use cruster::types::{EntityType, RunnerAddress, ShardId};
use sql_support::PgTestDb;
use support::slow::{Runs, Slow};

async fn start_runner(
    i: u16,
    db: &PgTestDb,
    network: &InProcessNetwork,
    runner_storage: &Arc<MemoryRunnerStorage>,
    runs: &Runs,
) -> Arc<ShardingImpl> {
    let address = RunnerAddress::new("127.0.0.1", 9200 + i);
    let storage = SqlMessageStorage::new(db.pool().await);
    storage.migrate().await.unwrap();
    let sharding = ShardingImpl::builder()
        .config(ShardingConfig {
            runner_address: address.clone(),
            shards_per_group: 32,
            runner_lock_ttl: Duration::from_millis(900),
            storage_poll_interval: Duration::from_millis(30),
            shutdown_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .runners(Arc::new(network.runners()))
        .runner_storage(runner_storage.clone())
        .runner_health(runner_storage.clone())
        .message_storage(Arc::new(storage))
        .build()
        .unwrap();
    sharding
        .register_entity(Arc::new(Slow {
            runs: runs.clone(),
            first_attempt: Duration::from_secs(30),
        }))
        .await
        .unwrap();
    network.register(address, sharding.clone());
    sharding.start().await.unwrap();
    sharding
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_persisted_rpc_interrupted_by_a_drain_is_answered_by_its_next_attempt() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let network = InProcessNetwork::new();
    let runner_storage = Arc::new(MemoryRunnerStorage::new());
    let runs = Runs::default();
    let owner = start_runner(0, &db, &network, &runner_storage, &runs).await;
    let caller = start_runner(1, &db, &network, &runner_storage, &runs).await;
    assert!(
        sql_support::eventually(Duration::from_secs(10), || {
            let (a, b) = (owner.clone(), caller.clone());
            async move {
                a.owned_shards().len() + b.owned_shards().len() == 32
                    && !a.owned_shards().is_empty()
                    && !b.owned_shards().is_empty()
            }
        })
        .await
    );
    let held: HashSet<ShardId> = owner.owned_shards().into_iter().collect();
    let id = (0..10_000)
        .map(|i| EntityId::new(format!("e-{i}")))
        .find(|id| held.contains(&owner.shard_id(&EntityType::new("Slow"), id)))
        .unwrap();
    let client = EntityClient::new(caller.clone(), EntityType::new("Slow"));
    let call = tokio::spawn(async move {
        client
            .send_persisted::<_, String>(&id, "work", &"pg".to_string(), false)
            .await
    });
    assert!(support::eventually(Duration::from_secs(5), || runs.started("pg") == 1).await);
    owner.shutdown().await.unwrap();
    network.unregister(owner.runner_address());
    let answer = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the caller is answered")
        .unwrap();
    assert_eq!(answer.unwrap(), "done-2");
    assert_eq!(runs.overlaps.load(Ordering::SeqCst), 0);
    caller.shutdown().await.unwrap();
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_is_not_a_lost_single_node_lease() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    // The contract's pool: 10 connections.
    let options = (*db.pool().await.connect_options()).clone();
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .unwrap();
    let runner = SingleRunner::builder()
        .config(ShardingConfig {
            storage_poll_interval: Duration::from_millis(50),
            ..Default::default()
        })
        .postgres(pool.clone())
        .lease_ttl(Duration::from_millis(600))
        .build()
        .await
        .unwrap();
    let shards = runner.sharding().owned_shards().len();
    assert!(shards > 0);
    // Application work holds every connection of the pool for many lease TTLs.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(pool.acquire().await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        runner.sharding().owned_shards().len(),
        shards,
        "the node kept its lease and its shards while the pool was busy"
    );
    drop(held);
    let journal = support::Journal::default();
    runner
        .sharding()
        .register_entity(Arc::new(support::TestEntity::new("T", journal)))
        .await
        .unwrap();
    let client = EntityClient::new(runner.sharding().clone(), EntityType::new("T"));
    let echoed: String = client
        .send_persisted(
            &EntityId::new("a"),
            "echo",
            &"still serving".to_string(),
            false,
        )
        .await
        .unwrap();
    assert_eq!(echoed, "still serving");
    runner.shutdown().await.unwrap();
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_reply_that_cannot_be_stored_keeps_the_caller_waiting() {
    let Some(db) = PgTestDb::new().await else {
        return;
    };
    let pool = db.pool().await;
    let runner = SingleRunner::builder()
        .config(ShardingConfig {
            storage_poll_interval: Duration::from_millis(30),
            ..Default::default()
        })
        .postgres(pool.clone())
        .build()
        .await
        .unwrap();
    // The database refuses final replies while the flag is set (real fault, no mock).
    for sql in [
        "CREATE TABLE test_flags (broken BOOLEAN NOT NULL)",
        "INSERT INTO test_flags VALUES (TRUE)",
        "CREATE FUNCTION test_refuse_replies() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF (SELECT broken FROM test_flags) THEN \
         RAISE EXCEPTION 'injected: replies cannot be stored'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER test_refuse_replies BEFORE INSERT ON cruster_replies \
         FOR EACH ROW WHEN (NEW.is_final) EXECUTE FUNCTION test_refuse_replies()",
    ] {
        sql_support::pg_exec(&pool, sql).await;
    }
    let journal = support::Journal::default();
    runner
        .sharding()
        .register_entity(Arc::new(support::TestEntity::new("T", journal.clone())))
        .await
        .unwrap();
    let client = EntityClient::new(runner.sharding().clone(), EntityType::new("T"));
    let call = tokio::spawn(async move {
        client
            .send_persisted::<_, u64>(&EntityId::new("r"), "record", &"k".to_string(), false)
            .await
    });
    assert!(support::eventually(Duration::from_secs(10), || journal.keys("r").len() >= 2).await);
    assert!(
        !call.is_finished(),
        "no error for a message that will still run"
    );
    sql_support::pg_exec(&pool, "UPDATE test_flags SET broken = FALSE").await;
    let answer = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("answered after the redelivery")
        .unwrap()
        .unwrap();
    assert!(
        answer >= 2,
        "answered by a redelivered attempt (saw {answer} runs)"
    );
    runner.shutdown().await.unwrap();
    db.drop_schema().await;
}
