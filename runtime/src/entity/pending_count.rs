//! [`PendingCount`]: the requests queued or running in the mailboxes of one entity type,
//! kept as they change so the mailbox-depth gauge needs no scan of the live instances.
//!
//! Owns a few counters on cache lines of their own; each instance updates the one it was
//! given, so concurrent senders to different entities rarely touch the same line. Each
//! counter only goes down for a request it counted up, so it never underflows. Lock-free.

use std::sync::atomic::{AtomicUsize, Ordering};

const STRIPES: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Stripe(AtomicUsize);

#[derive(Default)]
pub(crate) struct PendingCount {
    stripes: [Stripe; STRIPES],
    next_stripe: AtomicUsize,
}

impl PendingCount {
    /// The counter a new instance updates.
    pub(crate) fn stripe_for_new_instance(&self) -> usize {
        self.next_stripe.fetch_add(1, Ordering::Relaxed) % STRIPES
    }

    /// One more request queued in an instance of `stripe`.
    pub(crate) fn add(&self, stripe: usize) {
        self.stripes[stripe % STRIPES]
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    /// One request of an instance of `stripe` finished or was refused.
    pub(crate) fn remove(&self, stripe: usize) {
        self.stripes[stripe % STRIPES]
            .0
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// Requests queued or running now (a snapshot).
    pub(crate) fn total(&self) -> usize {
        self.stripes
            .iter()
            .map(|stripe| stripe.0.load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_across_stripes() {
        let count = PendingCount::default();
        let a = count.stripe_for_new_instance();
        let b = count.stripe_for_new_instance();
        assert_ne!(a, b);
        count.add(a);
        count.add(b);
        count.add(b);
        assert_eq!(count.total(), 3);
        count.remove(b);
        assert_eq!(count.total(), 2);
    }
}
