//! Conformance suite of [`RunnerStorage`] and [`RunnerHealth`].
//!
//! Each `pub async fn` below checks one behaviour of the contract in the crate docs and is
//! named for it: registrations and their machine ids, expiry and keep-alive, the membership
//! watch, and shard locks (exclusive, expiring, refreshed, released, raced for). A backend's
//! test file calls every function, so a reader sees at a glance which behaviours it passes.
//!
//! # Running it
//!
//! Enable the `conformance` feature in the backend's dev-dependencies, then either call
//! the functions one per test (the usual layout, and what failing CI output names):
//!
//! ```ignore
//! use cruster_runner_storage::conformance::{self, SuiteConfig};
//!
//! #[tokio::test]
//! async fn lock_is_exclusive() {
//!     conformance::lock_is_exclusive(&MyStorage::new(), &SuiteConfig::default()).await;
//! }
//! ```
//!
//! or run everything at once with [`run_all`] / [`run_all_with_health`], giving a factory
//! that returns a fresh backend each time it is called.
//!
//! # Assumptions
//!
//! * Each function gets a backend nobody else writes to while it runs (a fresh instance,
//!   or for a shared server a fresh key prefix).
//! * Time is real: expiry is waited for, not simulated. [`SuiteConfig::short_ttl`] is the
//!   TTL the suite lets lapse; backends with a coarse TTL (etcd leases: at least 1 s) pass
//!   a longer one. Waits poll until the expected state shows up, bounded by
//!   `short_ttl + expiry_slack`, so a quick backend finishes quickly.
//! * [`concurrent_acquisition_has_exactly_one_winner`] spawns tasks; run it on a
//!   multi-thread runtime (`#[tokio::test(flavor = "multi_thread")]`) so they really race.
//! * The property test generates its 32 cases up front and runs them concurrently against
//!   one backend (each case in its own shard group); a failure prints the whole operation
//!   sequence rather than a shrunk one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cruster_types::{ClusterError, MachineId, RunnerAddress, ShardId};
use futures::stream::{BoxStream, StreamExt};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use tokio::time::Instant;

use crate::{Runner, RunnerHealth, RunnerStorage};

/// Timing knobs of the suite.
///
/// ```
/// use std::time::Duration;
/// use cruster_runner_storage::conformance::SuiteConfig;
/// // etcd leases cannot be shorter than one second.
/// let etcd = SuiteConfig::with_short_ttl(Duration::from_secs(1));
/// assert!(etcd.expiry_slack >= Duration::from_secs(1));
/// ```
#[derive(Clone, Debug)]
pub struct SuiteConfig {
    /// The TTL of registrations and locks the suite lets expire. Default 300 ms.
    pub short_ttl: Duration,
    /// How much longer than `short_ttl` the backend may take to notice an expiry
    /// (and a watch to report it). Default 1 s.
    pub expiry_slack: Duration,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        SuiteConfig {
            short_ttl: Duration::from_millis(300),
            expiry_slack: Duration::from_secs(1),
        }
    }
}

impl SuiteConfig {
    /// A configuration for backends whose TTLs cannot go below `short_ttl`; the slack is
    /// twice the TTL (at least 1 s), as lease-based stores revoke with some delay.
    pub fn with_short_ttl(short_ttl: Duration) -> Self {
        SuiteConfig {
            short_ttl,
            expiry_slack: (short_ttl * 2).max(Duration::from_secs(1)),
        }
    }

    /// A TTL that no check of the suite outlives.
    fn long_ttl(&self) -> Duration {
        (self.short_ttl * 100).max(Duration::from_secs(60))
    }

    /// How long an expiry may take to become visible.
    fn expiry_deadline(&self) -> Duration {
        self.short_ttl + self.expiry_slack
    }

    fn poll_interval(&self) -> Duration {
        (self.short_ttl / 20).clamp(Duration::from_millis(5), Duration::from_millis(100))
    }
}

fn runner(n: u16) -> RunnerAddress {
    RunnerAddress::new(format!("runner-{n}.conformance"), 9000 + n)
}

fn shard(n: u32) -> ShardId {
    ShardId::new("conformance", n)
}

fn shards(range: std::ops::Range<u32>) -> Vec<ShardId> {
    range.map(shard).collect()
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

fn addresses(runners: &[Runner]) -> Vec<RunnerAddress> {
    runners.iter().map(|r| r.address.clone()).collect()
}

/// Polls `probe` until it answers `Ok`, for at most `within`; panics with the last state
/// it reported otherwise.
async fn eventually<T, Fut>(
    what: &str,
    within: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(state) if Instant::now() >= deadline => {
                panic!("{what}: not seen within {within:?}; last state: {state}")
            }
            Err(_) => tokio::time::sleep(interval).await,
        }
    }
}

