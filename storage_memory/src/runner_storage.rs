//! [`MemoryRunnerStorage`]: runner registrations and shard locks kept in process memory.
//!
//! Owns the registry of runners (address, machine id, weight, expiry), the shard lock
//! table and the membership channel that feeds `watch_runners`. Time is
//! `tokio::time::Instant`, so tests on paused time see TTLs lapse as the clock advances.
//!
//! Expired registrations are dropped lazily by every operation and, once someone watches,
//! eagerly by one expiry task that sleeps until the next deadline. That task holds only a
//! weak reference and ends when the storage is dropped. Expired locks are never swept:
//! a lock whose deadline has passed simply counts as free.
//!
//! Never holds its mutex across an await, and never spawns more than one task per storage.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use cruster_runner_storage::{Runner, RunnerHealth, RunnerStorage};
use cruster_types::{ClusterError, MachineId, RunnerAddress, ShardId};
use futures::stream::{self, BoxStream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// In-memory [`RunnerStorage`] and storage-based [`RunnerHealth`] (alive = registered and
/// not expired).
///
/// Cheap to clone: clones share one registry, so the runners of an in-process cluster
/// hand clones of one instance to each other.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use cruster_runner_storage::RunnerStorage;
/// use cruster_storage_memory::MemoryRunnerStorage;
/// use cruster_types::{RunnerAddress, ShardId};
///
/// let storage = MemoryRunnerStorage::new();
/// let me = RunnerAddress::new("127.0.0.1", 9000);
/// storage.register(&me, 1, Duration::from_secs(10)).await?;
/// let shards = [ShardId::new("default", 0)];
/// let held = storage.acquire_shards(&me, &shards, Duration::from_secs(10)).await?;
/// assert_eq!(held, shards);
/// # Ok::<(), cruster_types::ClusterError>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemoryRunnerStorage {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The live runners, sorted by address; republished on every change.
    membership: watch::Sender<Vec<Runner>>,
    /// Wakes the expiry task when a registration deadline moved earlier.
    deadline_moved: Arc<Notify>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            state: Mutex::new(State::default()),
            membership: watch::Sender::new(Vec::new()),
            deadline_moved: Arc::new(Notify::new()),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    runners: BTreeMap<RunnerAddress, Registration>,
    locks: HashMap<ShardId, ShardLock>,
    expiry_task_started: bool,
}

#[derive(Debug)]
struct Registration {
    machine_id: MachineId,
    weight: u32,
    expires_at: Instant,
}

#[derive(Debug)]
struct ShardLock {
    owner: RunnerAddress,
    expires_at: Instant,
}

