//! The hidden entity behind a workflow: one instance per execution id.
//!
//! Owns the life of an execution: its record (running, suspended, completed, failed,
//! cancelled, parked), the replay of its body over the journal, the count of runs without
//! progress (parking the execution at the configured limit), and the answer to `execute`
//! and `resume`. A panic in the body is caught here and counted as a failed attempt. The entity
//! handles one message at a time per execution, so an execution never runs twice at once on
//! one runner, and shard locks keep it on one runner.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use cruster_sharding::{
    Entity, EntityContext, EntityHandler, EntityOptions, IncomingRequest, Sharding,
};
use cruster_types::{
    wire, ClusterError, EntityAddress, EntityId, EntityType, EnvelopeRequest, ExitResult,
    Snowflake, WireError,
};
use cruster_workflow_storage::{ExecutionRecord, ExecutionStatus, WorkflowEngine, WorkflowStorage};

use futures::FutureExt;

use super::cancellation::CancelWatch;
use super::context::WorkflowContext;
use super::deferred_step::PendingStep;
use super::definition::{id_taken, WorkflowBody, WorkflowDefinition, WorkflowReply};
use super::finished_execution::{FinishPorts, FinishedExecution};
use super::result_push::ResultPush;
use super::run_fault::panic_message;
use crate::config::ShardingConfig;
use crate::metrics::ClusterMetrics;
use crate::runtime_core::RuntimeCore;

pub(crate) struct WorkflowEntity<B: WorkflowBody> {
    pub(crate) body: Arc<B>,
    pub(crate) storage: Arc<dyn WorkflowStorage>,
    pub(crate) engine: Arc<dyn WorkflowEngine>,
    pub(crate) metrics: Arc<ClusterMetrics>,
    pub(crate) config: Arc<ShardingConfig>,
    /// Tells the callers of executions that stopped here.
    pub(crate) results: Arc<ResultPush>,
    /// Where finished executions are staged, to be stored with their request's reply.
    pub(crate) core: Arc<RuntimeCore>,
}

struct WorkflowInstance<B: WorkflowBody> {
    body: Arc<B>,
    storage: Arc<dyn WorkflowStorage>,
    engine: Arc<dyn WorkflowEngine>,
    metrics: Arc<ClusterMetrics>,
    config: Arc<ShardingConfig>,
    address: EntityAddress,
    sharding: Arc<dyn Sharding>,
    results: Arc<ResultPush>,
    core: Arc<RuntimeCore>,
}

#[async_trait]
impl<B: WorkflowBody> Entity for WorkflowEntity<B> {
    fn entity_type(&self) -> EntityType {
        EntityType::new(<B::Workflow as WorkflowDefinition>::NAME)
    }

    fn options(&self) -> EntityOptions {
        EntityOptions {
            concurrency: Some(1),
            ..Default::default()
        }
    }

    async fn spawn(&self, ctx: EntityContext) -> Result<Arc<dyn EntityHandler>, ClusterError> {
        Ok(Arc::new(WorkflowInstance {
            body: self.body.clone(),
            storage: self.storage.clone(),
            engine: self.engine.clone(),
            metrics: self.metrics.clone(),
            config: self.config.clone(),
            address: ctx.address,
            sharding: ctx.sharding,
            results: self.results.clone(),
            core: self.core.clone(),
        }))
    }
}

enum RunOutcome<T> {
    Done(Result<T, ClusterError>),
    Suspended(chrono::DateTime<Utc>),
}

impl<B: WorkflowBody> WorkflowInstance<B> {
    fn execution_id(&self) -> &str {
        self.address.entity_id.as_str()
    }

