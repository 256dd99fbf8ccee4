//! [`ClusterCron`]: the user-facing builder of a distributed cron job, and its registration
//! (the hidden entity plus the arming singleton) on a runner.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use cruster_sharding::{Sharding, SingletonContext, SingletonFn};
use cruster_types::ClusterError;

use super::arming::arm_until_cancelled;
use super::cron_entity::{CronEntity, CronSpec, CRON_NAMESPACE};
use super::handler::{CronFuture, CronHandler};
use super::run_plan::RunPolicy;
use super::schedule::CronSchedule;

/// The future of the arming singleton (the output type of a [`SingletonFn`]).
type SingletonFuture = CronFuture;

/// Runs older than this are skipped unless [`ClusterCron::with_skip_if_older_than`] says
/// otherwise (one day).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(cruster::cron::DEFAULT_SKIP_IF_OLDER_THAN, Duration::from_secs(86_400));
/// ```
pub const DEFAULT_SKIP_IF_OLDER_THAN: Duration = Duration::from_secs(24 * 60 * 60);

/// How often the arming singleton re-saves the next run unless
/// [`ClusterCron::with_rearm_interval`] says otherwise (30 seconds).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(cruster::cron::DEFAULT_REARM_INTERVAL, Duration::from_secs(30));
/// ```
pub const DEFAULT_REARM_INTERVAL: Duration = Duration::from_secs(30);

/// A cron job that runs once per occurrence of its schedule, somewhere in the cluster.
///
/// Build it with [`ClusterCron::new`], adjust it with the `with_*` methods, and
/// [`register`](ClusterCron::register) it on every runner (as you register entities). See
/// the [module docs](crate::cron) for the delivery guarantees.
///
/// ```no_run
/// use std::time::Duration;
/// use cruster::cron::{ClusterCron, CronSchedule};
/// use cruster::prelude::*;
///
/// # async fn demo(runner: &SingleRunner) -> Result<(), ClusterError> {
/// let cron = ClusterCron::new(
///     "cleanup-job",
///     CronSchedule::parse("0 */5 * * * * *")?, // every 5 minutes
///     |scheduled_time| Box::pin(async move {
///         tracing::info!(%scheduled_time, "cleaning up");
///         Ok(())
///     }),
/// )
/// .with_calculate_next_from_previous(true)
/// .with_skip_if_older_than(Duration::from_secs(3600));
///
/// cron.register(runner.sharding().as_ref()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClusterCron {
    name: String,
    schedule: CronSchedule,
    handler: CronHandler,
    calculate_next_from_previous: bool,
    skip_if_older_than: Duration,
    rearm_interval: Duration,
}

impl ClusterCron {
    /// A cron named `name` (unique in the cluster) that calls `handler` with the scheduled
    /// time of each occurrence of `schedule`.
    ///
    /// By default the next occurrence is computed from the moment a run starts (missed
    /// occurrences are not caught up) and runs more than a day late are skipped.
    ///
    /// ```
    /// use cruster::cron::{ClusterCron, CronSchedule};
    ///
    /// let cron = ClusterCron::new(
    ///     "heartbeat",
    ///     CronSchedule::parse("*/10 * * * * *")?,
    ///     |_scheduled_time| Box::pin(async { Ok(()) }),
    /// );
    /// assert_eq!(cron.name(), "heartbeat");
    /// # Ok::<(), cruster::ClusterError>(())
    /// ```
    pub fn new<F>(name: impl Into<String>, schedule: CronSchedule, handler: F) -> Self
    where
        F: Fn(DateTime<Utc>) -> CronFuture + Send + Sync + 'static,
    {
        ClusterCron {
            name: name.into(),
            schedule,
            handler: Arc::new(handler),
            calculate_next_from_previous: false,
            skip_if_older_than: DEFAULT_SKIP_IF_OLDER_THAN,
            rearm_interval: DEFAULT_REARM_INTERVAL,
        }
    }

    /// `true`: each run schedules the occurrence that follows its own *scheduled* time, so
    /// occurrences missed while the cluster was down or failing over are run late, one after
    /// the other (except those older than [`with_skip_if_older_than`](Self::with_skip_if_older_than)).
    /// `false` (the default): each run schedules the first occurrence after the moment it
    /// starts, so missed occurrences are dropped.
    ///
    /// ```
    /// use cruster::cron::{ClusterCron, CronSchedule};
    /// let cron = ClusterCron::new("report", CronSchedule::parse("0 0 * * * *")?, |_| {
    ///     Box::pin(async { Ok(()) })
    /// })
    /// .with_calculate_next_from_previous(true);
    /// assert!(cron.calculates_next_from_previous());
    /// # Ok::<(), cruster::ClusterError>(())
    /// ```
    pub fn with_calculate_next_from_previous(mut self, enabled: bool) -> Self {
        self.calculate_next_from_previous = enabled;
        self
    }

