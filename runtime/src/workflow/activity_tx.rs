//! [`ActivityTx`]: the transaction an activity writes through (`self.tx`), committed
//! atomically with the activity's journal entry.
//!
//! On memory backends it offers key-value writes ([`ActivityTx::put`], [`ActivityTx::get`])
//! that become visible only if the activity's entry is committed. SQL backends add typed
//! access to their database transaction. A backend without the capability answers
//! `ClusterError::Unsupported`, never a silent non-transactional write.
//!
//! **Opened lazily.** The transaction (on SQL backends: a pooled connection and a database
//! transaction) is opened by the activity's first use of `self.tx`, not when the activity
//! starts; an activity that never writes through it holds nothing while it runs, and its
//! journal entry is committed in a transaction opened just for that. So a slow activity, or
//! a call to another entity, never pins a connection while it waits. An activity that writes
//! through `self.tx` and then waits holds its transaction across that wait: do the slow part
//! first.

use std::sync::Arc;

use bytes::Bytes;
use cruster_types::ClusterError;
use cruster_workflow_storage::{ActivityKey, ActivityTransaction, WorkflowStorage};
use futures::future::BoxFuture;
use tokio::sync::{Mutex, MutexGuard};

use super::deferred_step::{Continued, DeferredStep};

/// The open transaction of an activity, locked for the guard's life (from
/// [`ActivityTx::open_transaction`]).
#[doc(hidden)]
pub struct OpenTransaction<'a>(MutexGuard<'a, TxSlot>);

impl OpenTransaction<'_> {
    /// The backend's transaction.
    ///
    /// # Errors
    /// `InvalidConfig` after the activity finished.
    pub fn transaction(&mut self) -> Result<&mut dyn ActivityTransaction, ClusterError> {
        match &mut self.0.state {
            TxState::Open(tx) => Ok(tx.as_mut()),
            TxState::Lazy(_) | TxState::Finished => Err(finished()),
        }
    }
}

/// The activity's transaction. Cheap to clone; all clones share the transaction.
#[derive(Clone)]
pub struct ActivityTx {
    inner: Arc<Mutex<TxSlot>>,
}

impl std::fmt::Debug for ActivityTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityTx").finish_non_exhaustive()
    }
}

struct TxSlot {
    state: TxState,
    /// The open transaction continues the run's held-back one (a chain): where to hand it
    /// back if the attempt fails, and how many entries it carries.
    chain: Option<(Arc<DeferredStep>, u64)>,
    /// Opening the transaction failed during this attempt (a pool or storage error): the
    /// attempt's failure is the engine's, not the activity's.
    open_failed: bool,
}

enum TxState {
    /// Not opened yet: the first use opens it.
    Lazy(Opener),
    /// Open; its writes are staged until commit.
    Open(Box<dyn ActivityTransaction>),
    /// Committed, rolled back, or outside any activity.
    Finished,
}

/// What opening the transaction needs.
struct Opener {
    storage: Arc<dyn WorkflowStorage>,
    execution_id: String,
    key: ActivityKey,
    /// The run's held-back step, continued instead of beginning a transaction when the
    /// storage chains (see `deferred_step.rs`).
    chain_from: Option<Arc<DeferredStep>>,
}

/// A transaction just opened: begun, or continued from the run's held-back step.
type Opened = (
    Box<dyn ActivityTransaction>,
    Option<(Arc<DeferredStep>, u64)>,
);

impl Opener {
    async fn open(&self) -> Result<Opened, ClusterError> {
        if let Some(deferred) = &self.chain_from {
            if let Some(Continued { tx, carried }) = deferred.continue_chain(true).await? {
                return Ok((tx, Some((deferred.clone(), carried))));
            }
        }
        let tx = self
            .storage
            .begin_activity(&self.execution_id, &self.key)
            .await?;
        Ok((tx, None))
    }
}

/// What an attempt leaves to commit: the open transaction and the entries it carries.
pub(crate) struct ToCommit {
    pub(crate) tx: Box<dyn ActivityTransaction>,
    pub(crate) carried: u64,
}

/// What an attempt leaves to discard: the open transaction, and the chain it continued.
pub(crate) struct ToDiscard {
    tx: Box<dyn ActivityTransaction>,
    chain: Option<(Arc<DeferredStep>, u64)>,
}

impl ToDiscard {
    /// Rolls the attempt's writes back: all of them, or (a continued chain) those after
    /// the chain's mark, handing what the chain carries back to the run.
    pub(crate) async fn discard(self) {
        match self.chain {
            Some((deferred, carried)) => {
                deferred
                    .give_back(Continued {
                        tx: self.tx,
                        carried,
                    })
                    .await;
            }
            None => {
                if let Err(rollback) = self.tx.rollback().await {
                    tracing::warn!(%rollback, "activity rollback failed");
                }
            }
        }
    }
}

fn finished() -> ClusterError {
    ClusterError::InvalidConfig {
        field: "self.tx".into(),
        reason: "the activity's transaction was already committed or rolled back; use self.tx \
                 only inside the activity"
            .into(),
    }
}

