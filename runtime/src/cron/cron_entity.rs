//! The hidden entity behind one [`super::ClusterCron`]: entity type `cruster.cron/<name>`,
//! a single instance (id `schedule`), one RPC (`run`, payload: the scheduled time).
//!
//! Each `run` first saves the *next* run as a persisted message due at its occurrence and
//! keyed by it, then calls the user handler for this one. The chain of persisted messages
//! is what makes the cron durable: whichever runner owns the entity's shard delivers the
//! pending run, after a failover too. This file never holds a lock across an await and
//! never returns a handler's error to the runtime (that would only mark the run failed; the
//! error is logged instead).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use cruster_sharding::{
    Entity, EntityClient, EntityContext, EntityHandler, EntityOptions, IncomingRequest,
};
use cruster_types::{wire, ClusterError, EntityId, EntityType};
use serde::{Deserialize, Serialize};
use tracing::{Instrument, Level};

use super::handler::CronHandler;
use super::run_plan::{Decision, RunPolicy};
use super::schedule::CronSchedule;

/// Prefix of the hidden entity types and singleton names of crons.
pub(crate) const CRON_NAMESPACE: &str = "cruster.cron/";
/// The one entity id of a cron entity type.
pub(crate) const SCHEDULER_ENTITY_ID: &str = "schedule";
/// The RPC tag of a run.
pub(crate) const RUN_TAG: &str = "run";

/// Saving the next run is retried this many times (routing errors during a shard move are
/// expected) before the chain is left to the arming singleton to repair.
const SAVE_ATTEMPTS: u32 = 4;
const SAVE_BACKOFF: Duration = Duration::from_millis(100);

/// The payload of a `run` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CronRun {
    pub(crate) scheduled_time: DateTime<Utc>,
}

/// Everything a cron needs at run time, shared by its entity and its arming singleton.
pub(crate) struct CronSpec {
    pub(crate) name: String,
    pub(crate) schedule: CronSchedule,
    pub(crate) handler: CronHandler,
    pub(crate) policy: RunPolicy,
    pub(crate) rearm_interval: Duration,
}

impl CronSpec {
    pub(crate) fn entity_type(&self) -> EntityType {
        EntityType::new(format!("{CRON_NAMESPACE}{}", self.name))
    }
}

/// The de-duplication key of the run of one occurrence: two saves of the same occurrence,
/// from the chain and from an arm, or from two runners, store one message.
pub(crate) fn run_dedupe_key(scheduled_time: DateTime<Utc>) -> String {
    format!(
        "{RUN_TAG}@{}",
        scheduled_time.to_rfc3339_opts(SecondsFormat::Millis, true)
    )
}

/// Saves the run of `scheduled_time`: persisted, fire-and-forget, due at the occurrence,
/// keyed by it. A duplicate of an existing run stores nothing and is not an error.
///
/// # Errors
/// Encoding, routing or storage errors of the save.
pub(crate) async fn save_run(
    client: &EntityClient,
    scheduled_time: DateTime<Utc>,
) -> Result<(), ClusterError> {
    let entity_id = EntityId::new(SCHEDULER_ENTITY_ID);
    let mut envelope = client.envelope(&entity_id, RUN_TAG, &CronRun { scheduled_time })?;
    envelope.persisted = true;
    envelope.expects_reply = false;
    envelope.uninterruptible = true;
    envelope.deliver_at = Some(scheduled_time);
    envelope.dedupe_key = Some(run_dedupe_key(scheduled_time));
    client.sharding().notify(envelope).await
}