type RunnerWatch = BoxStream<'static, Result<Vec<Runner>, ClusterError>>;

/// Reads the watch until a list satisfies `accept`; panics with the last list otherwise.
async fn watch_until(
    watch: &mut RunnerWatch,
    what: &str,
    within: Duration,
    accept: impl Fn(&[RunnerAddress]) -> bool,
) -> Vec<Runner> {
    let deadline = Instant::now() + within;
    let mut last: Option<Vec<RunnerAddress>> = None;
    loop {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(Ok(list))) => {
                let seen = addresses(&list);
                if accept(&seen) {
                    return list;
                }
                last = Some(seen);
            }
            Ok(Some(Err(err))) => panic!("{what}: the watch failed: {err}"),
            Ok(None) => panic!("{what}: the watch ended; last list: {last:?}"),
            Err(_) => panic!("{what}: not seen within {within:?}; last list: {last:?}"),
        }
    }
}

async fn owners<S: RunnerStorage + ?Sized>(
    storage: &S,
    shards: &[ShardId],
) -> BTreeMap<ShardId, Option<RunnerAddress>> {
    let mut owners = BTreeMap::new();
    for shard in shards {
        owners.insert(shard.clone(), storage.shard_owner(shard).await.unwrap());
    }
    owners
}

async fn register_all<S: RunnerStorage + ?Sized>(
    storage: &S,
    runners: &[RunnerAddress],
    ttl: Duration,
) {
    for address in runners {
        storage.register(address, 1, ttl).await.unwrap();
    }
}

/// Runners registered concurrently get machine ids unique among the live runners, and a
/// re-registration does not list a runner twice.
pub async fn register_assigns_unique_machine_ids<S: RunnerStorage + ?Sized>(
    storage: &S,
    config: &SuiteConfig,
) {
    let ttl = config.long_ttl();
    let all: Vec<RunnerAddress> = (0..16).map(runner).collect();
    let ids = futures::future::join_all(all.iter().map(|a| storage.register(a, 1, ttl))).await;
    let ids: Vec<MachineId> = ids.into_iter().map(Result::unwrap).collect();
    let distinct: BTreeSet<MachineId> = ids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "machine ids are not unique: {ids:?}"
    );

    let again = storage.register(&all[3], 2, ttl).await.unwrap();
    let listed = storage.runners().await.unwrap();
    assert_eq!(
        listed.len(),
        16,
        "a re-registration changed the runner count: {listed:?}"
    );
    let entry = listed
        .iter()
        .find(|r| r.address == all[3])
        .expect("re-registered runner missing");
    assert_eq!(
        entry.machine_id, again,
        "listed id differs from the one returned"
    );
    assert_eq!(
        entry.weight, 2,
        "re-registration did not update the weight: {entry:?}"
    );
    let live_ids: BTreeSet<MachineId> = listed.iter().map(|r| r.machine_id).collect();
    assert_eq!(
        live_ids.len(),
        16,
        "machine ids are not unique after re-registration: {listed:?}"
    );
}

/// `runners` lists live runners once each, sorted by address, with their id and weight
/// (weight 0, a client-only runner, included).
pub async fn runners_lists_live_runners_sorted_by_address<S: RunnerStorage + ?Sized>(
    storage: &S,
    config: &SuiteConfig,
) {
    assert_eq!(
        storage.runners().await.unwrap(),
        vec![],
        "a fresh storage lists runners"
    );
    let ttl = config.long_ttl();
    let mut expected = Vec::new();
    for (n, weight) in [(7, 1), (2, 3), (5, 2), (9, 0)] {
        let machine_id = storage.register(&runner(n), weight, ttl).await.unwrap();
        expected.push(Runner {
            address: runner(n),
            machine_id,
            weight,
        });
    }
    expected.sort_by(|a, b| a.address.cmp(&b.address));
    let listed = storage.runners().await.unwrap();
    assert_eq!(
        listed, expected,
        "runners are not listed as registered, sorted by address"
    );
}

