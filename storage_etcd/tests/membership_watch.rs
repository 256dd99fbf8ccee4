//! The membership watch across a cut stream and a compaction, and with keys it cannot
//! decode. Needs etcd: `source .ci/services.sh` sets `ETCD_ENDPOINTS`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use cruster_runner_storage::{Runner, RunnerStorage};
use cruster_types::{ClusterError, RunnerAddress};
use futures::stream::{BoxStream, StreamExt};

type Watch = BoxStream<'static, Result<Vec<Runner>, ClusterError>>;

const TTL: Duration = Duration::from_secs(60);
const WITHIN: Duration = Duration::from_secs(10);

fn runner(n: u16) -> RunnerAddress {
    RunnerAddress::new(format!("runner-{n}.watch"), 9000 + n)
}

async fn next_list(watch: &mut Watch, what: &str) -> Vec<RunnerAddress> {
    match tokio::time::timeout(WITHIN, watch.next()).await {
        Ok(Some(Ok(list))) => list.into_iter().map(|r| r.address).collect(),
        Ok(Some(Err(err))) => panic!("{what}: the watch failed: {err}"),
        Ok(None) => panic!("{what}: the watch ended"),
        Err(_) => panic!("{what}: no list within {WITHIN:?}"),
    }
}

/// Makes sure the watch yields nothing more for a moment (no duplicate, no stray list).
async fn assert_quiet(watch: &mut Watch, what: &str) {
    if let Ok(next) = tokio::time::timeout(Duration::from_millis(500), watch.next()).await {
        panic!("{what}: unexpected extra item {next:?}");
    }
}

/// One test for both, in this order: a compaction (global to etcd) made while the cut
/// scenario runs would turn its replay into a re-listing. Nothing else in the workspace
/// compacts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_a_cut_and_lists_again_after_a_compaction() {
    watch_resumes_from_its_last_revision_after_the_stream_is_cut().await;
    watch_lists_again_when_its_revision_was_compacted().await;
}

async fn watch_resumes_from_its_last_revision_after_the_stream_is_cut() {
    let storage = support::storage("watch-cut").await;
    storage.register(&runner(1), 1, TTL).await.unwrap();
    let mut watch = storage.watch_runners().await.unwrap();
    assert_eq!(next_list(&mut watch, "first list").await, vec![runner(1)]);

    storage.pause_watches();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Changes made while no etcd stream is open.
    storage.register(&runner(2), 1, TTL).await.unwrap();
    storage.unregister(&runner(1)).await.unwrap();
    storage.resume_watches();

    // Each change once, in order, replayed from the revision the watch had reached.
    assert_eq!(
        next_list(&mut watch, "the join made during the cut").await,
        vec![runner(1), runner(2)]
    );
    assert_eq!(
        next_list(&mut watch, "the leave made during the cut").await,
        vec![runner(2)]
    );
    assert_quiet(&mut watch, "after replaying the cut").await;

    storage.register(&runner(3), 1, TTL).await.unwrap();
    assert_eq!(
        next_list(&mut watch, "a join after resuming").await,
        vec![runner(2), runner(3)]
    );
}

async fn watch_lists_again_when_its_revision_was_compacted() {
    let storage = support::storage("watch-compacted").await;
    let mut client = support::client().await;
    storage.register(&runner(1), 1, TTL).await.unwrap();
    let mut watch = storage.watch_runners().await.unwrap();
    assert_eq!(next_list(&mut watch, "first list").await, vec![runner(1)]);

    storage.pause_watches();
    tokio::time::sleep(Duration::from_millis(200)).await;
    storage.register(&runner(2), 1, TTL).await.unwrap();
    storage.unregister(&runner(1)).await.unwrap();
    storage.register(&runner(3), 1, TTL).await.unwrap();
    // Compact the history the watch would resume from.
    let now = client
        .get(storage.prefix(), None)
        .await
        .unwrap()
        .header()
        .map(|h| h.revision())
        .unwrap();
    client
        .compact(
            now,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    storage.resume_watches();

    // The history is gone: the watch lists again and yields the current list at once.
    assert_eq!(
        next_list(&mut watch, "the list after the compaction").await,
        vec![runner(2), runner(3)]
    );
    assert_quiet(&mut watch, "after listing again").await;

    storage.unregister(&runner(2)).await.unwrap();
    assert_eq!(
        next_list(&mut watch, "a leave after listing again").await,
        vec![runner(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_do_not_decode_are_skipped() {
    let storage = support::storage("bad-keys").await;
    let mut client = support::client().await;
    let prefix = storage.prefix().to_string();
    for (key, value) in [
        ("runners/not-an-address", "machine_id=1;weight=1"),
        ("runners/host.bad:1", "garbage"),
        ("runners/host.bad:2", "machine_id=99999;weight=1"),
        ("machine-ids/not-a-number", "whatever"),
    ] {
        client
            .put(format!("{prefix}{key}"), value, None)
            .await
            .unwrap();
    }

    storage.register(&runner(1), 1, TTL).await.unwrap();
    let listed: Vec<RunnerAddress> = storage
        .runners()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.address)
        .collect();
    assert_eq!(listed, vec![runner(1)], "bad runner keys were listed");

    let mut watch = storage.watch_runners().await.unwrap();
    assert_eq!(next_list(&mut watch, "first list").await, vec![runner(1)]);
    client
        .put(format!("{prefix}runners/\u{7f}nonsense"), "\u{0}", None)
        .await
        .unwrap();
    storage.register(&runner(2), 1, TTL).await.unwrap();
    assert_eq!(
        next_list(&mut watch, "a join after a bad key").await,
        vec![runner(1), runner(2)],
        "the bad key stopped or polluted the watch"
    );

    // A lock key holding garbage is nobody's lock to take, and its owner is an error.
    let shard = cruster_types::ShardId::new("bad", 1);
    client
        .put(format!("{prefix}shards/{shard}"), vec![0xff_u8, 0xfe], None)
        .await
        .unwrap();
    let err = storage.shard_owner(&shard).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::MalformedMessage { .. }),
        "{err:?}"
    );
    let taken = storage
        .acquire_shards(&runner(1), std::slice::from_ref(&shard), TTL)
        .await
        .unwrap();
    assert!(taken.is_empty(), "a lock holding garbage was taken");
}
