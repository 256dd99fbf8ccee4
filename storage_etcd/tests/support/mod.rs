//! What every etcd test needs: the endpoints CI started, and a storage under a key prefix
//! of its own so tests running together never see each other's keys.

#![allow(dead_code, clippy::expect_used)]

use std::time::Duration;

use cruster_runner_storage::conformance::SuiteConfig;
use cruster_storage_etcd::EtcdRunnerStorage;

/// The endpoints from `ETCD_ENDPOINTS` (comma separated). Fails the test, with what to do,
/// when it is not set: these tests need a real etcd.
pub fn endpoints() -> Vec<String> {
    let Ok(value) = std::env::var("ETCD_ENDPOINTS") else {
        panic!(
            "ETCD_ENDPOINTS is not set: these tests need a running etcd. Run \
             `source .ci/services.sh` from the workspace root (it installs and starts etcd on \
             127.0.0.1:2379 and exports ETCD_ENDPOINTS=http://127.0.0.1:2379), then run the \
             tests again from that shell"
        )
    };
    let endpoints: Vec<String> = value
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    assert!(
        !endpoints.is_empty(),
        "ETCD_ENDPOINTS is set but names no endpoint: `{value}`"
    );
    endpoints
}

/// A key prefix no other test uses.
pub fn fresh_prefix(test: &str) -> String {
    format!("/cruster-test/{test}-{:016x}/", rand::random::<u64>())
}

/// A connected client.
pub async fn client() -> etcd_client::Client {
    let endpoints = endpoints();
    etcd_client::Client::connect(&endpoints, None)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to etcd at {endpoints:?}: {err}"))
}

/// A storage under a fresh prefix, with the minimum lease TTL so the suite's short TTLs
/// are honoured.
pub async fn storage(test: &str) -> EtcdRunnerStorage {
    EtcdRunnerStorage::new(client().await, fresh_prefix(test), 1)
        .with_operation_timeout(Duration::from_secs(5))
}

/// etcd raises leases shorter than its minimum (two seconds with default settings) to it,
/// so the suite's short TTL is that minimum.
pub fn suite_config() -> SuiteConfig {
    SuiteConfig::with_short_ttl(Duration::from_secs(2))
}
