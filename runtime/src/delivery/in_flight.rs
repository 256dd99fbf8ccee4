//! Persisted requests this runner is delivering, so the storage poll never hands the same
//! request to its entity twice, and what each delivery already told storage.
//!
//! Owns the set of in-flight request ids and the recently completed ones. A request is
//! entered before delivery and marked completed after its reply is stored; a completed id
//! is kept until a poll that *started* after the completion has finished, because a poll
//! that started earlier may still return the request as unprocessed.
//!
//! A redelivery by the poll has its attempt counted in storage *before* it runs; the entry
//! remembers that, so a failure is not counted a second time, and an attempt that ends
//! without an outcome through no fault of the message (refused, or stopped as its shard
//! leaves) is queued to be given back. It also counts the poll's deliveries that have not
//! finished (`poll_outstanding`), which bounds what the poll hands out: memory stays bounded
//! by the poll batch, whatever the backlog in storage. Never holds a lock across an await.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use cruster_types::Snowflake;
use dashmap::DashMap;
use parking_lot::Mutex;
use prometheus::IntGauge;
use tokio::sync::Notify;

pub(crate) struct InFlight {
    entries: DashMap<Snowflake, Entry>,
    /// Counted attempts abandoned before an outcome, to give back to storage.
    refunds: Mutex<Vec<Snowflake>>,
    /// Deliveries counted by the poll (`mark_counted`) without an outcome yet.
    poll_outstanding: AtomicUsize,
    /// Mirrors `poll_outstanding` for operators.
    poll_gauge: IntGauge,
    /// Notified when a delivery counted by the poll ends, so a poll waiting for room in
    /// its bound goes on at once.
    poll_finished: Notify,
}

#[derive(Clone, Copy, Default)]
struct Entry {
    /// When its reply was stored.
    completed_at: Option<Instant>,
    /// The attempt number storage counted when the poll picked it up, if it did.
    counted_attempt: Option<u32>,
}

impl Entry {
    /// A delivery counted by the poll, without an outcome yet.
    fn outstanding_for_poll(&self) -> bool {
        self.completed_at.is_none() && self.counted_attempt.is_some()
    }
}

impl InFlight {
    /// An empty set whose count of unfinished poll deliveries `poll_gauge` mirrors.
    pub(crate) fn new(poll_gauge: IntGauge) -> Self {
        InFlight {
            entries: DashMap::new(),
            refunds: Mutex::new(Vec::new()),
            poll_outstanding: AtomicUsize::new(0),
            poll_gauge,
            poll_finished: Notify::new(),
        }
    }

    /// Deliveries counted by the poll that have not finished.
    pub(crate) fn poll_outstanding(&self) -> usize {
        self.poll_outstanding.load(Ordering::Acquire)
    }

    /// Resolves when a delivery counted by the poll finishes (or at once when one finished
    /// since the last call).
    pub(crate) async fn poll_delivery_finished(&self) {
        self.poll_finished.notified().await;
    }

    fn poll_started(&self) {
        self.poll_outstanding.fetch_add(1, Ordering::AcqRel);
        self.poll_gauge.inc();
    }

    /// Called with the entry that left the in-flight state (removed or replaced).
    fn left(&self, entry: Entry) {
        if entry.outstanding_for_poll() {
            self.poll_outstanding.fetch_sub(1, Ordering::AcqRel);
            self.poll_gauge.dec();
            self.poll_finished.notify_one();
        }
    }

    /// Enters a request; `false` if it is already in flight or recently completed.
    pub(crate) fn enter(&self, request_id: Snowflake) -> bool {
        match self.entries.entry(request_id) {
            dashmap::mapref::entry::Entry::Occupied(_) => false,
            dashmap::mapref::entry::Entry::Vacant(v) => {
                v.insert(Entry::default());
                true
            }
        }
    }

    /// Remembers that storage counted this delivery as attempt number `attempt`.
    pub(crate) fn mark_counted(&self, request_id: Snowflake, attempt: u32) {
        let started = match self.entries.get_mut(&request_id) {
            Some(mut entry) => {
                let started = !entry.outstanding_for_poll() && entry.completed_at.is_none();
                entry.counted_attempt = Some(attempt);
                started
            }
            None => false,
        };
        if started {
            self.poll_started();
        }
    }

    /// Marks a request completed (its reply is stored).
    pub(crate) fn complete(&self, request_id: Snowflake) {
        let before = self.entries.insert(
            request_id,
            Entry {
                completed_at: Some(Instant::now()),
                counted_attempt: None,
            },
        );
        if let Some(before) = before {
            self.left(before);
        }
    }

    /// Forgets a request that was not delivered after all, or was stopped before it had an
    /// outcome (it stays unprocessed in storage). A counted attempt is queued to be given
    /// back: it was not the message's fault.
    pub(crate) fn abandon(&self, request_id: Snowflake) {
        if let Some((_, entry)) = self.entries.remove(&request_id) {
            if entry.completed_at.is_none() && entry.counted_attempt.is_some() {
                self.refunds.lock().push(request_id);
            }
            self.left(entry);
        }
    }

