//! The shard table: who owns each shard, read on every send.
//!
//! Owns the routing snapshot (assignment by rendezvous over the live runners, plus the set
//! of shards whose lock this runner holds). Reads are a lock-free `ArcSwap` load; writes
//! (membership changes, lock acquisition) copy the snapshot under a mutex and swap it in.
//! Never holds a lock across an await.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use cruster_sharding::ShardAssignment;
use cruster_types::{RunnerAddress, ShardId};
use parking_lot::Mutex;

use crate::inspection::ShardGroupView;
use crate::sharding::assignment::assign_group;

/// Where a message for a shard goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// This runner holds the shard's lock.
    Local,
    /// Another runner is assigned the shard.
    Remote(RunnerAddress),
    /// The shard is assigned to this runner but its lock is not held yet, or nobody owns it.
    Pending,
}

#[derive(Clone, Default)]
struct GroupRouting {
    owners: Vec<Option<RunnerAddress>>,
    held: Vec<bool>,
}

#[derive(Clone, Default)]
struct Routing {
    groups: HashMap<Arc<str>, GroupRouting>,
}

pub(crate) struct ShardTable {
    me: RunnerAddress,
    shards_per_group: u32,
    routing: ArcSwap<Routing>,
    runners: Mutex<Vec<RunnerAddress>>,
    /// When each current runner was first seen in the membership (for operators).
    first_seen: Mutex<HashMap<RunnerAddress, Instant>>,
    write: Mutex<()>,
    strategy: Arc<dyn ShardAssignment>,
}

impl ShardTable {
    pub(crate) fn new(
        me: RunnerAddress,
        shards_per_group: u32,
        strategy: Arc<dyn ShardAssignment>,
    ) -> Self {
        ShardTable {
            me,
            shards_per_group,
            routing: ArcSwap::from_pointee(Routing::default()),
            runners: Mutex::new(Vec::new()),
            first_seen: Mutex::new(HashMap::new()),
            write: Mutex::new(()),
            strategy,
        }
    }

    pub(crate) fn shards_per_group(&self) -> u32 {
        self.shards_per_group
    }

    /// Where to send a message for `shard`.
    pub(crate) fn route(&self, shard: &ShardId) -> Route {
        let routing = self.routing.load();
        let Some(group) = routing.groups.get(&shard.group) else {
            return Route::Pending;
        };
        let idx = shard.id as usize;
        if group.held.get(idx).copied().unwrap_or(false) {
            return Route::Local;
        }
        match group.owners.get(idx).and_then(Option::as_ref) {
            Some(owner) if *owner != self.me => Route::Remote(owner.clone()),
            _ => Route::Pending,
        }
    }

    /// Whether this runner holds `shard`.
    pub(crate) fn is_held(&self, shard: &ShardId) -> bool {
        self.route(shard) == Route::Local
    }

    /// Adds a shard group (no-op if known), assigning it over the current runners.
    /// Returns whether it was new.
    pub(crate) fn add_group(&self, group: &str) -> bool {
        let _guard = self.write.lock();
        let current = self.routing.load();
        if current.groups.contains_key(group) {
            return false;
        }
        let runners = self.runners.lock().clone();
        let mut next = (**current).clone();
        next.groups.insert(
            Arc::from(group),
            GroupRouting {
                owners: assign_group(
                    self.strategy.as_ref(),
                    group,
                    self.shards_per_group,
                    &runners,
                ),
                held: vec![false; self.shards_per_group as usize],
            },
        );
        self.routing.store(Arc::new(next));
        true
    }

    /// Recomputes the assignment of every group for a new runner list (sorted).
    pub(crate) fn set_runners(&self, mut runners: Vec<RunnerAddress>) {
        runners.sort();
        runners.dedup();
        let _guard = self.write.lock();
        *self.runners.lock() = runners.clone();
        {
            let now = Instant::now();
            let mut first_seen = self.first_seen.lock();
            first_seen.retain(|runner, _| runners.contains(runner));
            for runner in &runners {
                first_seen.entry(runner.clone()).or_insert(now);
            }
        }
        let current = self.routing.load();
        let mut next = (**current).clone();
        for (group, routing) in next.groups.iter_mut() {
            routing.owners = assign_group(
                self.strategy.as_ref(),
                group,
                self.shards_per_group,
                &runners,
            );
        }
        self.routing.store(Arc::new(next));
    }

