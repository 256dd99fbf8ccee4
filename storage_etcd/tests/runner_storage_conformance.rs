//! `EtcdRunnerStorage` against the `RunnerStorage` / `RunnerHealth` conformance suite, once
//! as the concrete type and once through `Arc<dyn RunnerStorage>`, each test under a key
//! prefix of its own. Needs etcd: `source .ci/services.sh` sets `ETCD_ENDPOINTS`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use cruster_runner_storage::conformance;
use cruster_runner_storage::{RunnerHealth, RunnerStorage};

/// One test per conformance function and way of holding the storage.
macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        mod direct {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let storage = support::storage(stringify!($name)).await;
                    conformance::$name(&storage, &support::suite_config()).await;
                }
            )*
        }
        mod as_dyn {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let storage: Arc<dyn RunnerStorage> =
                        Arc::new(support::storage(stringify!($name)).await);
                    conformance::$name(&*storage, &support::suite_config()).await;
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
    let storage = Arc::new(support::storage("race").await);
    conformance::concurrent_acquisition_has_exactly_one_winner(storage, &support::suite_config())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acquisition_has_exactly_one_winner_as_dyn() {
    let storage: Arc<dyn RunnerStorage> = Arc::new(support::storage("race-dyn").await);
    conformance::concurrent_acquisition_has_exactly_one_winner(storage, &support::suite_config())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_registration() {
    let storage = support::storage("health").await;
    conformance::health_follows_registration(&storage, &storage, &support::suite_config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_registration_as_dyn() {
    let storage = support::storage("health-dyn").await;
    let as_storage: Arc<dyn RunnerStorage> = Arc::new(storage.clone());
    let as_health: Arc<dyn RunnerHealth> = Arc::new(storage);
    conformance::health_follows_registration(&*as_storage, &*as_health, &support::suite_config())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_with_health_passes() {
    conformance::run_all_with_health(&support::suite_config(), || support::storage("run-all"))
        .await;
}
