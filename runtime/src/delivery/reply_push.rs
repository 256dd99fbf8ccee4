//! [`ReplyPush`]: tells the caller's runner that the final reply of its persisted request
//! was stored here, so a caller waiting on another runner is answered at once instead of by
//! reading storage.
//!
//! The caller's runner is the one that made the request id (its snowflake's machine id,
//! looked up in the [`RunnerDirectory`]). A push is sent in the background, bounded by a
//! timeout, and never retried: a caller whose push was lost reads the stored reply on its
//! slow fallback poll. Owns no lock across an await.

use std::sync::Arc;
use std::time::Duration;

use cruster_transport::Runners;
use cruster_types::{MachineId, ReplyWithExit};

use crate::metrics::ClusterMetrics;
use crate::sharding::runner_directory::RunnerDirectory;

/// How long one push may take before the caller is left to its fallback poll.
const PUSH_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct ReplyPush {
    runners: Arc<dyn Runners>,
    pub(crate) directory: RunnerDirectory,
    metrics: Arc<ClusterMetrics>,
}

impl ReplyPush {
    pub(crate) fn new(runners: Arc<dyn Runners>, metrics: Arc<ClusterMetrics>) -> Self {
        ReplyPush {
            runners,
            directory: RunnerDirectory::default(),
            metrics,
        }
    }

    /// The push of `reply` to the runner that made its request id, unless that is
    /// `me` or a runner that is gone; run it in the background.
    pub(crate) fn push(
        &self,
        reply: &ReplyWithExit,
        me: MachineId,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let maker = reply.request_id.machine_id();
        if maker == me {
            return None;
        }
        let to = self.directory.address_of(maker)?;
        let runners = Arc::clone(&self.runners);
        let metrics = Arc::clone(&self.metrics);
        let reply = reply.clone();
        Some(async move {
            let request_id = reply.request_id;
            let pushed = tokio::time::timeout(PUSH_TIMEOUT, runners.push_reply(&to, reply)).await;
            match pushed {
                Ok(Ok(())) => metrics.replies_pushed.with_label_values(&["pushed"]).inc(),
                Ok(Err(err)) => {
                    metrics.replies_pushed.with_label_values(&["failed"]).inc();
                    tracing::debug!(%err, %request_id, runner = %to, "pushing a stored reply failed; the caller reads it from storage");
                }
                Err(_) => {
                    metrics.replies_pushed.with_label_values(&["failed"]).inc();
                    tracing::debug!(%request_id, runner = %to, "pushing a stored reply timed out; the caller reads it from storage");
                }
            }
        })
    }
}
