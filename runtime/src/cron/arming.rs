//! The arming singleton of a cron (singleton name `cruster.cron/<name>`): on whichever
//! runner owns it, saves the run of the next occurrence, then saves it again every
//! `rearm_interval`.
//!
//! Arming is idempotent by construction: the run is keyed by its scheduled time, so when the
//! chain is healthy the save is a duplicate that stores nothing. It only matters when there
//! is no chain yet (first deployment) or the chain broke (its next run could not be saved).
//! This task never returns an error (failures are logged and retried) and stops promptly
//! when its cancellation token fires.

use std::sync::Arc;
use std::time::Duration;

use cruster_sharding::{EntityClient, SingletonContext};
use cruster_types::ClusterError;

use super::cron_entity::{save_run_with_retries, CronSpec};

/// The first retry after a failed arm; doubles up to `rearm_interval`.
const ARM_RETRY_BASE: Duration = Duration::from_millis(250);

/// Arms the cron until cancelled.
pub(crate) async fn arm_until_cancelled(
    spec: Arc<CronSpec>,
    ctx: SingletonContext,
) -> Result<(), ClusterError> {
    let cancel = ctx.cancellation();
    let client = EntityClient::new(ctx.sharding().clone(), spec.entity_type());
    let mut retry_delay = ARM_RETRY_BASE;
    loop {
        // Saving is idempotent, so abandoning one half-way on cancellation is harmless.
        let armed = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            armed = arm_once(&spec, &client) => armed,
        };
        let wait = match armed {
            Ok(()) => {
                retry_delay = ARM_RETRY_BASE;
                spec.rearm_interval
            }
            Err(err) => {
                tracing::warn!(
                    cron = %spec.name,
                    error = %err,
                    retry_in_ms = retry_delay.as_millis() as u64,
                    "could not arm cron; retrying"
                );
                let wait = retry_delay;
                retry_delay = (retry_delay * 2).min(spec.rearm_interval);
                wait
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn arm_once(spec: &CronSpec, client: &EntityClient) -> Result<(), ClusterError> {
    let now = crate::sharding_impl::clock_of(client.sharding().as_ref()).now();
    match spec.policy.arm(&spec.schedule, now) {
        Some(next) => {
            save_run_with_retries(client, next).await?;
            tracing::debug!(cron = %spec.name, next = %next, "cron armed");
        }
        None => tracing::debug!(cron = %spec.name, "cron schedule has no further occurrences"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use chrono::{TimeDelta, Utc};
    use tokio_util::sync::CancellationToken;

    use super::super::cron_entity::{run_dedupe_key, CronRun};
    use super::super::run_plan::RunPolicy;
    use super::super::schedule::CronSchedule;
    use super::super::test_sharding::RecordingSharding;
    use super::*;

    #[tokio::test]
    async fn arming_saves_the_next_occurrence_and_stops_when_cancelled() {
        let spec = Arc::new(CronSpec {
            name: "job".into(),
            schedule: CronSchedule::parse("0 0 * * * *").unwrap(),
            handler: Arc::new(|_| Box::pin(async { Ok(()) })),
            policy: RunPolicy {
                calculate_next_from_previous: false,
                skip_if_older_than: TimeDelta::hours(1),
            },
            rearm_interval: Duration::from_millis(20),
        });
        let sharding = RecordingSharding::new();
        let token = CancellationToken::new();
        let graceful = Arc::new(AtomicBool::new(false));
        let ctx = SingletonContext::new(
            "cruster.cron/job".into(),
            token.clone(),
            graceful.clone(),
            sharding.clone(),
        );
        let task = tokio::spawn(arm_until_cancelled(spec.clone(), ctx));

        tokio::time::sleep(Duration::from_millis(100)).await;
        token.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
        assert!(
            graceful.load(std::sync::atomic::Ordering::Acquire),
            "arming must opt in to graceful stop"
        );

        let saved = sharding.notified.lock().clone();
        assert!(
            saved.len() >= 2,
            "expected periodic re-arms, got {}",
            saved.len()
        );
        let next_hour = spec.schedule.next_after(Utc::now()).unwrap();
        for envelope in &saved {
            let run: CronRun = cruster_types::wire::decode(&envelope.payload).unwrap();
            assert!(
                run.scheduled_time == next_hour
                    || run.scheduled_time == next_hour - TimeDelta::hours(1)
            );
            assert_eq!(
                envelope.dedupe_key.as_deref(),
                Some(run_dedupe_key(run.scheduled_time).as_str())
            );
            assert_eq!(envelope.deliver_at, Some(run.scheduled_time));
        }
    }
}
