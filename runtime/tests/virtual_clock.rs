//! The virtual test clock (`cruster::testing::VirtualClock`): a workflow sleeping a day, an
//! hourly cron and an entity `send_at` a week ahead fire in order, each at its instant, on
//! a `SingleRunner` and on a `MemoryCluster`; activity retry backoff, singleton restart
//! backoff and idle eviction follow the clock too.
//!
//! Assertions are about what fired and at which virtual instant; real time only bounds how
//! long a test waits for set-up to finish.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use cruster::cron::{ClusterCron, CronSchedule};
use cruster::prelude::*;
use cruster::testing::{MemoryCluster, VirtualClock};
use cruster::workflow::{ClientFromSharding, WorkflowClient};
use parking_lot::Mutex;

/// One event: what fired and the virtual instant it saw.
type Fired = (String, DateTime<Utc>);

/// What fired, and the virtual instant it saw when it did, in the order it happened.
#[derive(Clone)]
struct Events {
    clock: VirtualClock,
    fired: Arc<Mutex<Vec<Fired>>>,
}

impl Events {
    fn new(clock: &VirtualClock) -> Self {
        Events {
            clock: clock.clone(),
            fired: Arc::default(),
        }
    }

    fn record(&self, what: impl Into<String>) {
        self.fired.lock().push((what.into(), self.clock.now()));
    }

    fn all(&self) -> Vec<Fired> {
        self.fired.lock().clone()
    }

    fn times_of(&self, prefix: &str) -> Vec<DateTime<Utc>> {
        self.all()
            .into_iter()
            .filter(|(what, _)| what.starts_with(prefix))
            .map(|(_, at)| at)
            .collect()
    }
}

/// Half past midnight, so hourly cron runs and the other timers never share an instant.
fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 1, 0, 30, 0).unwrap()
}

const DAY: Duration = Duration::from_secs(24 * 3600);
const HOUR: Duration = Duration::from_secs(3600);

/// Waits (real time, bounded) until `check` holds.
async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The entity, workflow and cron of the scenario
// ---------------------------------------------------------------------------------------

#[entity]
#[derive(Clone)]
struct Reminder {
    events: Events,
}

#[entity_impl]
impl Reminder {
    #[rpc(persisted)]
    pub async fn remind(&self, what: String) -> Result<(), ClusterError> {
        self.events.record(format!("reminder {what}"));
        Ok(())
    }
}

#[workflow]
#[derive(Clone)]
struct DaySleeper {
    events: Events,
}

#[workflow_impl(key = |id: &String| id.clone(), hash = false)]
impl DaySleeper {
    async fn execute(&self, id: String) -> Result<String, ClusterError> {
        self.went_to_sleep(id.clone()).await?;
        self.sleep(DAY).await?;
        self.woke_up(id.clone()).await?;
        Ok(id)
    }

    #[activity]
    async fn went_to_sleep(&self, id: String) -> Result<(), ClusterError> {
        self.events.record(format!("workflow {id} sleeps"));
        Ok(())
    }

    #[activity]
    async fn woke_up(&self, id: String) -> Result<(), ClusterError> {
        self.events.record(format!("workflow {id} woke"));
        Ok(())
    }
}

fn hourly_cron(events: &Events) -> ClusterCron {
    let events = events.clone();
    ClusterCron::new(
        "hourly",
        CronSchedule::parse("0 0 * * * *").unwrap(),
        move |scheduled| {
            let events = events.clone();
            Box::pin(async move {
                events.record(format!("cron {scheduled}"));
                Ok(())
            })
        },
    )
}

/// Registers the scenario's entity, workflow and cron on one runner.
async fn register_scenario(
    sharding: Arc<ShardingImpl>,
    events: Events,
) -> Result<(), ClusterError> {
    Reminder {
        events: events.clone(),
    }
    .register(sharding.clone())
    .await?;
    DaySleeper {
        events: events.clone(),
    }
    .register(sharding.clone())
    .await?;
    hourly_cron(&events).register(sharding.as_ref()).await
}

