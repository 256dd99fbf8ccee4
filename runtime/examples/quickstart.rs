//! Quickstart: a single cruster node on the embedded memory backends.
//!
//! Registers an entity, a workflow, a singleton and a cron job, drives real traffic through every
//! client mode, and prints what happened and the throughput it measured.
//!
//! `cargo run --release --example quickstart`
//!
//! With `--storage sqlite:PATH` (feature `sqlite`, on in this workspace's builds) the same
//! node runs durably on a SQLite file: persisted messages, replies and the counters
//! themselves are stored there, so a second run continues from the first one's values.
//!
//! `cargo run --release --example quickstart -- --storage sqlite:quickstart.db`
//!
//! The node's admin API and web console (feature `admin`, on in this workspace's builds)
//! are served on `127.0.0.1:9090` (`--admin ADDR` to change it) while the quickstart runs;
//! with `--serve` it keeps running after the traffic, until Ctrl-C, so the console can be
//! opened at the printed address:
//!
//! `cargo run --release --example quickstart -- --serve`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use cruster::cron::{ClusterCron, CronSchedule};
use cruster::prelude::*;
use cruster::singleton::{register_singleton, SingletonContext};
use cruster::types::{wire, EntityType};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// A workflow: two journaled activities around a durable timer.
#[derive(Serialize, Deserialize)]
struct ShipOrder {
    order_id: String,
    items: u32,
}

/// What the workflow returns.
#[derive(Serialize, Deserialize, Debug)]
struct Shipped {
    order_id: String,
    tracking: String,
}

#[workflow]
#[derive(Clone)]
struct ShipOrderWorkflow;

#[workflow_impl(key = |req: &ShipOrder| req.order_id.clone(), hash = false)]
impl ShipOrderWorkflow {
    async fn execute(&self, request: ShipOrder) -> Result<Shipped, ClusterError> {
        let reservation = self
            .reserve(request.order_id.clone(), request.items)
            .await?;
        // A durable timer: the execution is suspended and resumed by a stored wake-up.
        self.sleep(Duration::from_millis(200)).await?;
        let tracking = self.ship(request.order_id.clone(), reservation).await?;
        Ok(Shipped {
            order_id: request.order_id,
            tracking,
        })
    }

    #[activity]
    async fn reserve(&self, order_id: String, items: u32) -> Result<String, ClusterError> {
        // Written in the same transaction as this activity's journal entry.
        self.tx
            .put(&format!("reservation/{order_id}"), items.to_string())
            .await?;
        Ok(format!("res-{order_id}"))
    }

    #[activity(retries = 2)]
    async fn ship(&self, order_id: String, reservation: String) -> Result<String, ClusterError> {
        Ok(format!("track-{order_id}-{reservation}"))
    }
}

/// A counter entity written against the `Entity`/`EntityHandler` traits. Its state lives in
/// a shared map standing in for the database an application would use, or (with
/// `--storage sqlite:PATH`) in a table of the SQLite file.
#[derive(Clone, Default)]
struct Counter {
    totals: Totals,
}

/// Where counter values live.
#[derive(Clone)]
enum Totals {
    Memory(Arc<dashmap::DashMap<String, i64>>),
    #[cfg(feature = "sqlite")]
    Sqlite(cruster::sqlx::SqlitePool),
}

impl Default for Totals {
    fn default() -> Self {
        Totals::Memory(Arc::default())
    }
}

impl Totals {
    async fn add(&self, id: &str, amount: i64) -> Result<i64, ClusterError> {
        match self {
            Totals::Memory(map) => {
                let mut total = map.entry(id.to_string()).or_insert(0);
                *total += amount;
                Ok(*total)
            }
            #[cfg(feature = "sqlite")]
            Totals::Sqlite(pool) => Ok(cruster::sqlx::query_scalar(
                "INSERT INTO quickstart_counters (id, value) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET value = value + excluded.value RETURNING value",
            )
            .bind(id)
            .bind(amount)
            .fetch_one(pool)
            .await?),
        }
    }

