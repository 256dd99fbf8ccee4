//! [`ShardingConfig`]: every runtime option, with the defaults of the configuration table.

use std::time::Duration;

use cruster_types::{ClusterError, RunnerAddress};

use crate::clock::Clock;

/// Runtime configuration of one runner.
///
/// ```
/// use cruster::config::ShardingConfig;
/// let config = ShardingConfig {
///     runner_address: "10.0.0.1:9000".parse().unwrap(),
///     shards_per_group: 300,
///     ..Default::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug)]
pub struct ShardingConfig {
    /// Where this runner is reachable by the others (default `127.0.0.1:9000`).
    pub runner_address: RunnerAddress,
    /// Relative capacity of this runner (1 = normal). `0` makes a **client-only** runner:
    /// it joins the membership (so its request ids are unique in the cluster and stored
    /// replies are pushed to it) but is assigned no shards, so it runs no entity, singleton
    /// or cron; it needs a runner storage. Weights above 1 are reserved for weighted
    /// assignment and count as 1 today.
    pub runner_weight: u32,
    /// Shards per shard group (default 300). Must be equal on every runner.
    pub shards_per_group: u32,
    /// Shard groups this runner serves besides those its entity types name (default `["default"]`).
    pub shard_groups: Vec<String>,
    /// Idle time before an entity instance is evicted (default 60 s).
    pub entity_max_idle_time: Duration,
    /// Per-entity mailbox capacity (default 100).
    pub entity_mailbox_capacity: usize,
    /// Requests handled at once per entity (default 1; 0 = unbounded).
    pub entity_max_concurrent_requests: usize,
    /// How often message storage is polled for leftovers and due `deliver_at` messages (default 500 ms).
    pub storage_poll_interval: Duration,
    /// Most messages fetched by one poll (default 1000).
    pub storage_poll_batch_size: usize,
    /// Delivery attempts before a persisted message is dead-lettered (default 10). Attempts
    /// are counted in message storage, so they follow a message when its shard moves; a
    /// redelivery's attempt is counted before it runs, so a message that crashes its runner
    /// is dead-lettered after this many attempts instead of crash-looping.
    pub storage_message_max_retries: u32,
    /// Wait before the first redelivery of a persisted message whose delivery failed
    /// (default 1 s). Each further failure doubles it, up to
    /// [`storage_retry_backoff_max`](Self::storage_retry_backoff_max): the message is not
    /// due before `failure time + min(base × 2^(attempts − 1), max)`, on whichever runner
    /// owns its shard then.
    pub storage_retry_backoff_base: Duration,
    /// The longest wait between two redeliveries of a failing persisted message (default
    /// 60 s). With the defaults, a message failing all its 10 attempts is dead-lettered
    /// after about 4 minutes, and a storage outage of a few seconds dead-letters nothing.
    pub storage_retry_backoff_max: Duration,
    /// TTL of this runner's registration and shard locks (default 30 s).
    pub runner_lock_ttl: Duration,
    /// Retries of a send that hit a routing failure during a rebalance (default 3).
    pub send_retry_count: u32,
    /// Pause before each routing retry, doubled each time (default 50 ms).
    pub send_retry_backoff: Duration,
    /// Base of the exponential backoff between singleton restarts (default 1 s).
    pub singleton_crash_backoff_base: Duration,
    /// Stop taking shards while message storage keeps failing (default false).
    pub detachment_enabled: bool,
    /// Consecutive storage failures that detach the runner (default 3).
    pub detachment_error_threshold: u32,
    /// How long `shutdown` waits for mailboxes and singletons to drain (default 10 s).
    pub shutdown_timeout: Duration,
    /// Runs in a row that make no progress (the runner crashed during them, the workflow
    /// or an activity panicked, a journal entry did not decode) before a workflow execution
    /// is parked instead of run again (default 5, at least 1). A run makes progress when it
    /// journals an activity, suspends, or ends. Failed runs are retried after
    /// [`storage_retry_backoff`](Self::storage_retry_backoff); a parked execution waits for
    /// `cruster::workflow::resume_parked_execution`. Keep it at most
    /// `storage_message_max_retries`, or a message whose runs crash the runner is
    /// dead-lettered before its execution is parked.
    pub workflow_max_failed_attempts: u32,
    /// How often a running activity declared `#[activity(on_cancel = "interrupt")]` checks
    /// whether its execution was cancelled (default 500 ms). Other activities finish and
    /// the execution stops at its next suspension point.
    pub workflow_cancel_poll_interval: Duration,
    /// How long the commit of a workflow's latest activity that wrote through `self.tx`
    /// is held back for the run's next activity (which then continues the same
    /// transaction) or its end (which then commits with it) to join (default 20 ms). A
    /// chain of activities older than this is committed instead of continued, so this also
    /// bounds how long finished activities wait to be durable. Zero commits each activity
    /// on its own, at once.
    pub workflow_commit_hold: Duration,
    /// Where business time is read (default [`Clock::system`]): due `deliver_at`, cron,
    /// workflow sleeps, retry and restart backoff, idle eviction. Tests pass a
    /// [`VirtualClock`](crate::clock::VirtualClock) here (or to the builders' `clock`) to
    /// move hours of timers in milliseconds. Leases, heartbeats and call deadlines stay on
    /// real time; see [`crate::clock`].
    pub clock: Clock,
    /// How often a runner checks storage for its waiting callers whose wake-up was missed
    /// (default 1 s): callers of `send_persisted`, of a workflow's `execute` and `join`.
    /// They are woken at once when their reply is stored or their execution stops, on this
    /// runner or by a push from another one; this slow fallback only covers a lost push (a
    /// crash, a timeout, an execution that moved). Each round reads storage once for all
    /// callers of replies and once for all callers of workflow results (per 5,000
    /// callers), so the reads do not grow with the number of callers.
    pub waiter_fallback_interval: Duration,
    /// How long a processed persisted message is kept, with its replies, after it was
    /// processed (default 7 days). Within it, a repeated send with the same request id or
    /// `dedupe_key` is answered with the first reply; after it, the message is deleted and
    /// a repeat runs as a new request. Pending messages and dead letters are never deleted.
    pub retention_processed_messages: Duration,
    /// How long a finished workflow execution (completed, failed or cancelled) is kept,
    /// with its journal, timers and deferred values, after its last change (default 30
    /// days). Parked, running and suspended executions are never deleted.
    pub retention_finished_workflows: Duration,
    /// How long a fired durable timer of a finished execution is kept after its `fire_at`
    /// (default 7 days). Timers of executions that have not finished are kept (a replay
    /// reads them).
    pub retention_fired_timers: Duration,
    /// How often each runner sweeps what is past retention (default 60 s).
    pub retention_sweep_interval: Duration,
    /// Most rows one delete statement removes (default 1000): each batch is one short
    /// transaction, never an unbounded `DELETE`.
    pub retention_batch_size: usize,
    /// Most batches of each kind per sweep (default 100); what is left waits for the next
    /// sweep, and the cleaner lag metric grows meanwhile.
    pub retention_max_batches_per_sweep: u32,
}

