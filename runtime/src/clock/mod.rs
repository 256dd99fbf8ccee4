//! [`Clock`]: where the runtime reads the time of business events, so a test can replace
//! it with a [`VirtualClock`] and move hours of timers forward in milliseconds.
//!
//! **Business time** goes through the clock: the instant a persisted message is due
//! (`send_at`, `notify_at`, cron runs, workflow sleep wake-ups, workflow retry backoff,
//! redelivery backoff after a failure), the instants journaled and stored by workflows
//! and cron, the wait of activity retry backoff and of singleton restart backoff, and the
//! idle time that evicts entity instances.
//!
//! **Infrastructure time stays real**, by design: shard-lock leases and their renewals,
//! runner membership heartbeats and health checks, transport and storage call deadlines,
//! `shutdown_timeout`, routing retries during a rebalance, the instants of the shard-move
//! log, the waits of callers polling storage for a reply, and the cadence of the storage
//! poll and of the idle-instance reaper. Storage backends stamp their own bookkeeping
//! instants (when a message was dead-lettered). These guard against real failures (a runner that stops answering must lose its
//! shards in real seconds, whatever a test's clock says). The poll and the reaper keep
//! their real cadence but read due-ness through the clock, and a virtual clock also wakes
//! them at each instant it moves to, so what became due runs at once.
//!
//! The default [`Clock::system`] costs nothing over calling `chrono::Utc::now` and
//! `tokio::time::sleep` directly.
//!
//! ```
//! use std::time::Duration;
//! use cruster::clock::{Clock, VirtualClock};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let virtual_clock = VirtualClock::new();
//! let clock = Clock::from(virtual_clock.clone());
//! let start = clock.now();
//! let sleeper = tokio::spawn({
//!     let clock = clock.clone();
//!     async move { clock.sleep(Duration::from_secs(86_400)).await }
//! });
//! while virtual_clock.next_timer().is_none() {
//!     tokio::task::yield_now().await; // let the sleeper register its wait first
//! }
//! virtual_clock.advance(Duration::from_secs(86_400)).await; // a day, in a few milliseconds
//! sleeper.await.unwrap();
//! assert_eq!(clock.now() - start, chrono::TimeDelta::days(1));
//! # }
//! ```

mod clock_ticks;
mod virtual_clock;

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

pub(crate) use clock_ticks::{ClockTicks, WorkInHand};
pub use virtual_clock::VirtualClock;

/// The clock a runner reads business time from: the system clock (the default) or a
/// [`VirtualClock`] a test moves by hand. Cheap to clone. See the module docs for what
/// reads it and what stays on real time.
#[derive(Clone, Default)]
pub struct Clock {
    source: Source,
}

#[derive(Clone, Default)]
enum Source {
    #[default]
    System,
    Virtual(VirtualClock),
}

impl Clock {
    /// The system clock: `chrono::Utc::now`, `std::time::Instant::now` and tokio timers.
    pub fn system() -> Self {
        Clock {
            source: Source::System,
        }
    }

    /// Whether this is a [`VirtualClock`].
    pub fn is_virtual(&self) -> bool {
        matches!(self.source, Source::Virtual(_))
    }

    /// The current wall-clock instant.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.source {
            Source::System => Utc::now(),
            Source::Virtual(clock) => clock.now(),
        }
    }

    /// A monotonic reading, for measuring how long something has been idle. A virtual
    /// clock adds every advance to the real reading, so it never goes backwards.
    pub fn instant(&self) -> Instant {
        match &self.source {
            Source::System => Instant::now(),
            Source::Virtual(clock) => clock.instant(),
        }
    }

    /// Waits `duration` of this clock's time.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future forgets the wait.
    pub async fn sleep(&self, duration: Duration) {
        match &self.source {
            Source::System => tokio::time::sleep(duration).await,
            Source::Virtual(clock) => clock.sleep(duration).await,
        }
    }

    /// Waits until this clock reads `at` (returns at once if it is past).
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future forgets the wait.
    pub async fn sleep_until(&self, at: DateTime<Utc>) {
        match &self.source {
            Source::System => {
                let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
            }
            Source::Virtual(clock) => clock.sleep_until(at).await,
        }
    }

    /// Tells the clock that something (a persisted message) becomes due at `at`. A
    /// virtual clock stops there when it advances past it, so the storage poll delivers it
    /// in order with other timers; the system clock needs no hint (the poll's cadence
    /// finds it).
    pub(crate) fn due_at(&self, at: DateTime<Utc>) {
        if let Source::Virtual(clock) = &self.source {
            clock.due_at(at);
        }
    }

    /// The moves of a virtual clock, for a periodic loop that must also run whenever the
    /// clock moves (see [`ClockTicks`]). `in_hand` counts the work the loop's owner has
    /// started and not finished; the clock waits for it (beyond what waits on the clock's
    /// own sleepers) before moving on.
    pub(crate) fn ticks(&self, in_hand: Option<WorkInHand>) -> ClockTicks {
        match &self.source {
            Source::System => ClockTicks::never(),
            Source::Virtual(clock) => clock.ticks(in_hand),
        }
    }
}

impl From<VirtualClock> for Clock {
    fn from(clock: VirtualClock) -> Self {
        Clock {
            source: Source::Virtual(clock),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::System => f.write_str("Clock::System"),
            Source::Virtual(clock) => write!(f, "Clock::Virtual({})", clock.now()),
        }
    }
}
