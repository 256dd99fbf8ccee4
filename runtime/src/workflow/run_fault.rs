//! [`RunFault`]: the first defect a workflow run hit that is not the workflow's answer — a
//! panic in an activity or in `execute`, a journal entry or request that does not decode.
//!
//! A run that recorded a fault made no progress whatever its body returned (the body may
//! have caught the error): the execution entity counts it as a failed attempt, retries the
//! run after a backoff, and parks the execution once the attempts run out. Never holds its
//! lock across an await.

use cruster_types::ClusterError;
use parking_lot::Mutex;

#[derive(Default)]
pub(crate) struct RunFault {
    first: Mutex<Option<ClusterError>>,
}

impl RunFault {
    /// Records `err` (the first one is kept) and returns it for the caller to propagate.
    pub(crate) fn record(&self, err: ClusterError) -> ClusterError {
        let mut first = self.first.lock();
        if first.is_none() {
            *first = Some(ClusterError::from(err.to_wire()));
        }
        err
    }

    /// The first fault of the run, if any.
    pub(crate) fn take(&self) -> Option<ClusterError> {
        self.first.lock().take()
    }
}

/// The text of a caught panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&'static str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}
