//! [`ActivityTx`]: the transaction an activity writes through (`self.tx`), committed
//! atomically with the activity's journal entry.
//!
//! On memory backends it offers key-value writes ([`ActivityTx::put`], [`ActivityTx::get`])
//! that become visible only if the activity's entry is committed. SQL backends add typed
//! access to their database transaction. A backend without the capability answers
//! `ClusterError::Unsupported`, never a silent non-transactional write.

use std::sync::Arc;

use bytes::Bytes;
use cruster_types::ClusterError;
use cruster_workflow_storage::ActivityTransaction;
use tokio::sync::Mutex;

/// The activity's transaction. Cheap to clone; all clones share the transaction.
#[derive(Clone)]
pub struct ActivityTx {
    inner: Arc<Mutex<Option<Box<dyn ActivityTransaction>>>>,
}

impl std::fmt::Debug for ActivityTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityTx").finish_non_exhaustive()
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
    pub(crate) fn new(tx: Box<dyn ActivityTransaction>) -> Self {
        ActivityTx {
            inner: Arc::new(Mutex::new(Some(tx))),
        }
    }

    /// A transaction that is not open (outside activities); every use is an error.
    pub fn detached() -> Self {
        ActivityTx {
            inner: Arc::new(Mutex::new(None)),
        }
    }

    /// Stages a key-value write, applied only if the activity succeeds.
    ///
    /// # Errors
    /// `Unsupported` on backends without key-value writes.
    pub async fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<(), ClusterError> {
        let mut guard = self.inner.lock().await;
        let tx = guard.as_mut().ok_or_else(finished)?;
        tx.put(key, value.into()).await
    }

    /// Reads a key, seeing this activity's own staged writes.
    ///
    /// # Errors
    /// `Unsupported` on backends without key-value writes.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, ClusterError> {
        let mut guard = self.inner.lock().await;
        let tx = guard.as_mut().ok_or_else(finished)?;
        tx.get(key).await
    }

    /// Runs `f` on the backend's own transaction object (for SQL backends, the database
    /// transaction), downcast to `T`.
    ///
    /// # Errors
    /// `Unsupported` if the backend's transaction is not a `T`.
    pub async fn with_backend<T: 'static, R>(
        &self,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, ClusterError> {
        let mut guard = self.inner.lock().await;
        let tx = guard.as_mut().ok_or_else(finished)?;
        match tx.backend_mut().downcast_mut::<T>() {
            Some(backend) => Ok(f(backend)),
            None => Err(ClusterError::Unsupported {
                operation: format!("self.tx as {}", std::any::type_name::<T>()),
                backend: "this workflow storage".into(),
            }),
        }
    }

    /// The shared transaction slot (for backend integrations).
    #[doc(hidden)]
    pub fn slot(&self) -> &Arc<Mutex<Option<Box<dyn ActivityTransaction>>>> {
        &self.inner
    }

    /// Takes the transaction out (to commit or roll it back).
    pub(crate) async fn take(&self) -> Option<Box<dyn ActivityTransaction>> {
        self.inner.lock().await.take()
    }
}