impl ActivityTx {
    /// A transaction for one attempt of activity `key` of `execution_id`, opened on first
    /// use: begun, or continued from `chain_from`'s held-back step when there is one.
    pub(crate) fn lazy(
        storage: Arc<dyn WorkflowStorage>,
        execution_id: String,
        key: ActivityKey,
        chain_from: Option<Arc<DeferredStep>>,
    ) -> Self {
        ActivityTx {
            inner: Arc::new(Mutex::new(TxSlot {
                state: TxState::Lazy(Opener {
                    storage,
                    execution_id,
                    key,
                    chain_from,
                }),
                chain: None,
                open_failed: false,
            })),
        }
    }

    /// A transaction that is not open (outside activities); every use is an error.
    pub fn detached() -> Self {
        ActivityTx {
            inner: Arc::new(Mutex::new(TxSlot {
                state: TxState::Finished,
                chain: None,
                open_failed: false,
            })),
        }
    }

    /// Stages a key-value write, applied only if the activity succeeds.
    ///
    /// # Errors
    /// `Unsupported` on backends without key-value writes; `PersistenceError` when the
    /// transaction cannot be opened.
    pub async fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<(), ClusterError> {
        let mut open = self.open_transaction().await?;
        open.transaction()?.put(key, value.into()).await
    }

    /// Reads a key, seeing this activity's own staged writes.
    ///
    /// # Errors
    /// `Unsupported` on backends without key-value writes; `PersistenceError` when the
    /// transaction cannot be opened.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, ClusterError> {
        let mut open = self.open_transaction().await?;
        open.transaction()?.get(key).await
    }

    /// Runs `f` on the backend's own transaction object (for SQL backends, the database
    /// transaction), downcast to `T`. Opens the transaction if it is not open yet.
    ///
    /// # Errors
    /// `Unsupported` if the backend's transaction is not a `T`; `PersistenceError` when the
    /// transaction cannot be opened.
    pub async fn with_backend<T: 'static, R>(
        &self,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, ClusterError> {
        let mut open = self.open_transaction().await?;
        match open.transaction()?.backend_mut().downcast_mut::<T>() {
            Some(backend) => Ok(f(backend)),
            None => Err(ClusterError::Unsupported {
                operation: format!("self.tx as {}", std::any::type_name::<T>()),
                backend: "this workflow storage".into(),
            }),
        }
    }

    /// The open transaction, opened now if this is its first use; held locked until the
    /// guard is dropped (for backend integrations such as the SQL executors).
    ///
    /// # Errors
    /// `InvalidConfig` after the activity finished; the storage's error when opening fails
    /// (the attempt then counts as an engine failure, not the activity's).
    #[doc(hidden)]
    pub fn open_transaction(&self) -> BoxFuture<'_, Result<OpenTransaction<'_>, ClusterError>> {
        // Boxed (not an `async fn`): the SQL executors need a future that is `Send` for
        // every lifetime of the borrow, which the compiler cannot prove for the unboxed one.
        Box::pin(self.open_now())
    }

    async fn open_now(&self) -> Result<OpenTransaction<'_>, ClusterError> {
        let mut slot = self.inner.lock().await;
        let opened = match &slot.state {
            TxState::Lazy(opener) => Some(opener.open().await),
            TxState::Open(_) | TxState::Finished => None,
        };
        match opened {
            Some(Ok((tx, chain))) => {
                slot.state = TxState::Open(tx);
                slot.chain = chain;
            }
            Some(Err(err)) => {
                slot.open_failed = true;
                return Err(err);
            }
            None => {}
        }
        match slot.state {
            TxState::Open(_) => Ok(OpenTransaction(slot)),
            TxState::Lazy(_) | TxState::Finished => Err(finished()),
        }
    }

    /// Ends the attempt for a commit: `Some` open transaction, or `None` when the activity
    /// never used `self.tx` (its entry is then stored alone, with `append_entry`).
    ///
    /// # Errors
    /// The transaction was already taken.
    pub(crate) async fn take_for_commit(&self) -> Result<Option<ToCommit>, ClusterError> {
        let mut slot = self.inner.lock().await;
        let chain = slot.chain.take();
        match std::mem::replace(&mut slot.state, TxState::Finished) {
            TxState::Open(tx) => Ok(Some(ToCommit {
                tx,
                carried: chain.map_or(0, |(_, carried)| carried),
            })),
            TxState::Lazy(_) => Ok(None),
            TxState::Finished => Err(finished()),
        }
    }

    /// Ends the attempt without committing: the open transaction to discard, if any.
    pub(crate) async fn take_open(&self) -> Option<ToDiscard> {
        let mut slot = self.inner.lock().await;
        let chain = slot.chain.take();
        match std::mem::replace(&mut slot.state, TxState::Finished) {
            TxState::Open(tx) => Some(ToDiscard { tx, chain }),
            TxState::Lazy(_) | TxState::Finished => None,
        }
    }

    /// Whether opening the transaction failed during this attempt.
    pub(crate) async fn open_failed(&self) -> bool {
        self.inner.lock().await.open_failed
    }
}