    async fn get(&self, id: &str) -> Result<i64, ClusterError> {
        match self {
            Totals::Memory(map) => Ok(map.get(id).map(|v| *v).unwrap_or(0)),
            #[cfg(feature = "sqlite")]
            Totals::Sqlite(pool) => Ok(cruster::sqlx::query_scalar(
                "SELECT value FROM quickstart_counters WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            .unwrap_or(0)),
        }
    }
}

struct CounterInstance {
    id: String,
    totals: Totals,
}

#[async_trait]
impl Entity for Counter {
    fn entity_type(&self) -> EntityType {
        EntityType::new("Counter")
    }

    async fn spawn(&self, ctx: EntityContext) -> Result<Arc<dyn EntityHandler>, ClusterError> {
        Ok(Arc::new(CounterInstance {
            id: ctx.address.entity_id.to_string(),
            totals: self.totals.clone(),
        }))
    }
}

#[async_trait]
impl EntityHandler for CounterInstance {
    async fn handle(&self, request: IncomingRequest) -> Result<Bytes, ClusterError> {
        match request.tag() {
            "increment" => {
                let amount: i64 = request.decode()?;
                wire::encode(&self.totals.add(&self.id, amount).await?)
            }
            "get" => wire::encode(&self.totals.get(&self.id).await?),
            tag => Err(ClusterError::UnknownTag {
                entity_type: EntityType::new("Counter"),
                tag: tag.to_string(),
            }),
        }
    }

    async fn handle_stream(
        &self,
        request: IncomingRequest,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes, ClusterError>>, ClusterError>
    {
        let n: u32 = request.decode()?;
        Ok(futures::stream::iter((1..=n).map(|i| wire::encode(&i))).boxed())
    }
}

async fn throughput<F, Fut>(
    label: &str,
    total: usize,
    concurrency: usize,
    call: F,
) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static + Clone,
    // `call(caller)`: each caller talks to its own entity.
    Fut: std::future::Future<Output = Result<i64, ClusterError>> + Send,
{
    let start = Instant::now();
    let per_task = total / concurrency;
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                call(t).await?;
            }
            Ok::<_, ClusterError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = start.elapsed();
    println!(
        "  {label:<34} {:>9} calls in {:>7.2?}  = {:>10.0} calls/s",
        per_task * concurrency,
        elapsed,
        (per_task * concurrency) as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

/// The command line: `[--storage memory|sqlite:PATH] [--admin ADDR] [--serve]`.
struct Flags {
    /// `None`: memory; else the SQLite URL.
    sqlite_url: Option<String>,
    /// Where the admin API listens.
    admin: std::net::SocketAddr,
    /// Keep serving after the traffic, until Ctrl-C.
    serve: bool,
}

const USAGE: &str = "usage: quickstart [--storage memory|sqlite:PATH] [--admin ADDR] [--serve]";

fn flags() -> anyhow::Result<Flags> {
    let mut args = std::env::args().skip(1);
    let mut storage = None;
    let mut admin = "127.0.0.1:9090".to_string();
    let mut serve = false;
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| anyhow::anyhow!("`{name}` needs a value; {USAGE}"))
        };
        match name.as_str() {
            "--storage" => storage = Some(value()?),
            "--admin" => admin = value()?,
            "--serve" => serve = true,
            other => anyhow::bail!("unknown argument `{other}`; {USAGE}"),
        }
    }
    let admin = admin.parse().map_err(|e| {
        anyhow::anyhow!("--admin `{admin}` is not an address like 127.0.0.1:9090: {e}")
    })?;
    let sqlite_url = match storage.as_deref() {
        None | Some("memory") => None,
        Some(url) if url.starts_with("sqlite:") => Some(url.to_string()),
        Some(other) => {
            anyhow::bail!("unsupported --storage `{other}`: use `memory` or `sqlite:PATH`")
        }
    };
    Ok(Flags {
        sqlite_url,
        admin,
        serve,
    })
}

/// Serves the admin API and console of `sharding` (feature `admin`); `None` without it.
#[cfg(feature = "admin")]
async fn serve_admin(
    sharding: &Arc<cruster::sharding_impl::ShardingImpl>,
    addr: std::net::SocketAddr,
) -> anyhow::Result<Option<cruster::admin::AdminServer>> {
    use cruster::admin::{self, AdminOptions};
    // A local demo: actions (retry/purge dead letters) on, listening on loopback only.
    let options = AdminOptions::default().allow_actions(true);
    let server = admin::serve(addr, sharding.clone(), options).await?;
    println!(
        "admin API and console: http://{}/   (try `cargo run -p cruster-cli -- --admin http://{} status`)",
        server.local_addr(),
        server.local_addr()
    );
    Ok(Some(server))
}

#[cfg(not(feature = "admin"))]
async fn serve_admin(
    _sharding: &Arc<cruster::sharding_impl::ShardingImpl>,
    _addr: std::net::SocketAddr,
) -> anyhow::Result<Option<()>> {
    println!("(no admin console: build with `--features admin` to serve it)");
    Ok(None)
}

/// Builds the node on memory, or durably on the SQLite file of `url`.
async fn start_node(
    config: ShardingConfig,
    sqlite_url: Option<&str>,
) -> anyhow::Result<(SingleRunner, Totals, &'static str)> {
    let Some(url) = sqlite_url else {
        let runner = SingleRunner::builder().config(config).build().await?;
        return Ok((runner, Totals::default(), "memory backends"));
    };
    #[cfg(feature = "sqlite")]
    {
        use cruster::storage::sql_message::SqlPool;
        let SqlPool::Sqlite(pool) = SqlPool::connect(url).await? else {
            anyhow::bail!("`{url}` did not open a SQLite pool");
        };
        cruster::sqlx::query(
            "CREATE TABLE IF NOT EXISTS quickstart_counters \
             (id TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        let runner = SingleRunner::builder()
            .config(config)
            .sqlite(pool.clone())
            .build()
            .await?;
        Ok((runner, Totals::Sqlite(pool), "durable on SQLite"))
    }
    #[cfg(not(feature = "sqlite"))]
    {
        anyhow::bail!(
            "--storage {url} needs the `sqlite` feature: \
             cargo run --release --example quickstart --features sqlite -- --storage {url}"
        )
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Flags {
        sqlite_url,
        admin,
        serve,
    } = flags()?;
    let durable = sqlite_url.is_some();
    let (runner, totals, backends) = start_node(
        ShardingConfig {
            storage_poll_interval: Duration::from_millis(100),
            ..Default::default()
        },
        sqlite_url.as_deref(),
    )
    .await?;
    let sharding = runner.sharding().clone();
    println!(
        "cruster quickstart: one node at {}, {} shards owned, {backends}",
        sharding.runner_address(),
        sharding.owned_shards().len()
    );
    let admin_server = serve_admin(&sharding, admin).await?;

    let counter = Counter { totals };
    sharding.register_entity(Arc::new(counter.clone())).await?;
    let client = EntityClient::new(sharding.clone(), EntityType::new("Counter"));
    if durable {
        let before: i64 = client.send(&EntityId::new("counter-1"), "get", &()).await?;
        println!("counter-1 starts at {before} (its value from earlier runs on this file)");
    }

    // A singleton and a cron job.
    let heartbeats = Arc::new(AtomicU64::new(0));
    let beats = heartbeats.clone();
    register_singleton(sharding.as_ref(), "heartbeat", move |ctx: SingletonContext| {
        let beats = beats.clone();
        async move {
            let cancel = ctx.cancellation();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => { beats.fetch_add(1, Ordering::Relaxed); }
                }
            }
        }
    })
    .await?;
    let cron_runs = Arc::new(AtomicU64::new(0));
    let runs = cron_runs.clone();
    ClusterCron::new(
        "every-second",
        CronSchedule::parse("* * * * * * *")?,
        move |_scheduled| {
            let runs = runs.clone();
            Box::pin(async move {
                runs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
        },
    )
    .register(sharding.as_ref())
    .await?;

    println!("\nevery client mode:");
    let id = EntityId::new("counter-1");
    let v: i64 = client.send(&id, "increment", &5i64).await?;
    println!("  send                 increment(5)      -> {v}");
    let v: i64 = client
        .send_persisted(&id, "increment", &2i64, false)
        .await?;
    println!("  send_persisted       increment(2)      -> {v}");
    let a: i64 = client
        .send_persisted_with_key(&id, "increment", &10i64, "order-42", false)
        .await?;
    let b: i64 = client
        .send_persisted_with_key(&id, "increment", &10i64, "order-42", false)
        .await?;
    println!("  send_persisted_with_key twice          -> {a}, {b} (second is the stored reply)");
    client.notify(&id, "increment", &1i64).await?;
    let request = client.notify_persisted(&id, "increment", &1i64).await?;
    let v: i64 = client.join_reply(request).await?;
    println!("  notify + notify_persisted, join_reply  -> {v}");
    let due = Utc::now() + chrono::Duration::milliseconds(300);
    let started = Instant::now();
    let v: i64 = client.send_at(&id, "increment", &100i64, due).await?;
    println!(
        "  send_at(+300 ms)                       -> {v} after {:.0?}",
        started.elapsed()
    );
    let scheduled = client
        .notify_at(
            &id,
            "increment",
            &1000i64,
            Utc::now() + chrono::Duration::milliseconds(200),
        )
        .await?;
    let v: Option<i64> = client.poll_reply(scheduled).await?;
    println!("  notify_at(+200 ms), poll_reply at once -> {v:?}");
    let v: i64 = client.join_reply(scheduled).await?;
    println!("  ... join_reply                         -> {v}");
    let streamed: Vec<u32> = client
        .send_stream::<_, u32>(&id, "count", &5u32)
        .await?
        .filter_map(|v| async move { v.ok() })
        .collect()
        .await;
    println!("  send_stream(5)                         -> {streamed:?}");
    match client.send::<_, i64>(&id, "no-such-rpc", &()).await {
        Err(err) => println!("  unknown tag                            -> {err}"),
        Ok(v) => anyhow::bail!("an unknown tag answered {v}"),
    }

    println!("\na durable workflow (journaled activities, a durable timer):");
    let orders = ShipOrderWorkflow.register(sharding.clone()).await?;
    let order = ShipOrder {
        order_id: "order-1".into(),
        items: 3,
    };
    let started = Instant::now();
    let shipped = orders.execute(&order).await?;
    println!(
        "  execute(order-1)                       -> {shipped:?} in {:.0?}",
        started.elapsed()
    );
    let again = orders.execute(&order).await?;
    println!(
        "  execute(order-1) again                 -> {} (same key: the stored result)",
        again.tracking
    );
    let journal = cruster::workflow::workflow_journal(&sharding, "order-1").await?;
    let steps: Vec<String> = journal.iter().map(|e| e.key.name.clone()).collect();
    println!("  journal of order-1                     -> {steps:?}");

    println!("\nthroughput (64 concurrent callers on distinct entities):");
    // Durable runs write every increment to the file: fewer calls keep them short.
    let (sends, persisted_sends) = if durable {
        (20_000, 5_000)
    } else {
        (200_000, 100_000)
    };
    let persisted_label = if durable {
        "send_persisted (SQLite storage)"
    } else {
        "send_persisted (memory storage)"
    };
    let plain_ids: Arc<Vec<EntityId>> =
        Arc::new((0..64).map(|i| EntityId::new(format!("t-{i}"))).collect());
    let c = client.clone();
    throughput("send", sends, 64, move |caller| {
        let c = c.clone();
        let ids = plain_ids.clone();
        async move { c.send(&ids[caller], "increment", &1i64).await }
    })
    .await?;
    let persisted_ids: Arc<Vec<EntityId>> =
        Arc::new((0..64).map(|i| EntityId::new(format!("p-{i}"))).collect());
    let c = client.clone();
    throughput(persisted_label, persisted_sends, 64, move |caller| {
        let c = c.clone();
        let ids = persisted_ids.clone();
        async move {
            c.send_persisted(&ids[caller], "increment", &1i64, false)
                .await
        }
    })
    .await?;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    println!(
        "\nsingleton heartbeats: {}, cron runs: {}, active entities: {:?}",
        heartbeats.load(Ordering::Relaxed),
        cron_runs.load(Ordering::Relaxed),
        sharding.active_entities()
    );
    let m = sharding.metrics();
    println!(
        "metrics: sent={} persisted={} retried={} dead-lettered={}",
        m.messages_sent.get(),
        m.messages_persisted.get(),
        m.messages_retried.get(),
        m.messages_dead_lettered.get()
    );
    if serve && admin_server.is_some() {
        println!("\nserving the console until Ctrl-C ...");
        tokio::signal::ctrl_c().await?;
    }
    drop(admin_server);
    runner.shutdown().await?;
    println!("shut down cleanly");
    Ok(())
}
