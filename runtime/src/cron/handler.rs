//! The types a cron job's handler is made of: the future it returns and the shared
//! closure that makes one per occurrence.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cruster_types::ClusterError;

/// What a cron handler returns: a boxed, sendable future.
///
/// ```
/// use cruster::cron::CronFuture;
/// fn job(scheduled_time: chrono::DateTime<chrono::Utc>) -> CronFuture {
///     Box::pin(async move {
///         println!("running the {scheduled_time} occurrence");
///         Ok(())
///     })
/// }
/// # let _ = job;
/// ```
pub type CronFuture = Pin<Box<dyn Future<Output = Result<(), ClusterError>> + Send>>;

/// A cron handler, shared by every run: called with the occurrence's scheduled time.
/// [`ClusterCron::new`](super::ClusterCron::new) takes any closure of this shape and stores it as one of these.
///
/// ```
/// use std::sync::Arc;
/// use cruster::cron::CronHandler;
/// let handler: CronHandler = Arc::new(|_scheduled_time| Box::pin(async { Ok(()) }));
/// # let _ = handler;
/// ```
pub type CronHandler = Arc<dyn Fn(DateTime<Utc>) -> CronFuture + Send + Sync + 'static>;
