//! Persisted requests this runner is delivering, so the storage poll never hands the same
//! request to its entity twice.
//!
//! Owns the set of in-flight request ids and the recently completed ones. A request is
//! entered before delivery and marked completed after its reply is stored; a completed id
//! is kept until a poll that *started* after the completion has finished, because a poll
//! that started earlier may still return the request as unprocessed. Never holds a lock
//! across an await.

use std::time::Instant;

use cruster_types::Snowflake;
use dashmap::DashMap;

#[derive(Default)]
pub(crate) struct InFlight {
    entries: DashMap<Snowflake, Option<Instant>>,
}

impl InFlight {
    /// Enters a request; `false` if it is already in flight or recently completed.
    pub(crate) fn enter(&self, request_id: Snowflake) -> bool {
        match self.entries.entry(request_id) {
            dashmap::mapref::entry::Entry::Occupied(_) => false,
            dashmap::mapref::entry::Entry::Vacant(v) => {
                v.insert(None);
                true
            }
        }
    }

    /// Marks a request completed (its reply is stored).
    pub(crate) fn complete(&self, request_id: Snowflake) {
        self.entries.insert(request_id, Some(Instant::now()));
    }

    /// Forgets a request that was not delivered after all (it stays unprocessed in storage).
    pub(crate) fn abandon(&self, request_id: Snowflake) {
        self.entries.remove(&request_id);
    }

    /// Whether the request is in flight or recently completed.
    #[cfg(test)]
    pub(crate) fn contains(&self, request_id: Snowflake) -> bool {
        self.entries.contains_key(&request_id)
    }

    /// Drops completed entries older than `poll_started` (no later poll can return them).
    pub(crate) fn prune_completed_before(&self, poll_started: Instant) {
        self.entries
            .retain(|_, done| !matches!(done, Some(at) if *at < poll_started));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_entries_survive_until_a_later_poll() {
        let set = InFlight::default();
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
}
