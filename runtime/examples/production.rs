//! Production: one runner of a cluster on PostgreSQL (messages, workflow journals, activity
//! transactions), etcd (runner discovery, shard locks) and gRPC (runner to runner) — the
//! contract's "Cluster Setup" as written there, inside a `main`.
//!
//! Start the services (`bash .ci/services.sh` starts PostgreSQL and etcd), then:
//!
//! ```text
//! cargo run -p cruster --features postgres,etcd,grpc --example production
//! ```
//!
//! `DATABASE_URL` (default `postgres://cruster:cruster@127.0.0.1:5432/cruster`),
//! `ETCD_ENDPOINTS` (comma-separated, default `http://127.0.0.1:2379`) and `GRPC_ADDR` (the
//! address the gRPC server binds, default `0.0.0.0:9000`) say where things are. The runner
//! address advertised to the other runners is the contract's `10.0.0.1:9000`; a real
//! deployment puts this host's address there. The runner serves until it is stopped.

use std::net::SocketAddr;
use std::sync::Arc;

use cruster::config::ShardingConfig;
use cruster::etcd_client;
use cruster::metrics::ClusterMetrics;
use cruster::prelude::*;
use cruster::sharding_impl::ShardingImpl;
use cruster::sqlx::{self, postgres::PgPoolOptions, PgPool};
use cruster::storage::etcd_runner::EtcdRunnerStorage;
use cruster::storage::sql_message::SqlMessageStorage;
use cruster::storage::sql_workflow::SqlWorkflowStorage;
use cruster::storage::sql_workflow_engine::SqlWorkflowEngine;
use cruster::tonic;
use cruster::transport::grpc::{GrpcRunnerHealth, GrpcRunnerServer, GrpcRunners};
use serde::{Deserialize, Serialize};

/// A counter whose value lives in PostgreSQL.
#[entity(max_idle_time_secs = 300)]
#[derive(Clone)]
struct Counter {
    pool: PgPool,
}

#[derive(Serialize, Deserialize)]
struct Increment {
    amount: i64,
}

#[entity_impl]
impl Counter {
    /// Adds to the counter (persisted: at least once) and answers the new value.
    #[rpc(persisted)]
    pub async fn increment(&self, request: Increment) -> Result<i64, ClusterError> {
        let id = self.entity_context()?.address.entity_id;
        let value = sqlx::query_scalar(
            "INSERT INTO example_counters (id, value) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET value = example_counters.value + EXCLUDED.value \
             RETURNING value",
        )
        .bind(id.to_string())
        .bind(request.amount)
        .fetch_one(&self.pool)
        .await?;
        Ok(value)
    }

    /// The counter's value (plain: at most once).
    #[rpc]
    pub async fn get(&self) -> Result<i64, ClusterError> {
        let id = self.entity_context()?.address.entity_id;
        let value: Option<i64> =
            sqlx::query_scalar("SELECT value FROM example_counters WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(value.unwrap_or(0))
    }
}

#[derive(Serialize, Deserialize)]
struct ProcessOrderRequest {
    order_id: String,
    amount: i64,
}

#[derive(Serialize, Deserialize)]
struct OrderResult {
    order_id: String,
    status: String,
}

/// An order workflow: each activity writes through `self.tx`, in the transaction of its
/// journal entry.
#[workflow]
#[derive(Clone)]
struct OrderWorkflow;

#[workflow_impl(key = |req: &ProcessOrderRequest| req.order_id.clone(), hash = false)]
impl OrderWorkflow {
    async fn execute(&self, request: ProcessOrderRequest) -> Result<OrderResult, ClusterError> {
        self.record(request.order_id.clone(), "reserved".into())
            .await?;
        self.record(
            request.order_id.clone(),
            format!("charged {}", request.amount),
        )
        .await?;
        Ok(OrderResult {
            order_id: request.order_id,
            status: "completed".into(),
        })
    }

    #[activity(retries = 3, backoff = "exponential")]
    async fn record(&self, order_id: String, event: String) -> Result<(), ClusterError> {
        sqlx::query("INSERT INTO example_order_events (order_id, event) VALUES ($1, $2)")
            .bind(order_id)
            .bind(event)
            .execute(&self.tx)
            .await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let postgres_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://cruster:cruster@127.0.0.1:5432/cruster".into());
    let endpoints: Vec<String> = std::env::var("ETCD_ENDPOINTS")
        .unwrap_or_else(|_| "http://127.0.0.1:2379".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let grpc_addr: SocketAddr = std::env::var("GRPC_ADDR")
        .unwrap_or_else(|_| "0.0.0.0:9000".into())
        .parse()?;
    // The application's own tables.
    let setup = PgPool::connect(&postgres_url).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS example_counters (id TEXT PRIMARY KEY, value BIGINT NOT NULL); \
         CREATE TABLE IF NOT EXISTS example_order_events (order_id TEXT NOT NULL, event TEXT NOT NULL)",
    )
    .execute(&setup)
    .await?;
    setup.close().await;

    // ---- The contract's Cluster Setup, as written there ----

    // 1. Storage backends
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&postgres_url)
        .await?;
    let message_storage = Arc::new(SqlMessageStorage::new(pool.clone()));
    message_storage.migrate().await?;
    let state_storage = Arc::new(SqlWorkflowStorage::new(pool.clone()));
    let workflow_engine = Arc::new(SqlWorkflowEngine::new(pool.clone()));

    // 2. Runner discovery via etcd
    let etcd_client = etcd_client::Client::connect(endpoints, None).await?;
    let runner_storage = Arc::new(EtcdRunnerStorage::new(etcd_client, "/my-cluster/", 30));

    // 3. gRPC transport
    let grpc_runners = Arc::new(GrpcRunners::new());
    let runner_health = Arc::new(GrpcRunnerHealth::new(grpc_runners.clone()));

    // 4. Configure and create
    let config = Arc::new(ShardingConfig {
        runner_address: "10.0.0.1:9000".parse()?,
        shards_per_group: 300,
        ..Default::default()
    });

    let sharding = ShardingImpl::new_with_engines(
        config,
        grpc_runners,
        Some(runner_storage),
        Some(runner_health),
        Some(message_storage),
        Some(state_storage),
        Some(workflow_engine),
        Arc::new(ClusterMetrics::unregistered()),
    )?;

    // 5. Register entities and workflows
    let counter = Counter { pool: pool.clone() }
        .register(sharding.clone())
        .await?;
    let workflow = OrderWorkflow.register(sharding.clone()).await?;

    // 6. Start background loops + gRPC server
    sharding.start().await?;

    // ---- (not in the contract: show that the runner works before serving) ----
    let id = EntityId::new("example-counter");
    let value = counter.increment(&id, &Increment { amount: 1 }).await?;
    let order = workflow
        .execute(&ProcessOrderRequest {
            order_id: format!("order-{value}"),
            amount: 42,
        })
        .await?;
    println!(
        "counter {id} is at {value}; {} is {}; serving gRPC on {grpc_addr}",
        order.order_id, order.status
    );

    let grpc_server = GrpcRunnerServer::new(sharding.clone());
    tonic::transport::Server::builder()
        .add_service(grpc_server.into_service())
        .serve(grpc_addr)
        .await?;
    Ok(())
}