impl ShardLock {
    fn is_live(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

impl State {
    /// Drops expired registrations; `true` if any was dropped.
    fn purge_expired(&mut self, now: Instant) -> bool {
        let before = self.runners.len();
        self.runners.retain(|_, r| now < r.expires_at);
        self.runners.len() != before
    }

    fn live_runners(&self) -> Vec<Runner> {
        // A BTreeMap keyed by address is already sorted.
        self.runners
            .iter()
            .map(|(address, r)| Runner {
                address: address.clone(),
                machine_id: r.machine_id,
                weight: r.weight,
            })
            .collect()
    }

    fn free_machine_id(&self) -> Result<MachineId, ClusterError> {
        let used: BTreeSet<u16> = self.runners.values().map(|r| r.machine_id.get()).collect();
        let free = (0..=MachineId::MAX)
            .find(|id| !used.contains(id))
            .ok_or_else(|| ClusterError::InvalidConfig {
                field: "machine_id".into(),
                reason: format!(
                    "all {} machine ids are taken by live runners: stop a runner or wait \
                     for a dead one's registration to expire",
                    u32::from(MachineId::MAX) + 1
                ),
            })?;
        MachineId::new(free)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.runners.values().map(|r| r.expires_at).min()
    }
}

impl MemoryRunnerStorage {
    /// An empty registry with no runners and no locks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `change` on the state after dropping expired registrations, then publishes
    /// the membership if it changed. The mutex is released before returning.
    fn update<T>(&self, change: impl FnOnce(&mut State, Instant) -> T) -> T {
        let now = Instant::now();
        let mut state = self.shared.state.lock();
        state.purge_expired(now);
        let result = change(&mut state, now);
        let live = state.live_runners();
        // Publishing under the mutex keeps lists in the order the changes happened.
        self.shared.membership.send_if_modified(|current| {
            if *current == live {
                false
            } else {
                *current = live;
                true
            }
        });
        result
    }

    fn start_expiry_task(&self) {
        let mut state = self.shared.state.lock();
        if state.expiry_task_started {
            return;
        }
        state.expiry_task_started = true;
        drop(state);
        let weak = Arc::downgrade(&self.shared);
        let deadline_moved = Arc::clone(&self.shared.deadline_moved);
        let membership = self.shared.membership.subscribe();
        tokio::spawn(expire_registrations(weak, deadline_moved, membership));
    }
}

/// Drops registrations as they expire so watchers hear of it without anyone calling
/// `runners`. Ends when the storage is dropped (the membership sender closes).
async fn expire_registrations(
    shared: Weak<Shared>,
    deadline_moved: Arc<Notify>,
    mut membership: watch::Receiver<Vec<Runner>>,
) {
    loop {
        let deadline = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            MemoryRunnerStorage { shared }.update(|state, _| state.next_deadline())
        };
        let sleep = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = deadline_moved.notified() => {}
            changed = membership.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[async_trait]
impl RunnerStorage for MemoryRunnerStorage {
    async fn register(
        &self,
        address: &RunnerAddress,
        weight: u32,
        ttl: Duration,
    ) -> Result<MachineId, ClusterError> {
        let machine_id = self.update(|state, now| {
            let machine_id = match state.runners.get(address) {
                Some(existing) => existing.machine_id,
                None => state.free_machine_id()?,
            };
            state.runners.insert(
                address.clone(),
                Registration {
                    machine_id,
                    weight,
                    expires_at: now + ttl,
                },
            );
            Ok::<_, ClusterError>(machine_id)
        })?;
        self.shared.deadline_moved.notify_one();
        Ok(machine_id)
    }

    async fn keep_alive(
        &self,
        address: &RunnerAddress,
        ttl: Duration,
    ) -> Result<bool, ClusterError> {
        let alive = self.update(|state, now| match state.runners.get_mut(address) {
            Some(registration) => {
                registration.expires_at = now + ttl;
                true
            }
            None => false,
        });
        if alive {
            // The new deadline may be earlier than the one the expiry task sleeps to.
            self.shared.deadline_moved.notify_one();
        }
        Ok(alive)
    }

    async fn unregister(&self, address: &RunnerAddress) -> Result<(), ClusterError> {
        self.update(|state, _| {
            state.runners.remove(address);
            state.locks.retain(|_, lock| lock.owner != *address);
        });
        Ok(())
    }

    async fn runners(&self) -> Result<Vec<Runner>, ClusterError> {
        Ok(self.update(|state, _| state.live_runners()))
    }

    async fn watch_runners(
        &self,
    ) -> Result<BoxStream<'static, Result<Vec<Runner>, ClusterError>>, ClusterError> {
        self.start_expiry_task();
        // Purge first so the first list is the current one.
        self.update(|_, _| ());
        let mut receiver = self.shared.membership.subscribe();
        let first = receiver.borrow_and_update().clone();
        let changes = stream::unfold(receiver, |mut receiver| async move {
            receiver.changed().await.ok()?;
            let list = receiver.borrow_and_update().clone();
            Some((Ok(list), receiver))
        });
        Ok(stream::once(async move { Ok(first) })
            .chain(changes)
            .boxed())
    }

    async fn acquire_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError> {
        let mut state = self.shared.state.lock();
        let now = Instant::now();
        let mut held = Vec::with_capacity(shards.len());
        for shard in shards {
            let takeable = state
                .locks
                .get(shard)
                .is_none_or(|lock| lock.owner == *owner || !lock.is_live(now));
            if takeable {
                state.locks.insert(
                    shard.clone(),
                    ShardLock {
                        owner: owner.clone(),
                        expires_at: now + ttl,
                    },
                );
                if !held.contains(shard) {
                    held.push(shard.clone());
                }
            }
        }
        Ok(held)
    }

    async fn refresh_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
        ttl: Duration,
    ) -> Result<Vec<ShardId>, ClusterError> {
        let mut state = self.shared.state.lock();
        let now = Instant::now();
        let mut held = Vec::with_capacity(shards.len());
        for shard in shards {
            if let Some(lock) = state.locks.get_mut(shard) {
                if lock.owner == *owner && lock.is_live(now) {
                    lock.expires_at = now + ttl;
                    if !held.contains(shard) {
                        held.push(shard.clone());
                    }
                }
            }
        }
        Ok(held)
    }

    async fn release_shards(
        &self,
        owner: &RunnerAddress,
        shards: &[ShardId],
    ) -> Result<(), ClusterError> {
        let mut state = self.shared.state.lock();
        for shard in shards {
            if state
                .locks
                .get(shard)
                .is_some_and(|lock| lock.owner == *owner)
            {
                state.locks.remove(shard);
            }
        }
        Ok(())
    }

    async fn shard_owner(&self, shard: &ShardId) -> Result<Option<RunnerAddress>, ClusterError> {
        let state = self.shared.state.lock();
        let now = Instant::now();
        Ok(state
            .locks
            .get(shard)
            .filter(|lock| lock.is_live(now))
            .map(|lock| lock.owner.clone()))
    }
}

#[async_trait]
impl RunnerHealth for MemoryRunnerStorage {
    async fn is_alive(&self, address: &RunnerAddress) -> bool {
        let state = self.shared.state.lock();
        let now = Instant::now();
        state
            .runners
            .get(address)
            .is_some_and(|r| now < r.expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn registrations_expire_on_paused_time() {
        let storage = MemoryRunnerStorage::new();
        let me = RunnerAddress::new("a", 1);
        storage
            .register(&me, 1, Duration::from_secs(30))
            .await
            .unwrap();
        let mut watch = storage.watch_runners().await.unwrap();
        assert_eq!(watch.next().await.unwrap().unwrap().len(), 1);
        // Nobody calls `runners`: the expiry task notices on its own.
        let next = watch.next().await.unwrap().unwrap();
        assert!(next.is_empty(), "expected the runner to expire: {next:?}");
        assert!(!storage.is_alive(&me).await);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_storage_stops_the_expiry_task_and_ends_watches() {
        let storage = MemoryRunnerStorage::new();
        storage
            .register(&RunnerAddress::new("a", 1), 1, Duration::from_secs(3600))
            .await
            .unwrap();
        let mut watch = storage.watch_runners().await.unwrap();
        let weak = Arc::downgrade(&storage.shared);
        watch.next().await.unwrap().unwrap();
        drop(storage);
        assert!(
            weak.upgrade().is_none(),
            "the expiry task keeps the storage alive"
        );
        assert!(
            watch.next().await.is_none(),
            "the watch should end with the storage"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shortened_keep_alive_is_noticed_by_the_expiry_task() {
        let storage = MemoryRunnerStorage::new();
        let me = RunnerAddress::new("a", 1);
        storage
            .register(&me, 1, Duration::from_secs(3600))
            .await
            .unwrap();
        let mut watch = storage.watch_runners().await.unwrap();
        watch.next().await.unwrap().unwrap();
        storage
            .keep_alive(&me, Duration::from_secs(1))
            .await
            .unwrap();
        let started = Instant::now();
        let next = watch.next().await.unwrap().unwrap();
        assert!(next.is_empty());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn an_expired_runner_frees_its_machine_id() {
        let storage = MemoryRunnerStorage::new();
        let first = storage
            .register(&RunnerAddress::new("a", 1), 1, Duration::ZERO)
            .await
            .unwrap();
        let second = storage
            .register(&RunnerAddress::new("b", 1), 1, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(first, second, "the expired runner's id should be reused");
    }
}