/// All 1024 machine ids can be handed out; the next registration fails with
/// `InvalidConfig`, and an id freed by `unregister` is handed out again.
pub async fn machine_ids_of_departed_runners_are_reused<S: RunnerStorage + ?Sized>(
    storage: &S,
    config: &SuiteConfig,
) {
    let ttl = config.long_ttl();
    let capacity = MachineId::MAX + 1;
    let mut ids = BTreeMap::new();
    for n in 0..capacity {
        let address = RunnerAddress::new("crowd.conformance", n);
        let id = storage.register(&address, 1, ttl).await.unwrap();
        if let Some(previous) = ids.insert(id, address.clone()) {
            panic!("machine id {id} given to both {previous} and {address}");
        }
    }
    let overflow = RunnerAddress::new("crowd.conformance", capacity);
    let err = storage.register(&overflow, 1, ttl).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::InvalidConfig { .. }),
        "runner 1025 should get InvalidConfig, got: {err:?}"
    );

    let (freed, leaving) = ids.iter().nth(517).map(|(id, a)| (*id, a.clone())).unwrap();
    storage.unregister(&leaving).await.unwrap();
    let reused = storage.register(&overflow, 1, ttl).await.unwrap();
    assert_eq!(reused, freed, "the only free machine id was not handed out");
}

/// A registration that is not kept alive disappears from `runners` after its TTL, while a
/// runner with a longer TTL stays.
pub async fn registration_expires_without_keep_alive<S: RunnerStorage + ?Sized>(
    storage: &S,
    config: &SuiteConfig,
) {
    storage
        .register(&runner(1), 1, config.short_ttl)
        .await
        .unwrap();
    storage
        .register(&runner(2), 1, config.long_ttl())
        .await
        .unwrap();
    let now = addresses(&storage.runners().await.unwrap());
    assert_eq!(
        now,
        vec![runner(1), runner(2)],
        "both runners should be live at first"
    );

    eventually(
        "the short registration expires",
        config.expiry_deadline(),
        config.poll_interval(),
        || async {
            let live = addresses(&storage.runners().await.unwrap());
            if live == vec![runner(2)] {
                Ok(())
            } else {
                Err(format!("{live:?}"))
            }
        },
    )
    .await;
}

/// `keep_alive` within the TTL keeps a registration alive past its original TTL.
pub async fn keep_alive_extends_registration<S: RunnerStorage + ?Sized>(
    storage: &S,
    config: &SuiteConfig,
) {
    let id = storage
        .register(&runner(1), 1, config.short_ttl)
        .await
        .unwrap();
    let until = Instant::now() + config.short_ttl * 2;
    while Instant::now() < until {
        tokio::time::sleep(config.short_ttl / 4).await;
        let alive = storage
            .keep_alive(&runner(1), config.short_ttl)
            .await
            .unwrap();
        assert!(
            alive,
            "keep_alive within the TTL reported the registration expired"
        );
    }
    let live = storage.runners().await.unwrap();
    assert_eq!(
        live.iter()
            .map(|r| (&r.address, r.machine_id))
            .collect::<Vec<_>>(),
        vec![(&runner(1), id)],
        "a kept-alive runner should still be listed with its machine id"
    );
}

/// `keep_alive` answers `false` once the registration expired (and for a runner that never
/// registered), so the caller knows to register again.
pub async fn keep_alive_reports_expired_registration<S: RunnerStorage + ?Sized>(
    storage: &S,
    config: &SuiteConfig,
) {
    let never = storage
        .keep_alive(&runner(9), config.short_ttl)
        .await
        .unwrap();
    assert!(
        !never,
        "keep_alive of a never-registered runner answered true"
    );

    storage
        .register(&runner(1), 1, config.short_ttl)
        .await
        .unwrap();
    assert!(storage
        .keep_alive(&runner(1), config.short_ttl)
        .await
        .unwrap());
    eventually(
        "the registration expires",
        config.expiry_deadline() + config.short_ttl,
        config.poll_interval(),
        || async {
            let live = addresses(&storage.runners().await.unwrap());
            if live.is_empty() {
                Ok(())
            } else {
                Err(format!("{live:?}"))
            }
        },
    )
    .await;
    let alive = storage
        .keep_alive(&runner(1), config.short_ttl)
        .await
        .unwrap();
    assert!(!alive, "keep_alive after expiry answered true");
    let live = storage.runners().await.unwrap();
    assert!(
        live.is_empty(),
        "a failed keep_alive registered the runner again: {live:?}"
    );

    storage
        .register(&runner(1), 1, config.long_ttl())
        .await
        .unwrap();
    assert!(storage
        .keep_alive(&runner(1), config.long_ttl())
        .await
        .unwrap());
}

