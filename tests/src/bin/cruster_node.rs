//! `cruster-node`: one runner of a real cluster — gRPC between runners, PostgreSQL for
//! messages and workflows, PostgreSQL (default) or etcd for membership and shard locks —
//! hosting the test application of [`cruster_tests::node_app`].
//!
//! Every option is a flag or an environment variable (the flag wins):
//!
//! | flag | environment | default |
//! |---|---|---|
//! | `--listen` | `CRUSTER_LISTEN` | `127.0.0.1:9000` |
//! | `--advertise` | `CRUSTER_ADVERTISE` | the listen address |
//! | `--database-url` | `DATABASE_URL` | required |
//! | `--schema` | `CRUSTER_SCHEMA` | none (the role's `search_path`) |
//! | `--runner-storage` | `CRUSTER_RUNNER_STORAGE` | `sql` (or `etcd`) |
//! | `--etcd-endpoints` | `ETCD_ENDPOINTS` | `http://127.0.0.1:2379` (comma-separated) |
//! | `--etcd-prefix` | `CRUSTER_ETCD_PREFIX` | `/cruster-node/` |
//! | `--shards-per-group` | `CRUSTER_SHARDS_PER_GROUP` | `300` |
//! | `--lock-ttl-ms` | `CRUSTER_LOCK_TTL_MS` | `30000` |
//! | `--poll-interval-ms` | `CRUSTER_POLL_INTERVAL_MS` | `500` |
//! | `--shutdown-timeout-ms` | `CRUSTER_SHUTDOWN_TIMEOUT_MS` | `10000` |
//! | `--pool-size` | `CRUSTER_POOL_SIZE` | `10` (the application's pool; the SQL runner storage has 4 more) |
//! | `--dial-via` | `CRUSTER_DIAL_VIA` | none: `PEER=VIA,…` reaches the runner advertised as `PEER` at `VIA` (a test's proxy) |
//!
//! With `--schema`, every connection sets `search_path` to that schema (created if
//! missing), so tests can run clusters side by side in one database.
//!
//! Logs go to stderr (`RUST_LOG`, default `info`). Once the runner serves, it prints
//! `READY <advertised address>` on stdout. On SIGTERM or SIGINT it shuts down gracefully:
//! the runner drains and releases its shards and leaves the cluster, then the gRPC server
//! closes its sessions and stops; the process exits 0.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cruster::ports::runner_storage::RunnerStorage;
use cruster::prelude::*;
use cruster::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use cruster::sqlx::{self, AssertSqlSafe, PgPool};
use cruster::storage::etcd_runner::EtcdRunnerStorage;
use cruster::storage::sql_message::SqlMessageStorage;
use cruster::storage::sql_runner::SqlRunnerStorage;
use cruster::storage::sql_workflow::SqlWorkflowStorage;
use cruster::storage::sql_workflow_engine::SqlWorkflowEngine;
use cruster::tonic::transport::server::TcpIncoming;
use cruster::tonic::transport::Server;
use cruster::transport::grpc::{GrpcRunnerHealth, GrpcRunnerServer, GrpcRunners};
use cruster::types::RunnerAddress;
use cruster_tests::dial_via::{parse_dial_via, DialVia};
use cruster_tests::node_app::{
    register_singleton_and_cron, Counter, CounterClient, LoadTarget, ThreeStepWorkflow, APP_TABLES,
};
use tokio::signal::unix::{signal, SignalKind};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long the runner keeps trying to open its PostgreSQL pools at start-up.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// Serialises the set-up of runners starting together (held until the transaction ends).
const SETUP_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('cruster-node set-up'))";

/// Which runner storage holds membership and shard locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunnerStorageKind {
    Sql,
    Etcd,
}

/// The node's options (see the module docs).
#[derive(Debug)]
struct Options {
    listen: SocketAddr,
    advertise: RunnerAddress,
    database_url: String,
    schema: Option<String>,
    runner_storage: RunnerStorageKind,
    etcd_endpoints: Vec<String>,
    etcd_prefix: String,
    shards_per_group: u32,
    lock_ttl: Duration,
    poll_interval: Duration,
    shutdown_timeout: Duration,
    pool_size: u32,
    /// Peers reached at another address (`--dial-via`).
    dial_via: std::collections::HashMap<RunnerAddress, RunnerAddress>,
}

const USAGE: &str = "usage: cruster-node [--listen ADDR] [--advertise HOST:PORT] \
[--database-url URL] [--schema NAME] [--runner-storage sql|etcd] [--etcd-endpoints URLS] \
[--etcd-prefix PREFIX] [--shards-per-group N] [--lock-ttl-ms MS] [--poll-interval-ms MS] \
[--shutdown-timeout-ms MS] [--pool-size N] [--dial-via PEER=VIA,...] (every flag also reads an environment variable: see the docs)";