    /// The live runners the assignment was computed from.
    pub(crate) fn runners(&self) -> Vec<RunnerAddress> {
        self.runners.lock().clone()
    }

    /// The current runners with how long each has been a member, as this runner saw it.
    pub(crate) fn runners_with_age(&self) -> Vec<(RunnerAddress, Duration)> {
        let runners = self.runners.lock().clone();
        let first_seen = self.first_seen.lock();
        runners
            .into_iter()
            .map(|runner| {
                let age = first_seen
                    .get(&runner)
                    .map_or(Duration::ZERO, Instant::elapsed);
                (runner, age)
            })
            .collect()
    }

    /// Every known group with the owner of each shard and the shards held here, by group.
    pub(crate) fn group_views(&self) -> Vec<ShardGroupView> {
        let routing = self.routing.load();
        let mut groups: Vec<ShardGroupView> = routing
            .groups
            .iter()
            .map(|(group, r)| ShardGroupView {
                group: group.to_string(),
                owners: r.owners.clone(),
                held_here: r
                    .held
                    .iter()
                    .enumerate()
                    .filter(|(_, held)| **held)
                    .map(|(id, _)| id as u32)
                    .collect(),
            })
            .collect();
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        groups
    }

    /// Marks shards held (or not).
    pub(crate) fn set_held(&self, shards: &[ShardId], held: bool) {
        if shards.is_empty() {
            return;
        }
        let _guard = self.write.lock();
        let current = self.routing.load();
        let mut next = (**current).clone();
        for shard in shards {
            if let Some(group) = next.groups.get_mut(&shard.group) {
                if let Some(slot) = group.held.get_mut(shard.id as usize) {
                    *slot = held;
                }
            }
        }
        self.routing.store(Arc::new(next));
    }

    /// Shards assigned to this runner by the current membership.
    pub(crate) fn assigned_to_me(&self) -> Vec<ShardId> {
        let routing = self.routing.load();
        let mut shards = Vec::new();
        for (group, r) in &routing.groups {
            for (id, owner) in r.owners.iter().enumerate() {
                if owner.as_ref() == Some(&self.me) {
                    shards.push(ShardId {
                        group: group.clone(),
                        id: id as u32,
                    });
                }
            }
        }
        shards.sort();
        shards
    }

    /// Every shard of every known group.
    #[cfg(test)]
    pub(crate) fn all_shards(&self) -> Vec<ShardId> {
        let routing = self.routing.load();
        let mut shards = Vec::new();
        for group in routing.groups.keys() {
            for id in 0..self.shards_per_group {
                shards.push(ShardId {
                    group: group.clone(),
                    id,
                });
            }
        }
        shards.sort();
        shards
    }

    /// Shards this runner holds.
    pub(crate) fn held(&self) -> Vec<ShardId> {
        let routing = self.routing.load();
        let mut shards = Vec::new();
        for (group, r) in &routing.groups {
            for (id, held) in r.held.iter().enumerate() {
                if *held {
                    shards.push(ShardId {
                        group: group.clone(),
                        id: id as u32,
                    });
                }
            }
        }
        shards.sort();
        shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RendezvousAssignment;

    #[test]
    fn routes_follow_assignment_and_locks() {
        let me = RunnerAddress::new("a", 1);
        let other = RunnerAddress::new("b", 1);
        let table = ShardTable::new(me.clone(), 16, Arc::new(RendezvousAssignment));
        table.add_group("default");
        let shard = ShardId::new("default", 0);
        assert_eq!(table.route(&shard), Route::Pending);
        table.set_runners(vec![me.clone(), other.clone()]);
        let mine = table.assigned_to_me();
        assert!(!mine.is_empty() && mine.len() < 16);
        assert_eq!(
            table.route(&mine[0]),
            Route::Pending,
            "assigned but not locked"
        );
        table.set_held(&mine[..1], true);
        assert_eq!(table.route(&mine[0]), Route::Local);
        let theirs = table
            .all_shards()
            .into_iter()
            .find(|s| !mine.contains(s))
            .unwrap();
        assert_eq!(table.route(&theirs), Route::Remote(other));
        assert_eq!(table.route(&ShardId::new("unknown", 0)), Route::Pending);
    }
}
