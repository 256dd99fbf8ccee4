//! `MemoryRunnerStorage` against the `RunnerStorage` / `RunnerHealth` conformance suite,
//! once as the concrete type and once through `Arc<dyn RunnerStorage>`.

use std::sync::Arc;

use cruster_runner_storage::conformance::{self, SuiteConfig};
use cruster_runner_storage::{RunnerHealth, RunnerStorage};
use cruster_storage_memory::MemoryRunnerStorage;

/// One test per conformance function and way of holding the storage.
macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        mod direct {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    conformance::$name(&MemoryRunnerStorage::new(), &SuiteConfig::default()).await;
                }
            )*
        }
        mod as_dyn {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let storage: Arc<dyn RunnerStorage> = Arc::new(MemoryRunnerStorage::new());
                    conformance::$name(&*storage, &SuiteConfig::default()).await;
                }
            )*
        }
    };
}

conformance_tests!(
    register_assigns_unique_machine_ids,
    runners_lists_live_runners_sorted_by_address,
    machine_ids_of_departed_runners_are_reused,
    registration_expires_without_keep_alive,
    keep_alive_extends_registration,
    keep_alive_reports_expired_registration,
    unregister_releases_shard_locks,
    watch_sees_joins_and_leaves,
    watch_sees_expiry,
    lock_is_exclusive,
    lock_expires_after_ttl_and_can_be_stolen,
    refresh_keeps_lock_and_omits_lost_ones,
    release_only_frees_own_locks,
    acquire_is_idempotent_for_the_owner,
    random_lock_operations_match_a_single_owner_model,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquisition_has_exactly_one_winner() {
    let storage = Arc::new(MemoryRunnerStorage::new());
    conformance::concurrent_acquisition_has_exactly_one_winner(storage, &SuiteConfig::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquisition_has_exactly_one_winner_as_dyn() {
    let storage: Arc<dyn RunnerStorage> = Arc::new(MemoryRunnerStorage::new());
    conformance::concurrent_acquisition_has_exactly_one_winner(storage, &SuiteConfig::default())
        .await;
}

#[tokio::test]
async fn health_follows_registration() {
    let storage = MemoryRunnerStorage::new();
    conformance::health_follows_registration(&storage, &storage, &SuiteConfig::default()).await;
}

#[tokio::test]
async fn health_follows_registration_as_dyn() {
    let storage = MemoryRunnerStorage::new();
    let as_storage: Arc<dyn RunnerStorage> = Arc::new(storage.clone());
    let as_health: Arc<dyn RunnerHealth> = Arc::new(storage);
    conformance::health_follows_registration(&*as_storage, &*as_health, &SuiteConfig::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_with_health_passes() {
    conformance::run_all_with_health(&SuiteConfig::default(), || async {
        MemoryRunnerStorage::new()
    })
    .await;
}
