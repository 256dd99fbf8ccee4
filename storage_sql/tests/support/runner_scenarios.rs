//! Runner-storage scenarios both dialects run, beyond the port's conformance suite: the
//! database clock decides expiry, bad rows are skipped, renewals get through while the
//! application's pool is exhausted, every call is bounded, and watches of other processes
//! see changes by polling.

use std::time::Duration;

use cruster_runner_storage::RunnerStorage;
use cruster_storage_sql::{SqlPool, SqlRunnerStorage};
use cruster_types::{ClusterError, RunnerAddress, ShardId};
use futures::StreamExt;

use super::{Dialect, TestDatabase};

fn runner(n: u16) -> RunnerAddress {
    RunnerAddress::new(format!("runner-{n}.scenario"), 7000 + n)
}

fn shards(count: u32) -> Vec<ShardId> {
    (0..count).map(|n| ShardId::new("scenario", n)).collect()
}

/// The database clock in unix milliseconds, as an SQL expression of the dialect.
fn database_now(db: &TestDatabase) -> &'static str {
    match db.dialect {
        Dialect::Postgres => "(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
        Dialect::Sqlite => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
    }
}

/// Connections checked out of a pool and held until dropped.
enum Held {
    Postgres(Vec<sqlx::pool::PoolConnection<sqlx::Postgres>>),
    Sqlite(Vec<sqlx::pool::PoolConnection<sqlx::Sqlite>>),
}

/// Checks out every one of the `size` connections of `pool` and proves the pool is dry.
async fn exhaust(pool: &SqlPool, size: usize) -> Held {
    let dry = Duration::from_millis(200);
    match pool {
        SqlPool::Postgres(pool) => {
            let mut held = Vec::new();
            for _ in 0..size {
                held.push(pool.acquire().await.unwrap());
            }
            assert!(
                tokio::time::timeout(dry, pool.acquire()).await.is_err(),
                "the application pool still had a free connection"
            );
            Held::Postgres(held)
        }
        SqlPool::Sqlite(pool) => {
            let mut held = Vec::new();
            for _ in 0..size {
                held.push(pool.acquire().await.unwrap());
            }
            assert!(
                tokio::time::timeout(dry, pool.acquire()).await.is_err(),
                "the application pool still had a free connection"
            );
            Held::Sqlite(held)
        }
        _ => unreachable!("a test database is PostgreSQL or SQLite"),
    }
}

fn assert_timeout_error(err: &ClusterError) {
    let ClusterError::PersistenceError {
        source: Some(source),
        ..
    } = err
    else {
        panic!("expected a PersistenceError caused by the timeout, got {err:?}");
    };
    assert!(
        matches!(
            source.downcast_ref::<ClusterError>(),
            Some(ClusterError::Timeout { .. })
        ),
        "the PersistenceError's source is not a Timeout: {err:?}"
    );
}

/// Expiries are written as the database's `now + ttl` and compared with the database's
/// `now`: a lock whose stored expiry the database sees as past is free, whatever the
/// runner's clock says.
pub async fn lock_expiry_is_set_by_the_database_clock(db: &TestDatabase) {
    let pool = db.migrated().await;
    let storage = SqlRunnerStorage::from_pool(pool.clone());
    let ttl = Duration::from_secs(60);
    storage.register(&runner(1), 1, ttl).await.unwrap();
    storage.register(&runner(2), 1, ttl).await.unwrap();
    let held = storage
        .acquire_shards(&runner(1), &shards(3), ttl)
        .await
        .unwrap();
    assert_eq!(held, shards(3));

    let now = database_now(db);
    for table in ["cruster_shard_locks", "cruster_runners"] {
        let left = db
            .fetch_i64(
                &pool,
                &format!("SELECT MIN(expires_at_ms - {now}) FROM {table}"),
            )
            .await;
        assert!(
            (58_000..=60_000).contains(&left),
            "{table}: expiry is {left} ms from the database's now, expected about 60 s"
        );
    }

    // Move one lock's expiry into the database's past: it is free at once.
    db.execute(
        &pool,
        &format!(
            "UPDATE cruster_shard_locks SET expires_at_ms = {now} - 1 WHERE shard = 'scenario:0'"
        ),
    )
    .await;
    assert_eq!(storage.shard_owner(&shards(1)[0]).await.unwrap(), None);
    let refreshed = storage
        .refresh_shards(&runner(1), &shards(3), ttl)
        .await
        .unwrap();
    assert_eq!(
        refreshed,
        shards(3)[1..].to_vec(),
        "an expired lock was refreshed"
    );
    let stolen = storage
        .acquire_shards(&runner(2), &shards(3), ttl)
        .await
        .unwrap();
    assert_eq!(
        stolen,
        shards(1),
        "only the expired lock may be taken by another runner"
    );
}