/// `unregister` removes the runner at once and frees every lock it held.
pub async fn unregister_releases_shard_locks<S: RunnerStorage + ?Sized>(
    storage: &S,
    config: &SuiteConfig,
) {
    let ttl = config.long_ttl();
    register_all(storage, &[runner(1), runner(2)], ttl).await;
    let held = storage
        .acquire_shards(&runner(1), &shards(0..4), ttl)
        .await
        .unwrap();
    assert_eq!(sorted(held), shards(0..4), "a free storage refused locks");

    storage.unregister(&runner(1)).await.unwrap();
    let live = addresses(&storage.runners().await.unwrap());
    assert_eq!(
        live,
        vec![runner(2)],
        "unregister did not remove the runner at once"
    );
    let after = owners(storage, &shards(0..4)).await;
    assert!(
        after.values().all(Option::is_none),
        "locks of an unregistered runner survive: {after:?}"
    );
    let taken = storage
        .acquire_shards(&runner(2), &shards(0..4), ttl)
        .await
        .unwrap();
    assert_eq!(
        sorted(taken),
        shards(0..4),
        "freed locks could not be taken"
    );
}

/// The watch yields the current list first, then a list after each join and leave.
pub async fn watch_sees_joins_and_leaves<S: RunnerStorage + ?Sized>(
    storage: &S,
    config: &SuiteConfig,
) {
    let ttl = config.long_ttl();
    let within = config.expiry_deadline();
    storage.register(&runner(1), 1, ttl).await.unwrap();
    let mut watch = storage.watch_runners().await.unwrap();
    let first = tokio::time::timeout(within, watch.next())
        .await
        .expect("the watch yielded nothing at first")
        .expect("the watch ended at once")
        .unwrap();
    assert_eq!(
        addresses(&first),
        vec![runner(1)],
        "the first list is not the current one"
    );

    storage.register(&runner(2), 1, ttl).await.unwrap();
    watch_until(&mut watch, "a join", within, |l| {
        l == [runner(1), runner(2)]
    })
    .await;
    storage.register(&runner(0), 1, ttl).await.unwrap();
    let joined = watch_until(&mut watch, "a second join", within, |l| l.len() == 3).await;
    assert_eq!(
        addresses(&joined),
        vec![runner(0), runner(1), runner(2)],
        "watch lists are not sorted by address"
    );
    storage.unregister(&runner(1)).await.unwrap();
    watch_until(&mut watch, "a leave", within, |l| {
        l == [runner(0), runner(2)]
    })
    .await;
}

/// An expiry reaches the watch even when nobody calls `runners`.
pub async fn watch_sees_expiry<S: RunnerStorage + ?Sized>(storage: &S, config: &SuiteConfig) {
    storage
        .register(&runner(1), 1, config.short_ttl)
        .await
        .unwrap();
    storage
        .register(&runner(2), 1, config.long_ttl())
        .await
        .unwrap();
    let mut watch = storage.watch_runners().await.unwrap();
    let within = config.expiry_deadline() + config.short_ttl;
    watch_until(&mut watch, "the expiry", within, |l| l == [runner(2)]).await;
}

/// Two runners never hold one shard: the second gets only the shards nobody holds.
pub async fn lock_is_exclusive<S: RunnerStorage + ?Sized>(storage: &S, config: &SuiteConfig) {
    let ttl = config.long_ttl();
    register_all(storage, &[runner(1), runner(2)], ttl).await;
    let first = storage
        .acquire_shards(&runner(1), &shards(0..2), ttl)
        .await
        .unwrap();
    assert_eq!(sorted(first), shards(0..2));
    let second = storage
        .acquire_shards(&runner(2), &shards(1..3), ttl)
        .await
        .unwrap();
    assert_eq!(
        sorted(second),
        vec![shard(2)],
        "runner 2 took a shard runner 1 holds"
    );
    let refreshed = storage
        .refresh_shards(&runner(2), &shards(0..3), ttl)
        .await
        .unwrap();
    assert_eq!(
        sorted(refreshed),
        vec![shard(2)],
        "refresh extended someone else's lock"
    );

    let expected = BTreeMap::from([
        (shard(0), Some(runner(1))),
        (shard(1), Some(runner(1))),
        (shard(2), Some(runner(2))),
        (shard(3), None),
    ]);
    assert_eq!(
        owners(storage, &shards(0..4)).await,
        expected,
        "shard owners"
    );
}

