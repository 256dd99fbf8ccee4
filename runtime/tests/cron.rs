//! Distributed cron: scenarios on a single runner and on an in-process 3-runner cluster.
//!
//! Timings only bound how long a test waits; assertions are about which occurrences ran.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cruster::config::ShardingConfig;
use cruster::cron::{ClusterCron, CronSchedule};
use cruster::prelude::*;
use cruster::single_runner::SingleRunner;
use cruster::testing::MemoryCluster;
use parking_lot::Mutex;

/// One call of a cron handler.
#[derive(Clone, Debug)]
struct Run {
    scheduled: DateTime<Utc>,
    started: DateTime<Utc>,
    runner: String,
}

type Runs = Arc<Mutex<Vec<Run>>>;

fn every_second() -> Result<CronSchedule, ClusterError> {
    CronSchedule::parse("* * * * * * *")
}

/// A cron that records each call in `runs`, labelled with the runner it ran on.
fn recording_cron(name: &str, runs: &Runs, runner: String) -> Result<ClusterCron, ClusterError> {
    let runs = runs.clone();
    let cron = ClusterCron::new(name, every_second()?, move |scheduled| {
        let runs = runs.clone();
        let runner = runner.clone();
        Box::pin(async move {
            runs.lock().push(Run {
                scheduled,
                started: Utc::now(),
                runner,
            });
            Ok(())
        })
    });
    Ok(cron)
}

fn fast_poll() -> ShardingConfig {
    ShardingConfig {
        storage_poll_interval: Duration::from_millis(50),
        ..Default::default()
    }
}