/// Rows another version or a person wrote that do not decode are logged and skipped by
/// `runners` and the watch; a lock naming an undecodable owner is reported as malformed by
/// `shard_owner` and still keeps others out. Nothing panics.
pub async fn undecodable_runner_rows_are_skipped_not_fatal(db: &TestDatabase) {
    let pool = db.migrated().await;
    let storage = SqlRunnerStorage::from_pool(pool.clone());
    let ttl = Duration::from_secs(60);
    storage.register(&runner(1), 1, ttl).await.unwrap();
    let far = 4_102_444_800_000_i64; // 2100-01-01
    db.execute(
        &pool,
        &format!(
            "INSERT INTO cruster_runners (address, machine_id, weight, registered_at_ms, \
             expires_at_ms) VALUES \
             ('not an address', 900, 1, 0, {far}), \
             ('10.0.0.9:9000', 5000, 1, 0, {far}), \
             ('10.0.0.8:9000', 901, -3, 0, {far}); \
             INSERT INTO cruster_shard_locks (shard, owner, acquired_at_ms, expires_at_ms) \
             VALUES ('scenario:7', 'garbage', 0, {far})"
        ),
    )
    .await;

    let listed = storage.runners().await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.address.clone()).collect::<Vec<_>>(),
        vec![runner(1)],
        "undecodable rows were not skipped: {listed:?}"
    );
    let mut watch = storage.watch_runners().await.unwrap();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first, listed, "the watch's first list");
    storage.register(&runner(2), 1, ttl).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch went quiet after meeting bad rows")
        .unwrap()
        .unwrap();
    assert_eq!(next.len(), 2, "{next:?}");

    let bad_lock = ShardId::new("scenario", 7);
    let err = storage.shard_owner(&bad_lock).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::MalformedMessage { .. }),
        "{err:?}"
    );
    let taken = storage
        .acquire_shards(&runner(1), std::slice::from_ref(&bad_lock), ttl)
        .await
        .unwrap();
    assert!(taken.is_empty(), "a live lock with a bad owner was taken");
}

/// With the application's pool fully checked out (all 10 connections held), keep-alives
/// and lock refreshes still go through on the runner storage's own small pool.
pub async fn renewals_use_their_own_pool_while_the_application_pool_is_exhausted(
    db: &TestDatabase,
) {
    let application = db.open_with_max_connections(10).await;
    application.migrate().await.unwrap();
    let runner_pool = db.open_with_max_connections(3).await;
    let storage =
        SqlRunnerStorage::from_pool(runner_pool).with_statement_timeout(Duration::from_secs(2));
    let ttl = Duration::from_secs(5);
    storage.register(&runner(1), 1, ttl).await.unwrap();
    let held = storage
        .acquire_shards(&runner(1), &shards(10), ttl)
        .await
        .unwrap();
    assert_eq!(held.len(), 10);

    let busy = exhaust(&application, 10).await;
    let started = std::time::Instant::now();
    assert!(storage.keep_alive(&runner(1), ttl).await.unwrap());
    let refreshed = storage
        .refresh_shards(&runner(1), &shards(10), ttl)
        .await
        .unwrap();
    assert_eq!(
        refreshed,
        shards(10),
        "a refresh on the runner storage's own pool lost locks"
    );
    let more = storage
        .acquire_shards(&runner(1), &[ShardId::new("scenario", 99)], ttl)
        .await
        .unwrap();
    assert_eq!(more.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "renewals took {:?} with the application pool exhausted",
        started.elapsed()
    );

    // The same storage on the exhausted application pool fails fast, and says why.
    let starved = SqlRunnerStorage::from_pool(application.clone())
        .with_statement_timeout(Duration::from_millis(300));
    let err = starved
        .refresh_shards(&runner(1), &shards(10), ttl)
        .await
        .unwrap_err();
    assert_timeout_error(&err);
    drop(busy);
}