/// A lock not refreshed within its TTL loses its owner and can be taken by another runner;
/// the former holder then can neither refresh nor re-take it.
pub async fn lock_expires_after_ttl_and_can_be_stolen<S: RunnerStorage + ?Sized>(
    storage: &S,
    config: &SuiteConfig,
) {
    let long = config.long_ttl();
    register_all(storage, &[runner(1), runner(2)], long).await;
    let held = storage
        .acquire_shards(&runner(1), &[shard(0)], config.short_ttl)
        .await
        .unwrap();
    assert_eq!(held, vec![shard(0)]);
    let early = storage
        .acquire_shards(&runner(2), &[shard(0)], long)
        .await
        .unwrap();
    assert!(
        early.is_empty(),
        "a live lock was stolen before its TTL: {early:?}"
    );

    eventually(
        "the lock expires",
        config.expiry_deadline(),
        config.poll_interval(),
        || async {
            match storage.shard_owner(&shard(0)).await.unwrap() {
                None => Ok(()),
                Some(owner) => Err(format!("still owned by {owner}")),
            }
        },
    )
    .await;
    let stolen = storage
        .acquire_shards(&runner(2), &[shard(0)], long)
        .await
        .unwrap();
    assert_eq!(
        stolen,
        vec![shard(0)],
        "an expired lock (no owner) could not be taken"
    );
    assert_eq!(
        storage.shard_owner(&shard(0)).await.unwrap(),
        Some(runner(2))
    );

    let refreshed = storage
        .refresh_shards(&runner(1), &[shard(0)], long)
        .await
        .unwrap();
    assert!(
        refreshed.is_empty(),
        "the former holder refreshed a stolen lock: {refreshed:?}"
    );
    let retaken = storage
        .acquire_shards(&runner(1), &[shard(0)], long)
        .await
        .unwrap();
    assert!(
        retaken.is_empty(),
        "the former holder re-took a stolen lock: {retaken:?}"
    );
    assert_eq!(
        storage.shard_owner(&shard(0)).await.unwrap(),
        Some(runner(2))
    );
}

/// `refresh_shards` keeps refreshed locks past their TTL and answers only with the locks
/// still held: one left to expire and taken by another runner, or never held, is missing.
pub async fn refresh_keeps_lock_and_omits_lost_ones<S: RunnerStorage + ?Sized>(
    storage: &S,
    config: &SuiteConfig,
) {
    let short = config.short_ttl;
    let long = config.long_ttl();
    register_all(storage, &[runner(1), runner(2)], long).await;
    let held = storage
        .acquire_shards(&runner(1), &shards(0..2), short)
        .await
        .unwrap();
    assert_eq!(sorted(held), shards(0..2));

    // Refresh shard 0 only, until runner 2 manages to take the neglected shard 1.
    let deadline = Instant::now() + config.expiry_deadline();
    loop {
        let kept = storage
            .refresh_shards(&runner(1), &[shard(0)], short)
            .await
            .unwrap();
        assert_eq!(kept, vec![shard(0)], "a lock refreshed in time was lost");
        let taken = storage
            .acquire_shards(&runner(2), &shards(0..2), long)
            .await
            .unwrap();
        if taken == vec![shard(1)] {
            break;
        }
        assert!(
            taken.is_empty(),
            "runner 2 took a refreshed lock: {taken:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the unrefreshed lock did not expire within {:?}",
            config.expiry_deadline()
        );
        tokio::time::sleep(short / 5).await;
    }

    let answer = storage
        .refresh_shards(&runner(1), &shards(0..3), short)
        .await
        .unwrap();
    assert_eq!(
        answer,
        vec![shard(0)],
        "refresh must answer only the locks still held (shard 1 was lost, 2 never held)"
    );
    let expected = BTreeMap::from([
        (shard(0), Some(runner(1))),
        (shard(1), Some(runner(2))),
        (shard(2), None),
    ]);
    assert_eq!(
        owners(storage, &shards(0..3)).await,
        expected,
        "shard owners"
    );
}

/// `release_shards` frees the caller's locks and leaves other runners' locks alone.
pub async fn release_only_frees_own_locks<S: RunnerStorage + ?Sized>(
    storage: &S,
    config: &SuiteConfig,
) {
    let ttl = config.long_ttl();
    register_all(storage, &[runner(1), runner(2)], ttl).await;
    storage
        .acquire_shards(&runner(1), &shards(0..2), ttl)
        .await
        .unwrap();
    storage
        .acquire_shards(&runner(2), &shards(2..4), ttl)
        .await
        .unwrap();

    storage
        .release_shards(&runner(1), &shards(0..5))
        .await
        .unwrap();
    let expected = BTreeMap::from([
        (shard(0), None),
        (shard(1), None),
        (shard(2), Some(runner(2))),
        (shard(3), Some(runner(2))),
        (shard(4), None),
    ]);
    assert_eq!(
        owners(storage, &shards(0..5)).await,
        expected,
        "owners after release"
    );

    let retaken = storage
        .acquire_shards(&runner(2), &shards(0..4), ttl)
        .await
        .unwrap();
    assert_eq!(
        sorted(retaken),
        shards(0..4),
        "released locks could not be taken"
    );
}