/// [`save_run`] with a few quick retries for errors that a moment may cure.
pub(crate) async fn save_run_with_retries(
    client: &EntityClient,
    scheduled_time: DateTime<Utc>,
) -> Result<(), ClusterError> {
    let mut attempt = 1;
    loop {
        match save_run(client, scheduled_time).await {
            Ok(()) => return Ok(()),
            Err(err) if attempt < SAVE_ATTEMPTS && (err.is_retryable() || err.is_routing()) => {
                tokio::time::sleep(SAVE_BACKOFF * attempt).await;
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// The entity type of one cron.
pub(crate) struct CronEntity {
    pub(crate) spec: Arc<CronSpec>,
}

#[async_trait]
impl Entity for CronEntity {
    fn entity_type(&self) -> EntityType {
        self.spec.entity_type()
    }

    fn options(&self) -> EntityOptions {
        EntityOptions {
            // Runs of one cron never overlap: the next waits for the current one.
            concurrency: Some(1),
            ..EntityOptions::default()
        }
    }

    async fn spawn(&self, ctx: EntityContext) -> Result<Arc<dyn EntityHandler>, ClusterError> {
        Ok(Arc::new(CronEntityHandler {
            spec: self.spec.clone(),
            client: EntityClient::new(ctx.sharding, self.spec.entity_type()),
        }))
    }
}

struct CronEntityHandler {
    spec: Arc<CronSpec>,
    client: EntityClient,
}

impl CronEntityHandler {
    /// Counts a run in `cruster_cron_runs_total{cron, outcome}` when the runner is a
    /// `ShardingImpl` (test doubles have no metrics).
    fn count(&self, outcome: &str) {
        if let Some(runner) = self
            .client
            .sharding()
            .as_any()
            .downcast_ref::<crate::sharding_impl::ShardingImpl>()
        {
            runner
                .metrics()
                .cron_runs
                .with_label_values(&[self.spec.name.as_str(), outcome])
                .inc();
        }
    }
}

impl CronEntityHandler {
    async fn run(&self, scheduled_time: DateTime<Utc>) {
        let spec = &self.spec;
        let span = tracing::span!(
            Level::INFO,
            "cruster.cron.run",
            cron = %spec.name,
            scheduled_time = %scheduled_time,
            outcome = tracing::field::Empty,
        );
        async {
            let now = crate::sharding_impl::clock_of(self.client.sharding().as_ref()).now();
            let plan = spec.policy.plan(&spec.schedule, scheduled_time, now);

            // The next run is saved before the handler starts, so a handler that hangs,
            // panics or takes its runner down with it cannot break the chain.
            match plan.next {
                Some(next) => {
                    if let Err(err) = save_run_with_retries(&self.client, next).await {
                        tracing::error!(
                            next = %next,
                            error = %err,
                            "cron could not save its next run; the arming singleton will re-arm it"
                        );
                    }
                }
                None => tracing::warn!("cron schedule has no further occurrences; this is its last run"),
            }

            match plan.decision {
                Decision::SkipStale { age } => {
                    tracing::Span::current().record("outcome", "skipped");
                    self.count("skipped");
                    tracing::warn!(
                        late_by_ms = age.num_milliseconds(),
                        skip_if_older_than_ms = spec.policy.skip_if_older_than.num_milliseconds(),
                        "cron run skipped: too late after its scheduled time"
                    );
                }
                Decision::Run => match (spec.handler)(scheduled_time).await {
                    Ok(()) => {
                        tracing::Span::current().record("outcome", "ok");
                        self.count("ok");
                        tracing::debug!("cron run finished");
                    }
                    Err(err) => {
                        tracing::Span::current().record("outcome", "failed");
                        self.count("failed");
                        tracing::error!(error = %err, "cron handler failed; the next occurrence stays scheduled");
                    }
                },
            }
        }
        .instrument(span)
        .await
    }
}

#[async_trait]
impl EntityHandler for CronEntityHandler {
    async fn handle(&self, request: IncomingRequest) -> Result<Bytes, ClusterError> {
        match request.tag() {
            RUN_TAG => {
                let run: CronRun = request.decode()?;
                self.run(run.scheduled_time).await;
                wire::encode(&())
            }
            other => Err(ClusterError::UnknownTag {
                entity_type: request.address().entity_type.clone(),
                tag: other.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn dedupe_keys_are_distinct_per_occurrence_and_stable() {
        let a = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let b = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 1).unwrap();
        assert_eq!(run_dedupe_key(a), run_dedupe_key(a));
        assert_ne!(run_dedupe_key(a), run_dedupe_key(b));
        assert_eq!(run_dedupe_key(a), "run@2025-01-01T00:00:00.000Z");
    }

    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::TimeDelta;
    use cruster_types::{EntityAddress, EnvelopeRequest, RunnerAddress, ShardId, Snowflake};

    use super::super::test_sharding::RecordingSharding;

    fn spec(
        from_previous: bool,
        skip: TimeDelta,
        calls: Arc<AtomicUsize>,
        fail: bool,
    ) -> Arc<CronSpec> {
        Arc::new(CronSpec {
            name: "job".into(),
            schedule: CronSchedule::parse("0 * * * * *").unwrap(),
            handler: Arc::new(move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    if fail {
                        Err(ClusterError::handler("boom"))
                    } else {
                        Ok(())
                    }
                })
            }),
            policy: RunPolicy {
                calculate_next_from_previous: from_previous,
                skip_if_older_than: skip,
            },
            rearm_interval: Duration::from_secs(30),
        })
    }

    async fn handler_for(
        spec: Arc<CronSpec>,
        sharding: Arc<RecordingSharding>,
    ) -> Arc<dyn EntityHandler> {
        let address = EntityAddress {
            shard_id: ShardId::new("default", 0),
            entity_type: spec.entity_type(),
            entity_id: EntityId::new(SCHEDULER_ENTITY_ID),
        };
        let ctx = EntityContext {
            address,
            runner_address: RunnerAddress::new("test", 1),
            sharding,
        };
        CronEntity { spec }.spawn(ctx).await.unwrap()
    }

    fn run_request(
        spec: &CronSpec,
        tag: &'static str,
        scheduled_time: DateTime<Utc>,
    ) -> IncomingRequest {
        let address = EntityAddress {
            shard_id: ShardId::new("default", 0),
            entity_type: spec.entity_type(),
            entity_id: EntityId::new(SCHEDULER_ENTITY_ID),
        };
        let payload = wire::encode(&CronRun { scheduled_time }).unwrap();
        IncomingRequest {
            envelope: EnvelopeRequest::new(Snowflake(1), address, tag, payload),
        }
    }

    /// The start of the current minute, so "every minute at second 0" runs are on time.
    fn this_minute() -> DateTime<Utc> {
        let now = Utc::now();
        now - TimeDelta::seconds(i64::from(chrono::Timelike::second(&now)))
            - TimeDelta::nanoseconds(i64::from(chrono::Timelike::nanosecond(&now)))
    }

    #[tokio::test]
    async fn a_run_saves_the_next_occurrence_keyed_and_due_then_calls_the_handler() {
        let calls = Arc::new(AtomicUsize::new(0));
        let spec = spec(true, TimeDelta::hours(1), calls.clone(), false);
        let sharding = RecordingSharding::new();
        let handler = handler_for(spec.clone(), sharding.clone()).await;
        let scheduled = this_minute();

        handler
            .handle(run_request(&spec, RUN_TAG, scheduled))
            .await
            .unwrap();

        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let saved = sharding.notified.lock().clone();
        assert_eq!(saved.len(), 1, "{saved:?}");
        let next = scheduled + TimeDelta::minutes(1);
        let envelope = &saved[0];
        assert!(envelope.persisted && !envelope.expects_reply);
        assert_eq!(envelope.tag, RUN_TAG);
        assert_eq!(envelope.deliver_at, Some(next));
        assert_eq!(
            envelope.dedupe_key.as_deref(),
            Some(run_dedupe_key(next).as_str())
        );
        assert_eq!(envelope.address.entity_type, spec.entity_type());
        assert_eq!(
            envelope.address.entity_id,
            EntityId::new(SCHEDULER_ENTITY_ID)
        );
        let payload: CronRun = wire::decode(&envelope.payload).unwrap();
        assert_eq!(payload.scheduled_time, next);
    }

    #[tokio::test]
    async fn a_stale_run_skips_the_handler_but_still_schedules_the_next_one() {
        let calls = Arc::new(AtomicUsize::new(0));
        let spec = spec(false, TimeDelta::seconds(30), calls.clone(), false);
        let sharding = RecordingSharding::new();
        let handler = handler_for(spec.clone(), sharding.clone()).await;

        let an_hour_ago = this_minute() - TimeDelta::hours(1);
        handler
            .handle(run_request(&spec, RUN_TAG, an_hour_ago))
            .await
            .unwrap();

        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "a stale run called the handler"
        );
        let saved = sharding.notified.lock().clone();
        assert_eq!(saved.len(), 1);
        assert!(saved[0]
            .deliver_at
            .is_some_and(|at| at > Utc::now() - TimeDelta::seconds(1)));
    }

    #[tokio::test]
    async fn a_failing_handler_is_not_an_error_of_the_run() {
        let calls = Arc::new(AtomicUsize::new(0));
        let spec = spec(true, TimeDelta::hours(1), calls.clone(), true);
        let sharding = RecordingSharding::new();
        let handler = handler_for(spec.clone(), sharding.clone()).await;

        let reply = handler
            .handle(run_request(&spec, RUN_TAG, this_minute()))
            .await;

        assert!(reply.is_ok(), "{reply:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            sharding.notified.lock().len(),
            1,
            "the next run must still be saved"
        );
    }

    #[tokio::test]
    async fn saving_the_next_run_is_retried_through_a_shard_move() {
        let calls = Arc::new(AtomicUsize::new(0));
        let spec = spec(true, TimeDelta::hours(1), calls.clone(), false);
        let sharding = RecordingSharding::new();
        *sharding.failures_left.lock() = 2;
        let handler = handler_for(spec.clone(), sharding.clone()).await;

        handler
            .handle(run_request(&spec, RUN_TAG, this_minute()))
            .await
            .unwrap();

        assert_eq!(sharding.notified.lock().len(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unknown_tag_or_payload_is_an_error() {
        let spec = spec(
            true,
            TimeDelta::hours(1),
            Arc::new(AtomicUsize::new(0)),
            false,
        );
        let handler = handler_for(spec.clone(), RecordingSharding::new()).await;
        let err = handler
            .handle(run_request(&spec, "other", this_minute()))
            .await
            .unwrap_err();
        assert!(matches!(err, ClusterError::UnknownTag { .. }), "{err:?}");

        let mut garbled = run_request(&spec, RUN_TAG, this_minute());
        garbled.envelope.payload = Bytes::from_static(&[0xc1]);
        let err = handler.handle(garbled).await.unwrap_err();
        assert!(
            matches!(err, ClusterError::MalformedMessage { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn run_payload_round_trips() {
        let run = CronRun {
            scheduled_time: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
        };
        let bytes = wire::encode(&run).unwrap();
        assert_eq!(wire::decode::<CronRun>(&bytes).unwrap(), run);
    }
}
