//! [`ClusterMetrics`]: what an operator watches, as Prometheus metrics.
//!
//! Hot-path counters are label-free (one atomic add); per-entity-type gauges are resolved
//! once per entity type and cached by the entity manager.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use cruster_types::ClusterError;

/// The runtime's metrics. Create with [`ClusterMetrics::new`] to export them through a
/// registry, or [`ClusterMetrics::unregistered`] to keep them private.
///
/// ```
/// use cruster::metrics::ClusterMetrics;
/// let registry = prometheus::Registry::new();
/// let metrics = ClusterMetrics::new(&registry).unwrap();
/// metrics.messages_sent.inc();
/// assert!(registry.gather().iter().any(|m| m.name() == "cruster_messages_sent_total"));
/// ```
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// Live entity instances, by entity type.
    pub active_entities: IntGaugeVec,
    /// Requests queued or running in mailboxes, by entity type (sampled by the idle
    /// reaper, every `min(max_idle / 2, 5 s)`).
    pub mailbox_depth: IntGaugeVec,
    /// Entity instances evicted after `max_idle` without requests, by entity type.
    pub entities_evicted: IntCounterVec,
    /// Instances the idle reaper looked at (evicted, or found active and queued again), by
    /// entity type: about one per eviction, not one per live instance per tick.
    pub idle_checks: IntCounterVec,
    /// Persisted requests the storage poll handed to entities that have not finished yet
    /// (at most `storage_poll_batch_size`).
    pub poll_in_flight: IntGauge,
    /// Requests sent (all modes).
    pub messages_sent: IntCounter,
    /// Persisted requests stored.
    pub messages_persisted: IntCounter,
    /// Persisted requests redelivered after a failure or from the storage poll.
    pub messages_retried: IntCounter,
    /// Persisted requests dead-lettered.
    pub messages_dead_lettered: IntCounter,
    /// Shards owned by this runner.
    pub shards_owned: IntGauge,
    /// Shards acquired or released by this runner (`direction` = acquired | released).
    pub shard_moves: IntCounterVec,
    /// Singleton restarts after a failure, by singleton name.
    pub singleton_restarts: IntCounterVec,
    /// Workflow activity steps run (not replayed).
    pub workflow_steps: IntCounter,
    /// Workflow executions parked after too many runs without progress.
    pub workflows_parked: IntCounter,
    /// Storage operations that failed.
    pub storage_errors: IntCounter,
    /// Cron runs, by cron name and outcome (`ok`, `failed`, `skipped`).
    pub cron_runs: IntCounterVec,
    /// Stored replies pushed to the caller's runner, by outcome (`pushed`: the caller's
    /// runner took it; `failed`: the caller falls back to reading storage; `received`: a
    /// push from another runner arrived here).
    pub replies_pushed: IntCounterVec,
    /// Callers waiting on this runner, by what they wait `for` (`reply`: the stored reply
    /// of a persisted request; `workflow`: the result of a workflow execution).
    pub callers_waiting: IntGaugeVec,
    /// Rounds of the waiters' fallback check (one batched storage read per kind of waiter
    /// that has callers, every `waiter_fallback_interval`).
    pub waiter_fallback_rounds: IntCounter,
    /// Rows deleted by the retention cleaner, by `kind`: `messages` (processed requests,
    /// each with its replies), `executions` (finished workflow executions, each with its
    /// journal, timers and deferred values) and `timers` (fired timers).
    pub retention_rows_deleted: IntCounterVec,
    /// Cleaner lag: seconds since the start of the last sweep that left nothing past
    /// retention on this runner (0 right after one). It grows while sweeps fail or run out
    /// of their batch budget; alert when it stays above a few `retention_sweep_interval`s.
    pub retention_lag_seconds: IntGauge,
}

fn metric_error(err: prometheus::Error) -> ClusterError {
    ClusterError::InvalidConfig {
        field: "metrics".into(),
        reason: format!("cannot register cruster metrics: {err}"),
    }
}

impl ClusterMetrics {
    /// Metrics registered in `registry`.
    ///
    /// # Errors
    /// `InvalidConfig` if the registry already holds metrics with these names.
    pub fn new(registry: &Registry) -> Result<Self, ClusterError> {
        let metrics = Self::build().map_err(metric_error)?;
        metrics.register(registry).map_err(metric_error)?;
        Ok(metrics)
    }

    /// Metrics that are counted but exported nowhere.
    pub fn unregistered() -> Self {
        // Building fixed, valid metric descriptions cannot fail; fall back to the same
        // construction with trivially valid names if it ever did.
        Self::build().unwrap_or_else(|_| Self::fallback())
    }