/// Many tasks racing for the same shards: every shard ends with exactly one holder, and
/// the holder is the one task whose `acquire_shards` returned it.
pub async fn concurrent_acquisition_has_exactly_one_winner<S: RunnerStorage + ?Sized>(
    storage: Arc<S>,
    config: &SuiteConfig,
) {
    const RACERS: u16 = 8;
    const ROUNDS: u32 = 4;
    let ttl = config.long_ttl();
    let racers: Vec<RunnerAddress> = (0..RACERS).map(runner).collect();
    register_all(&*storage, &racers, ttl).await;

    for round in 0..ROUNDS {
        let contested: Vec<ShardId> = (0..32)
            .map(|n| ShardId::new(format!("race-{round}"), n))
            .collect();
        let start = Arc::new(tokio::sync::Barrier::new(racers.len()));
        let mut tasks = tokio::task::JoinSet::new();
        for (index, racer) in racers.iter().enumerate() {
            let storage = Arc::clone(&storage);
            let start = Arc::clone(&start);
            let racer = racer.clone();
            // Each racer asks in a different order, so the race is not the same everywhere.
            let mut wanted = contested.clone();
            wanted.rotate_left(index * 4);
            tasks.spawn(async move {
                start.wait().await;
                let won = storage.acquire_shards(&racer, &wanted, ttl).await.unwrap();
                (racer, won)
            });
        }
        let mut winners: BTreeMap<ShardId, Vec<RunnerAddress>> = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (racer, won) = joined.unwrap();
            for shard in won {
                winners.entry(shard).or_default().push(racer.clone());
            }
        }
        for shard in &contested {
            let claimed = winners.get(shard).cloned().unwrap_or_default();
            assert_eq!(
                claimed.len(),
                1,
                "round {round}: shard {shard} was won by {claimed:?} (all winners: {winners:?})"
            );
            let owner = storage.shard_owner(shard).await.unwrap();
            assert_eq!(
                owner.as_ref(),
                claimed.first(),
                "round {round}: owner of {shard}"
            );
        }
    }
}

/// Acquiring a lock one already holds succeeds and renews it for the new TTL.
pub async fn acquire_is_idempotent_for_the_owner<S: RunnerStorage + ?Sized>(
    storage: &S,
    config: &SuiteConfig,
) {
    let long = config.long_ttl();
    register_all(storage, &[runner(1), runner(2)], long).await;
    // Shard 9 is the control: taken with the others, never renewed.
    let mut first_batch = shards(0..2);
    first_batch.push(shard(9));
    let first = storage
        .acquire_shards(&runner(1), &first_batch, config.short_ttl)
        .await
        .unwrap();
    assert_eq!(sorted(first), first_batch);
    let again = storage
        .acquire_shards(&runner(1), &shards(0..3), long)
        .await
        .unwrap();
    assert_eq!(
        sorted(again),
        shards(0..3),
        "the owner's own locks were not returned again"
    );

    eventually(
        "the control lock expires",
        config.expiry_deadline(),
        config.poll_interval(),
        || async {
            match storage.shard_owner(&shard(9)).await.unwrap() {
                None => Ok(()),
                Some(owner) => Err(format!("still owned by {owner}")),
            }
        },
    )
    .await;
    // The re-acquisition used the long TTL: those locks outlive the control.
    let stolen = storage
        .acquire_shards(&runner(2), &shards(0..3), long)
        .await
        .unwrap();
    assert!(
        stolen.is_empty(),
        "re-acquisition did not renew the TTL: {stolen:?} taken"
    );
    let expected: BTreeMap<_, _> = shards(0..3)
        .into_iter()
        .map(|s| (s, Some(runner(1))))
        .collect();
    assert_eq!(
        owners(storage, &shards(0..3)).await,
        expected,
        "shard owners"
    );
}

/// One step of the lock model test.
#[derive(Clone, Debug)]
enum LockStep {
    Acquire {
        owner: u16,
        shards: Vec<u32>,
        short: bool,
    },
    Refresh {
        owner: u16,
        shards: Vec<u32>,
        short: bool,
    },
    Release {
        owner: u16,
        shards: Vec<u32>,
    },
    LetShortLocksExpire,
}