    /// Skips (does not call the handler for) a run that starts more than `max_age` after its
    /// scheduled time; the following occurrence is still scheduled. Default: one day.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cruster::cron::{ClusterCron, CronSchedule};
    /// let cron = ClusterCron::new("report", CronSchedule::parse("0 0 * * * *")?, |_| {
    ///     Box::pin(async { Ok(()) })
    /// })
    /// .with_skip_if_older_than(Duration::from_secs(600));
    /// assert_eq!(cron.skip_if_older_than(), Duration::from_secs(600));
    /// # Ok::<(), cruster::ClusterError>(())
    /// ```
    pub fn with_skip_if_older_than(mut self, max_age: Duration) -> Self {
        self.skip_if_older_than = max_age;
        self
    }

    /// How often the arming singleton makes sure the next run is saved (default 30 s). This
    /// bounds how long the cron stays stopped if saving a next run ever fails for good; a
    /// healthy cron is not affected by it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cruster::cron::{ClusterCron, CronSchedule};
    /// let cron = ClusterCron::new("report", CronSchedule::parse("0 0 * * * *")?, |_| {
    ///     Box::pin(async { Ok(()) })
    /// })
    /// .with_rearm_interval(Duration::from_secs(5));
    /// # Ok::<(), cruster::ClusterError>(())
    /// ```
    pub fn with_rearm_interval(mut self, interval: Duration) -> Self {
        self.rearm_interval = interval;
        self
    }

    /// The cron's name.
    ///
    /// ```
    /// use cruster::cron::{ClusterCron, CronSchedule};
    /// let cron = ClusterCron::new("nightly", CronSchedule::parse("0 0 3 * * *")?, |_| {
    ///     Box::pin(async { Ok(()) })
    /// });
    /// assert_eq!(cron.name(), "nightly");
    /// # Ok::<(), cruster::ClusterError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cron's schedule.
    ///
    /// ```
    /// use cruster::cron::{ClusterCron, CronSchedule};
    /// let cron = ClusterCron::new("nightly", CronSchedule::parse("0 0 3 * * *")?, |_| {
    ///     Box::pin(async { Ok(()) })
    /// });
    /// assert_eq!(cron.schedule().expression(), "0 0 3 * * *");
    /// # Ok::<(), cruster::ClusterError>(())
    /// ```
    pub fn schedule(&self) -> &CronSchedule {
        &self.schedule
    }

    /// Whether missed occurrences are caught up (see
    /// [`with_calculate_next_from_previous`](Self::with_calculate_next_from_previous)).
    ///
    /// ```
    /// use cruster::cron::{ClusterCron, CronSchedule};
    /// let cron = ClusterCron::new("nightly", CronSchedule::parse("0 0 3 * * *")?, |_| {
    ///     Box::pin(async { Ok(()) })
    /// });
    /// assert!(!cron.calculates_next_from_previous());
    /// # Ok::<(), cruster::ClusterError>(())
    /// ```
    pub fn calculates_next_from_previous(&self) -> bool {
        self.calculate_next_from_previous
    }

    /// The age past which a run is skipped.
    ///
    /// ```
    /// use cruster::cron::{ClusterCron, CronSchedule, DEFAULT_SKIP_IF_OLDER_THAN};
    /// let cron = ClusterCron::new("nightly", CronSchedule::parse("0 0 3 * * *")?, |_| {
    ///     Box::pin(async { Ok(()) })
    /// });
    /// assert_eq!(cron.skip_if_older_than(), DEFAULT_SKIP_IF_OLDER_THAN);
    /// # Ok::<(), cruster::ClusterError>(())
    /// ```
    pub fn skip_if_older_than(&self) -> Duration {
        self.skip_if_older_than
    }

    /// The hidden entity type that carries this cron's runs (`cruster.cron/<name>`), for
    /// inspecting its persisted messages.
    ///
    /// ```
    /// use cruster::cron::{ClusterCron, CronSchedule};
    /// let cron = ClusterCron::new("nightly", CronSchedule::parse("0 0 3 * * *")?, |_| {
    ///     Box::pin(async { Ok(()) })
    /// });
    /// assert_eq!(cron.entity_type().as_str(), "cruster.cron/nightly");
    /// # Ok::<(), cruster::ClusterError>(())
    /// ```
    pub fn entity_type(&self) -> cruster_types::EntityType {
        cruster_types::EntityType::new(format!("{CRON_NAMESPACE}{}", self.name))
    }