/// Starts the workflow and the week-ahead reminder through `sharding`, advances the clock
/// a week and an hour in steps, and checks that everything fired at its instant, in order.
async fn sleep_cron_and_send_at_fire_in_order(
    clock: &VirtualClock,
    events: &Events,
    sharding: Arc<dyn Sharding>,
) {
    let t0 = start();
    let first_cron = Utc.with_ymd_and_hms(2030, 1, 1, 1, 0, 0).unwrap();
    let woken_at = t0 + TimeDelta::days(1);
    let reminded_at = t0 + TimeDelta::days(7);

    let workflows = WorkflowClient::<DaySleeper>::from_sharding(sharding.clone());
    workflows.start(&"w-1".to_string()).await.unwrap();
    let reminders = EntityClient::new(sharding, EntityType::new("Reminder"));
    reminders
        .notify_at(
            &EntityId::new("r-1"),
            "remind",
            &"a week ahead".to_string(),
            reminded_at,
        )
        .await
        .unwrap();
    // The cron is armed, and the workflow suspended, before time moves.
    wait_until("arming the cron and suspending the workflow", || {
        let timers = clock.timers();
        [first_cron, woken_at, reminded_at]
            .iter()
            .all(|at| timers.contains(at))
    })
    .await;

    let real = Instant::now();
    for _ in 0..7 {
        clock.advance(DAY).await;
    }
    clock.advance(HOUR).await;
    println!(
        "a week and an hour of virtual time took {:?} of real time",
        real.elapsed()
    );
    assert_eq!(clock.now(), t0 + TimeDelta::days(7) + TimeDelta::hours(1));

    let fired = events.all();
    // Everything fired at the instant it was due...
    let crons = events.times_of("cron ");
    let expected_crons: Vec<_> = (0..=7 * 24)
        .map(|hour| first_cron + TimeDelta::hours(hour))
        .collect();
    assert_eq!(crons, expected_crons, "hourly cron runs (virtual instants)");
    for (what, at) in fired.iter().filter(|(what, _)| what.starts_with("cron ")) {
        assert_eq!(
            what,
            &format!("cron {at}"),
            "a cron run saw another instant"
        );
    }
    assert_eq!(events.times_of("workflow w-1 sleeps"), [t0]);
    assert_eq!(events.times_of("workflow w-1 woke"), [woken_at]);
    assert_eq!(events.times_of("reminder a week ahead"), [reminded_at]);
    // ...and in the order of those instants.
    let mut in_order = fired.clone();
    in_order.sort_by_key(|(_, at)| *at);
    assert_eq!(fired, in_order, "events fired out of order");
    let position = |what: &str| fired.iter().position(|(w, _)| w == what).unwrap();
    assert_eq!(
        position("workflow w-1 woke"),
        position(&format!("cron {}", first_cron + TimeDelta::hours(23))) + 1,
        "the workflow woke between the midnight and 1 am runs of the second day"
    );
    assert_eq!(
        position("reminder a week ahead"),
        position(&format!(
            "cron {}",
            first_cron + TimeDelta::hours(7 * 24 - 1)
        )) + 1,
    );
    assert!(
        workflows.poll("w-1").await.unwrap().is_some(),
        "the workflow completed after its sleep"
    );
}