    fn workflow_name() -> &'static str {
        <B::Workflow as WorkflowDefinition>::NAME
    }

    async fn save(
        &self,
        record: &mut ExecutionRecord,
        status: ExecutionStatus,
        result: Option<ExitResult>,
    ) -> Result<(), ClusterError> {
        record.status = status;
        record.result = result;
        record.updated_at = self.config.clock.now();
        self.engine.upsert_execution(record).await?;
        if record.status.is_finished() || record.status == ExecutionStatus::Parked {
            // Its callers learn it at once, without reading storage.
            self.results.stopped(record);
        }
        Ok(())
    }

    /// Saves an outcome that is progress: the count of attempts without progress restarts.
    async fn save_progress(
        &self,
        record: &mut ExecutionRecord,
        status: ExecutionStatus,
        result: Option<ExitResult>,
    ) -> Result<(), ClusterError> {
        record.attempts = 0;
        record.last_error = None;
        self.save(record, status, result).await
    }

    /// Ends the execution with `result` (progress: the attempts count restarts). The record
    /// is staged for the delivery layer, which stores it with the reply of `request_id`
    /// (in one commit when storage allows) and then wakes the callers.
    fn finish(
        &self,
        request_id: Snowflake,
        mut record: ExecutionRecord,
        status: ExecutionStatus,
        result: ExitResult,
        last_step: Option<PendingStep>,
    ) {
        record.attempts = 0;
        record.last_error = None;
        record.status = status;
        record.result = Some(result);
        record.updated_at = self.config.clock.now();
        let finished = FinishedExecution::new(
            record,
            last_step,
            FinishPorts {
                engine: self.engine.clone(),
                journal: self.storage.clone(),
                results: self.results.clone(),
                metrics: self.metrics.clone(),
            },
        );
        self.core.finished_executions.stage(request_id, finished);
    }

    /// Commits a held-back activity on its own (before an outcome other than the end).
    async fn commit_step(&self, step: Option<PendingStep>) -> Result<(), ClusterError> {
        if let Some(step) = step {
            step.commit_counted(&self.metrics).await?;
        }
        Ok(())
    }

    async fn cancel(&self, record: &mut ExecutionRecord) -> Result<Bytes, ClusterError> {
        self.save_progress(record, ExecutionStatus::Cancelled, None)
            .await?;
        tracing::info!(execution_id = %record.execution_id, workflow = Self::workflow_name(), "workflow cancelled");
        wire::encode(&WorkflowReply::Cancelled)
    }

    /// Parks the execution with `err`, its last run's error.
    async fn park(
        &self,
        record: &mut ExecutionRecord,
        err: WireError,
    ) -> Result<Bytes, ClusterError> {
        record.last_error = Some(err.clone());
        self.save(
            record,
            ExecutionStatus::Parked,
            Some(ExitResult::Failure(err)),
        )
        .await?;
        let parked = parked_error(record);
        tracing::error!(execution_id = %record.execution_id, workflow = Self::workflow_name(), err = %parked, "workflow parked");
        self.metrics.workflows_parked.inc();
        wire::encode(&WorkflowReply::Parked(parked.to_wire()))
    }

    /// A run that made no progress (`fault`): retried after a backoff, or parked when it was
    /// the last allowed attempt.
    async fn failed_attempt(
        &self,
        record: &mut ExecutionRecord,
        fault: ClusterError,
    ) -> Result<Bytes, ClusterError> {
        if record.attempts >= self.config.workflow_max_failed_attempts {
            return self.park(record, fault.to_wire()).await;
        }
        record.last_error = Some(fault.to_wire());
        let backoff =
            chrono::Duration::from_std(self.config.storage_retry_backoff(record.attempts))
                .unwrap_or(chrono::Duration::MAX);
        let retry_at = self
            .config
            .clock
            .now()
            .checked_add_signed(backoff)
            .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC);
        self.save(
            record,
            ExecutionStatus::Suspended {
                until: Some(retry_at),
            },
            None,
        )
        .await?;
        tracing::warn!(
            execution_id = %record.execution_id,
            workflow = Self::workflow_name(),
            attempt = record.attempts,
            max_attempts = self.config.workflow_max_failed_attempts,
            %retry_at,
            err = %fault,
            "workflow run made no progress; it runs again after a backoff"
        );
        self.send_resume(Some(retry_at), None).await?;
        wire::encode(&WorkflowReply::Suspended)
    }

    /// Sends the execution a persisted `resume`, due at `deliver_at`.
    async fn send_resume(
        &self,
        deliver_at: Option<chrono::DateTime<Utc>>,
        dedupe_key: Option<String>,
    ) -> Result<(), ClusterError> {
        send_resume(
            self.sharding.as_ref(),
            self.address.clone(),
            deliver_at,
            dedupe_key,
        )
        .await
    }

    /// Runs (or replays) the execution for request `request_id`.
    async fn run(
        &self,
        request_id: Snowflake,
        start: Option<Bytes>,
    ) -> Result<Bytes, ClusterError> {
        let exec = self.execution_id().to_string();
        let stored = self.engine.execution(&exec).await?;
        if let Some(taken) = stored
            .as_ref()
            .and_then(|record| id_taken(record, Self::workflow_name()))
        {
            // Another workflow's execution: neither run nor touched. Answered as a reply, so
            // the request is not redelivered.
            tracing::warn!(execution_id = %exec, %taken, "execution id taken by another workflow");
            return wire::encode(&WorkflowReply::Failed(taken.to_wire()));
        }
        // A run saves its record before it journals anything (and retention deletes a
        // journal before its record), so an execution without a record has no journal.
        let fresh = stored.is_none();
        let mut record = match stored {
            Some(record) => record,
            // Saved below, with its first attempt counted.
            None => match start {
                Some(request) => ExecutionRecord::new(
                    exec.clone(),
                    Self::workflow_name(),
                    request,
                    self.config.clock.now(),
                ),
                None => {
                    tracing::warn!(execution_id = %exec, "wake-up for an unknown execution ignored");
                    return wire::encode(&WorkflowReply::Suspended);
                }
            },
        };
        match (&record.status, &record.result) {
            (ExecutionStatus::Completed, Some(ExitResult::Success(bytes))) => {
                return wire::encode(&WorkflowReply::Completed(bytes.clone()));
            }
            (ExecutionStatus::Failed, Some(ExitResult::Failure(err))) => {
                return wire::encode(&WorkflowReply::Failed(err.clone()));
            }
            (ExecutionStatus::Cancelled, _) => return wire::encode(&WorkflowReply::Cancelled),
            _ => {}
        }
        // The start of a run is a suspension point too.
        if record.cancel_requested_at.is_some() {
            return self.cancel(&mut record).await;
        }
        if record.status == ExecutionStatus::Parked {
            return wire::encode(&WorkflowReply::Parked(parked_error(&record).to_wire()));
        }
        let journal = if fresh {
            Vec::new()
        } else {
            self.storage.journal(&exec).await?
        };
        let journal_len = u32::try_from(journal.len()).unwrap_or(u32::MAX);
        if journal_len > record.progress_mark {
            // The last run journaled something: it made progress.
            record.attempts = 0;
            record.last_error = None;
        }
        if record.attempts >= self.config.workflow_max_failed_attempts {
            // Every earlier attempt ended without an outcome: its runner crashed or stopped.
            let err = record.last_error.clone().unwrap_or_else(|| {
                ClusterError::handler(format!(
                    "the last {} runs of workflow execution `{exec}` ended without an outcome \
                     (the runner crashed or stopped during each)",
                    record.attempts
                ))
                .to_wire()
            });
            return self.park(&mut record, err).await;
        }
        // Counted before the run, so a run that crashes the runner counts too.
        record.attempts += 1;
        record.progress_mark = journal_len;
        // Saved before the body runs: an execution that is running can be found (and
        // cancelled) by its id.
        self.save(&mut record, ExecutionStatus::Running, None)
            .await?;
        let request: <B::Workflow as WorkflowDefinition>::Request =
            match wire::decode(&record.request) {
                Ok(request) => request,
                Err(err) => {
                    let fault = ClusterError::MalformedMessage {
                        reason: format!(
                        "the stored request of workflow execution `{exec}` does not decode as {}",
                        std::any::type_name::<<B::Workflow as WorkflowDefinition>::Request>()
                    ),
                        source: Some(Box::new(err)),
                    };
                    return self.failed_attempt(&mut record, fault).await;
                }
            };
        let ctx = WorkflowContext::new(
            exec.clone(),
            Self::workflow_name(),
            self.address.clone(),
            self.storage.clone(),
            self.engine.clone(),
            self.sharding.clone(),
            self.metrics.clone(),
            journal,
            // The record was read just now: the first suspension point need not ask again.
            CancelWatch::new(
                self.engine.clone(),
                exec.clone(),
                self.config.workflow_cancel_poll_interval,
            )
            .checked_at_start(),
            self.config.clock.clone(),
            self.config.workflow_commit_hold,
        );
        let body = AssertUnwindSafe(self.body.clone().execute(ctx.clone(), request)).catch_unwind();
        let outcome = tokio::select! {
            result = body => RunOutcome::Done(result.unwrap_or_else(|panic| {
                let err = ClusterError::handler(format!(
                    "workflow `{}` panicked in execution `{exec}`: {}",
                    Self::workflow_name(),
                    panic_message(panic.as_ref())
                ));
                tracing::error!(%err, "workflow body panicked; the run counts as a failed attempt");
                Err(ctx.record_fault(err))
            })),
            until = ctx.suspended() => RunOutcome::Suspended(until),
        };
        // The last activity's held-back commit: it goes out with the execution's end, or
        // on its own before any other outcome is saved.
        let mut last_step = ctx.take_deferred().await?;
        if ctx.cancel_observed() {
            self.commit_step(last_step.take()).await?;
            return self.cancel(&mut record).await;
        }
        if let Some(fault) = ctx.take_fault() {
            self.commit_step(last_step.take()).await?;
            return self.failed_attempt(&mut record, fault).await;
        }
        match outcome {
            RunOutcome::Done(Ok(response)) => {
                let bytes = wire::encode(&response)?;
                self.finish(
                    request_id,
                    record,
                    ExecutionStatus::Completed,
                    ExitResult::Success(bytes.clone()),
                    last_step,
                );
                tracing::info!(execution_id = %exec, workflow = Self::workflow_name(), "workflow completed");
                wire::encode(&WorkflowReply::Completed(bytes))
            }
            RunOutcome::Done(Err(err)) => {
                if ctx.is_engine_failure(&err)
                    || (matches!(err, ClusterError::PersistenceError { .. })
                        && !ctx.is_recorded_failure(&err))
                {
                    // Trouble of the engine itself (storage, pool, routing; never journaled)
                    // is not the workflow's answer: leave it running; the entity manager
                    // counts a failed delivery and the storage poll redelivers the request,
                    // which replays it. The attempt is given back (if storage lets us): an
                    // outage parks nothing. The delivery layer retries storage errors only,
                    // so another engine error (a call's routing failure) travels as one.
                    if let Err(step) = self.commit_step(last_step.take()).await {
                        tracing::debug!(execution_id = %exec, %step, "could not commit the last activity");
                    }
                    record.attempts = record.attempts.saturating_sub(1);
                    if let Err(save) = self.save(&mut record, ExecutionStatus::Running, None).await
                    {
                        tracing::debug!(execution_id = %exec, %save, "could not give the attempt back");
                    }
                    return Err(match err {
                        err @ ClusterError::PersistenceError { .. } => err,
                        other => ClusterError::PersistenceError {
                            reason: format!(
                                "workflow execution `{exec}` stopped on an engine error, not \
                                 its own answer ({other}); it is retried"
                            ),
                            source: Some(Box::new(other)),
                        },
                    });
                }
                self.finish(
                    request_id,
                    record,
                    ExecutionStatus::Failed,
                    ExitResult::failure(&err),
                    last_step,
                );
                tracing::warn!(execution_id = %exec, workflow = Self::workflow_name(), %err, "workflow failed");
                wire::encode(&WorkflowReply::Failed(err.to_wire()))
            }
            RunOutcome::Suspended(until) => {
                self.commit_step(last_step).await?;
                self.save_progress(
                    &mut record,
                    ExecutionStatus::Suspended { until: Some(until) },
                    None,
                )
                .await?;
                tracing::debug!(execution_id = %exec, %until, "workflow suspended");
                wire::encode(&WorkflowReply::Suspended)
            }
        }
    }
}