    fn build() -> Result<Self, prometheus::Error> {
        Ok(ClusterMetrics {
            active_entities: IntGaugeVec::new(
                Opts::new("cruster_active_entities", "Live entity instances"),
                &["entity_type"],
            )?,
            mailbox_depth: IntGaugeVec::new(
                Opts::new(
                    "cruster_mailbox_depth",
                    "Requests queued or running in entity mailboxes",
                ),
                &["entity_type"],
            )?,
            entities_evicted: IntCounterVec::new(
                Opts::new(
                    "cruster_entities_evicted_total",
                    "Entity instances evicted after their idle time",
                ),
                &["entity_type"],
            )?,
            idle_checks: IntCounterVec::new(
                Opts::new(
                    "cruster_idle_checks_total",
                    "Entity instances the idle reaper looked at",
                ),
                &["entity_type"],
            )?,
            poll_in_flight: IntGauge::new(
                "cruster_poll_in_flight",
                "Persisted requests handed out by the storage poll and not finished",
            )?,
            messages_sent: IntCounter::new("cruster_messages_sent_total", "Requests sent")?,
            messages_persisted: IntCounter::new(
                "cruster_messages_persisted_total",
                "Persisted requests stored",
            )?,
            messages_retried: IntCounter::new(
                "cruster_messages_retried_total",
                "Persisted requests redelivered",
            )?,
            messages_dead_lettered: IntCounter::new(
                "cruster_messages_dead_lettered_total",
                "Persisted requests dead-lettered",
            )?,
            shards_owned: IntGauge::new("cruster_shards_owned", "Shards owned by this runner")?,
            shard_moves: IntCounterVec::new(
                Opts::new("cruster_shard_moves_total", "Shards acquired or released"),
                &["direction"],
            )?,
            singleton_restarts: IntCounterVec::new(
                Opts::new("cruster_singleton_restarts_total", "Singleton restarts"),
                &["singleton"],
            )?,
            workflow_steps: IntCounter::new(
                "cruster_workflow_steps_total",
                "Workflow activity steps run",
            )?,
            workflows_parked: IntCounter::new(
                "cruster_workflows_parked_total",
                "Workflow executions parked after too many runs without progress",
            )?,
            storage_errors: IntCounter::new(
                "cruster_storage_errors_total",
                "Storage operations that failed",
            )?,
            cron_runs: IntCounterVec::new(
                Opts::new("cruster_cron_runs_total", "Cron runs by outcome"),
                &["cron", "outcome"],
            )?,
            replies_pushed: IntCounterVec::new(
                Opts::new(
                    "cruster_replies_pushed_total",
                    "Stored replies pushed between runners, by outcome",
                ),
                &["outcome"],
            )?,
            callers_waiting: IntGaugeVec::new(
                Opts::new(
                    "cruster_callers_waiting",
                    "Callers waiting on this runner for a stored reply or a workflow result",
                ),
                &["for"],
            )?,
            waiter_fallback_rounds: IntCounter::new(
                "cruster_waiter_fallback_rounds_total",
                "Rounds of the waiters' batched fallback check of storage",
            )?,
            retention_rows_deleted: IntCounterVec::new(
                Opts::new(
                    "cruster_retention_rows_deleted_total",
                    "Rows deleted by the retention cleaner, by kind",
                ),
                &["kind"],
            )?,
            retention_lag_seconds: IntGauge::new(
                "cruster_retention_lag_seconds",
                "Seconds since the start of the last retention sweep that left nothing past retention",
            )?,
        })
    }

    /// Every metric in the Prometheus text format, whether or not they were registered in
    /// a registry (what the admin API serves at `/metrics`).
    ///
    /// ```
    /// use cruster::metrics::ClusterMetrics;
    /// let metrics = ClusterMetrics::unregistered();
    /// metrics.messages_sent.inc_by(3);
    /// let text = metrics.encode_text().unwrap();
    /// assert!(text.contains("cruster_messages_sent_total 3"));
    /// ```
    ///
    /// # Errors
    /// `InvalidConfig` if the metrics cannot be encoded (not expected with valid names).
    pub fn encode_text(&self) -> Result<String, ClusterError> {
        use prometheus::Encoder;
        let registry = Registry::new();
        self.register(&registry).map_err(metric_error)?;
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .map_err(metric_error)?;
        String::from_utf8(text).map_err(|e| ClusterError::InvalidConfig {
            field: "metrics".into(),
            reason: format!("the Prometheus text encoder wrote invalid UTF-8: {e}"),
        })
    }

    #[allow(clippy::expect_used)]
    fn fallback() -> Self {
        // Unreachable in practice: `build` only fails on invalid metric names, and ours are
        // constants covered by the unit test below.
        Self::build().expect("metric definitions are valid constants")
    }

    fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.active_entities.clone()))?;
        registry.register(Box::new(self.mailbox_depth.clone()))?;
        registry.register(Box::new(self.entities_evicted.clone()))?;
        registry.register(Box::new(self.idle_checks.clone()))?;
        registry.register(Box::new(self.poll_in_flight.clone()))?;
        registry.register(Box::new(self.messages_sent.clone()))?;
        registry.register(Box::new(self.messages_persisted.clone()))?;
        registry.register(Box::new(self.messages_retried.clone()))?;
        registry.register(Box::new(self.messages_dead_lettered.clone()))?;
        registry.register(Box::new(self.shards_owned.clone()))?;
        registry.register(Box::new(self.shard_moves.clone()))?;
        registry.register(Box::new(self.singleton_restarts.clone()))?;
        registry.register(Box::new(self.workflow_steps.clone()))?;
        registry.register(Box::new(self.workflows_parked.clone()))?;
        registry.register(Box::new(self.storage_errors.clone()))?;
        registry.register(Box::new(self.cron_runs.clone()))?;
        registry.register(Box::new(self.replies_pushed.clone()))?;
        registry.register(Box::new(self.callers_waiting.clone()))?;
        registry.register(Box::new(self.waiter_fallback_rounds.clone()))?;
        registry.register(Box::new(self.retention_rows_deleted.clone()))?;
        registry.register(Box::new(self.retention_lag_seconds.clone()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_valid_and_register_once() {
        assert!(ClusterMetrics::build().is_ok());
        let registry = Registry::new();
        assert!(ClusterMetrics::new(&registry).is_ok());
        assert!(matches!(
            ClusterMetrics::new(&registry),
            Err(ClusterError::InvalidConfig { .. })
        ));
    }
}
