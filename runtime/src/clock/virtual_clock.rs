//! [`VirtualClock`]: a clock that moves only when a test says so.
//!
//! Owns the current virtual instant, the timers waiting on it (sleeps, and the instants
//! persisted messages become due) and the loops watching it. [`VirtualClock::advance`]
//! visits the timers in order of their instant (ties in order of registration): at each
//! instant it wakes the sleepers, tells the watching loops (the storage poll delivers what
//! became due, the reaper evicts what became idle), and waits until the work that caused
//! has settled before it moves on. Never holds its lock across an await.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

use super::clock_ticks::{ClockTicks, TickObserver, WorkInHand};

/// Yields of one settling round: on a current-thread runtime this lets every task woken
/// by a move run several times.
const SETTLE_YIELDS: usize = 16;
/// Rounds in a row without activity that count as settled.
const SETTLED_ROUNDS: usize = 2;
/// The longest real time one instant may take to settle (a handler that never finishes
/// must not hang the test: the clock moves on and says so in a `tracing` event).
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

/// A clock for tests: starts at a chosen instant (or the real now) and moves only by
/// [`advance`](Self::advance) and [`advance_to`](Self::advance_to). Cheap to clone; clones
/// share the time. Build a runner with it (`SingleRunner::builder().clock(..)`,
/// `MemoryCluster::builder().clock(..)`, or `ShardingConfig::clock`), and workflow sleeps,
/// `send_at`/`notify_at`, cron, singleton and activity retry backoff, redelivery backoff
/// and idle eviction follow it. See [`crate::clock`] for what stays on real time.
///
/// ```
/// use std::time::Duration;
/// use chrono::TimeZone;
/// use cruster::clock::VirtualClock;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let start = chrono::Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
/// let clock = VirtualClock::starting_at(start);
/// clock.advance(Duration::from_secs(3600)).await;
/// assert_eq!(clock.now(), start + chrono::TimeDelta::hours(1));
/// # }
/// ```
#[derive(Clone)]
pub struct VirtualClock {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// The count of moves; loops watch it through [`ClockTicks`].
    moves: watch::Sender<u64>,
}

struct State {
    now: DateTime<Utc>,
    /// How far the clock has been advanced: the monotonic reading is the real one plus this.
    advanced: Duration,
    next_seq: u64,
    timers: BTreeMap<(DateTime<Utc>, u64), Timer>,
    /// Sleepers woken whose futures have not resumed (or been dropped) yet.
    woken_unobserved: usize,
    /// Bumped by every reading and timer: a settled system stops bumping it.
    activity: u64,
    observers: Vec<Weak<TickObserver>>,
}

enum Timer {
    Sleeper(oneshot::Sender<()>),
    /// Something becomes due here (a persisted message): only the watching loops act.
    Due,
}

impl Default for VirtualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtualClock {
    /// A clock that starts at the real current time and then stands still.
    pub fn new() -> Self {
        Self::starting_at(Utc::now())
    }

