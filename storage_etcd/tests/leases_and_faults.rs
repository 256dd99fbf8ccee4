//! How locks map onto leases, what TTL etcd really grants, and the faults a caller sees:
//! unreachable endpoints, a hanging etcd. Needs etcd: `source .ci/services.sh` sets
//! `ETCD_ENDPOINTS`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use cruster_runner_storage::RunnerStorage;
use cruster_storage_etcd::EtcdRunnerStorage;
use cruster_types::{ClusterError, RunnerAddress, ShardId};

fn runner(n: u16) -> RunnerAddress {
    RunnerAddress::new(format!("runner-{n}.leases"), 9000 + n)
}

fn shards(n: u32) -> Vec<ShardId> {
    (0..n).map(|i| ShardId::new("leases", i)).collect()
}

async fn lease_of(client: &mut etcd_client::Client, key: String) -> Option<i64> {
    let found = client.get(key, None).await.unwrap();
    found.kvs().first().map(|kv| kv.lease())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_taken_with_the_registration_ttl_share_the_runner_lease() {
    let storage = support::storage("shared-lease").await;
    let mut client = support::client().await;
    let ttl = Duration::from_secs(30);
    storage.register(&runner(1), 1, ttl).await.unwrap();
    let held = storage
        .acquire_shards(&runner(1), &shards(4), ttl)
        .await
        .unwrap();
    assert_eq!(held.len(), 4);

    let prefix = storage.prefix().to_string();
    let runner_lease = lease_of(&mut client, format!("{prefix}runners/{}", runner(1)))
        .await
        .expect("runner key");
    for shard in shards(4) {
        let lock_lease = lease_of(&mut client, format!("{prefix}shards/{shard}")).await;
        assert_eq!(
            lock_lease,
            Some(runner_lease),
            "lock of {shard} not bound to the runner's lease"
        );
    }
    let refreshed = storage
        .refresh_shards(&runner(1), &shards(4), ttl)
        .await
        .unwrap();
    assert_eq!(refreshed, shards(4));

    // Revoking the lease (what etcd does when it lapses) takes registration and locks.
    client.lease_revoke(runner_lease).await.unwrap();
    assert!(!storage.keep_alive(&runner(1), ttl).await.unwrap());
    assert!(storage
        .refresh_shards(&runner(1), &shards(4), ttl)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(storage.shard_owner(&shards(1)[0]).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_lock_ttl_is_what_etcd_granted() {
    let client = support::client().await;
    let configured =
        EtcdRunnerStorage::new(client.clone(), support::fresh_prefix("granted-30"), 30);
    assert_eq!(
        configured.granted_lock_ttl(Duration::from_secs(10)),
        Duration::from_secs(30),
        "before any grant, the configured TTL (longer than the one asked)"
    );
    assert_eq!(
        configured.granted_lock_ttl(Duration::from_millis(45_500)),
        Duration::from_secs(46),
        "a longer TTL asked for wins, rounded up to whole seconds"
    );

    // etcd raises a one-second lease to its minimum (two seconds by default).
    let storage = EtcdRunnerStorage::new(client.clone(), support::fresh_prefix("granted-1"), 1);
    storage
        .register(&runner(1), 1, Duration::from_secs(1))
        .await
        .unwrap();
    let mut client = client;
    let lease = lease_of(
        &mut client,
        format!("{}runners/{}", storage.prefix(), runner(1)),
    )
    .await
    .expect("runner key");
    let granted = client
        .lease_time_to_live(lease, None)
        .await
        .unwrap()
        .granted_ttl();
    assert_eq!(
        storage.granted_lock_ttl(Duration::from_secs(1)),
        Duration::from_secs(granted as u64),
        "granted_lock_ttl differs from the lease's granted TTL"
    );
    assert!(storage.granted_lock_ttl(Duration::from_secs(1)) >= Duration::from_secs(1));
}

#[tokio::test]
async fn unreachable_endpoints_give_an_error_naming_them() {
    let started = Instant::now();
    let err = EtcdRunnerStorage::connect(["http://127.0.0.1:1"], "/unreachable/", 30)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::PersistenceError { .. }),
        "expected PersistenceError, got {err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("http://127.0.0.1:1"),
        "the error does not name the endpoint: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "connect took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn no_endpoint_is_invalid_config() {
    let err = EtcdRunnerStorage::connect(Vec::<String>::new(), "/none/", 30)
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::InvalidConfig { .. }), "{err:?}");
}

#[tokio::test]
async fn connect_reaches_the_ci_etcd() {
    let endpoints = support::endpoints();
    let storage = EtcdRunnerStorage::connect(&endpoints, support::fresh_prefix("connect"), 30)
        .await
        .unwrap();
    assert!(storage.runners().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_hanging_etcd_times_out_instead_of_hanging() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let client = etcd_client::Client::connect([format!("http://{address}")], None)
        .await
        .unwrap();
    let timeout = Duration::from_millis(300);
    let storage = EtcdRunnerStorage::new(client, "/hanging/", 30).with_operation_timeout(timeout);

    let started = Instant::now();
    let err = storage
        .register(&runner(1), 1, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::Timeout { .. }),
        "expected Timeout, got {err:?}"
    );
    assert!(err.is_retryable());
    let err = storage
        .acquire_shards(&runner(1), &shards(3), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Timeout { .. }), "{err:?}");
    assert!(storage.watch_runners().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "calls took {:?}",
        started.elapsed()
    );
}
