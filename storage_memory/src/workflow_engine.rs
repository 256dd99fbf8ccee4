//! [`MemoryWorkflowEngine`]: workflow execution records, durable timers and deferred
//! values, in process memory.
//!
//! This file owns the in-memory translation of `WorkflowEngine` and nothing else (no
//! scheduling or wake-up policy: the runtime polls `due_timers`). Each family (executions,
//! timers, deferreds) has its own lock, held only for short synchronous sections, never
//! across an `.await`. Uncompleted timers are indexed by `(fire_at, execution, key)`, so
//! `due_timers` reads only the due prefix; fired timers and finished executions have the
//! same kind of index, so the retention sweep reads only what is past its cutoff. Locks
//! that are taken together are taken in one order: executions, timers, deferreds.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cruster_types::{ClusterError, ExitResult};
use cruster_workflow_storage::{
    DurableTimer, ExecutionFilter, ExecutionRecord, ExecutionStatus, WorkflowEngine,
};
use parking_lot::{Mutex, RwLock};

/// `WorkflowEngine` in process memory. Cloning is cheap and shares the state.
///
/// ```
/// use cruster_storage_memory::MemoryWorkflowEngine;
/// use cruster_types::ExitResult;
/// use cruster_workflow_storage::WorkflowEngine;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let engine = MemoryWorkflowEngine::new();
/// let approved = ExitResult::Success(bytes::Bytes::from_static(b"yes"));
/// assert!(engine.resolve_deferred("order-1", "approval", &approved).await.unwrap());
/// // Write-once: a second resolution changes nothing.
/// let denied = ExitResult::Success(bytes::Bytes::from_static(b"no"));
/// assert!(!engine.resolve_deferred("order-1", "approval", &denied).await.unwrap());
/// assert_eq!(engine.deferred("order-1", "approval").await.unwrap(), Some(approved));
/// # });
/// ```
#[derive(Clone, Default)]
pub struct MemoryWorkflowEngine {
    inner: Arc<EngineState>,
}

impl MemoryWorkflowEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for MemoryWorkflowEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryWorkflowEngine")
            .field("executions", &self.inner.executions.read().len())
            .field("timers", &self.inner.timers.lock().by_key.len())
            .field("deferreds", &self.inner.deferreds.read().len())
            .finish()
    }
}

/// `(execution id, name)`: the key of a timer or a deferred value.
type ExecutionScoped = (String, String);

#[derive(Default)]
struct EngineState {
    executions: RwLock<HashMap<String, ExecutionRecord>>,
    /// Finished executions by `(updated_at, id)`; changed only with `executions` locked.
    finished: Mutex<BTreeSet<(DateTime<Utc>, String)>>,
    timers: Mutex<Timers>,
    deferreds: RwLock<HashMap<ExecutionScoped, ExitResult>>,
}

#[derive(Default)]
struct Timers {
    by_key: HashMap<ExecutionScoped, DurableTimer>,
    /// Uncompleted timers, earliest first.
    due_order: BTreeSet<(DateTime<Utc>, String, String)>,
    /// Completed timers, earliest `fire_at` first.
    fired_order: BTreeSet<(DateTime<Utc>, String, String)>,
}

impl Timers {
    fn remove(&mut self, key: &ExecutionScoped) {
        if let Some(timer) = self.by_key.remove(key) {
            let indexed = (timer.fire_at, timer.execution_id, timer.timer_key);
            if timer.completed {
                self.fired_order.remove(&indexed);
            } else {
                self.due_order.remove(&indexed);
            }
        }
    }
}

fn scoped(execution_id: &str, name: &str) -> ExecutionScoped {
    (execution_id.to_owned(), name.to_owned())
}

