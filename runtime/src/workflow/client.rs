//! [`WorkflowClient`]: execute, start, poll and join executions of one workflow type.

use std::marker::PhantomData;
use std::sync::Arc;

use cruster_sharding::{EntityClient, IntoSharding, Sharding};
use cruster_types::{wire, ClusterError, EntityId, EntityType, ExitResult, Snowflake};
use cruster_workflow_storage::{ExecutionRecord, ExecutionStatus, WorkflowEngine};

use super::cancel_execution::cancel_by_id;
use super::cancellation::CancelOutcome;
use super::client_from_sharding::ClientFromSharding;
use super::definition::{id_taken, WorkflowBody, WorkflowDefinition, WorkflowReply};
use super::execution_id::execution_id_from_key;
use super::inspect::missing_part;
use super::result_push::ResultPush;
use super::workflow_entity::{parked_error, WorkflowEntity};
use crate::sharding_impl::ShardingImpl;

/// A client of one workflow type. Cheap to clone.
///
/// ```ignore
/// let client = OrderWorkflow.register(sharding.clone()).await?;
/// let result = client.execute(&request).await?;           // waits for the result
/// let exec_id = client.start(&request).await?;            // returns at once
/// let maybe = client.poll(&exec_id).await?;               // None while running
/// let result = client.with_key("my-key").execute(&request).await?; // idempotency key (hashed)
/// ```
pub struct WorkflowClient<W: WorkflowDefinition> {
    entity: EntityClient,
    key: Option<(String, bool)>,
    _workflow: PhantomData<fn() -> W>,
}

impl<W: WorkflowDefinition> Clone for WorkflowClient<W> {
    fn clone(&self) -> Self {
        WorkflowClient {
            entity: self.entity.clone(),
            key: self.key.clone(),
            _workflow: PhantomData,
        }
    }
}

impl<W: WorkflowDefinition> std::fmt::Debug for WorkflowClient<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowClient")
            .field("workflow", &W::NAME)
            .finish()
    }
}

impl<W: WorkflowDefinition> ClientFromSharding for WorkflowClient<W> {
    fn client_entity_type() -> EntityType {
        EntityType::new(W::NAME)
    }

    fn from_entity_client(client: EntityClient) -> Self {
        WorkflowClient {
            entity: client,
            key: None,
            _workflow: PhantomData,
        }
    }
}

fn engine_of(sharding: &Arc<dyn Sharding>) -> Result<Arc<dyn WorkflowEngine>, ClusterError> {
    sharding
        .as_any()
        .downcast_ref::<ShardingImpl>()
        .and_then(|s| s.workflow_engine().cloned())
        .ok_or_else(|| missing_part("workflows", "workflow engine storage"))
}

/// The result an answer of the workflow's hidden entity gives: `None` when the execution
/// suspended.
fn answer_of<W: WorkflowDefinition>(
    execution_id: &str,
    exit: &ExitResult,
) -> Result<Option<Result<W::Response, ClusterError>>, ClusterError> {
    let bytes = exit.clone().into_result()?;
    Ok(match wire::decode::<WorkflowReply>(&bytes)? {
        WorkflowReply::Completed(bytes) => Some(wire::decode(&bytes)),
        WorkflowReply::Suspended => None,
        WorkflowReply::Failed(err) | WorkflowReply::Parked(err) => Some(Err(err.into())),
        WorkflowReply::Cancelled => Some(Err(ClusterError::WorkflowCancelled {
            execution_id: execution_id.to_string(),
        })),
    })
}

/// The result of an execution as its record tells it: `None` while it has not stopped.
fn result_of<W: WorkflowDefinition>(
    record: &ExecutionRecord,
) -> Result<Option<W::Response>, ClusterError> {
    if let Some(taken) = id_taken(record, W::NAME) {
        return Err(taken);
    }
    match (&record.status, &record.result) {
        (ExecutionStatus::Completed, Some(ExitResult::Success(bytes))) => {
            wire::decode(bytes).map(Some)
        }
        (ExecutionStatus::Failed, Some(ExitResult::Failure(err))) => Err(err.clone().into()),
        (ExecutionStatus::Cancelled, _) => Err(ClusterError::WorkflowCancelled {
            execution_id: record.execution_id.clone(),
        }),
        (ExecutionStatus::Parked, _) => Err(parked_error(record)),
        _ => Ok(None),
    }
}

