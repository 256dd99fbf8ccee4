//! The hidden entity behind a workflow: one instance per execution id.
//!
//! Owns the life of an execution: its record (running, suspended, completed, failed), the
//! replay of its body over the journal, and the answer to `execute` and `resume`. The entity
//! handles one message at a time per execution, so an execution never runs twice at once on
//! one runner, and shard locks keep it on one runner.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use cruster_sharding::{
    Entity, EntityContext, EntityHandler, EntityOptions, IncomingRequest, Sharding,
};
use cruster_types::{wire, ClusterError, EntityAddress, EntityType, ExitResult};
use cruster_workflow_storage::{ExecutionRecord, ExecutionStatus, WorkflowEngine, WorkflowStorage};

use super::context::WorkflowContext;
use super::definition::{WorkflowBody, WorkflowDefinition, WorkflowReply};
use crate::metrics::ClusterMetrics;

pub(crate) struct WorkflowEntity<B: WorkflowBody> {
    pub(crate) body: Arc<B>,
    pub(crate) storage: Arc<dyn WorkflowStorage>,
    pub(crate) engine: Arc<dyn WorkflowEngine>,
    pub(crate) metrics: Arc<ClusterMetrics>,
}

struct WorkflowInstance<B: WorkflowBody> {
    body: Arc<B>,
    storage: Arc<dyn WorkflowStorage>,
    engine: Arc<dyn WorkflowEngine>,
    metrics: Arc<ClusterMetrics>,
    address: EntityAddress,
    sharding: Arc<dyn Sharding>,
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
            address: ctx.address,
            sharding: ctx.sharding,
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

    async fn save(
        &self,
        record: &mut ExecutionRecord,
        status: ExecutionStatus,
        result: Option<ExitResult>,
    ) -> Result<(), ClusterError> {
        record.status = status;
        record.result = result;
        record.updated_at = Utc::now();
        self.engine.upsert_execution(record).await
    }

    async fn run(&self, start: Option<Bytes>) -> Result<Bytes, ClusterError> {
        let exec = self.execution_id().to_string();
        let mut record = match self.engine.execution(&exec).await? {
            Some(record) => record,
            None => match start {
                Some(request) => {
                    let now = Utc::now();
                    let record = ExecutionRecord {
                        execution_id: exec.clone(),
                        workflow: <B::Workflow as WorkflowDefinition>::NAME.to_string(),
                        status: ExecutionStatus::Running,
                        request,
                        result: None,
                        created_at: now,
                        updated_at: now,
                    };
                    self.engine.upsert_execution(&record).await?;
                    record
                }
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
            _ => {}
        }
        let request: <B::Workflow as WorkflowDefinition>::Request =
            wire::decode(&record.request).map_err(|err| ClusterError::MalformedMessage {
                reason: format!(
                    "the stored request of workflow execution `{exec}` does not decode as {}",
                    std::any::type_name::<<B::Workflow as WorkflowDefinition>::Request>()
                ),
                source: Some(Box::new(err)),
            })?;
        if record.status != ExecutionStatus::Running {
            self.save(&mut record, ExecutionStatus::Running, None)
                .await?;
        }
        let journal = self.storage.journal(&exec).await?;
        let ctx = WorkflowContext::new(
            exec.clone(),
            <B::Workflow as WorkflowDefinition>::NAME,
            self.address.clone(),
            self.storage.clone(),
            self.engine.clone(),
            self.sharding.clone(),
            self.metrics.clone(),
            journal,
        );
        let body = self.body.clone().execute(ctx.clone(), request);
        let outcome = tokio::select! {
            result = body => RunOutcome::Done(result),
            until = ctx.suspended() => RunOutcome::Suspended(until),
        };
        match outcome {
            RunOutcome::Done(Ok(response)) => {
                let bytes = wire::encode(&response)?;
                self.save(
                    &mut record,
                    ExecutionStatus::Completed,
                    Some(ExitResult::Success(bytes.clone())),
                )
                .await?;
                tracing::info!(execution_id = %exec, workflow = <B::Workflow as WorkflowDefinition>::NAME, "workflow completed");
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
                    // which replays it. The delivery layer retries storage errors only, so
                    // another engine error (a call's routing failure) travels as one.
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
                self.save(
                    &mut record,
                    ExecutionStatus::Failed,
                    Some(ExitResult::failure(&err)),
                )
                .await?;
                tracing::warn!(execution_id = %exec, workflow = <B::Workflow as WorkflowDefinition>::NAME, %err, "workflow failed");
                wire::encode(&WorkflowReply::Failed(err.to_wire()))
            }
            RunOutcome::Suspended(until) => {
                self.save(
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

#[async_trait]
impl<B: WorkflowBody> EntityHandler for WorkflowInstance<B> {
    async fn handle(&self, request: IncomingRequest) -> Result<Bytes, ClusterError> {
        match request.tag() {
            "execute" => {
                // Validate the request before recording the execution.
                request.decode::<<B::Workflow as WorkflowDefinition>::Request>()?;
                self.run(Some(request.envelope.payload.clone())).await
            }
            "resume" => self.run(None).await,
            other => Err(ClusterError::UnknownTag {
                entity_type: EntityType::new(<B::Workflow as WorkflowDefinition>::NAME),
                tag: other.to_string(),
            }),
        }
    }
}