#[async_trait]
impl WorkflowEngine for MemoryWorkflowEngine {
    async fn upsert_execution(&self, record: &ExecutionRecord) -> Result<(), ClusterError> {
        let mut executions = self.inner.executions.write();
        // The cancellation request is only ever set by `request_cancellation`.
        let cancel_requested_at = executions
            .get(&record.execution_id)
            .and_then(|stored| stored.cancel_requested_at);
        let mut stored = record.clone();
        stored.cancel_requested_at = cancel_requested_at;
        let mut finished = self.inner.finished.lock();
        if let Some(old) = executions.insert(record.execution_id.clone(), stored) {
            finished.remove(&(old.updated_at, old.execution_id));
        }
        if record.status.is_finished() {
            finished.insert((record.updated_at, record.execution_id.clone()));
        }
        Ok(())
    }

    async fn request_cancellation(
        &self,
        execution_id: &str,
        requested_at: DateTime<Utc>,
    ) -> Result<Option<ExecutionRecord>, ClusterError> {
        let mut executions = self.inner.executions.write();
        let Some(record) = executions.get_mut(execution_id) else {
            return Ok(None);
        };
        if !record.status.is_finished() && record.cancel_requested_at.is_none() {
            record.cancel_requested_at = Some(requested_at);
        }
        Ok(Some(record.clone()))
    }

    async fn cancellation_requested(
        &self,
        execution_id: &str,
    ) -> Result<Option<DateTime<Utc>>, ClusterError> {
        Ok(self
            .inner
            .executions
            .read()
            .get(execution_id)
            .and_then(|record| record.cancel_requested_at))
    }

    async fn execution(&self, execution_id: &str) -> Result<Option<ExecutionRecord>, ClusterError> {
        Ok(self.inner.executions.read().get(execution_id).cloned())
    }

    async fn stopped_executions(
        &self,
        execution_ids: &[String],
    ) -> Result<Vec<ExecutionRecord>, ClusterError> {
        let executions = self.inner.executions.read();
        Ok(execution_ids
            .iter()
            .filter_map(|id| executions.get(id))
            .filter(|record| {
                record.status.is_finished() || record.status == ExecutionStatus::Parked
            })
            .cloned()
            .collect())
    }

    async fn list_executions(
        &self,
        filter: &ExecutionFilter,
    ) -> Result<Vec<ExecutionRecord>, ClusterError> {
        let mut matching: Vec<ExecutionRecord> = self
            .inner
            .executions
            .read()
            .values()
            .filter(|r| filter.workflow.as_ref().is_none_or(|w| *w == r.workflow))
            .filter(|r| filter.status.is_none_or(|s| s == r.status.name()))
            .cloned()
            .collect();
        matching
            .sort_by(|a, b| (a.created_at, &a.execution_id).cmp(&(b.created_at, &b.execution_id)));
        if filter.limit > 0 {
            matching.truncate(filter.limit);
        }
        Ok(matching)
    }

    async fn schedule_timer(&self, timer: &DurableTimer) -> Result<(), ClusterError> {
        let mut timers = self.inner.timers.lock();
        let key = scoped(&timer.execution_id, &timer.timer_key);
        if timers.by_key.contains_key(&key) {
            return Ok(());
        }
        let indexed = (
            timer.fire_at,
            timer.execution_id.clone(),
            timer.timer_key.clone(),
        );
        if timer.completed {
            timers.fired_order.insert(indexed);
        } else {
            timers.due_order.insert(indexed);
        }
        timers.by_key.insert(key, timer.clone());
        Ok(())
    }

    async fn timer(
        &self,
        execution_id: &str,
        timer_key: &str,
    ) -> Result<Option<DurableTimer>, ClusterError> {
        Ok(self
            .inner
            .timers
            .lock()
            .by_key
            .get(&scoped(execution_id, timer_key))
            .cloned())
    }

