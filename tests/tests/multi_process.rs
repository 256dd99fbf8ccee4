//! The multi-process fault suite: three `cruster-node` processes on 127.0.0.1 (gRPC between
//! them, PostgreSQL for messages, workflows and runner storage), a driver sending persisted
//! increments, plain sends and workflow starts at a steady rate, and runners killed and
//! restarted under that traffic. Afterwards everything is checked from PostgreSQL.
//!
//! # The driver
//!
//! The driver is this test process. It must outlive every fault it injects (it is what
//! counts the acknowledgements), so it is not one of the runners: it runs a client-only
//! `ShardingImpl` (`runner_weight: 0`: it joins the membership, so its request ids are
//! unique and the runners push stored replies to it, but no shard is ever assigned to it)
//! with the same message storage and the gRPC transport, and a gRPC server of its own for
//! those pushes.
//!
//! # The processes
//!
//! [`ProcessCluster`] spawns the runner binary (`CARGO_BIN_EXE_cruster-node`) on ports
//! picked free on 127.0.0.1 (below the ephemeral range), kills (SIGKILL) and terminates
//! (SIGTERM) them, and restarts them on the same address, as a supervisor restarting a
//! crashed service would. Each child is killed when the cluster is dropped, also when the
//! test panics. Every wait is bounded. Each runner's log (stderr) goes to a file in a
//! temporary folder named in the test's output, removed when the test passes
//! (`CRUSTER_NODE_LOG` sets the runners' `RUST_LOG`).
//!
//! # The scenario
//!
//! Under traffic (t in seconds from its start): SIGKILL runner 0 at 3, restart it at 8;
//! SIGKILL runner 1 at 13; SIGTERM runner 2 at 16 (it must exit 0) and restart it; restart
//! runner 1 at 22; stop sending at 28. Then: every request has its outcome, every started
//! workflow completes, nothing is pending or dead-lettered, and the checks of the effects
//! recorded in PostgreSQL (see the test's assertions) hold.
//!
//! The scenario runs twice: with membership and shard locks in PostgreSQL
//! (`SqlRunnerStorage`) and in etcd (`EtcdRunnerStorage`, under a key prefix of its own).
//!
//! # Two more faults in the same harness
//!
//! * **PostgreSQL outage.** The cluster runs on a private PostgreSQL instance of the test
//!   ([`PrivatePostgres`]: the shared one serves other tests and is never stopped), which
//!   holds everything: messages, workflows, the application's tables, and membership and
//!   shard locks. At 4 s it is stopped as by a crash (`pg_ctl stop -m immediate`) for
//!   [`OUTAGE`] — longer than a poll interval and than the lock TTL, so every runner is
//!   fenced off every shard — then started again on the same port; the runners and the
//!   driver recover by themselves. Skipped outside CI when PostgreSQL's server binaries
//!   are not installed.
//! * **Partition.** Runner 2 advertises the address of a [`TcpProxy`] of the test in front
//!   of its gRPC port, so the driver and the other runners reach it only through the
//!   proxy, and it reaches each other runner through a proxy of its own
//!   (`cruster-node --dial-via`); its storage stays reachable. From 3 s to 9 s the three
//!   proxies refuse connections, from 13 s to 19 s they black-hole them (accept, never
//!   forward); each cut closes the existing connections. Its callers must get answers or
//!   errors, never a hang.
//!
//! In every scenario the same checks run afterwards ([`Run::finish`]); besides those of the
//! kill scenario: no call of the driver timed out (each is bounded:
//! [`PERSISTED_TIMEOUT`], [`PLAIN_TIMEOUT`]), and no counter — so no increment — was ever
//! handled on two runners at overlapping times (each run of an increment records its
//! runner, start and end in `mp_increment_runs`; a run cut by a kill or by the outage has
//! no end and is left out, and the partition scenario must have none).
//!
//! The scenarios never run at once (a PostgreSQL advisory lock on `DATABASE_URL`, also
//! across nextest's processes). Each needs `DATABASE_URL`; without it they print
//! `SKIPPED` and pass. The etcd one also needs `ETCD_ENDPOINTS` (`.ci/services.sh` sets
//! both). Each works in a fresh schema, dropped when it passes, and holds at most about 41
//! connections (three runners of 5 + 4, the driver's 11, the checker's 3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cruster::ports::runner_storage::RunnerStorage;
use cruster::prelude::*;
use cruster::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use cruster::sqlx::{self, AssertSqlSafe, Connection, PgConnection, PgPool};
use cruster::storage::etcd_runner::EtcdRunnerStorage;
use cruster::storage::sql_message::SqlMessageStorage;
use cruster::storage::sql_runner::SqlRunnerStorage;
use cruster::types::{EntityId, RunnerAddress, ShardId};
use cruster::workflow::WorkflowClient;
use cruster_tests::client_driver::ClientDriver;
use cruster_tests::node_app::{CounterClient, Increment, ThreeStepWorkflow, Touch, APP_TABLES};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

#[path = "multi_process/private_postgres.rs"]
mod private_postgres;
#[path = "multi_process/tcp_proxy.rs"]
mod tcp_proxy;

use private_postgres::PrivatePostgres;
use tcp_proxy::{ProxyMode, TcpProxy};