/// Seconds in a day.
const DAY_SECS: u64 = 24 * 60 * 60;

/// The longest retention accepted: 100 years (longer would not fit the instants SQL
/// backends store).
const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * DAY_SECS);

/// The largest retention batch accepted.
const MAX_RETENTION_BATCH: usize = 100_000;

impl Default for ShardingConfig {
    fn default() -> Self {
        ShardingConfig {
            runner_address: RunnerAddress::default(),
            runner_weight: 1,
            shards_per_group: 300,
            shard_groups: vec![cruster_types::DEFAULT_SHARD_GROUP.to_string()],
            entity_max_idle_time: Duration::from_secs(60),
            entity_mailbox_capacity: 100,
            entity_max_concurrent_requests: 1,
            storage_poll_interval: Duration::from_millis(500),
            storage_poll_batch_size: 1000,
            storage_message_max_retries: 10,
            storage_retry_backoff_base: Duration::from_secs(1),
            storage_retry_backoff_max: Duration::from_secs(60),
            runner_lock_ttl: Duration::from_secs(30),
            send_retry_count: 3,
            send_retry_backoff: Duration::from_millis(50),
            singleton_crash_backoff_base: Duration::from_secs(1),
            detachment_enabled: false,
            detachment_error_threshold: 3,
            shutdown_timeout: Duration::from_secs(10),
            workflow_max_failed_attempts: 5,
            workflow_cancel_poll_interval: Duration::from_millis(500),
            workflow_commit_hold: Duration::from_millis(20),
            clock: Clock::system(),
            waiter_fallback_interval: Duration::from_secs(1),
            retention_processed_messages: Duration::from_secs(7 * DAY_SECS),
            retention_finished_workflows: Duration::from_secs(30 * DAY_SECS),
            retention_fired_timers: Duration::from_secs(7 * DAY_SECS),
            retention_sweep_interval: Duration::from_secs(60),
            retention_batch_size: 1000,
            retention_max_batches_per_sweep: 100,
        }
    }
}