const MODEL_OWNERS: u16 = 3;
const MODEL_SHARDS: u32 = 4;

fn lock_step() -> impl Strategy<Value = LockStep> {
    let owner = 0..MODEL_OWNERS;
    let some_shards = || proptest::collection::vec(0..MODEL_SHARDS, 1..=3);
    prop_oneof![
        4 => (owner.clone(), some_shards(), any::<bool>())
            .prop_map(|(owner, shards, short)| LockStep::Acquire { owner, shards, short }),
        2 => (owner.clone(), some_shards(), any::<bool>())
            .prop_map(|(owner, shards, short)| LockStep::Refresh { owner, shards, short }),
        2 => (owner, some_shards()).prop_map(|(owner, shards)| LockStep::Release { owner, shards }),
        1 => Just(LockStep::LetShortLocksExpire),
    ]
}

fn lock_steps() -> impl Strategy<Value = Vec<LockStep>> {
    proptest::collection::vec(lock_step(), 1..12).prop_filter("at most two expiry waits", |s| {
        s.iter()
            .filter(|s| matches!(s, LockStep::LetShortLocksExpire))
            .count()
            <= 2
    })
}

/// Who holds a model shard, and whether with the short TTL.
type LockModel = BTreeMap<u32, (u16, bool)>;

async fn run_lock_case<S: RunnerStorage + ?Sized>(
    storage: &S,
    config: &SuiteConfig,
    case: usize,
    steps: &[LockStep],
) {
    let owner = |n: u16| RunnerAddress::new(format!("model-{case}.conformance"), n);
    let shard = |n: u32| ShardId::new(format!("model-{case}"), n);
    let to_shards = |ns: &[u32]| ns.iter().map(|n| shard(*n)).collect::<Vec<_>>();
    let ttl = |short: bool| {
        if short {
            config.short_ttl
        } else {
            config.long_ttl()
        }
    };
    let all_shards = to_shards(&(0..MODEL_SHARDS).collect::<Vec<_>>());
    for n in 0..MODEL_OWNERS {
        storage
            .register(&owner(n), 1, config.long_ttl())
            .await
            .unwrap();
    }

    let mut model = LockModel::new();
    for (index, step) in steps.iter().enumerate() {
        let before = format!("{model:?}");
        let context =
            || format!("case {case}, step {index} ({step:?}) of {steps:?}; model before: {before}");
        let held_after: Option<(Vec<ShardId>, BTreeSet<u32>)> = match step {
            LockStep::Acquire {
                owner: o,
                shards,
                short,
            } => {
                let got = storage
                    .acquire_shards(&owner(*o), &to_shards(shards), ttl(*short))
                    .await
                    .unwrap();
                let expected: BTreeSet<u32> = shards
                    .iter()
                    .copied()
                    .filter(|n| model.get(n).is_none_or(|(holder, _)| holder == o))
                    .collect();
                for n in &expected {
                    model.insert(*n, (*o, *short));
                }
                Some((got, expected))
            }
            LockStep::Refresh {
                owner: o,
                shards,
                short,
            } => {
                let got = storage
                    .refresh_shards(&owner(*o), &to_shards(shards), ttl(*short))
                    .await
                    .unwrap();
                let expected: BTreeSet<u32> = shards
                    .iter()
                    .copied()
                    .filter(|n| model.get(n).is_some_and(|(holder, _)| holder == o))
                    .collect();
                for n in &expected {
                    model.insert(*n, (*o, *short));
                }
                Some((got, expected))
            }
            LockStep::Release { owner: o, shards } => {
                storage
                    .release_shards(&owner(*o), &to_shards(shards))
                    .await
                    .unwrap();
                for n in shards {
                    if model.get(n).is_some_and(|(holder, _)| holder == o) {
                        model.remove(n);
                    }
                }
                None
            }
            LockStep::LetShortLocksExpire => {
                let expiring: Vec<ShardId> = model
                    .iter()
                    .filter(|(_, (_, short))| *short)
                    .map(|(n, _)| shard(*n))
                    .collect();
                eventually(
                    &context(),
                    config.expiry_deadline(),
                    config.poll_interval(),
                    || async {
                        let left = owners(storage, &expiring).await;
                        if left.values().all(Option::is_none) {
                            Ok(())
                        } else {
                            Err(format!("short locks still owned: {left:?}"))
                        }
                    },
                )
                .await;
                model.retain(|_, (_, short)| !*short);
                None
            }
        };
        if let Some((got, expected)) = held_after {
            let got_numbers: BTreeSet<u32> = got.iter().map(|s| s.id).collect();
            assert_eq!(
                got_numbers,
                expected,
                "answer differs from the model at {}",
                context()
            );
        }
        let actual = owners(storage, &all_shards).await;
        let modelled: BTreeMap<ShardId, Option<RunnerAddress>> = (0..MODEL_SHARDS)
            .map(|n| (shard(n), model.get(&n).map(|(o, _)| owner(*o))))
            .collect();
        assert_eq!(
            actual,
            modelled,
            "owners differ from the model after {}",
            context()
        );
    }
}