const NODE: &str = env!("CARGO_BIN_EXE_cruster-node");
const RUNNERS: usize = 3;
const SHARDS: u32 = 30;
const LOCK_TTL: Duration = Duration::from_secs(3);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a runner may take from spawn to `READY` (it retries opening its pools for 30 s).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERMed runner may take to exit (drain within `SHUTDOWN_TIMEOUT`, release,
/// leave, close the server).
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Counters the increments are spread over.
const COUNTERS: usize = 24;
/// The driver's pace: one persisted increment per tick, a plain send every
/// `TOUCH_EVERY` ticks, a workflow start every `WORKFLOW_EVERY` ticks.
const TICK: Duration = Duration::from_millis(20);
const TOUCH_EVERY: u64 = 5;
const WORKFLOW_EVERY: u64 = 10;
/// How long one request of the driver may wait for its answer.
const PERSISTED_TIMEOUT: Duration = Duration::from_secs(60);
const PLAIN_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// The schema
// ---------------------------------------------------------------------------------------

/// `DATABASE_URL`, or `None` after printing that the test is skipped.
fn database_url_or_skip() -> Option<String> {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!(
            "\n==============================================================\n\
                 SKIPPED: DATABASE_URL is not set, so this multi-process PostgreSQL test did\n\
                 not run. Run `source .ci/services.sh` (CI always does) to start PostgreSQL.\n\
                 ==============================================================\n"
        );
        return None;
    };
    Some(url)
}

/// A fresh schema in a database.
struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    /// A fresh schema in the database of `DATABASE_URL` (`None` when it is not set).
    async fn create() -> Option<TestSchema> {
        let url = database_url_or_skip()?;
        Some(TestSchema::create_in(&url).await)
    }

    /// A fresh schema in the database at `url`.
    async fn create_in(url: &str) -> TestSchema {
        let url = url.to_string();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("cruster_mp_{}_{nanos}", std::process::id());
        let admin = PgPool::connect(&url)
            .await
            .unwrap_or_else(|err| panic!("{url} must point at a reachable PostgreSQL: {err}"));
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        TestSchema { url, name }
    }

    async fn pool(&self, max: u32) -> PgPool {
        let options = PgConnectOptions::from_str(&self.url)
            .unwrap()
            .options([("search_path", self.name.as_str())]);
        // A short acquire timeout: while PostgreSQL is down, a call fails in seconds
        // instead of waiting the default 30 s for a connection.
        let pool = PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .unwrap();
        // Connect every connection now (authentication can take a second on a busy
        // machine), so no later call of the driver waits for it.
        let warm = futures::future::try_join_all((0..max).map(|_| pool.acquire()))
            .await
            .unwrap();
        drop(warm);
        pool
    }

    async fn drop_schema(self) {
        let admin = PgPool::connect(&self.url).await.unwrap();
        sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.name)))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
    }
}

// ---------------------------------------------------------------------------------------
// The harness: runner processes
// ---------------------------------------------------------------------------------------

/// Where the runners keep membership and shard locks.
#[derive(Clone, Debug)]
enum Membership {
    /// `SqlRunnerStorage`, in the test's schema.
    Postgres,
    /// `EtcdRunnerStorage` at `endpoints`, under a key prefix of the test's own.
    Etcd { endpoints: String, prefix: String },
}

impl Membership {
    /// The etcd of `ETCD_ENDPOINTS` (set by `.ci/services.sh`), under a fresh prefix.
    fn etcd(schema: &TestSchema) -> Membership {
        let Ok(endpoints) = std::env::var("ETCD_ENDPOINTS") else {
            panic!(
                "ETCD_ENDPOINTS is not set: this test needs a running etcd. Run \
                 `source .ci/services.sh` from the workspace root (it starts etcd on \
                 127.0.0.1:2379 and exports ETCD_ENDPOINTS), then run the test again"
            )
        };
        Membership::Etcd {
            endpoints,
            prefix: format!("/{}/", schema.name),
        }
    }

    /// The flags that give a runner this membership.
    fn node_args(&self) -> Vec<String> {
        match self {
            Membership::Postgres => vec!["--runner-storage".into(), "sql".into()],
            Membership::Etcd { endpoints, prefix } => vec![
                "--runner-storage".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                endpoints.clone(),
                "--etcd-prefix".into(),
                prefix.clone(),
            ],
        }
    }

    /// A runner storage on this membership, for the driver and the checks.
    async fn storage(&self, schema: &TestSchema) -> Arc<dyn RunnerStorage> {
        match self {
            Membership::Postgres => Arc::new(
                SqlRunnerStorage::new(schema.pool(3).await)
                    .with_statement_timeout(Duration::from_secs(1)),
            ),
            Membership::Etcd { endpoints, prefix } => {
                let endpoints: Vec<&str> = endpoints.split(',').map(str::trim).collect();
                let client = cruster::etcd_client::Client::connect(endpoints, None)
                    .await
                    .expect("etcd answers at ETCD_ENDPOINTS");
                Arc::new(EtcdRunnerStorage::new(
                    client,
                    prefix.clone(),
                    LOCK_TTL.as_secs(),
                ))
            }
        }
    }
}

/// A port free on 127.0.0.1 right now, below the kernel's ephemeral range: a runner is
/// restarted on the port it had, and while it is down no outgoing connection of another
/// process may take that port as its local one.
fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_start.max(10_100));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize
        ^ (std::process::id() as usize).wrapping_mul(7919);
    for attempt in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let offset =
            seed.wrapping_add((n + attempt).wrapping_mul(104_729)) % usize::from(high - low);
        let port = low + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One runner slot: its address stays the same across restarts.
struct RunnerSlot {
    /// The port it advertises: its own, or that of a proxy in front of it.
    port: u16,
    /// The port it listens on.
    listen_port: u16,
    /// `--dial-via` of the runner: peers it reaches through proxies of the test.
    dial_via: Option<String>,
    child: Option<Child>,
    starts: usize,
    log: PathBuf,
}