    /// The attempt number storage counted when the poll picked this request up, if it did.
    pub(crate) fn counted_attempt(&self, request_id: Snowflake) -> Option<u32> {
        self.entries
            .get(&request_id)
            .and_then(|entry| entry.counted_attempt)
    }

    /// Marks a request whose failed attempt was just recorded (with its retry instant):
    /// like a completed one, it is kept until a poll that started after now has finished,
    /// because an earlier poll may have read it as due before the retry instant was stored.
    pub(crate) fn failure_recorded(&self, request_id: Snowflake) {
        self.complete(request_id);
    }

    /// Forgets a request whose delivery failed; returns the attempt number storage counted
    /// when the poll picked it up, if it did (the failure must then not be counted again).
    pub(crate) fn fail(&self, request_id: Snowflake) -> Option<u32> {
        let (_, entry) = self.entries.remove(&request_id)?;
        self.left(entry);
        entry.counted_attempt
    }

    /// Queues a counted attempt to be given back (again, after a failed try).
    pub(crate) fn queue_refund(&self, request_id: Snowflake) {
        self.refunds.lock().push(request_id);
    }

    /// Takes the counted attempts queued to be given back.
    pub(crate) fn take_refunds(&self) -> Vec<Snowflake> {
        std::mem::take(&mut *self.refunds.lock())
    }

    /// Whether the request is in flight or recently completed.
    #[cfg(test)]
    pub(crate) fn contains(&self, request_id: Snowflake) -> bool {
        self.entries.contains_key(&request_id)
    }

    /// How many requests are in flight (entered and not completed).
    pub(crate) fn active(&self) -> usize {
        self.entries
            .iter()
            .filter(|entry| entry.completed_at.is_none())
            .count()
    }

    /// Drops completed entries older than `poll_started` (no later poll can return them).
    pub(crate) fn prune_completed_before(&self, poll_started: Instant) {
        let before = self.entries.len();
        self.entries
            .retain(|_, entry| !matches!(entry.completed_at, Some(at) if at < poll_started));
        // The map keeps the room of its busiest moment: give most of it back once the
        // work is done, so a drained backlog leaves no large table behind.
        if before > 1024 && self.entries.len() < before / 4 {
            self.entries.shrink_to_fit();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_flight() -> InFlight {
        InFlight::new(IntGauge::new("poll_in_flight", "test").unwrap())
    }

    #[test]
    fn deliveries_counted_by_the_poll_are_outstanding_until_they_end() {
        let set = in_flight();
        for id in 1..=4 {
            assert!(set.enter(Snowflake(id)));
            set.mark_counted(Snowflake(id), 1);
        }
        assert!(
            set.enter(Snowflake(9)),
            "a direct delivery is not the poll's"
        );
        assert_eq!(set.poll_outstanding(), 4);
        set.mark_counted(Snowflake(1), 2);
        assert_eq!(
            set.poll_outstanding(),
            4,
            "counted twice is still one delivery"
        );
        set.complete(Snowflake(1));
        set.abandon(Snowflake(2));
        set.fail(Snowflake(3));
        set.failure_recorded(Snowflake(4));
        set.complete(Snowflake(9));
        assert_eq!(set.poll_outstanding(), 0);
        assert_eq!(set.poll_gauge.get(), 0);
    }

    #[test]
    fn completed_entries_survive_until_a_later_poll() {
        let set = in_flight();
        assert!(set.enter(Snowflake(1)));
        assert!(!set.enter(Snowflake(1)));
        let before = Instant::now();
        set.complete(Snowflake(1));
        set.prune_completed_before(before);
        assert!(
            set.contains(Snowflake(1)),
            "a poll started before completion may see it"
        );
        set.prune_completed_before(Instant::now());
        assert!(!set.contains(Snowflake(1)));
        assert!(set.enter(Snowflake(2)));
        set.abandon(Snowflake(2));
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn a_counted_attempt_is_reported_once_and_given_back_only_when_abandoned() {
        let set = in_flight();
        assert!(set.enter(Snowflake(1)));
        set.mark_counted(Snowflake(1), 3);
        assert_eq!(set.fail(Snowflake(1)), Some(3));
        assert_eq!(set.fail(Snowflake(1)), None, "the entry is gone");
        assert!(set.take_refunds().is_empty(), "a failure is not given back");

        assert!(set.enter(Snowflake(2)));
        set.mark_counted(Snowflake(2), 1);
        set.abandon(Snowflake(2));
        assert!(set.enter(Snowflake(3)));
        set.abandon(Snowflake(3));
        assert_eq!(
            set.take_refunds(),
            vec![Snowflake(2)],
            "only counted attempts are given back"
        );
        assert!(set.take_refunds().is_empty());
    }
}
