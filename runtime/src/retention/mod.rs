//! Retention: deleting what the configured retention periods no longer keep.
//!
//! [`cleaner`] owns the sweep loop each runner runs; [`RetentionSweep`] is what one sweep
//! did, as `ShardingImpl::sweep_retention` answers it.

pub(crate) mod cleaner;

/// What one retention sweep on one runner deleted.
///
/// ```
/// use cruster::retention::RetentionSweep;
/// let sweep = RetentionSweep::default();
/// assert_eq!(sweep.messages + sweep.executions + sweep.timers, 0);
/// assert!(!sweep.complete);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionSweep {
    /// Processed requests deleted, each with its replies.
    pub messages: u64,
    /// Finished workflow executions deleted, each with its journal, timers and deferred
    /// values.
    pub executions: u64,
    /// Fired timers of finished executions deleted.
    pub timers: u64,
    /// Whether the sweep left nothing past retention (it did not run out of its batch
    /// budget).
    pub complete: bool,
}