    async fn due_timers(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DurableTimer>, ClusterError> {
        let timers = self.inner.timers.lock();
        Ok(timers
            .due_order
            .iter()
            .take_while(|(fire_at, _, _)| *fire_at <= now)
            .take(limit)
            .filter_map(|(_, execution_id, timer_key)| {
                timers
                    .by_key
                    .get(&(execution_id.clone(), timer_key.clone()))
                    .cloned()
            })
            .collect())
    }

    async fn complete_timer(
        &self,
        execution_id: &str,
        timer_key: &str,
    ) -> Result<(), ClusterError> {
        let mut timers = self.inner.timers.lock();
        let Timers {
            by_key,
            due_order,
            fired_order,
        } = &mut *timers;
        if let Some(timer) = by_key.get_mut(&scoped(execution_id, timer_key)) {
            if !timer.completed {
                timer.completed = true;
                let indexed = (
                    timer.fire_at,
                    timer.execution_id.clone(),
                    timer.timer_key.clone(),
                );
                due_order.remove(&indexed);
                fired_order.insert(indexed);
            }
        }
        Ok(())
    }

    async fn finished_executions_before(
        &self,
        finished_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<String>, ClusterError> {
        Ok(self
            .inner
            .finished
            .lock()
            .iter()
            .take_while(|(updated_at, _)| *updated_at <= finished_before)
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect())
    }

    async fn delete_finished_executions(
        &self,
        execution_ids: &[String],
        finished_before: DateTime<Utc>,
    ) -> Result<u64, ClusterError> {
        let mut executions = self.inner.executions.write();
        let mut finished = self.inner.finished.lock();
        let mut deleted = Vec::new();
        for id in execution_ids {
            let expired = executions.get(id).is_some_and(|record| {
                record.status.is_finished() && record.updated_at <= finished_before
            });
            if !expired {
                continue;
            }
            if let Some(record) = executions.remove(id) {
                finished.remove(&(record.updated_at, record.execution_id));
                deleted.push(id.as_str());
            }
        }
        drop(finished);
        if deleted.is_empty() {
            return Ok(0);
        }
        let gone: std::collections::HashSet<&str> = deleted.iter().copied().collect();
        let mut timers = self.inner.timers.lock();
        let keys: Vec<ExecutionScoped> = timers
            .by_key
            .keys()
            .filter(|(execution_id, _)| gone.contains(execution_id.as_str()))
            .cloned()
            .collect();
        for key in &keys {
            timers.remove(key);
        }
        drop(timers);
        self.inner
            .deferreds
            .write()
            .retain(|(execution_id, _), _| !gone.contains(execution_id.as_str()));
        drop(executions);
        Ok(deleted.len() as u64)
    }

    async fn delete_fired_timers_before(
        &self,
        fired_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, ClusterError> {
        let executions = self.inner.executions.read();
        let mut timers = self.inner.timers.lock();
        let doomed: Vec<ExecutionScoped> = timers
            .fired_order
            .iter()
            .take_while(|(fire_at, _, _)| *fire_at <= fired_before)
            .filter(|(_, execution_id, _)| {
                executions
                    .get(execution_id)
                    .is_none_or(|record| record.status.is_finished())
            })
            .take(limit)
            .map(|(_, execution_id, timer_key)| (execution_id.clone(), timer_key.clone()))
            .collect();
        for key in &doomed {
            timers.remove(key);
        }
        Ok(doomed.len() as u64)
    }

    async fn resolve_deferred(
        &self,
        execution_id: &str,
        name: &str,
        value: &ExitResult,
    ) -> Result<bool, ClusterError> {
        let mut deferreds = self.inner.deferreds.write();
        match deferreds.entry(scoped(execution_id, name)) {
            std::collections::hash_map::Entry::Occupied(_) => Ok(false),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(value.clone());
                Ok(true)
            }
        }
    }

    async fn deferred(
        &self,
        execution_id: &str,
        name: &str,
    ) -> Result<Option<ExitResult>, ClusterError> {
        Ok(self
            .inner
            .deferreds
            .read()
            .get(&scoped(execution_id, name))
            .cloned())
    }
}
