//! [`ClockTicks`]: how a periodic loop of the runtime (the storage poll, the idle-instance
//! reaper) learns that a virtual clock moved, and tells the clock it is done with the move.
//!
//! A loop calls [`ClockTicks::next`] where it waits for its next round, beside its real
//! cadence. Calling it again acknowledges the move the previous call returned: the loop
//! finished that round. A virtual clock waits for every live loop's acknowledgement, and
//! for the work its loops report in hand (the `in_hand` probe, e.g. deliveries in flight)
//! to be no more than what waits on the clock's own sleepers, before it moves to its next
//! instant. Never holds a lock across an await.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// One periodic loop's view of a virtual clock's moves. See the module docs.
pub(crate) struct ClockTicks {
    subscription: Option<Subscription>,
}

struct Subscription {
    moves: watch::Receiver<u64>,
    seen: u64,
    observer: Arc<TickObserver>,
}

/// What a virtual clock knows of one loop watching it.
pub(crate) struct TickObserver {
    /// The last move the loop finished handling.
    acknowledged: AtomicU64,
    in_hand: Option<WorkInHand>,
}

/// How many pieces of work a loop's owner has in hand (started and not finished).
pub(crate) type WorkInHand = Arc<dyn Fn() -> usize + Send + Sync>;

impl TickObserver {
    /// Whether the loop has handled move `generation`.
    pub(crate) fn acknowledged(&self, generation: u64) -> bool {
        self.acknowledged.load(Ordering::Acquire) >= generation
    }

    /// The work its owner has in hand.
    pub(crate) fn in_hand(&self) -> usize {
        self.in_hand.as_ref().map_or(0, |in_hand| in_hand())
    }
}

impl ClockTicks {
    /// Ticks of a clock that never moves by hand (the system clock).
    pub(crate) fn never() -> Self {
        ClockTicks { subscription: None }
    }

    /// Ticks from `moves`, whose current value the loop counts as handled; returns the
    /// observer the clock keeps (weakly).
    pub(crate) fn watching(
        moves: watch::Receiver<u64>,
        in_hand: Option<WorkInHand>,
    ) -> (Self, Arc<TickObserver>) {
        let seen = *moves.borrow();
        let observer = Arc::new(TickObserver {
            acknowledged: AtomicU64::new(seen),
            in_hand,
        });
        let ticks = ClockTicks {
            subscription: Some(Subscription {
                moves,
                seen,
                observer: observer.clone(),
            }),
        };
        (ticks, observer)
    }

    /// Acknowledges the move the previous call returned, then waits for the next one
    /// (forever on the system clock).
    ///
    /// # Cancel safety
    /// Cancel safe: a move that arrives while the future is dropped is returned by the
    /// next call.
    pub(crate) async fn next(&mut self) {
        let Some(subscription) = self.subscription.as_mut() else {
            return std::future::pending().await;
        };
        subscription
            .observer
            .acknowledged
            .store(subscription.seen, Ordering::Release);
        if subscription.moves.changed().await.is_err() {
            // The clock is gone: it will never move again.
            self.subscription = None;
            return std::future::pending().await;
        }
        subscription.seen = *subscription.moves.borrow_and_update();
    }
}