impl ShardingConfig {
    /// How long a persisted message waits before its redelivery after its `attempt`-th
    /// failed attempt (1 = the first): `min(base × 2^(attempt − 1), max)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cruster::config::ShardingConfig;
    /// let config = ShardingConfig::default();
    /// assert_eq!(config.storage_retry_backoff(1), Duration::from_secs(1));
    /// assert_eq!(config.storage_retry_backoff(3), Duration::from_secs(4));
    /// assert_eq!(config.storage_retry_backoff(40), Duration::from_secs(60));
    /// ```
    pub fn storage_retry_backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.storage_retry_backoff_base
            .saturating_mul(1u32 << doublings)
            .min(self.storage_retry_backoff_max)
    }

    /// Checks the values.
    ///
    /// # Errors
    /// `InvalidConfig` naming the first bad option.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |field: &str, reason: &str| {
            Err(ClusterError::InvalidConfig {
                field: field.into(),
                reason: reason.into(),
            })
        };
        if self.shards_per_group == 0 {
            return bad("shards_per_group", "must be at least 1");
        }
        if self.entity_mailbox_capacity == 0 {
            return bad("entity_mailbox_capacity", "must be at least 1");
        }
        if self.storage_poll_interval.is_zero() {
            return bad("storage_poll_interval", "must be more than zero");
        }
        if self.storage_poll_batch_size == 0 {
            return bad("storage_poll_batch_size", "must be at least 1");
        }
        if self.storage_message_max_retries == 0 {
            return bad("storage_message_max_retries", "must be at least 1");
        }
        if self.storage_retry_backoff_base.is_zero() {
            return bad("storage_retry_backoff_base", "must be more than zero");
        }
        if self.storage_retry_backoff_max < self.storage_retry_backoff_base {
            return bad(
                "storage_retry_backoff_max",
                "must be at least storage_retry_backoff_base",
            );
        }
        if self.runner_lock_ttl < Duration::from_millis(100) {
            return bad("runner_lock_ttl", "must be at least 100 ms");
        }
        if self.entity_max_idle_time.is_zero() {
            return bad("entity_max_idle_time", "must be more than zero");
        }
        if self.workflow_max_failed_attempts == 0 {
            return bad("workflow_max_failed_attempts", "must be at least 1");
        }
        if self.workflow_cancel_poll_interval.is_zero() {
            return bad("workflow_cancel_poll_interval", "must be more than zero");
        }
        if self.waiter_fallback_interval.is_zero() {
            return bad("waiter_fallback_interval", "must be more than zero");
        }
        for (field, retention) in [
            (
                "retention_processed_messages",
                self.retention_processed_messages,
            ),
            (
                "retention_finished_workflows",
                self.retention_finished_workflows,
            ),
            ("retention_fired_timers", self.retention_fired_timers),
        ] {
            if retention.is_zero() {
                return bad(
                    field,
                    "must be more than zero (a processed row would be deleted before its \
                     caller read it); pick hours or days",
                );
            }
            if retention > MAX_RETENTION {
                return bad(field, "must be at most 100 years");
            }
        }
        if self.retention_sweep_interval.is_zero() {
            return bad("retention_sweep_interval", "must be more than zero");
        }
        if self.retention_batch_size == 0 || self.retention_batch_size > MAX_RETENTION_BATCH {
            return bad(
                "retention_batch_size",
                "must be between 1 and 100000 (one batch is one transaction)",
            );
        }
        if self.retention_max_batches_per_sweep == 0 {
            return bad("retention_max_batches_per_sweep", "must be at least 1");
        }
        if self.shard_groups.iter().any(|g| g.is_empty()) {
            return bad("shard_groups", "a shard group name cannot be empty");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_configuration_table() {
        let c = ShardingConfig::default();
        assert_eq!(c.shards_per_group, 300);
        assert_eq!(c.entity_max_idle_time, Duration::from_secs(60));
        assert_eq!(c.entity_mailbox_capacity, 100);
        assert_eq!(c.entity_max_concurrent_requests, 1);
        assert_eq!(c.storage_poll_interval, Duration::from_millis(500));
        assert_eq!(c.storage_message_max_retries, 10);
        assert_eq!(c.storage_retry_backoff_base, Duration::from_secs(1));
        assert_eq!(c.storage_retry_backoff_max, Duration::from_secs(60));
        assert_eq!(c.runner_lock_ttl, Duration::from_secs(30));
        assert_eq!(c.send_retry_count, 3);
        assert_eq!(c.singleton_crash_backoff_base, Duration::from_secs(1));
        assert!(!c.detachment_enabled);
        assert_eq!(c.workflow_max_failed_attempts, 5);
        assert_eq!(c.workflow_cancel_poll_interval, Duration::from_millis(500));
        assert_eq!(c.workflow_commit_hold, Duration::from_millis(20));
        assert_eq!(
            c.retention_processed_messages,
            Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(
            c.retention_finished_workflows,
            Duration::from_secs(30 * 24 * 3600)
        );
        assert_eq!(c.retention_fired_timers, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.retention_sweep_interval, Duration::from_secs(60));
        assert_eq!(c.retention_batch_size, 1000);
        assert_eq!(c.retention_max_batches_per_sweep, 100);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_values_name_the_option() {
        let c = ShardingConfig {
            workflow_max_failed_attempts: 0,
            ..Default::default()
        };
        assert!(
            matches!(c.validate(), Err(ClusterError::InvalidConfig { field, .. }) if field == "workflow_max_failed_attempts")
        );
        let c = ShardingConfig {
            shards_per_group: 0,
            ..Default::default()
        };
        assert!(
            matches!(c.validate(), Err(ClusterError::InvalidConfig { field, .. }) if field == "shards_per_group")
        );
        let c = ShardingConfig {
            entity_mailbox_capacity: 0,
            ..Default::default()
        };
        assert!(
            matches!(c.validate(), Err(ClusterError::InvalidConfig { field, .. }) if field == "entity_mailbox_capacity")
        );
    }

    #[test]
    fn bad_retention_names_the_option() {
        let field_of = |c: ShardingConfig| match c.validate() {
            Err(ClusterError::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        let base = ShardingConfig::default;
        assert_eq!(
            field_of(ShardingConfig {
                retention_processed_messages: Duration::ZERO,
                ..base()
            }),
            "retention_processed_messages"
        );
        assert_eq!(
            field_of(ShardingConfig {
                retention_finished_workflows: Duration::from_secs(200 * 365 * 24 * 3600),
                ..base()
            }),
            "retention_finished_workflows"
        );
        assert_eq!(
            field_of(ShardingConfig {
                retention_fired_timers: Duration::ZERO,
                ..base()
            }),
            "retention_fired_timers"
        );
        assert_eq!(
            field_of(ShardingConfig {
                retention_sweep_interval: Duration::ZERO,
                ..base()
            }),
            "retention_sweep_interval"
        );
        assert_eq!(
            field_of(ShardingConfig {
                retention_batch_size: 0,
                ..base()
            }),
            "retention_batch_size"
        );
        assert_eq!(
            field_of(ShardingConfig {
                retention_batch_size: 1_000_000,
                ..base()
            }),
            "retention_batch_size"
        );
        assert_eq!(
            field_of(ShardingConfig {
                retention_max_batches_per_sweep: 0,
                ..base()
            }),
            "retention_max_batches_per_sweep"
        );
    }

    #[test]
    fn redelivery_backoff_doubles_up_to_its_cap() {
        let c = ShardingConfig {
            storage_retry_backoff_base: Duration::from_millis(100),
            storage_retry_backoff_max: Duration::from_millis(700),
            ..Default::default()
        };
        let waits: Vec<u128> = (1..=6)
            .map(|attempt| c.storage_retry_backoff(attempt).as_millis())
            .collect();
        assert_eq!(waits, vec![100, 200, 400, 700, 700, 700]);
        assert_eq!(c.storage_retry_backoff(0), Duration::from_millis(100));
        assert_eq!(
            c.storage_retry_backoff(u32::MAX),
            Duration::from_millis(700)
        );
    }

    #[test]
    fn bad_redelivery_backoff_names_the_option() {
        let zero = ShardingConfig {
            storage_retry_backoff_base: Duration::ZERO,
            ..Default::default()
        };
        assert!(
            matches!(zero.validate(), Err(ClusterError::InvalidConfig { field, .. }) if field == "storage_retry_backoff_base")
        );
        let inverted = ShardingConfig {
            storage_retry_backoff_base: Duration::from_secs(10),
            storage_retry_backoff_max: Duration::from_secs(5),
            ..Default::default()
        };
        assert!(
            matches!(inverted.validate(), Err(ClusterError::InvalidConfig { field, .. }) if field == "storage_retry_backoff_max")
        );
    }
}