/// The `WorkflowParked` error of a parked execution record.
pub(crate) fn parked_error(record: &ExecutionRecord) -> ClusterError {
    let last_error = match (&record.last_error, &record.result) {
        (Some(err), _) | (None, Some(ExitResult::Failure(err))) => err.to_string(),
        _ => "none recorded".to_string(),
    };
    ClusterError::WorkflowParked {
        execution_id: record.execution_id.clone(),
        attempts: record.attempts,
        last_error,
    }
}

/// Sends a workflow execution's hidden entity a persisted `resume` (a wake-up), due at
/// `deliver_at` (at once when `None`); `dedupe_key` makes repeated sends one message.
/// The address of execution `execution_id`'s hidden entity (of workflow `workflow`).
pub(crate) fn execution_address(
    sharding: &dyn Sharding,
    workflow: &str,
    execution_id: &str,
) -> EntityAddress {
    let entity_type = EntityType::new(workflow);
    let entity_id = EntityId::new(execution_id);
    EntityAddress {
        shard_id: sharding.shard_id(&entity_type, &entity_id),
        entity_type,
        entity_id,
    }
}

pub(crate) async fn send_resume(
    sharding: &dyn Sharding,
    address: EntityAddress,
    deliver_at: Option<chrono::DateTime<Utc>>,
    dedupe_key: Option<String>,
) -> Result<(), ClusterError> {
    let mut envelope = EnvelopeRequest::new(
        sharding.next_request_id(),
        address,
        "resume",
        wire::encode(&())?,
    );
    envelope.persisted = true;
    envelope.expects_reply = false;
    envelope.deliver_at = deliver_at;
    envelope.dedupe_key = dedupe_key;
    sharding.notify(envelope).await
}

#[async_trait]
impl<B: WorkflowBody> EntityHandler for WorkflowInstance<B> {
    async fn handle(&self, request: IncomingRequest) -> Result<Bytes, ClusterError> {
        match request.tag() {
            "execute" => {
                // Validate the request before recording the execution.
                request.decode::<<B::Workflow as WorkflowDefinition>::Request>()?;
                let answer = self
                    .run(
                        request.envelope.request_id,
                        Some(request.envelope.payload.clone()),
                    )
                    .await?;
                if let Ok(WorkflowReply::Suspended) = wire::decode::<WorkflowReply>(&answer) {
                    // Its caller waits for the execution to stop: tell it when it does.
                    self.results
                        .suspended(self.execution_id(), request.envelope.request_id);
                }
                Ok(answer)
            }
            "resume" => self.run(request.envelope.request_id, None).await,
            other => Err(ClusterError::UnknownTag {
                entity_type: EntityType::new(<B::Workflow as WorkflowDefinition>::NAME),
                tag: other.to_string(),
            }),
        }
    }
}