/// Waits until `ready(runs)` holds, failing the test with the runs seen after `timeout`.
async fn wait_for(runs: &Runs, timeout: Duration, what: &str, ready: impl Fn(&[Run]) -> bool) {
    let started = Instant::now();
    loop {
        if ready(&runs.lock()) {
            return;
        }
        if started.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}; runs: {:#?}",
                runs.lock()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn scheduled_times(runs: &[Run]) -> Vec<DateTime<Utc>> {
    runs.iter().map(|r| r.scheduled).collect()
}

/// Asserts that no scheduled time ran twice.
fn assert_no_double_runs(runs: &[Run]) {
    let mut by_time: BTreeMap<DateTime<Utc>, Vec<&Run>> = BTreeMap::new();
    for run in runs {
        by_time.entry(run.scheduled).or_default().push(run);
    }
    let doubles: Vec<_> = by_time.values().filter(|r| r.len() > 1).collect();
    assert!(
        doubles.is_empty(),
        "occurrences that ran more than once: {doubles:#?}"
    );
}

/// Asserts that the scheduled times, sorted, are consecutive seconds.
fn assert_no_missed_seconds(runs: &[Run]) {
    let mut times = scheduled_times(runs);
    times.sort();
    let gaps: Vec<_> = times
        .windows(2)
        .filter(|w| w[1] - w[0] != chrono::Duration::seconds(1))
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        gaps.is_empty(),
        "missed occurrences between {gaps:?}; all runs: {runs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_every_second_cron_runs_once_per_occurrence() -> Result<(), ClusterError> {
    let runner = SingleRunner::builder().config(fast_poll()).build().await?;
    let runs: Runs = Arc::default();
    let started = Instant::now();
    recording_cron("every-second", &runs, "single".into())?
        .register(runner.sharding().as_ref())
        .await?;

    wait_for(&runs, Duration::from_secs(15), "4 runs", |r| r.len() >= 4).await;
    let elapsed = started.elapsed();
    runner.shutdown().await?;

    let runs = runs.lock().clone();
    let counted = runner
        .sharding()
        .metrics()
        .cron_runs
        .with_label_values(&["every-second", "ok"])
        .get();
    assert_eq!(
        counted as usize,
        runs.len(),
        "cruster_cron_runs_total counts every run"
    );
    assert_no_double_runs(&runs);
    assert_no_missed_seconds(&runs);
    // About once per second: never more runs than seconds that passed (plus the first).
    assert!(
        runs.len() as u64 <= elapsed.as_secs() + 2,
        "{} runs in {elapsed:?}: {runs:#?}",
        runs.len()
    );
    for run in &runs {
        assert!(
            run.started >= run.scheduled,
            "a run started before its scheduled time: {run:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_bad_expression_is_a_clear_error() {
    for expression in ["*/5 * * * *", "0 61 * * * *", "every five minutes", ""] {
        match CronSchedule::parse(expression) {
            Err(err @ ClusterError::InvalidCronExpression { .. }) => {
                let ClusterError::InvalidCronExpression {
                    expression: quoted,
                    reason,
                } = &err
                else {
                    unreachable!()
                };
                assert_eq!(quoted, expression);
                assert!(!reason.is_empty(), "no reason given for {expression:?}");
                assert!(
                    err.to_string().contains(expression),
                    "message does not quote it: {err}"
                );
            }
            other => panic!("{expression:?} should be an InvalidCronExpression, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occurrences_older_than_skip_if_older_than_are_skipped() -> Result<(), ClusterError> {
    let runner = SingleRunner::builder().config(fast_poll()).build().await?;
    let runs: Runs = Arc::default();
    let first_call = Arc::new(AtomicBool::new(true));
    let skip_if_older_than = Duration::from_millis(500);

    let recorder = runs.clone();
    ClusterCron::new("slow-start", every_second()?, move |scheduled| {
        let recorder = recorder.clone();
        let first_call = first_call.clone();
        Box::pin(async move {
            recorder.lock().push(Run {
                scheduled,
                started: Utc::now(),
                runner: "single".into(),
            });
            // The first run overruns: the occurrence after it is already stale when it can
            // start (runs of one cron never overlap).
            if first_call.swap(false, Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(2500)).await;
            }
            Ok(())
        })
    })
    .with_calculate_next_from_previous(true)
    .with_skip_if_older_than(skip_if_older_than)
    .register(runner.sharding().as_ref())
    .await?;

    wait_for(&runs, Duration::from_secs(20), "3 runs", |r| r.len() >= 3).await;
    runner.shutdown().await?;

    let runs = runs.lock().clone();
    assert_no_double_runs(&runs);
    let first = runs[0].scheduled;
    // The occurrence right after the slow run was at least 1.5 s late: skipped.
    assert!(
        runs.iter()
            .all(|r| r.scheduled != first + chrono::Duration::seconds(1)),
        "a stale occurrence ran: {runs:#?}"
    );
    assert!(
        runs[1].scheduled - first >= chrono::Duration::seconds(2),
        "expected a gap after the slow run: {runs:#?}"
    );
    // Whatever did run was not stale (with slack for a loaded machine).
    let slack = chrono::Duration::from_std(skip_if_older_than + Duration::from_secs(1))
        .expect("small duration");
    for run in &runs {
        assert!(
            run.started - run.scheduled <= slack,
            "a stale run ran: {run:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_does_not_stop_the_cron() -> Result<(), ClusterError> {
    let runner = SingleRunner::builder().config(fast_poll()).build().await?;
    let runs: Runs = Arc::default();
    let recorder = runs.clone();
    ClusterCron::new("always-fails", every_second()?, move |scheduled| {
        let recorder = recorder.clone();
        Box::pin(async move {
            recorder.lock().push(Run {
                scheduled,
                started: Utc::now(),
                runner: "single".into(),
            });
            Err(ClusterError::handler("the job failed"))
        })
    })
    .register(runner.sharding().as_ref())
    .await?;

    wait_for(&runs, Duration::from_secs(15), "3 failing runs", |r| {
        r.len() >= 3
    })
    .await;
    runner.shutdown().await?;
    // A failed run is not retried: every call is a distinct occurrence.
    assert_no_double_runs(&runs.lock());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_the_same_cron_twice_on_a_runner_is_an_error() -> Result<(), ClusterError> {
    let runner = SingleRunner::builder().config(fast_poll()).build().await?;
    let runs: Runs = Arc::default();
    let cron = recording_cron("twice", &runs, "single".into())?;
    cron.register(runner.sharding().as_ref()).await?;
    let err = cron
        .register(runner.sharding().as_ref())
        .await
        .expect_err("a second registration must fail");
    assert!(matches!(err, ClusterError::InvalidConfig { .. }), "{err:?}");
    runner.shutdown().await?;
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill,
    Graceful,
}

/// A 3-runner cluster runs an every-second cron that catches up; the runner running it is
/// stopped; the runs must continue on a survivor, none doubled, none missed.
///
/// A killed runner's shards move only when its locks expire, so with a lock TTL of a few
/// seconds some occurrences fall due while nobody owns the cron and are caught up late.
async fn cron_survives_losing_its_runner(stop: Stop) -> Result<(), ClusterError> {
    let runner_lock_ttl = match stop {
        Stop::Kill => Duration::from_secs(3),
        Stop::Graceful => Duration::from_secs(1),
    };
    let runs: Runs = Arc::default();
    let setup_runs = runs.clone();
    let cluster = MemoryCluster::builder()
        .runners(3)
        .config(ShardingConfig {
            runner_lock_ttl,
            storage_poll_interval: Duration::from_millis(50),
            shutdown_timeout: Duration::from_secs(2),
            ..Default::default()
        })
        .setup(move |sharding: Arc<ShardingImpl>| {
            let runs = setup_runs.clone();
            async move {
                recording_cron("failover", &runs, sharding.runner_address().to_string())?
                    .with_calculate_next_from_previous(true)
                    .with_skip_if_older_than(Duration::from_secs(3600))
                    .register(sharding.as_ref())
                    .await
            }
        })
        .build()
        .await?;
    cluster.wait_until_balanced(Duration::from_secs(15)).await?;
    wait_for(
        &runs,
        Duration::from_secs(15),
        "3 runs before the stop",
        |r| r.len() >= 3,
    )
    .await;

    // Stop the runner that ran the latest occurrence (the owner of the cron's shard).
    let owner = runs
        .lock()
        .last()
        .map(|r| r.runner.clone())
        .unwrap_or_default();
    let victim = (0..cluster.len())
        .find(|&i| MemoryCluster::address(i).to_string() == owner)
        .unwrap_or_else(|| panic!("runner {owner} is not in the cluster"));
    let stopped_at = Utc::now();
    match stop {
        Stop::Kill => cluster.kill_runner(victim),
        Stop::Graceful => cluster.stop_runner(victim).await?,
    }

    wait_for(
        &runs,
        Duration::from_secs(30),
        "4 runs on a survivor, scheduled after the stop",
        |r| {
            r.iter()
                .filter(|run| run.runner != owner && run.scheduled > stopped_at)
                .count()
                >= 4
        },
    )
    .await;
    cluster.shutdown().await?;

    let runs = runs.lock().clone();
    assert_no_double_runs(&runs);
    assert_no_missed_seconds(&runs);
    let late_on_victim: Vec<_> = runs
        .iter()
        .filter(|r| r.runner == owner && r.started > stopped_at + chrono::Duration::seconds(1))
        .collect();
    assert!(
        late_on_victim.is_empty(),
        "the stopped runner ({stop:?}) kept running the cron: {late_on_victim:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_owner_cron_continues_on_a_survivor_without_doubles_or_gaps(
) -> Result<(), ClusterError> {
    cron_survives_losing_its_runner(Stop::Kill).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_owner_cron_continues_on_a_survivor_without_doubles_or_gaps(
) -> Result<(), ClusterError> {
    cron_survives_losing_its_runner(Stop::Graceful).await
}

#[test]
fn cron_values_and_registration_futures_are_send_and_sync() -> Result<(), ClusterError> {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}
    let cron = ClusterCron::new("types", every_second()?, |_| Box::pin(async { Ok(()) }));
    assert_send_sync(&cron);
    assert_send_sync(cron.schedule());
    let runner: Option<Arc<ShardingImpl>> = None;
    if let Some(sharding) = runner.as_ref() {
        assert_send(&cron.register(sharding.as_ref()));
    }
    Ok(())
}