    /// A clock that starts at `start`.
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        let (moves, _) = watch::channel(0);
        VirtualClock {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    now: start,
                    advanced: Duration::ZERO,
                    next_seq: 0,
                    timers: BTreeMap::new(),
                    woken_unobserved: 0,
                    activity: 0,
                    observers: Vec::new(),
                }),
                moves,
            }),
        }
    }

    /// The current virtual instant.
    pub fn now(&self) -> DateTime<Utc> {
        let mut state = self.shared.state.lock();
        state.activity += 1;
        state.now
    }

    /// The earliest instant a sleeper or a due message waits for, if any.
    pub fn next_timer(&self) -> Option<DateTime<Utc>> {
        let state = self.shared.state.lock();
        state.timers.keys().next().map(|(at, _)| *at)
    }

    /// Every instant a sleeper or a due message waits for, earliest first (an instant
    /// appears once per waiter). Tests use it to wait until set-up has scheduled what they
    /// expect before moving the clock.
    pub fn timers(&self) -> Vec<DateTime<Utc>> {
        let state = self.shared.state.lock();
        state.timers.keys().map(|(at, _)| *at).collect()
    }

    /// Moves the clock forward by `by`, firing everything due on the way in order; see
    /// [`advance_to`](Self::advance_to).
    pub async fn advance(&self, by: Duration) {
        let now = self.shared.state.lock().now;
        let target = chrono::Duration::from_std(by)
            .ok()
            .and_then(|by| now.checked_add_signed(by))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.advance_to(target).await;
    }

    /// Moves the clock forward to `target`. Visits every timer up to `target` in order of
    /// its instant (ties in order of registration): sets the time to it, wakes what waits
    /// for it, and lets the work that wakes settle before the next one, so effects happen
    /// in order even when one timer schedules another before `target`. Ends at `target`
    /// and settles once more. A `target` in the past only settles (time never goes back).
    pub async fn advance_to(&self, target: DateTime<Utc>) {
        loop {
            let moved = {
                let mut state = self.shared.state.lock();
                match state.timers.keys().next().copied() {
                    Some((at, _)) if at <= target => {
                        state.move_to(at);
                        state.wake_all_at(at);
                        true
                    }
                    _ => false,
                }
            };
            if !moved {
                break;
            }
            self.shared.moves.send_modify(|moves| *moves += 1);
            self.settle().await;
        }
        self.shared.state.lock().move_to(target);
        self.shared.moves.send_modify(|moves| *moves += 1);
        self.settle().await;
    }

    pub(crate) fn instant(&self) -> Instant {
        let mut state = self.shared.state.lock();
        state.activity += 1;
        let real = Instant::now();
        real.checked_add(state.advanced).unwrap_or(real)
    }

    pub(crate) async fn sleep(&self, duration: Duration) {
        let now = self.shared.state.lock().now;
        let at = chrono::Duration::from_std(duration)
            .ok()
            .and_then(|by| now.checked_add_signed(by))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.sleep_until(at).await;
    }

    pub(crate) async fn sleep_until(&self, at: DateTime<Utc>) {
        let (woken, key) = {
            let mut state = self.shared.state.lock();
            state.activity += 1;
            if at <= state.now {
                return;
            }
            let (tx, rx) = oneshot::channel();
            let key = (at, state.next_seq);
            state.next_seq += 1;
            state.timers.insert(key, Timer::Sleeper(tx));
            (rx, key)
        };
        let _registration = SleepRegistration {
            shared: &self.shared,
            key,
        };
        // The sender lives in the clock until it wakes this sleeper, so this only ends
        // when woken.
        let _ = woken.await;
    }

    pub(crate) fn due_at(&self, at: DateTime<Utc>) {
        let mut state = self.shared.state.lock();
        state.activity += 1;
        if at > state.now {
            let key = (at, state.next_seq);
            state.next_seq += 1;
            state.timers.insert(key, Timer::Due);
        }
    }

    pub(crate) fn ticks(&self, in_hand: Option<WorkInHand>) -> ClockTicks {
        let (ticks, observer) = ClockTicks::watching(self.shared.moves.subscribe(), in_hand);
        let mut state = self.shared.state.lock();
        state
            .observers
            .retain(|observer| observer.strong_count() > 0);
        state.observers.push(Arc::downgrade(&observer));
        ticks
    }

    /// Waits until the work the last move started has settled: every woken sleeper
    /// resumed, every watching loop handled the move, the loops' work in hand (deliveries
    /// in flight) is no more than what is asleep on this clock (a handler waiting out an
    /// activity's retry backoff is settled), and nothing read the clock or set a timer for
    /// a couple of rounds of yields and a short real pause (for work on other worker
    /// threads). At most [`SETTLE_LIMIT`].
    async fn settle(&self) {
        let generation = *self.shared.moves.borrow();
        let started = Instant::now();
        let mut last_activity = None;
        let mut quiet_rounds = 0;
        let current_thread = tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread
        });
        loop {
            for _ in 0..SETTLE_YIELDS {
                tokio::task::yield_now().await;
            }
            if !current_thread {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let (activity, busy) = {
                let mut state = self.shared.state.lock();
                state
                    .observers
                    .retain(|observer| observer.strong_count() > 0);
                let observers: Vec<_> = state.observers.iter().filter_map(Weak::upgrade).collect();
                let unacknowledged = observers
                    .iter()
                    .any(|observer| !observer.acknowledged(generation));
                let in_hand: usize = observers.iter().map(|observer| observer.in_hand()).sum();
                let asleep = state
                    .timers
                    .values()
                    .filter(|timer| matches!(timer, Timer::Sleeper(_)))
                    .count();
                let busy = unacknowledged || in_hand > asleep || state.woken_unobserved > 0;
                (state.activity, busy)
            };
            if !busy && last_activity == Some(activity) {
                quiet_rounds += 1;
                if quiet_rounds >= SETTLED_ROUNDS {
                    return;
                }
            } else {
                quiet_rounds = 0;
            }
            last_activity = Some(activity);
            if started.elapsed() > SETTLE_LIMIT {
                tracing::warn!(
                    limit = ?SETTLE_LIMIT,
                    busy,
                    "virtual clock: work woken by a move did not settle in time; moving on"
                );
                return;
            }
        }
    }
}

impl State {
    fn move_to(&mut self, at: DateTime<Utc>) {
        self.activity += 1;
        if at > self.now {
            self.advanced += (at - self.now).to_std().unwrap_or(Duration::ZERO);
            self.now = at;
        }
    }

    /// Wakes every sleeper due at exactly `at`, in order of registration.
    fn wake_all_at(&mut self, at: DateTime<Utc>) {
        let due: Vec<_> = self
            .timers
            .range((at, 0)..=(at, u64::MAX))
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            if let Some(Timer::Sleeper(tx)) = self.timers.remove(&key) {
                if tx.send(()).is_ok() {
                    self.woken_unobserved += 1;
                }
            }
        }
    }
}

/// Removes a sleeper's timer when its future is dropped before it was woken, and counts a
/// woken one as observed when its future resumes or is dropped.
struct SleepRegistration<'a> {
    shared: &'a Shared,
    key: (DateTime<Utc>, u64),
}

impl Drop for SleepRegistration<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        if state.timers.remove(&self.key).is_none() {
            state.woken_unobserved = state.woken_unobserved.saturating_sub(1);
        }
    }
}

impl std::fmt::Debug for VirtualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("VirtualClock")
            .field("now", &state.now)
            .field("timers", &state.timers.len())
            .finish()
    }
}