/// Runner processes of one cluster. Dropping it SIGKILLs every child still running.
struct ProcessCluster {
    url: String,
    schema: String,
    membership: Membership,
    log_dir: PathBuf,
    slots: Vec<RunnerSlot>,
}

impl ProcessCluster {
    fn new(schema: &TestSchema, membership: &Membership, runners: usize) -> ProcessCluster {
        let log_dir = std::env::temp_dir().join(format!("cruster-{}", schema.name));
        std::fs::create_dir_all(&log_dir).unwrap();
        let mut ports = BTreeSet::new();
        while ports.len() < runners {
            ports.insert(free_port());
        }
        let slots = ports
            .into_iter()
            .enumerate()
            .map(|(i, port)| RunnerSlot {
                port,
                listen_port: port,
                dial_via: None,
                child: None,
                starts: 0,
                log: log_dir.join(format!("runner-{i}.log")),
            })
            .collect();
        ProcessCluster {
            url: schema.url.clone(),
            schema: schema.name.clone(),
            membership: membership.clone(),
            log_dir,
            slots,
        }
    }

    /// Makes runner `i` (not started yet) advertise `proxy_port`, a proxy forwarding to
    /// the port it listens on.
    fn behind_proxy(&mut self, i: usize, proxy_port: u16) {
        assert!(
            self.slots[i].child.is_none(),
            "runner {i} is already running"
        );
        self.slots[i].port = proxy_port;
    }

    /// Makes runner `i` (not started yet) reach runner `peer` through `proxy_port`, a proxy
    /// forwarding to where `peer` listens (the others still reach `peer` directly).
    fn dial_through_proxy(&mut self, i: usize, peer: usize, proxy_port: u16) {
        assert!(
            self.slots[i].child.is_none(),
            "runner {i} is already running"
        );
        let pair = format!("{}=127.0.0.1:{proxy_port}", self.address(peer));
        let slot = &mut self.slots[i];
        slot.dial_via = Some(match slot.dial_via.take() {
            Some(earlier) => format!("{earlier},{pair}"),
            None => pair,
        });
    }