impl<W: WorkflowDefinition> WorkflowClient<W> {
    /// A client of workflow `W` on `sharding` (the workflow must be registered on the
    /// runners that own its executions; `register` returns the same client).
    pub fn new(sharding: impl IntoSharding) -> Self {
        Self::from_sharding(sharding.into_sharding())
    }

    /// The same client with an idempotency key, hashed into the execution id: executing
    /// twice with one key runs once and returns the first result.
    pub fn with_key(&self, key: impl AsRef<str>) -> Self {
        WorkflowClient {
            key: Some((key.as_ref().to_string(), true)),
            ..self.clone()
        }
    }

    /// The same client with an execution id used as it is.
    pub fn with_key_raw(&self, id: impl AsRef<str>) -> Self {
        WorkflowClient {
            key: Some((id.as_ref().to_string(), false)),
            ..self.clone()
        }
    }

    /// The execution id `execute`/`start` would use for `request`.
    ///
    /// # Errors
    /// `MalformedMessage` if the request cannot be serialized.
    pub fn execution_id(&self, request: &W::Request) -> Result<String, ClusterError> {
        match &self.key {
            Some((key, hash)) => Ok(execution_id_from_key(key, *hash)),
            None => W::execution_id(request),
        }
    }

    /// Runs the workflow (or finds the execution with the same id) and waits for its result.
    ///
    /// # Errors
    /// The workflow's error; storage errors.
    pub async fn execute(&self, request: &W::Request) -> Result<W::Response, ClusterError> {
        let id = self.execution_id(request)?;
        let envelope = self.entity.persisted_envelope_with_key(
            &EntityId::new(&id),
            "execute",
            request,
            "execute",
            false,
        )?;
        let request_id = envelope.request_id;
        let reply = self.entity.sharding().send(envelope).await?;
        match answer_of::<W>(&id, &reply.exit)? {
            Some(result) => result,
            // Suspended: the runner where the execution stops answers this request again.
            None => self.wait(&id, Some(request_id)).await,
        }
    }