    /// Registers the cron on this runner: its hidden entity type and its arming singleton.
    /// Call it on every runner of the cluster, with the same name, schedule and options,
    /// as you register entities; the cron then runs once per occurrence cluster-wide.
    ///
    /// # Errors
    /// `InvalidConfig` if the name is empty, an interval is out of range, or a cron of this
    /// name is already registered on this runner.
    ///
    /// ```no_run
    /// use cruster::cron::{ClusterCron, CronSchedule};
    /// use cruster::prelude::*;
    ///
    /// # async fn demo(runner: &SingleRunner) -> Result<(), ClusterError> {
    /// ClusterCron::new("tick", CronSchedule::parse("* * * * * *")?, |t| {
    ///     Box::pin(async move {
    ///         println!("tick {t}");
    ///         Ok(())
    ///     })
    /// })
    /// .register(runner.sharding().as_ref())
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn register<S: Sharding + ?Sized>(&self, sharding: &S) -> Result<(), ClusterError> {
        let spec = Arc::new(self.spec()?);
        sharding
            .register_entity(Arc::new(CronEntity { spec: spec.clone() }))
            .await?;
        let singleton_name = format!("{CRON_NAMESPACE}{}", spec.name);
        let arm: SingletonFn = Arc::new(move |ctx: SingletonContext| -> SingletonFuture {
            Box::pin(arm_until_cancelled(spec.clone(), ctx))
        });
        sharding
            .register_singleton(&singleton_name, None, arm)
            .await
    }

    /// Validates the options and freezes them for the entity and the singleton.
    fn spec(&self) -> Result<CronSpec, ClusterError> {
        if self.name.trim().is_empty() {
            return Err(ClusterError::InvalidConfig {
                field: "cron name".into(),
                reason: "a cron needs a non-empty name, unique in the cluster".into(),
            });
        }
        let skip_if_older_than = TimeDelta::from_std(self.skip_if_older_than).map_err(|_| {
            ClusterError::InvalidConfig {
                field: "skip_if_older_than".into(),
                reason: format!(
                    "{:?} is too large for a date-time offset; use at most a few centuries",
                    self.skip_if_older_than
                ),
            }
        })?;
        if self.rearm_interval.is_zero() {
            return Err(ClusterError::InvalidConfig {
                field: "rearm_interval".into(),
                reason: "must be greater than zero".into(),
            });
        }
        Ok(CronSpec {
            name: self.name.clone(),
            schedule: self.schedule.clone(),
            handler: self.handler.clone(),
            policy: RunPolicy {
                calculate_next_from_previous: self.calculate_next_from_previous,
                skip_if_older_than,
            },
            rearm_interval: self.rearm_interval,
        })
    }
}

impl fmt::Debug for ClusterCron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCron")
            .field("name", &self.name)
            .field("schedule", &self.schedule)
            .field(
                "calculate_next_from_previous",
                &self.calculate_next_from_previous,
            )
            .field("skip_if_older_than", &self.skip_if_older_than)
            .field("rearm_interval", &self.rearm_interval)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop() -> ClusterCron {
        ClusterCron::new("job", CronSchedule::parse("* * * * * *").unwrap(), |_| {
            Box::pin(async { Ok(()) })
        })
    }

    #[test]
    fn defaults_follow_the_clock_and_skip_after_a_day() {
        let spec = noop().spec().unwrap();
        assert!(!spec.policy.calculate_next_from_previous);
        assert_eq!(spec.policy.skip_if_older_than, TimeDelta::days(1));
        assert_eq!(spec.rearm_interval, DEFAULT_REARM_INTERVAL);
    }

    #[test]
    fn builder_options_reach_the_run_policy() {
        let spec = noop()
            .with_calculate_next_from_previous(true)
            .with_skip_if_older_than(Duration::from_secs(3600))
            .spec()
            .unwrap();
        assert!(spec.policy.calculate_next_from_previous);
        assert_eq!(spec.policy.skip_if_older_than, TimeDelta::hours(1));
    }

    #[test]
    fn invalid_options_are_config_errors() {
        let empty_name = ClusterCron::new(" ", CronSchedule::parse("* * * * * *").unwrap(), |_| {
            Box::pin(async { Ok(()) })
        });
        assert!(matches!(
            empty_name.spec(),
            Err(ClusterError::InvalidConfig { .. })
        ));
        let huge = noop().with_skip_if_older_than(Duration::MAX);
        assert!(matches!(
            huge.spec(),
            Err(ClusterError::InvalidConfig { .. })
        ));
        let zero = noop().with_rearm_interval(Duration::ZERO);
        assert!(matches!(
            zero.spec(),
            Err(ClusterError::InvalidConfig { .. })
        ));
    }

    #[tokio::test]
    async fn the_handler_is_called_with_the_scheduled_time() {
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let recorder = seen.clone();
        let cron = ClusterCron::new(
            "job",
            CronSchedule::parse("* * * * * *").unwrap(),
            move |t| {
                let recorder = recorder.clone();
                Box::pin(async move {
                    recorder.lock().push(t);
                    Ok(())
                })
            },
        );
        let t = Utc::now();
        (cron.handler)(t).await.unwrap();
        assert_eq!(*seen.lock(), vec![t]);
    }
}