#[tokio::test]
async fn a_day_long_sleep_an_hourly_cron_and_a_send_at_a_week_ahead_fire_in_order() {
    let clock = VirtualClock::starting_at(start());
    let events = Events::new(&clock);
    let runner = SingleRunner::builder()
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    register_scenario(runner.sharding().clone(), events.clone())
        .await
        .unwrap();
    sleep_cron_and_send_at_fire_in_order(&clock, &events, runner.sharding().clone()).await;
    runner.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_cluster_sharing_a_virtual_clock_fires_the_same_timers_in_order() {
    let clock = VirtualClock::starting_at(start());
    let events = Events::new(&clock);
    let setup_events = events.clone();
    let cluster = MemoryCluster::builder()
        .runners(3)
        .clock(clock.clone())
        .setup(move |sharding| register_scenario(sharding, setup_events.clone()))
        .build()
        .await
        .unwrap();
    cluster
        .wait_until_balanced(Duration::from_secs(10))
        .await
        .unwrap();
    sleep_cron_and_send_at_fire_in_order(&clock, &events, cluster.runner(0)).await;
    cluster.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Backoff and idle eviction
// ---------------------------------------------------------------------------------------

#[workflow]
#[derive(Clone)]
struct FlakyCharge {
    events: Events,
    attempts: Arc<AtomicU32>,
}

#[workflow_impl(key = |id: &String| id.clone(), hash = false)]
impl FlakyCharge {
    async fn execute(&self, id: String) -> Result<u32, ClusterError> {
        self.charge(id).await
    }

    /// Fails twice, then succeeds; retried an hour apart.
    #[activity(retries = 2, backoff = "constant", backoff_base_ms = 3600000)]
    async fn charge(&self, _id: String) -> Result<u32, ClusterError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        self.events.record(format!("attempt {attempt}"));
        if attempt < 3 {
            return Err(ClusterError::handler("the payment provider is down"));
        }
        Ok(attempt)
    }
}

#[tokio::test]
async fn activity_retry_backoff_waits_for_the_virtual_clock() {
    let clock = VirtualClock::starting_at(start());
    let events = Events::new(&clock);
    let runner = SingleRunner::builder()
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let client = FlakyCharge {
        events: events.clone(),
        attempts: attempts.clone(),
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();
    let exec = client.start(&"pay-1".to_string()).await.unwrap();
    let t0 = start();
    wait_until("the first attempt and its retry timer", || {
        clock.timers().contains(&(t0 + TimeDelta::hours(1)))
    })
    .await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "retried before its backoff"
    );

    clock.advance(HOUR).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    clock.advance(HOUR).await;
    assert_eq!(client.poll(&exec).await.unwrap(), Some(3));
    assert_eq!(
        events.times_of("attempt "),
        [t0, t0 + TimeDelta::hours(1), t0 + TimeDelta::hours(2)]
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn singleton_restart_backoff_waits_for_the_virtual_clock() {
    let clock = VirtualClock::starting_at(start());
    let events = Events::new(&clock);
    let runner = SingleRunner::builder()
        .clock(clock.clone())
        .config(ShardingConfig {
            singleton_crash_backoff_base: Duration::from_secs(10),
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let runs = events.clone();
    register_singleton(runner.sharding().as_ref(), "crashing", move |_ctx| {
        let runs = runs.clone();
        async move {
            runs.record("singleton run");
            Err(ClusterError::handler("the singleton fails at once"))
        }
    })
    .await
    .unwrap();
    wait_until("the first run", || {
        !events.times_of("singleton run").is_empty()
    })
    .await;
    // Restarts after 10 s, then 20 s, then 40 s (doubling from the base).
    clock.advance(Duration::from_secs(70)).await;
    let t0 = start();
    assert_eq!(
        events.times_of("singleton run"),
        [
            t0,
            t0 + TimeDelta::seconds(10),
            t0 + TimeDelta::seconds(30),
            t0 + TimeDelta::seconds(70)
        ]
    );
    runner.shutdown().await.unwrap();
}

#[entity(max_idle_time_secs = 600)]
#[derive(Clone)]
struct Session;

#[entity_impl]
impl Session {
    #[rpc]
    pub async fn touch(&self) -> Result<(), ClusterError> {
        Ok(())
    }
}

#[tokio::test]
async fn idle_entities_are_evicted_when_the_virtual_clock_passes_their_idle_time() {
    let clock = VirtualClock::starting_at(start());
    let runner = SingleRunner::builder()
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    let sessions = Session.register(runner.sharding().clone()).await.unwrap();
    sessions.touch(&EntityId::new("s-1")).await.unwrap();
    let active = || runner.sharding().active_entities()[&EntityType::new("Session")];
    assert_eq!(active(), 1);

    clock.advance(Duration::from_secs(9 * 60)).await;
    assert_eq!(active(), 1, "evicted before its 10 idle minutes");
    clock.advance(Duration::from_secs(2 * 60)).await;
    assert_eq!(active(), 0, "not evicted after 11 idle minutes");
    runner.shutdown().await.unwrap();
}

#[entity]
#[derive(Clone)]
struct Ledger {
    events: Events,
    attempts: Arc<AtomicU32>,
}

#[entity_impl]
impl Ledger {
    /// Its storage fails on the first attempt: the message is redelivered after the
    /// redelivery backoff (`storage_retry_backoff_base`).
    #[rpc(persisted)]
    pub async fn post(&self, entry: String) -> Result<(), ClusterError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        self.events
            .record(format!("post {entry} attempt {attempt}"));
        if attempt == 1 {
            return Err(ClusterError::PersistenceError {
                reason: "the ledger database is restarting".into(),
                source: None,
            });
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_persisted_delivery_is_redelivered_when_the_virtual_clock_passes_its_backoff() {
    let clock = VirtualClock::starting_at(start());
    let events = Events::new(&clock);
    let runner = SingleRunner::builder()
        .clock(clock.clone())
        .config(ShardingConfig {
            storage_retry_backoff_base: Duration::from_secs(600),
            storage_retry_backoff_max: Duration::from_secs(3600),
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let ledger = Ledger {
        events: events.clone(),
        attempts: attempts.clone(),
    }
    .register(runner.sharding().clone())
    .await
    .unwrap();
    let t0 = start();
    ledger
        .entity_client()
        .notify_persisted(&EntityId::new("l-1"), "post", &"rent".to_string())
        .await
        .unwrap();
    let retry_at = t0 + TimeDelta::minutes(10);
    wait_until("the failed first attempt and its retry instant", || {
        clock.timers().contains(&retry_at)
    })
    .await;
    clock.advance(Duration::from_secs(9 * 60)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "redelivered before its backoff"
    );
    clock.advance(Duration::from_secs(60)).await;
    assert_eq!(
        events.all(),
        [
            ("post rent attempt 1".to_string(), t0),
            ("post rent attempt 2".to_string(), retry_at)
        ]
    );
    runner.shutdown().await.unwrap();
}
