//! Distributed cron: a job that runs once per occurrence of a cron schedule, somewhere in
//! the cluster, and keeps running when runners come and go.
//!
//! ```no_run
//! use std::time::Duration;
//! use cruster::cron::{ClusterCron, CronSchedule};
//! use cruster::prelude::*;
//!
//! # async fn demo(runner: &SingleRunner) -> Result<(), ClusterError> {
//! let cron = ClusterCron::new(
//!     "cleanup-job",
//!     CronSchedule::parse("0 */5 * * * * *")?, // sec min hour dom month dow year
//!     |scheduled_time| Box::pin(async move {
//!         // Perform cleanup for the slot `scheduled_time` stands for.
//!         Ok(())
//!     }),
//! )
//! .with_calculate_next_from_previous(true)
//! .with_skip_if_older_than(Duration::from_secs(3600));
//!
//! cron.register(runner.sharding().as_ref()).await?;
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! A cron named `N` is two things, both registered by [`ClusterCron::register`] on every
//! runner:
//!
//! * a hidden entity type `cruster.cron/N` with one instance. Its `run` RPC carries the
//!   scheduled time of one occurrence. A run first saves the run of the next occurrence as a
//!   **persisted** message, due at that occurrence and de-duplicated by it, then calls your
//!   handler. The runs form a chain of persisted messages that lives in message storage,
//!   not in any runner's memory.
//! * an arming singleton `cruster.cron/N`. On whichever runner owns it, it saves the run of
//!   the next occurrence after the clock when it starts, and again every
//!   [`rearm_interval`](ClusterCron::with_rearm_interval). This starts the chain the first
//!   time and repairs it if a next run could ever not be saved. While the chain is healthy
//!   the run it saves already exists, and saving it stores nothing.
//!
//! # Guarantees
//!
//! * **One run per occurrence, delivered at least once.** A run is keyed by its scheduled
//!   time, so however many times an occurrence is scheduled (by the chain, by an arm, by
//!   two runners during a failover) message storage holds one run for it, and it is
//!   delivered until it completes. Your handler runs a second time for the same scheduled
//!   time only if a runner dies (or storage fails) after the handler started and before its
//!   completion was stored. If your job must have an effect exactly once, use the
//!   scheduled time as its idempotency key.
//! * **Never early, rarely late.** A run is delivered no earlier than its scheduled time,
//!   normally within one `storage_poll_interval` after it. Runs of one cron never overlap:
//!   a run that comes due while the previous one is still going waits for it.
//! * **Failover.** When the runner that owns the cron entity's shard dies, the pending run
//!   stays in storage, and the survivor that takes the shard over (after the runner's locks
//!   expire, `runner_lock_ttl`) delivers it. What happens to the occurrences that fell due
//!   meanwhile depends on [`with_calculate_next_from_previous`](ClusterCron::with_calculate_next_from_previous):
//!   with `true`, each run schedules the occurrence right after its own scheduled time, so
//!   the missed ones run late, in order, none skipped and none doubled; with `false` (the
//!   default), each run schedules the first occurrence after the moment it starts, so the
//!   missed ones are dropped. A graceful stop hands the shard over at once.
//! * **Staleness.** A run that starts more than
//!   [`skip_if_older_than`](ClusterCron::with_skip_if_older_than) (default one day) after its
//!   scheduled time does not call the handler, but still schedules the next occurrence.
//!   Catching up jumps straight over occurrences that would only be skipped.
//! * **Handler errors.** An `Err` from the handler is logged (`tracing` error, with the cron
//!   name and scheduled time) and not retried; the next occurrence is already saved, so the
//!   cron continues. A handler that panics or hangs cannot break the chain either, for the
//!   same reason. Retry inside the handler if a failed run must be retried.
//! * **Observability.** Every run is a `cruster.cron.run` span with fields `cron`,
//!   `scheduled_time` and `outcome` (`ok`, `failed` or `skipped`), and a failed or skipped
//!   run also logs an event. Runs are ordinary persisted messages, so they count in the
//!   runtime's message metrics and can be inspected in message storage under the entity
//!   type [`ClusterCron::entity_type`].
//!
//! # Caveats
//!
//! * Register every cron on every runner with the same name, schedule and options; the
//!   runner that ends up owning the shard runs it with *its* options.
//! * If a deployment changes a cron's schedule, the run already pending under the old
//!   schedule still runs once; from then on the new schedule applies.
//! * The de-duplication relies on runners' clocks agreeing to well within the schedule's
//!   interval (NTP is plenty for anything coarser than a second).
//! * One processed run per occurrence stays in message storage for as long as the backend
//!   keeps processed messages; that is what makes a late duplicate harmless.
//! * With `calculate_next_from_previous(false)` and a handler slower than the interval, an
//!   arm can save an occurrence the chain would have dropped, so an extra occurrence may
//!   run; never one occurrence twice.

mod arming;
mod cluster_cron;
mod cron_entity;
mod handler;
mod run_plan;
mod schedule;
#[cfg(test)]
mod test_sharding;

pub use cluster_cron::{ClusterCron, DEFAULT_REARM_INTERVAL, DEFAULT_SKIP_IF_OLDER_THAN};
pub use handler::{CronFuture, CronHandler};
pub use schedule::CronSchedule;