    /// Where runner `i` listens (behind its proxy, if it has one).
    fn listen_address(&self, i: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.slots[i].listen_port))
    }

    fn address(&self, i: usize) -> RunnerAddress {
        RunnerAddress::new("127.0.0.1", self.slots[i].port)
    }

    fn live(&self) -> Vec<RunnerAddress> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].child.is_some())
            .map(|i| self.address(i))
            .collect()
    }

    /// Spawns runner `i` and waits until it prints `READY`.
    async fn start(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        assert!(slot.child.is_none(), "runner {i} is already running");
        slot.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&slot.log)
            .unwrap();
        std::io::Write::write_all(
            &mut log,
            format!("===== start #{} of runner {i} =====\n", slot.starts).as_bytes(),
        )
        .unwrap();
        let listen = format!("127.0.0.1:{}", slot.listen_port);
        let advertise = format!("127.0.0.1:{}", slot.port);
        let dial_via = slot
            .dial_via
            .as_ref()
            .map(|via| vec!["--dial-via".to_string(), via.clone()])
            .unwrap_or_default();
        let mut child = Command::new(NODE)
            .args(["--listen", &listen, "--advertise", &advertise])
            .args(dial_via)
            .args(["--database-url", &self.url, "--schema", &self.schema])
            .args(self.membership.node_args())
            .args(["--pool-size", "5"])
            .args(["--shards-per-group", &SHARDS.to_string()])
            .args(["--lock-ttl-ms", &LOCK_TTL.as_millis().to_string()])
            .args(["--poll-interval-ms", &POLL_INTERVAL.as_millis().to_string()])
            .args([
                "--shutdown-timeout-ms",
                &SHUTDOWN_TIMEOUT.as_millis().to_string(),
            ])
            .env(
                "RUST_LOG",
                std::env::var("CRUSTER_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("the cruster-node binary starts");
        let stdout = child.stdout.take().unwrap();
        let (lines, mut received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                let _ = lines.send(line);
            }
        });
        slot.child = Some(child);
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            while let Some(line) = received.recv().await {
                if line.starts_with("READY") {
                    return true;
                }
            }
            false
        })
        .await;
        if ready != Ok(true) {
            let status = slot.child.as_mut().unwrap().try_wait();
            panic!(
                "runner {i} did not become ready within {READY_TIMEOUT:?} (exit: {status:?}); \
                 its log: {}",
                slot.log.display()
            );
        }
    }

    /// SIGKILL: the runner dies at once, releasing nothing.
    async fn sigkill(&mut self, i: usize) {
        let mut child = self.slots[i].child.take().expect("runner is running");
        child.start_kill().unwrap();
        tokio::time::timeout(EXIT_TIMEOUT, child.wait())
            .await
            .expect("a SIGKILLed runner exits")
            .unwrap();
    }

    /// SIGTERM, and waits for the graceful exit.
    async fn sigterm(&mut self, i: usize) -> ExitStatus {
        let mut child = self.slots[i].child.take().expect("runner is running");
        let pid = child.id().expect("the runner has a pid").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid} failed");
        match tokio::time::timeout(EXIT_TIMEOUT, child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "runner {i} did not exit within {EXIT_TIMEOUT:?} of SIGTERM; its log: {}",
                self.slots[i].log.display()
            ),
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            if let Some(mut child) = slot.child.take() {
                let _ = child.start_kill();
                let _ = child.try_wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------

/// The driver: a client-only runner in this process (see `ClientDriver`).
struct Driver {
    sharding: Arc<ShardingImpl>,
    inner: ClientDriver,
}

impl Driver {
    async fn start(schema: &TestSchema, membership: Arc<dyn RunnerStorage>) -> Driver {
        let port = free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let pool = schema.pool(8).await;
        let config = ShardingConfig {
            shards_per_group: SHARDS,
            runner_lock_ttl: LOCK_TTL,
            storage_poll_interval: POLL_INTERVAL,
            ..Default::default()
        };
        // With workflow storage: `WorkflowClient::poll` reads the execution's record.
        let inner = ClientDriver::start(listener, config, membership, &pool, true)
            .await
            .unwrap();
        Driver {
            sharding: inner.sharding.clone(),
            inner,
        }
    }

    async fn stop(self) {
        self.inner.stop().await.unwrap();
    }
}

/// What the driver sent and what was acknowledged.
#[derive(Default)]
struct Tally {
    increments_sent: AtomicUsize,
    increments_acked: Mutex<Vec<String>>,
    increments_failed: Mutex<BTreeMap<String, usize>>,
    touches_sent: AtomicUsize,
    touches_acked: Mutex<Vec<String>>,
    touches_failed: Mutex<BTreeMap<String, usize>>,
    workflows_sent: AtomicUsize,
    workflows_started: Mutex<Vec<(String, String)>>,
    workflows_failed: Mutex<BTreeMap<String, usize>>,
}

/// The variant name of an error (`RunnerUnavailable`, `DeliveryUnknown`, …), or `timeout`.
fn error_kind(err: &ClusterError) -> String {
    let debug = format!("{err:?}");
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or("?")
        .to_string()
}

fn count(map: &Mutex<BTreeMap<String, usize>>, kind: String) {
    *map.lock().entry(kind).or_default() += 1;
}

/// Sends at a steady pace until `stop`; every request runs in its own task, bounded in
/// time, and reports to `tally`. Returns once every request has its outcome.
async fn drive(sharding: Arc<ShardingImpl>, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let counters = CounterClient::new(sharding.clone());
    let workflows = WorkflowClient::<ThreeStepWorkflow>::new(sharding.clone());
    let mut requests = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        n += 1;
        let counter = format!("counter-{}", n % COUNTERS as u64);
        {
            let (counters, tally) = (counters.clone(), tally.clone());
            let request = Increment {
                counter: counter.clone(),
                request_id: format!("inc-{n:06}"),
                amount: 1,
            };
            tally.increments_sent.fetch_add(1, Ordering::SeqCst);
            requests.spawn(async move {
                let id = EntityId::new(&request.counter);
                let sent = counters.increment(&id, &request);
                match tokio::time::timeout(PERSISTED_TIMEOUT, sent).await {
                    Ok(Ok(_)) => tally.increments_acked.lock().push(request.request_id),
                    Ok(Err(err)) => count(&tally.increments_failed, error_kind(&err)),
                    Err(_) => count(&tally.increments_failed, "timeout".into()),
                }
            });
        }
        if n.is_multiple_of(TOUCH_EVERY) {
            let (counters, tally) = (counters.clone(), tally.clone());
            // Every touch is relayed by its handler to another counter: a plain call from
            // the runner owning the first to the one owning the second. The pairs vary, so
            // every runner calls every other one.
            let relay_to = Some(format!(
                "counter-{}",
                (n / TOUCH_EVERY * 7 + 3) % COUNTERS as u64
            ));
            let request = Touch {
                counter: counter.clone(),
                request_id: format!("touch-{n:06}"),
                relay_to,
            };
            tally.touches_sent.fetch_add(1, Ordering::SeqCst);
            requests.spawn(async move {
                let id = EntityId::new(&request.counter);
                match tokio::time::timeout(PLAIN_TIMEOUT, counters.touch(&id, &request)).await {
                    Ok(Ok(_)) => {
                        let mut acked = tally.touches_acked.lock();
                        if request.relay_to.is_some() {
                            // Answered only after the relayed touch was.
                            acked.push(format!("{}/relayed", request.request_id));
                        }
                        acked.push(request.request_id);
                    }
                    Ok(Err(err)) => count(&tally.touches_failed, error_kind(&err)),
                    Err(_) => count(&tally.touches_failed, "timeout".into()),
                }
            });
        }
        if n.is_multiple_of(WORKFLOW_EVERY) {
            let (workflows, tally) = (workflows.clone(), tally.clone());
            let job = format!("job-{n:06}");
            tally.workflows_sent.fetch_add(1, Ordering::SeqCst);
            requests.spawn(async move {
                match tokio::time::timeout(PERSISTED_TIMEOUT, workflows.start(&job)).await {
                    Ok(Ok(execution)) => tally.workflows_started.lock().push((job, execution)),
                    Ok(Err(err)) => count(&tally.workflows_failed, error_kind(&err)),
                    Err(_) => count(&tally.workflows_failed, "timeout".into()),
                }
            });
        }
        // Reap finished requests as we go so the set stays small.
        while let Some(done) = requests.try_join_next() {
            done.unwrap();
        }
    }
    while let Some(done) = requests.join_next().await {
        done.unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Reading the outcome from PostgreSQL
// ---------------------------------------------------------------------------------------

async fn i64_of(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Shards by owner, as the runner storage has them (expired locks have no owner).
async fn lock_owners(membership: &dyn RunnerStorage) -> BTreeMap<String, i64> {
    let mut owners = BTreeMap::new();
    for shard in 0..SHARDS {
        let owner = match membership
            .shard_owner(&ShardId::new("default", shard))
            .await
        {
            Ok(Some(owner)) => owner.to_string(),
            Ok(None) => "(none)".to_string(),
            Err(_) => "(unknown)".to_string(),
        };
        *owners.entry(owner).or_default() += 1;
    }
    owners
}

/// Waits until every shard is locked by one of `live` and each of them holds some.
async fn wait_for_spread(membership: &dyn RunnerStorage, live: &[RunnerAddress], within: Duration) {
    let live: BTreeSet<String> = live.iter().map(ToString::to_string).collect();
    let deadline = Instant::now() + within;
    loop {
        let owners = lock_owners(membership).await;
        let spread = owners.keys().all(|o| live.contains(o))
            && live.iter().all(|r| owners.get(r).is_some_and(|&n| n > 0));
        if spread {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "shards not spread over the live runners {live:?} within {within:?}: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Persisted messages neither processed nor dead-lettered, except the cron's next run
/// (always one, due in the future).
const PENDING: &str = "SELECT COUNT(*) FROM cruster_messages \
     WHERE NOT processed AND NOT dead_lettered AND entity_type NOT LIKE 'cruster.cron/%'";

// ---------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------

/// What a scenario may excuse in its checks.
struct Excuses {
    /// Increment runs without an end (cut by a kill, or their end not recorded because
    /// PostgreSQL was down) are expected; without this, every run must have ended.
    cut_runs: bool,
    /// Cron occurrences that may run twice (each one excused by a fault that cut a run).
    cron_repeats: i64,
}

/// One scenario's cluster under the driver's traffic: [`Run::begin`] sets it up and starts
/// the traffic, the scenario injects its faults, [`Run::finish`] stops the traffic and
/// checks everything from PostgreSQL.
struct Run {
    label: String,
    schema: TestSchema,
    serial: PgConnection,
    pool: PgPool,
    runner_storage: Arc<dyn RunnerStorage>,
    cluster: ProcessCluster,
    driver: Driver,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    traffic: tokio::task::JoinHandle<()>,
    began: Instant,
    faults: Vec<String>,
}

/// One scenario at a time on this machine, also across test processes (nextest): each
/// holds about 41 connections and keeps both cores busy. Held until the connection closes.
async fn one_scenario_at_a_time() -> Option<PgConnection> {
    let url = std::env::var("DATABASE_URL").ok()?;
    let mut serial = PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtext('cruster-tests multi_process'))")
        .execute(&mut serial)
        .await
        .unwrap();
    Some(serial)
}

impl Run {
    /// Starts the runners of `cluster` (made for `schema` and `membership`; a proxy in
    /// front of one of them, if any, already listening), waits for the shards to spread,
    /// and starts the driver's traffic.
    async fn begin(
        label: &str,
        serial: PgConnection,
        schema: TestSchema,
        membership: &Membership,
        mut cluster: ProcessCluster,
    ) -> Run {
        let pool = schema.pool(3).await;
        SqlMessageStorage::new(pool.clone())
            .migrate()
            .await
            .unwrap();
        sqlx::raw_sql(APP_TABLES).execute(&pool).await.unwrap();
        let runner_storage = membership.storage(&schema).await;
        eprintln!(
            "multi_process {label}: membership {membership:?}, schema {}, runner logs in {}",
            schema.name,
            cluster.log_dir.display()
        );
        for i in 0..cluster.slots.len() {
            cluster.start(i).await;
        }
        wait_for_spread(&*runner_storage, &cluster.live(), Duration::from_secs(30)).await;
        let driver = Driver::start(&schema, runner_storage.clone()).await;
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = tokio::spawn(drive(driver.sharding.clone(), tally.clone(), stop.clone()));
        Run {
            label: label.to_string(),
            schema,
            serial,
            pool,
            runner_storage,
            cluster,
            driver,
            tally,
            stop,
            traffic,
            began: Instant::now(),
            faults: Vec::new(),
        }
    }

    /// Sleeps until `secs` seconds after the traffic began.
    async fn at(&self, secs: u64) {
        tokio::time::sleep_until((self.began + Duration::from_secs(secs)).into()).await;
    }

    fn fault(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!(
            "multi_process {}: t={:.1?} {what}",
            self.label,
            self.began.elapsed()
        );
        self.faults.push(what);
    }

    /// Stops the traffic, checks everything (see the assertions), prints the counts,
    /// stops the cluster gracefully and cleans up.
    async fn finish(self, excuses: Excuses) {
        let Run {
            label,
            schema,
            serial,
            pool,
            runner_storage,
            mut cluster,
            driver,
            tally,
            stop,
            traffic,
            began,
            faults,
        } = self;
        stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(PERSISTED_TIMEOUT + Duration::from_secs(10), traffic)
            .await
            .expect("every request of the driver has its outcome")
            .unwrap();
        let traffic_time = began.elapsed();

        // No call of the driver hung: every one got an answer or an error in time.
        let timeouts = [
            &tally.increments_failed,
            &tally.touches_failed,
            &tally.workflows_failed,
        ]
        .iter()
        .map(|failed| failed.lock().get("timeout").copied().unwrap_or(0))
        .sum::<usize>();
        assert_eq!(
            timeouts,
            0,
            "{timeouts} calls of the driver got no answer within their timeout \
             (persisted {PERSISTED_TIMEOUT:?}, plain {PLAIN_TIMEOUT:?}): increments {:?}, \
             plain {:?}, workflows {:?}",
            tally.increments_failed.lock(),
            tally.touches_failed.lock(),
            tally.workflows_failed.lock()
        );

        // Every started workflow completes.
        let workflows = WorkflowClient::<ThreeStepWorkflow>::new(driver.sharding.clone());
        let started = tally.workflows_started.lock().clone();
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut unfinished: Vec<&(String, String)> = started.iter().collect();
        let mut poll_error = None;
        while !unfinished.is_empty() && Instant::now() < deadline {
            let mut still = Vec::new();
            for entry in unfinished {
                match workflows.poll(&entry.1).await {
                    Ok(Some(result)) => assert_eq!(result, format!("{} done", entry.0)),
                    Ok(None) => still.push(entry),
                    Err(err) => {
                        poll_error = Some(err);
                        still.push(entry);
                    }
                }
            }
            unfinished = still;
            if !unfinished.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        assert!(
            unfinished.is_empty(),
            "{} of {} started workflows did not complete: {:?} (last poll error: {poll_error:?})",
            unfinished.len(),
            started.len(),
            unfinished.iter().take(10).collect::<Vec<_>>()
        );

        // Nothing left behind.
        let deadline = Instant::now() + Duration::from_secs(20);
        while i64_of(&pool, PENDING).await > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let pending: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT entity_type, entity_id, tag, attempts FROM cruster_messages \
             WHERE NOT processed AND NOT dead_lettered AND entity_type NOT LIKE 'cruster.cron/%' \
             ORDER BY request_id LIMIT 20",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(pending.is_empty(), "messages left unprocessed: {pending:?}");
        let dead: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT entity_type, entity_id, tag, last_error FROM cruster_messages \
             WHERE dead_lettered ORDER BY request_id LIMIT 20",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(dead.is_empty(), "messages dead-lettered: {dead:?}");
        let redelivered = i64_of(
            &pool,
            "SELECT COUNT(*) FROM cruster_messages WHERE attempts > 0",
        )
        .await;

        // Persisted increments: every acknowledged one applied, once after de-duplication.
        let applied: HashMap<String, (i32, String, String)> =
            sqlx::query_as::<_, (String, i32, String, String)>(
                "SELECT request_id, deliveries, first_runner, last_runner FROM mp_increments",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, deliveries, first, last)| (id, (deliveries, first, last)))
            .collect();
        let acked = tally.increments_acked.lock().clone();
        let missing: Vec<&String> = acked
            .iter()
            .filter(|id| !applied.contains_key(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged increments were never applied: {:?}",
            missing.len(),
            missing.iter().take(20).collect::<Vec<_>>()
        );
        let mut duplicates: Vec<(&String, &(i32, String, String))> =
            applied.iter().filter(|(_, (d, _, _))| *d > 1).collect();
        duplicates.sort();
        let duplicate_deliveries: i64 = duplicates
            .iter()
            .map(|(_, (d, _, _))| i64::from(d - 1))
            .sum();

        // No counter (so no increment) was ever being handled on two runners at
        // overlapping times. A run without an end was cut (a kill, or PostgreSQL down
        // when it ended) and is left out; only scenarios that cut runs may have any.
        let overlapping_runs: Vec<(String, String, String, String, String)> = sqlx::query_as(
            "SELECT a.counter, a.request_id, a.runner, b.request_id, b.runner \
             FROM mp_increment_runs a JOIN mp_increment_runs b \
               ON a.counter = b.counter AND a.run_id < b.run_id AND a.runner <> b.runner \
             WHERE a.ended_at IS NOT NULL AND b.ended_at IS NOT NULL \
               AND a.started_at < b.ended_at AND b.started_at < a.ended_at \
             ORDER BY a.run_id LIMIT 20",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(
            overlapping_runs.is_empty(),
            "a counter was handled on two runners at once \
             (counter, request, runner, request, runner): {overlapping_runs:?}"
        );
        let increment_runs = i64_of(&pool, "SELECT COUNT(*) FROM mp_increment_runs").await;
        let cut_runs: Vec<(String, String)> = sqlx::query_as(
            "SELECT request_id, runner FROM mp_increment_runs WHERE ended_at IS NULL \
             ORDER BY run_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(
            excuses.cut_runs || cut_runs.is_empty(),
            "increment runs that never ended, with no fault to cut them (request, runner): \
             {:?}",
            cut_runs.iter().take(20).collect::<Vec<_>>()
        );

        // Plain sends: at most once, and every acknowledged one applied.
        let touched: HashMap<String, i32> =
            sqlx::query_as::<_, (String, i32)>("SELECT request_id, deliveries FROM mp_plain")
                .fetch_all(&pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let twice: Vec<(&String, &i32)> = touched.iter().filter(|(_, d)| **d > 1).collect();
        assert!(twice.is_empty(), "plain sends handled twice: {twice:?}");
        let touches_acked = tally.touches_acked.lock().clone();
        let lost_touches: Vec<&String> = touches_acked
            .iter()
            .filter(|id| !touched.contains_key(*id))
            .collect();
        assert!(
            lost_touches.is_empty(),
            "acknowledged plain sends never handled: {lost_touches:?}"
        );

        // Workflows: each activity of each started workflow recorded exactly once.
        let steps: HashMap<(String, i32), i64> = sqlx::query_as::<_, (String, i32, i64)>(
            "SELECT job, step, COUNT(*) FROM mp_workflow_steps GROUP BY job, step",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(job, step, n)| ((job, step), n))
        .collect();
        let mut bad_steps = Vec::new();
        for (job, _) in &started {
            for step in 1..=3 {
                let n = steps.get(&(job.clone(), step)).copied().unwrap_or(0);
                if n != 1 {
                    bad_steps.push(format!("{job} step {step}: {n} rows"));
                }
            }
        }
        assert!(
            bad_steps.is_empty(),
            "workflow activities not recorded exactly once: {bad_steps:?}"
        );

        // The singleton never ran on two runners at overlapping times (a run cut by
        // SIGKILL ends at its last heartbeat).
        let overlapping: Vec<(i64, String, i64, String)> = sqlx::query_as(
            "SELECT a.run_id, a.runner, b.run_id, b.runner \
             FROM mp_singleton_runs a JOIN mp_singleton_runs b ON a.run_id < b.run_id \
             WHERE a.started_at < COALESCE(b.ended_at, b.last_seen) \
               AND b.started_at < COALESCE(a.ended_at, a.last_seen)",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(
            overlapping.is_empty(),
            "singleton runs overlapped (run, runner, run, runner): {overlapping:?}"
        );
        let singleton_runs = i64_of(&pool, "SELECT COUNT(*) FROM mp_singleton_runs").await;
        assert!(singleton_runs >= 1, "the singleton never ran");

        // Cron: completed runs never overlap; an occurrence runs again only after a fault
        // cut it.
        let cron_overlaps: Vec<(i64, String, i64, String)> = sqlx::query_as(
            "SELECT a.run_id, a.runner, b.run_id, b.runner \
             FROM mp_cron_runs a JOIN mp_cron_runs b ON a.run_id < b.run_id \
             WHERE a.ended_at IS NOT NULL AND b.ended_at IS NOT NULL \
               AND a.started_at < b.ended_at AND b.started_at < a.ended_at",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(
            cron_overlaps.is_empty(),
            "cron runs overlapped (run, runner, run, runner): {cron_overlaps:?}"
        );
        let cron_runs = i64_of(&pool, "SELECT COUNT(*) FROM mp_cron_runs").await;
        // A run cut by a fault (no end, and not the one running now) is delivered again
        // until it completes.
        let cron_cut = i64_of(
            &pool,
            "SELECT COUNT(*) FROM mp_cron_runs \
             WHERE ended_at IS NULL AND started_at < clock_timestamp() - INTERVAL '2 seconds'",
        )
        .await;
        let cut_never_completed: Vec<(i64, String)> = sqlx::query_as(
            "SELECT c.run_id, c.runner FROM mp_cron_runs c \
             WHERE c.ended_at IS NULL AND c.started_at < clock_timestamp() - INTERVAL '2 seconds' \
               AND NOT EXISTS (SELECT 1 FROM mp_cron_runs d \
                               WHERE d.scheduled_at = c.scheduled_at AND d.ended_at IS NOT NULL)",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(
            cut_never_completed.is_empty(),
            "cron runs cut by a fault were never run to completion (run, runner): \
             {cut_never_completed:?}"
        );
        let cron_repeated = i64_of(
            &pool,
            "SELECT COALESCE(SUM(n - 1), 0)::BIGINT FROM \
             (SELECT COUNT(*) AS n FROM mp_cron_runs GROUP BY scheduled_at) runs",
        )
        .await;
        assert!(cron_runs >= 5, "the cron job ran only {cron_runs} times");
        assert!(
            cron_repeated <= excuses.cron_repeats,
            "{cron_repeated} cron occurrences ran twice, with only {} faults to excuse them",
            excuses.cron_repeats
        );

        // Shards end spread over the live runners.
        wait_for_spread(&*runner_storage, &cluster.live(), Duration::from_secs(20)).await;

        let failed_increments = tally.increments_failed.lock().clone();
        let failed_touches = tally.touches_failed.lock().clone();
        let failed_workflows = tally.workflows_failed.lock().clone();
        eprintln!(
            "\nmulti_process {label}: {traffic:.1?} of traffic; faults survived: {faults:?}\n\
             persisted increments: {sent} sent, {acked} acknowledged, {failed:?} failed; \
             {rows} applied; {dupes} duplicate deliveries de-duplicated by request id \
             ({dupe_rows} increments); {increment_runs} runs, {cut} cut, none on two runners \
             at once\n\
             messages redelivered by the storage poll: {redelivered}\n\
             plain sends: {touch_sent} sent (each relayed by its handler to another \
             counter), {touch_acked} acknowledged effects (an acknowledged send is two), {touch_failed:?} failed, {touch_rows} handled, none twice\n\
             workflows: {wf_sent} sent, {wf_started} started and completed, each activity \
             once; {wf_failed:?} failed to start\n\
             singleton runs: {singleton_runs}, none overlapping; cron runs: {cron_runs} \
             ({cron_cut} cut by a fault, {cron_repeated} occurrences repeated)\n\
             timeouts: 0",
            traffic = traffic_time,
            sent = tally.increments_sent.load(Ordering::SeqCst),
            acked = acked.len(),
            failed = failed_increments,
            rows = applied.len(),
            dupes = duplicate_deliveries,
            dupe_rows = duplicates.len(),
            cut = cut_runs.len(),
            touch_sent = tally.touches_sent.load(Ordering::SeqCst),
            touch_acked = touches_acked.len(),
            touch_failed = failed_touches,
            touch_rows = touched.len(),
            wf_sent = tally.workflows_sent.load(Ordering::SeqCst),
            wf_started = started.len(),
            wf_failed = failed_workflows,
        );
        for (id, (deliveries, first, last)) in duplicates.iter().take(20) {
            eprintln!(
                "  duplicate: {id} delivered {deliveries} times (first on {first}, last on {last})"
            );
        }

        // Graceful exit of everyone.
        driver.stop().await;
        for i in 0..cluster.slots.len() {
            if cluster.slots[i].child.is_none() {
                continue;
            }
            let status = cluster.sigterm(i).await;
            assert!(
                status.success(),
                "runner {i} exited with {status} on SIGTERM"
            );
        }
        let log_dir = cluster.log_dir.clone();
        drop(cluster);
        pool.close().await;
        schema.drop_schema().await;
        let _ = std::fs::remove_dir_all(log_dir);
        serial.close().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_runner_processes_on_postgres_survive_kills_and_restarts_losing_nothing() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    survive_kills_and_restarts(schema, Membership::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_runner_processes_on_etcd_survive_kills_and_restarts_losing_nothing() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let membership = Membership::etcd(&schema);
    survive_kills_and_restarts(schema, membership).await;
}

/// Kills and restarts (see the module docs), with membership and shard locks in
/// `membership`.
async fn survive_kills_and_restarts(schema: TestSchema, membership: Membership) {
    let serial = one_scenario_at_a_time().await.unwrap();
    let cluster = ProcessCluster::new(&schema, &membership, RUNNERS);
    let label = format!("kills ({membership:?})");
    let mut run = Run::begin(&label, serial, schema, &membership, cluster).await;
    run.at(3).await;
    run.cluster.sigkill(0).await;
    run.fault("SIGKILL runner 0");
    run.at(8).await;
    run.cluster.start(0).await;
    run.fault("restart runner 0");
    run.at(13).await;
    run.cluster.sigkill(1).await;
    run.fault("SIGKILL runner 1");
    run.at(16).await;
    let status = run.cluster.sigterm(2).await;
    assert!(status.success(), "SIGTERM: runner 2 exited with {status}");
    run.fault("SIGTERM runner 2 (exit 0)");
    run.cluster.start(2).await;
    run.fault("restart runner 2");
    run.at(22).await;
    run.cluster.start(1).await;
    run.fault("restart runner 1");
    run.at(28).await;
    run.finish(Excuses {
        cut_runs: true,
        cron_repeats: 2,
    })
    .await;
}

/// How long the cluster's PostgreSQL stays down in the outage scenario: more than a poll
/// interval, and more than the lock TTL, so every runner loses every shard lock and must
/// acquire them again once the database is back.
const OUTAGE: Duration = Duration::from_secs(5);

/// The cluster's only PostgreSQL (messages, workflows, the application's tables, and
/// membership and shard locks: `SqlRunnerStorage`) is stopped as by a crash in the middle
/// of the traffic and started again; the runners and the driver recover by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_runner_processes_recover_from_a_postgres_outage_losing_nothing() {
    // Skipped like every PostgreSQL test without DATABASE_URL: the serialisation lock of
    // the suite lives there.
    if database_url_or_skip().is_none() {
        return;
    }
    let Some(postgres) = PrivatePostgres::start(free_port()).await else {
        return;
    };
    let serial = one_scenario_at_a_time().await.unwrap();
    let schema = TestSchema::create_in(&postgres.url()).await;
    let membership = Membership::Postgres;
    let cluster = ProcessCluster::new(&schema, &membership, RUNNERS);
    let mut run = Run::begin("postgres outage", serial, schema, &membership, cluster).await;
    run.at(4).await;
    let stopping = Instant::now();
    postgres.stop_immediately().await;
    run.fault("PostgreSQL stopped (immediate)");
    tokio::time::sleep(OUTAGE).await;
    postgres.start_again().await;
    run.fault(format!(
        "PostgreSQL started again, {:.1?} after it began to stop",
        stopping.elapsed()
    ));
    run.at(24).await;
    run.finish(Excuses {
        cut_runs: true,
        cron_repeats: 2,
    })
    .await;
    drop(postgres);
}

/// Runner 2 is cut off from the other runners, both ways, but not from PostgreSQL: the
/// driver and the other runners reach it only through a proxy of the test, and it reaches
/// each of them only through a proxy of its own (`--dial-via`); the cuts switch the three
/// proxies together, first refusing, then black-holing. Its callers get errors or answers
/// in time, never a hang; it keeps its shards (its locks are renewed in storage), so
/// nothing runs on two runners at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_cut_off_from_its_peers_but_not_from_storage_loses_nothing_and_hangs_nobody() {
    let Some(schema) = TestSchema::create().await else {
        return;
    };
    let serial = one_scenario_at_a_time().await.unwrap();
    let membership = Membership::Postgres;
    let mut cluster = ProcessCluster::new(&schema, &membership, RUNNERS);
    let inbound = TcpProxy::start(free_port(), cluster.listen_address(2)).await;
    cluster.behind_proxy(2, inbound.port());
    let mut proxies = vec![inbound];
    for peer in [0, 1] {
        let outbound = TcpProxy::start(free_port(), cluster.listen_address(peer)).await;
        cluster.dial_through_proxy(2, peer, outbound.port());
        proxies.push(outbound);
    }
    let cut = |mode: ProxyMode| {
        for proxy in &proxies {
            proxy.set_mode(mode);
        }
    };
    let mut run = Run::begin("partition", serial, schema, &membership, cluster).await;
    run.at(3).await;
    cut(ProxyMode::Refuse);
    run.fault("runner 2 cut off both ways: connections refused");
    run.at(9).await;
    cut(ProxyMode::Forward);
    run.fault("runner 2 reachable again");
    run.at(13).await;
    cut(ProxyMode::Blackhole);
    run.fault("runner 2 cut off both ways: connections black-holed");
    run.at(19).await;
    cut(ProxyMode::Forward);
    run.fault("runner 2 reachable again");
    run.at(25).await;
    println!(
        "multi_process partition: connections through the proxies: into runner 2: {}, \
         runner 2 to runner 0: {}, runner 2 to runner 1: {}",
        proxies[0].accepted(),
        proxies[1].accepted(),
        proxies[2].accepted()
    );
    for (proxy, path) in proxies.iter().zip([
        "into runner 2",
        "from runner 2 to runner 0",
        "from runner 2 to runner 1",
    ]) {
        assert!(
            proxy.accepted() > 0,
            "no connection went {path} through its proxy: the partition did not cut that way"
        );
    }
    run.finish(Excuses {
        cut_runs: false,
        cron_repeats: 0,
    })
    .await;
    drop(proxies);
}