    /// Starts the workflow and returns its execution id at once.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn start(&self, request: &W::Request) -> Result<String, ClusterError> {
        let id = self.execution_id(request)?;
        self.entity
            .notify_persisted_with_key(&EntityId::new(&id), "execute", request, "execute")
            .await?;
        Ok(id)
    }

    /// The result of an execution: `None` while it runs (or if it is unknown).
    ///
    /// # Errors
    /// The workflow's error if it failed; `WorkflowCancelled` if it was cancelled;
    /// `WorkflowParked` while it is parked; `MalformedMessage` if the result does not decode.
    pub async fn poll(&self, execution_id: &str) -> Result<Option<W::Response>, ClusterError> {
        let engine = engine_of(self.entity.sharding())?;
        match engine.execution(execution_id).await? {
            Some(record) => result_of::<W>(&record),
            None => Ok(None),
        }
    }

    /// Cancels an execution: it stops at its next suspension point (an activity call, a
    /// durable sleep — a long sleep is cut short —, or the start of its next run) and
    /// records `Cancelled`; `poll` and `join` then return `WorkflowCancelled`. An activity
    /// running at that moment finishes, or is interrupted when it is declared
    /// `#[activity(on_cancel = "interrupt")]`. The request is stored, so it holds across
    /// restarts and whichever runner owns the execution. Idempotent: cancelling again
    /// answers `Requested` with the first request's instant; cancelling a finished
    /// execution changes nothing and answers `AlreadyFinished`.
    ///
    /// An execution is known once it has started running: right after `start` an
    /// execution may not be recorded yet (`WorkflowNotFound`); retry then.
    ///
    /// ```ignore
    /// let exec_id = client.start(&request).await?;
    /// client.cancel(&exec_id).await?;
    /// assert!(matches!(client.join(&exec_id).await, Err(ClusterError::WorkflowCancelled { .. })));
    /// ```
    ///
    /// # Errors
    /// `WorkflowNotFound` for an id that no execution of this workflow has; storage errors.
    pub async fn cancel(&self, execution_id: &str) -> Result<CancelOutcome, ClusterError> {
        let engine = engine_of(self.entity.sharding())?;
        cancel_by_id(
            self.entity.sharding().as_ref(),
            engine.as_ref(),
            Some(W::NAME),
            execution_id,
        )
        .await
    }

    /// Waits for the result of an execution (or until it is cancelled or parked).
    ///
    /// The execution is read once when the wait begins. Afterwards the caller is woken when
    /// the execution stops on this runner, or by this runner's fallback check, which reads
    /// the executions of all its waiting callers in one batched read every
    /// `waiter_fallback_interval` (the wait for an execution that stops on another runner;
    /// see the README, "Waiting costs"). A waiting caller costs no reads of its own: an
    /// execution that sleeps an hour costs nothing per caller while it sleeps.
    ///
    /// # Errors
    /// As [`WorkflowClient::poll`]; `ShuttingDown` when this runner stops meanwhile.
    pub async fn join(&self, execution_id: &str) -> Result<W::Response, ClusterError> {
        self.wait(execution_id, None).await
    }

    /// Waits for an execution to stop; for the caller of `execute` request `request_id`,
    /// also for the answer the runner where it stops pushes to this one.
    async fn wait(
        &self,
        execution_id: &str,
        request_id: Option<Snowflake>,
    ) -> Result<W::Response, ClusterError> {
        let runner = self
            .entity
            .sharding()
            .as_any()
            .downcast_ref::<ShardingImpl>()
            .ok_or_else(|| missing_part("workflows", "cruster runtime"))?;
        let core = runner.core().clone();
        let mut waiter = core.execution_waiters.wait(execution_id.to_string());
        let mut pushed = request_id.map(|id| core.pushed_results.wait(id));
        if let Some(result) = self.poll(execution_id).await? {
            return Ok(result);
        }
        loop {
            let pushed_answer = async {
                match pushed.as_mut() {
                    Some(pushed) => (&mut pushed.rx).await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                stopped = &mut waiter.rx => {
                    if let Ok(record) = stopped {
                        if let Some(result) = result_of::<W>(&record)? {
                            return Ok(result);
                        }
                    }
                    waiter = core.execution_waiters.wait(execution_id.to_string());
                }
                answer = pushed_answer => {
                    if let Some(answer) = answer {
                        if let Some(result) = answer_of::<W>(execution_id, &answer.exit)? {
                            return result;
                        }
                    }
                    pushed = request_id.map(|id| core.pushed_results.wait(id));
                }
                _ = core.killed.cancelled() => return Err(ClusterError::ShuttingDown),
            }
        }
    }

    /// The entity client underneath (the workflow's hidden entity type).
    pub fn entity_client(&self) -> &EntityClient {
        &self.entity
    }
}

/// Registers a workflow body on a runner and returns the workflow's client. The workflow
/// macros call it from the generated `register`.
///
/// # Errors
/// `Unsupported` when the runner has no workflow storage, workflow engine or message
/// storage (it cannot run workflows); `InvalidConfig` if the workflow is already registered.
pub async fn register_workflow<B: WorkflowBody>(
    sharding: impl IntoSharding,
    body: B,
) -> Result<WorkflowClient<B::Workflow>, ClusterError> {
    let sharding = sharding.into_sharding();
    let unsupported = |what: &str| ClusterError::Unsupported {
        operation: format!("workflow `{}`", <B::Workflow as WorkflowDefinition>::NAME),
        backend: format!(
            "this runner, which has no {what}; build it with one (SingleRunner has all of them)"
        ),
    };
    let runner = sharding
        .as_any()
        .downcast_ref::<ShardingImpl>()
        .ok_or_else(|| unsupported("cruster runtime"))?;
    let storage = runner
        .workflow_storage()
        .cloned()
        .ok_or_else(|| unsupported("workflow storage"))?;
    let engine = runner
        .workflow_engine()
        .cloned()
        .ok_or_else(|| unsupported("workflow engine"))?;
    if runner.message_storage().is_none() {
        return Err(unsupported("message storage"));
    }
    let metrics = runner.metrics().clone();
    let config = runner.config().clone();
    let core = runner.core().clone();
    let results = Arc::new(ResultPush::new(core.clone()));
    sharding
        .register_entity(Arc::new(WorkflowEntity {
            body: Arc::new(body),
            storage,
            engine,
            metrics,
            config,
            results,
            core,
        }))
        .await?;
    Ok(WorkflowClient::from_sharding(sharding))
}
