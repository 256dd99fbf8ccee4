//! [`ShardLeases`]: until when this runner may serve each shard it holds.
//!
//! A shard lock taken or refreshed by a call *sent* at instant `t` is valid for others
//! only after `t + ttl`. This runner serves the shard until `t + ttl × SERVE_FRACTION`
//! (a safety margin for clock drift and slow storage), and must have stopped by then
//! unless a later renewal was confirmed. Shards being drained before their release are
//! still ours, still renewed, but no longer served. Never holds a lock across an await.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cruster_types::ShardId;
use parking_lot::Mutex;

/// The part of a lock's TTL during which this runner serves the shard.
pub(crate) const SERVE_NUMERATOR: u32 = 2;
/// See [`SERVE_NUMERATOR`]: the runner serves for 2/3 of the TTL after a renewal was sent.
pub(crate) const SERVE_DENOMINATOR: u32 = 3;

pub(crate) struct ShardLeases {
    serve_for: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Shard → the instant its service must end unless renewed.
    until: HashMap<ShardId, Instant>,
    /// Shards being released (drained): renewed, not served.
    draining: HashSet<ShardId>,
}

impl ShardLeases {
    /// Leases of locks with this TTL.
    pub(crate) fn new(ttl: Duration) -> Self {
        ShardLeases {
            serve_for: ttl * SERVE_NUMERATOR / SERVE_DENOMINATOR,
            state: Mutex::new(State::default()),
        }
    }

    /// Records that a take or renewal of `shards`, sent at `sent`, succeeded.
    pub(crate) fn confirm(&self, shards: &[ShardId], sent: Instant) {
        let until = sent + self.serve_for;
        let mut state = self.state.lock();
        for shard in shards {
            let entry = state.until.entry(shard.clone()).or_insert(until);
            if *entry < until {
                *entry = until;
            }
        }
    }

    /// Marks shards as draining (still ours until released).
    pub(crate) fn start_draining(&self, shards: &[ShardId]) {
        let mut state = self.state.lock();
        for shard in shards {
            if state.until.contains_key(shard) {
                state.draining.insert(shard.clone());
            }
        }
    }

    /// Forgets shards (released, or lost).
    pub(crate) fn forget(&self, shards: &[ShardId]) {
        let mut state = self.state.lock();
        for shard in shards {
            state.until.remove(shard);
            state.draining.remove(shard);
        }
    }

    /// Every shard whose lock is ours: held or draining.
    pub(crate) fn all(&self) -> Vec<ShardId> {
        self.state.lock().until.keys().cloned().collect()
    }

    /// Shards being drained.
    pub(crate) fn draining(&self) -> HashSet<ShardId> {
        self.state.lock().draining.clone()
    }

    /// Shards whose service must end by `now` (no renewal was confirmed in time).
    pub(crate) fn expired(&self, now: Instant) -> Vec<ShardId> {
        self.state
            .lock()
            .until
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(shard, _)| shard.clone())
            .collect()
    }

    /// The earliest instant at which some shard's service must end.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.state.lock().until.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ends_two_thirds_of_the_ttl_after_the_renewal_was_sent() {
        let leases = ShardLeases::new(Duration::from_secs(3));
        let shard = ShardId::new("default", 1);
        let sent = Instant::now();
        leases.confirm(std::slice::from_ref(&shard), sent);
        assert!(leases
            .expired(sent + Duration::from_millis(1999))
            .is_empty());
        assert_eq!(
            leases.expired(sent + Duration::from_secs(2)),
            vec![shard.clone()]
        );
        // An older confirmation never shortens a newer one.
        leases.confirm(std::slice::from_ref(&shard), sent - Duration::from_secs(1));
        assert_eq!(leases.next_deadline(), Some(sent + Duration::from_secs(2)));
        leases.start_draining(std::slice::from_ref(&shard));
        assert!(leases.draining().contains(&shard));
        leases.forget(std::slice::from_ref(&shard));
        assert!(leases.all().is_empty() && leases.draining().is_empty());
    }
}