/// Every call gives up after the statement timeout with a `PersistenceError` whose source
/// is a `ClusterError::Timeout`, whichever operation it was.
pub async fn a_call_past_the_statement_timeout_is_a_persistence_error(db: &TestDatabase) {
    let pool = db.open_with_max_connections(2).await;
    pool.migrate().await.unwrap();
    let timeout = Duration::from_millis(200);
    let storage = SqlRunnerStorage::from_pool(pool.clone()).with_statement_timeout(timeout);
    assert_eq!(storage.statement_timeout(), timeout);
    let _busy = exhaust(&pool, 2).await;
    let ttl = Duration::from_secs(5);
    let started = std::time::Instant::now();
    assert_timeout_error(&storage.register(&runner(1), 1, ttl).await.unwrap_err());
    assert_timeout_error(&storage.keep_alive(&runner(1), ttl).await.unwrap_err());
    assert_timeout_error(&storage.runners().await.err().unwrap());
    assert_timeout_error(
        &storage
            .acquire_shards(&runner(1), &shards(2), ttl)
            .await
            .unwrap_err(),
    );
    assert_timeout_error(
        &storage
            .release_shards(&runner(1), &shards(2))
            .await
            .unwrap_err(),
    );
    assert_timeout_error(&storage.unregister(&runner(1)).await.unwrap_err());
    assert_timeout_error(&storage.watch_runners().await.err().unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "seven bounded calls took {:?}",
        started.elapsed()
    );
}

/// Two storages on two pools (as two processes would have): a watch sees the other's joins
/// and leaves by polling, within a quarter of the TTL plus a query.
pub async fn watch_of_another_storage_sees_changes_by_polling(db: &TestDatabase) {
    let ttl = Duration::from_millis(800);
    let mine = SqlRunnerStorage::from_pool(db.migrated().await);
    let theirs = SqlRunnerStorage::from_pool(db.open().await);
    mine.register(&runner(1), 1, ttl).await.unwrap();
    let mut watch = mine.watch_runners().await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().len(), 1);

    let seen_within = Duration::from_secs(2);
    theirs.register(&runner(2), 1, ttl).await.unwrap();
    let joined = tokio::time::timeout(seen_within, watch.next())
        .await
        .expect("another storage's registration was not seen by polling")
        .unwrap()
        .unwrap();
    assert_eq!(
        joined.iter().map(|r| r.address.clone()).collect::<Vec<_>>(),
        vec![runner(1), runner(2)]
    );
    theirs.unregister(&runner(2)).await.unwrap();
    // Keep runner 1 alive meanwhile, so the next change is runner 2 leaving.
    mine.keep_alive(&runner(1), ttl).await.unwrap();
    let left = tokio::time::timeout(seen_within, watch.next())
        .await
        .expect("another storage's unregister was not seen by polling")
        .unwrap()
        .unwrap();
    assert_eq!(
        left.iter().map(|r| r.address.clone()).collect::<Vec<_>>(),
        vec![runner(1)]
    );
}