impl Options {
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, Error> {
        let mut flags = std::collections::HashMap::new();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if flag == "-h" || flag == "--help" {
                return Err(USAGE.into());
            }
            let Some(name) = flag.strip_prefix("--") else {
                return Err(format!("unexpected argument `{flag}`\n{USAGE}").into());
            };
            let (name, value) = match name.split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => {
                    let value = args
                        .next()
                        .ok_or_else(|| format!("`--{name}` needs a value\n{USAGE}"))?;
                    (name.to_string(), value)
                }
            };
            flags.insert(name, value);
        }
        let mut get = |flag: &str, env: &str| -> Option<String> {
            flags
                .remove(flag)
                .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
        };
        let millis = |value: Option<String>, default: u64, what: &str| -> Result<Duration, Error> {
            match value {
                Some(v) => Ok(Duration::from_millis(
                    v.parse().map_err(|e| format!("bad {what} `{v}`: {e}"))?,
                )),
                None => Ok(Duration::from_millis(default)),
            }
        };
        let listen: SocketAddr = get("listen", "CRUSTER_LISTEN")
            .unwrap_or_else(|| "127.0.0.1:9000".into())
            .parse()
            .map_err(|e| format!("bad --listen: {e}"))?;
        let advertise = match get("advertise", "CRUSTER_ADVERTISE") {
            Some(v) => v
                .parse()
                .map_err(|e| format!("bad --advertise `{v}`: {e}"))?,
            None => RunnerAddress::new(listen.ip().to_string(), listen.port()),
        };
        let database_url = get("database-url", "DATABASE_URL")
            .ok_or_else(|| format!("a PostgreSQL URL is required\n{USAGE}"))?;
        let schema = get("schema", "CRUSTER_SCHEMA");
        if let Some(schema) = &schema {
            if schema.is_empty()
                || !schema
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(
                    format!("bad --schema `{schema}`: letters, digits and `_` only").into(),
                );
            }
        }
        let runner_storage = match get("runner-storage", "CRUSTER_RUNNER_STORAGE").as_deref() {
            None | Some("sql") => RunnerStorageKind::Sql,
            Some("etcd") => RunnerStorageKind::Etcd,
            Some(other) => {
                return Err(format!("bad --runner-storage `{other}`: sql or etcd").into())
            }
        };
        let etcd_endpoints = get("etcd-endpoints", "ETCD_ENDPOINTS")
            .unwrap_or_else(|| "http://127.0.0.1:2379".into())
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let etcd_prefix =
            get("etcd-prefix", "CRUSTER_ETCD_PREFIX").unwrap_or_else(|| "/cruster-node/".into());
        let shards_per_group = match get("shards-per-group", "CRUSTER_SHARDS_PER_GROUP") {
            Some(v) => v
                .parse()
                .map_err(|e| format!("bad --shards-per-group `{v}`: {e}"))?,
            None => 300,
        };
        let lock_ttl = millis(
            get("lock-ttl-ms", "CRUSTER_LOCK_TTL_MS"),
            30_000,
            "--lock-ttl-ms",
        )?;
        let poll_interval = millis(
            get("poll-interval-ms", "CRUSTER_POLL_INTERVAL_MS"),
            500,
            "--poll-interval-ms",
        )?;
        let shutdown_timeout = millis(
            get("shutdown-timeout-ms", "CRUSTER_SHUTDOWN_TIMEOUT_MS"),
            10_000,
            "--shutdown-timeout-ms",
        )?;
        let pool_size = match get("pool-size", "CRUSTER_POOL_SIZE") {
            Some(v) => v
                .parse()
                .map_err(|e| format!("bad --pool-size `{v}`: {e}"))?,
            None => 10,
        };
        let dial_via = match get("dial-via", "CRUSTER_DIAL_VIA") {
            Some(v) => parse_dial_via(&v).map_err(|e| format!("bad --dial-via: {e}"))?,
            None => Default::default(),
        };
        if let Some(unknown) = flags.keys().next() {
            return Err(format!("unknown flag `--{unknown}`\n{USAGE}").into());
        }
        Ok(Options {
            listen,
            advertise,
            database_url,
            schema,
            runner_storage,
            etcd_endpoints,
            etcd_prefix,
            shards_per_group,
            lock_ttl,
            poll_interval,
            shutdown_timeout,
            pool_size,
            dial_via,
        })
    }

    /// A pool of `max` connections working in the node's schema.
    ///
    /// Opening it is retried for up to [`STARTUP_PATIENCE`]: on a machine busy enough,
    /// connecting can take longer than the pool's 5 s acquire timeout, and a runner that
    /// gives up at start-up is one a supervisor has to start again.
    async fn pool(&self, max: u32) -> Result<PgPool, Error> {
        let mut options = PgConnectOptions::from_str(&self.database_url)?;
        if let Some(schema) = &self.schema {
            options = options.options([("search_path", schema.as_str())]);
        }
        let deadline = tokio::time::Instant::now() + STARTUP_PATIENCE;
        loop {
            match Self::open_pool(options.clone(), max).await {
                Ok(pool) => return Ok(pool),
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(%err, "cannot open the PostgreSQL pool yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn open_pool(options: PgConnectOptions, max: u32) -> Result<PgPool, Error> {
        let pool = PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        // Open every connection now: connecting (authentication included) can take a
        // second on a busy machine, and a lock renewal must never wait for that.
        let warm = futures::future::try_join_all((0..max).map(|_| pool.acquire())).await?;
        drop(warm);
        Ok(pool)
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("{err}");
            std::process::exit(2);
        }
    };
    if let Err(err) = run(options).await {
        tracing::error!(%err, "cruster-node failed");
        std::process::exit(1);
    }
}

async fn run(options: Options) -> Result<(), Error> {
    let runner = options.advertise.to_string();
    // Runners of a new cluster often start together, and concurrent `CREATE … IF NOT
    // EXISTS` statements can fail in PostgreSQL: one runner at a time creates the schema
    // (here) and the application's tables (below), under an advisory lock.
    if let Some(schema) = &options.schema {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(STARTUP_PATIENCE)
            .connect(&options.database_url)
            .await?;
        let mut tx = admin.begin().await?;
        sqlx::query(SETUP_LOCK).execute(&mut *tx).await?;
        sqlx::query(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        admin.close().await;
    }

    // Storage: messages and workflows on the application's pool; the runner storage on a
    // small pool of its own, so lock renewals never wait behind application work.
    let pool = options.pool(options.pool_size).await?;
    let message_storage = Arc::new(SqlMessageStorage::new(pool.clone()));
    message_storage.migrate().await?;
    let mut tx = pool.begin().await?;
    sqlx::query(SETUP_LOCK).execute(&mut *tx).await?;
    sqlx::raw_sql(APP_TABLES).execute(&mut *tx).await?;
    tx.commit().await?;
    let runner_storage: Arc<dyn RunnerStorage> = match options.runner_storage {
        RunnerStorageKind::Sql => {
            let storage = SqlRunnerStorage::new(options.pool(4).await?)
                .with_statement_timeout((options.lock_ttl / 2).max(Duration::from_millis(500)));
            storage.migrate().await?;
            Arc::new(storage)
        }
        RunnerStorageKind::Etcd => {
            let client =
                cruster::etcd_client::Client::connect(options.etcd_endpoints.clone(), None).await?;
            let ttl_secs = options.lock_ttl.as_secs().max(1);
            Arc::new(EtcdRunnerStorage::new(
                client,
                options.etcd_prefix.clone(),
                ttl_secs,
            ))
        }
    };

    // Transport.
    let grpc_runners = Arc::new(GrpcRunners::new());
    let runner_health = Arc::new(DialVia::new(
        Arc::new(GrpcRunnerHealth::new(grpc_runners.clone())),
        options.dial_via.clone(),
    ));
    let runners = Arc::new(DialVia::new(grpc_runners, options.dial_via.clone()));

    let sharding = ShardingImpl::builder()
        .config(ShardingConfig {
            runner_address: options.advertise.clone(),
            shards_per_group: options.shards_per_group,
            runner_lock_ttl: options.lock_ttl,
            storage_poll_interval: options.poll_interval,
            shutdown_timeout: options.shutdown_timeout,
            ..Default::default()
        })
        .runners(runners)
        .runner_storage(runner_storage)
        .runner_health(runner_health)
        .message_storage(message_storage)
        .workflow_storage(Arc::new(SqlWorkflowStorage::new(pool.clone())))
        .workflow_engine(Arc::new(SqlWorkflowEngine::new(pool.clone())))
        .build()?;

    Counter {
        pool: pool.clone(),
        runner: runner.clone(),
        peers: CounterClient::new(sharding.clone()),
    }
    .register(sharding.clone())
    .await?;
    LoadTarget.register(sharding.clone()).await?;
    ThreeStepWorkflow {
        runner: runner.clone(),
    }
    .register(sharding.clone())
    .await?;
    register_singleton_and_cron(&sharding, pool.clone(), runner.clone()).await?;

    // Serve before joining, so the others can reach this runner once it is registered.
    let server = GrpcRunnerServer::new(sharding.clone());
    let closer = server.closer();
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut serving = tokio::spawn(
        Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .add_service(server.into_service())
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = server_stopped.await;
            }),
    );

    sharding.start().await?;
    tracing::info!(%runner, listen = %options.listen, storage = ?options.runner_storage, "runner serving");
    for (peer, via) in &options.dial_via {
        tracing::info!(%peer, %via, "this runner reaches a peer through another address");
    }
    println!("READY {runner}");

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
        result = &mut serving => {
            return Err(format!("the gRPC server stopped: {result:?}").into());
        }
    }

    // The runner first (drain, release the shards, leave), while the server still answers
    // the others; then the server's sessions, and the server.
    sharding.shutdown().await?;
    closer.close();
    let _ = stop_server.send(());
    match tokio::time::timeout(Duration::from_secs(5), serving).await {
        Ok(Ok(Ok(()))) => {}
        Ok(result) => tracing::warn!(?result, "the gRPC server ended badly"),
        Err(_) => tracing::warn!("the gRPC server did not stop within 5 s"),
    }
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}
