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

use chrono::Utc;
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
    match spec.policy.arm(&spec.schedule, Utc::now()) {
        Some(next) => {
            save_run_with_retries(client, next).await?;
            tracing::debug!(cron = %spec.name, next = %next, "cron armed");
        }
        None => tracing::debug!(cron = %spec.name, "cron schedule has no further occurrences"),
    }
    Ok(())
}
