//! [`IdleQueue`]: the live instances of one entity type ordered by when they may have been
//! idle for `max_idle`, so that a reap tick looks only at the instances that are due, never
//! at the others.
//!
//! Owns one entry per live instance, in buckets of `granularity` milliseconds keyed by the
//! due instant rounded up to the bucket. The message path never touches the queue (no lock
//! per message): an instance found active again when its bucket comes due is put back under
//! its new due instant (a lazy re-check), so each live instance costs at most one look per
//! `max_idle` and an eviction costs O(1). Emptied buckets are dropped with their memory.
//! Never holds its lock across an await.

use std::collections::BTreeMap;

use parking_lot::Mutex;

pub(crate) struct IdleQueue<T> {
    granularity_ms: u64,
    buckets: Mutex<BTreeMap<u64, Vec<T>>>,
}

impl<T> IdleQueue<T> {
    /// A queue whose due instants are rounded up to multiples of `granularity_ms` (at least
    /// 1): an entry is handed out at most that much after it is due.
    pub(crate) fn new(granularity_ms: u64) -> Self {
        IdleQueue {
            granularity_ms: granularity_ms.max(1),
            buckets: Mutex::new(BTreeMap::new()),
        }
    }

    /// Queues `entry`, due at `due_ms`.
    pub(crate) fn push(&self, due_ms: u64, entry: T) {
        let bucket = due_ms.div_ceil(self.granularity_ms) * self.granularity_ms;
        self.buckets.lock().entry(bucket).or_default().push(entry);
    }

    /// Takes every entry due at `now_ms`: O(entries taken), whatever the queue holds.
    pub(crate) fn take_due(&self, now_ms: u64) -> Vec<T> {
        let due = {
            let mut buckets = self.buckets.lock();
            let first_later = match now_ms.checked_add(1) {
                Some(later) => later,
                None => {
                    return std::mem::take(&mut *buckets)
                        .into_values()
                        .flatten()
                        .collect()
                }
            };
            let later = buckets.split_off(&first_later);
            std::mem::replace(&mut *buckets, later)
        };
        match due.len() {
            0 => Vec::new(),
            1 => due.into_values().next().unwrap_or_default(),
            _ => due.into_values().flatten().collect(),
        }
    }

    /// Entries queued.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.lock().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_only_what_is_due_rounded_up_to_its_bucket() {
        let queue = IdleQueue::new(100);
        queue.push(1_050, "a");
        queue.push(1_100, "b");
        queue.push(2_000, "c");
        assert!(
            queue.take_due(1_099).is_empty(),
            "a is due at its bucket, 1 100"
        );
        let mut due = queue.take_due(1_100);
        due.sort();
        assert_eq!(due, vec!["a", "b"]);
        assert_eq!(queue.len(), 1);
        assert!(queue.take_due(1_999).is_empty());
        assert_eq!(queue.take_due(u64::MAX), vec!["c"]);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn a_zero_granularity_means_one_millisecond() {
        let queue = IdleQueue::new(0);
        queue.push(7, 1u8);
        assert!(queue.take_due(6).is_empty());
        assert_eq!(queue.take_due(7), vec![1]);
    }
}
