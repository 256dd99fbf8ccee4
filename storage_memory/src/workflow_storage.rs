//! [`MemoryWorkflowStorage`]: the activity journal and the activities' key-value writes,
//! in process memory.
//!
//! This file owns the in-memory translation of `WorkflowStorage` and `ActivityTransaction`
//! and nothing else (no replay or retry policy). An activity transaction stages its writes
//! in its own [`MemoryStagedWrites`]; `commit` takes the one write lock, checks for an
//! existing entry at the same position (whatever its name), and applies the entry and the writes together, so a reader sees both or
//! neither. It never holds a lock across an `.await`: every section is short and
//! synchronous.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cruster_types::ClusterError;
use cruster_workflow_storage::{
    ActivityKey, ActivityTransaction, CommitOutcome, JournalEntry, WorkflowStorage,
};
use parking_lot::RwLock;

/// `WorkflowStorage` in process memory, with the key-value capability: activity writes
/// made through [`ActivityTransaction::put`] commit atomically with the journal entry and
/// are read back with [`WorkflowStorage::get_value`].
///
/// Cloning is cheap and shares the storage.
///
/// ```
/// use cruster_storage_memory::MemoryWorkflowStorage;
/// use cruster_types::ExitResult;
/// use cruster_workflow_storage::{ActivityKey, CommitOutcome, JournalEntry, WorkflowStorage};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let storage = MemoryWorkflowStorage::new();
/// let key = ActivityKey { name: "charge".into(), sequence: 0 };
/// let mut tx = storage.begin_activity("order-1", &key).await.unwrap();
/// tx.put("balance/alice", bytes::Bytes::from_static(b"90")).await.unwrap();
/// let entry = JournalEntry {
///     execution_id: "order-1".into(),
///     key: key.clone(),
///     result: ExitResult::Success(bytes::Bytes::new()),
///     attempts: 1,
///     recorded_at: chrono::Utc::now(),
/// };
/// assert_eq!(tx.commit(&entry).await.unwrap(), CommitOutcome::Committed);
/// assert_eq!(storage.get_value("balance/alice").await.unwrap().as_deref(), Some(&b"90"[..]));
/// # });
/// ```
#[derive(Clone, Default)]
pub struct MemoryWorkflowStorage {
    state: Arc<RwLock<JournalState>>,
}

impl MemoryWorkflowStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for MemoryWorkflowStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.read();
        f.debug_struct("MemoryWorkflowStorage")
            .field("executions", &state.journals.len())
            .field("values", &state.values.len())
            .finish()
    }
}

/// Journal entries of one execution, by sequence: one entry per position, whatever its
/// activity's name.
type Journal = BTreeMap<u32, JournalEntry>;

#[derive(Default)]
struct JournalState {
    journals: HashMap<String, Journal>,
    values: HashMap<String, Bytes>,
}

/// The writes an activity staged in a [`MemoryWorkflowStorage`] transaction; what
/// [`ActivityTransaction::backend_mut`] hands out, for typed accessors to downcast.
///
/// ```
/// use cruster_storage_memory::{MemoryStagedWrites, MemoryWorkflowStorage};
/// use cruster_workflow_storage::{ActivityKey, WorkflowStorage};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let storage = MemoryWorkflowStorage::new();
/// let key = ActivityKey { name: "a".into(), sequence: 0 };
/// let mut tx = storage.begin_activity("e", &key).await.unwrap();
/// tx.put("k", bytes::Bytes::from_static(b"v")).await.unwrap();
/// let staged = tx.backend_mut().downcast_mut::<MemoryStagedWrites>().unwrap();
/// assert_eq!(staged.get("k").map(|v| &v[..]), Some(&b"v"[..]));
/// # });
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryStagedWrites {
    writes: BTreeMap<String, Bytes>,
}

impl MemoryStagedWrites {
    /// Stages `value` under `key`, replacing an earlier staged value.
    pub fn put(&mut self, key: impl Into<String>, value: Bytes) {
        self.writes.insert(key.into(), value);
    }

    /// The value staged under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.writes.get(key)
    }

    /// Every staged write, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.writes.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// How many keys are staged.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// The transaction [`MemoryWorkflowStorage::begin_activity`] opens. Dropping it discards
/// the staged writes.
struct MemoryActivityTransaction {
    state: Arc<RwLock<JournalState>>,
    staged: MemoryStagedWrites,
}

#[async_trait]
impl ActivityTransaction for MemoryActivityTransaction {
    fn backend_mut(&mut self) -> &mut (dyn Any + Send) {
        &mut self.staged
    }

    async fn put(&mut self, key: &str, value: Bytes) -> Result<(), ClusterError> {
        self.staged.put(key, value);
        Ok(())
    }

    async fn get(&mut self, key: &str) -> Result<Option<Bytes>, ClusterError> {
        if let Some(value) = self.staged.get(key) {
            return Ok(Some(value.clone()));
        }
        Ok(self.state.read().values.get(key).cloned())
    }

    async fn commit(self: Box<Self>, entry: &JournalEntry) -> Result<CommitOutcome, ClusterError> {
        let MemoryActivityTransaction { state, staged } = *self;
        let mut state = state.write();
        let journal = state
            .journals
            .entry(entry.execution_id.clone())
            .or_default();
        match journal.entry(entry.key.sequence) {
            std::collections::btree_map::Entry::Occupied(existing) => {
                Ok(CommitOutcome::AlreadyRecorded(existing.get().clone()))
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(entry.clone());
                state.values.extend(staged.writes);
                Ok(CommitOutcome::Committed)
            }
        }
    }

    async fn rollback(self: Box<Self>) -> Result<(), ClusterError> {
        Ok(())
    }
}

#[async_trait]
impl WorkflowStorage for MemoryWorkflowStorage {
    async fn journal_entry(
        &self,
        execution_id: &str,
        key: &ActivityKey,
    ) -> Result<Option<JournalEntry>, ClusterError> {
        Ok(self
            .state
            .read()
            .journals
            .get(execution_id)
            .and_then(|journal| journal.get(&key.sequence))
            .filter(|entry| entry.key.name == key.name)
            .cloned())
    }

    async fn journal(&self, execution_id: &str) -> Result<Vec<JournalEntry>, ClusterError> {
        Ok(self
            .state
            .read()
            .journals
            .get(execution_id)
            .map(|journal| journal.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn begin_activity(
        &self,
        _execution_id: &str,
        _key: &ActivityKey,
    ) -> Result<Box<dyn ActivityTransaction>, ClusterError> {
        Ok(Box::new(MemoryActivityTransaction {
            state: Arc::clone(&self.state),
            staged: MemoryStagedWrites::default(),
        }))
    }

    async fn delete_journal(&self, execution_id: &str) -> Result<(), ClusterError> {
        self.state.write().journals.remove(execution_id);
        Ok(())
    }

    async fn get_value(&self, key: &str) -> Result<Option<Bytes>, ClusterError> {
        Ok(self.state.read().values.get(key).cloned())
    }
}