/// Random sequences of acquire / refresh / release / expiry by three runners agree with
/// a model in which every shard has at most one holder (32 generated cases).
pub async fn random_lock_operations_match_a_single_owner_model<S: RunnerStorage + ?Sized>(
    storage: &S,
    config: &SuiteConfig,
) {
    let mut generator = TestRunner::default();
    let strategy = lock_steps();
    let cases: Vec<Vec<LockStep>> = (0..32)
        .map(|_| {
            strategy
                .new_tree(&mut generator)
                .expect("generate a case")
                .current()
        })
        .collect();
    futures::future::join_all(
        cases
            .iter()
            .enumerate()
            .map(|(case, steps)| run_lock_case(storage, config, case, steps)),
    )
    .await;
}

/// Storage-based health: alive exactly while registered and not expired.
pub async fn health_follows_registration<S, H>(storage: &S, health: &H, config: &SuiteConfig)
where
    S: RunnerStorage + ?Sized,
    H: RunnerHealth + ?Sized,
{
    assert!(
        !health.is_alive(&runner(1)).await,
        "an unknown runner is alive"
    );
    storage
        .register(&runner(1), 1, config.long_ttl())
        .await
        .unwrap();
    assert!(
        health.is_alive(&runner(1)).await,
        "a registered runner is not alive"
    );
    storage.unregister(&runner(1)).await.unwrap();
    assert!(
        !health.is_alive(&runner(1)).await,
        "an unregistered runner is alive"
    );

    storage
        .register(&runner(2), 1, config.short_ttl)
        .await
        .unwrap();
    assert!(
        health.is_alive(&runner(2)).await,
        "a registered runner is not alive"
    );
    eventually(
        "an expired runner is reported dead",
        config.expiry_deadline(),
        config.poll_interval(),
        || async {
            if health.is_alive(&runner(2)).await {
                Err("still alive".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
}

/// Runs every [`RunnerStorage`] function, each on a fresh backend from `new_storage`.
///
/// Use a multi-thread runtime so the concurrency check races for real.
pub async fn run_all<S, F, Fut>(config: &SuiteConfig, mut new_storage: F)
where
    S: RunnerStorage,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    register_assigns_unique_machine_ids(&new_storage().await, config).await;
    runners_lists_live_runners_sorted_by_address(&new_storage().await, config).await;
    machine_ids_of_departed_runners_are_reused(&new_storage().await, config).await;
    registration_expires_without_keep_alive(&new_storage().await, config).await;
    keep_alive_extends_registration(&new_storage().await, config).await;
    keep_alive_reports_expired_registration(&new_storage().await, config).await;
    unregister_releases_shard_locks(&new_storage().await, config).await;
    watch_sees_joins_and_leaves(&new_storage().await, config).await;
    watch_sees_expiry(&new_storage().await, config).await;
    lock_is_exclusive(&new_storage().await, config).await;
    lock_expires_after_ttl_and_can_be_stolen(&new_storage().await, config).await;
    refresh_keeps_lock_and_omits_lost_ones(&new_storage().await, config).await;
    release_only_frees_own_locks(&new_storage().await, config).await;
    concurrent_acquisition_has_exactly_one_winner(Arc::new(new_storage().await), config).await;
    acquire_is_idempotent_for_the_owner(&new_storage().await, config).await;
    random_lock_operations_match_a_single_owner_model(&new_storage().await, config).await;
}

/// [`run_all`], then [`health_follows_registration`] for a backend that is also its own
/// [`RunnerHealth`].
pub async fn run_all_with_health<S, F, Fut>(config: &SuiteConfig, mut new_storage: F)
where
    S: RunnerStorage + RunnerHealth,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    run_all(config, &mut new_storage).await;
    let storage = new_storage().await;
    health_follows_registration(&storage, &storage, config).await;
}
