//! Every client delivery mode against a hand-written entity on a `SingleRunner`, and the
//! errors of bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cruster::prelude::*;
use cruster::types::{EntityType, Snowflake};
use futures::StreamExt;
use support::{eventually, Journal, TestEntity};

async fn runner_with(config: ShardingConfig, entity: TestEntity) -> (SingleRunner, EntityClient) {
    let runner = SingleRunner::builder()
        .config(config)
        .build()
        .await
        .unwrap();
    let name = entity.name;
    runner
        .sharding()
        .register_entity(Arc::new(entity))
        .await
        .unwrap();
    let client = EntityClient::new(runner.sharding().clone(), EntityType::new(name));
    (runner, client)
}

fn fast_config() -> ShardingConfig {
    ShardingConfig {
        storage_poll_interval: Duration::from_millis(50),
        ..Default::default()
    }
}

#[tokio::test]
async fn send_and_notify_reach_the_entity() {
    let journal = Journal::default();
    let (runner, client) = runner_with(fast_config(), TestEntity::new("T", journal.clone())).await;
    let id = EntityId::new("e-1");
    let echoed: String = client.send(&id, "echo", &"hello").await.unwrap();
    assert_eq!(echoed, "hello");
    client.notify(&id, "record", &"n1").await.unwrap();
    assert!(eventually(Duration::from_secs(2), || journal.keys("e-1") == ["n1"]).await);
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn persisted_send_stores_request_and_reply() {
    let journal = Journal::default();
    let (runner, client) = runner_with(fast_config(), TestEntity::new("T", journal.clone())).await;
    let id = EntityId::new("p-1");
    let count: u64 = client
        .send_persisted(&id, "record", &"a", false)
        .await
        .unwrap();
    assert_eq!(count, 1);
    let storage = runner.sharding().message_storage().unwrap().clone();
    let shard = runner.sharding().owned_shards();
    assert!(
        storage
            .unprocessed(&shard, Utc::now(), 10)
            .await
            .unwrap()
            .is_empty(),
        "processed"
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn keyed_persisted_send_runs_once_and_returns_the_first_reply() {
    let journal = Journal::default();
    let (runner, client) = runner_with(fast_config(), TestEntity::new("T", journal.clone())).await;
    let id = EntityId::new("k-1");
    let first: u64 = client
        .send_persisted_with_key(&id, "record", &"x", "same-key", false)
        .await
        .unwrap();
    let second: u64 = client
        .send_persisted_with_key(&id, "record", &"y", "same-key", false)
        .await
        .unwrap();
    assert_eq!((first, second), (1, 1));
    assert_eq!(journal.keys("k-1"), ["x"], "the duplicate did not run");
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn notify_persisted_can_be_polled_and_joined() {
    let journal = Journal::default();
    let (runner, client) = runner_with(fast_config(), TestEntity::new("T", journal.clone())).await;
    let id = EntityId::new("np-1");
    let request_id = client
        .notify_persisted(&id, "echo", &"later")
        .await
        .unwrap();
    let joined: String = client.join_reply(request_id).await.unwrap();
    assert_eq!(joined, "later");
    let polled: Option<String> = client.poll_reply(request_id).await.unwrap();
    assert_eq!(polled.as_deref(), Some("later"));
    let unknown: Option<String> = client.poll_reply(Snowflake(12345)).await.unwrap();
    assert!(unknown.is_none());
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn send_at_and_notify_at_deliver_no_earlier_than_due() {
    let journal = Journal::default();
    let (runner, client) = runner_with(fast_config(), TestEntity::new("T", journal.clone())).await;
    let id = EntityId::new("at-1");
    let due = Utc::now() + chrono::Duration::milliseconds(300);
    let notified = client.notify_at(&id, "record", &"n", due).await.unwrap();
    let reply: u64 = client.send_at(&id, "record", &"s", due).await.unwrap();
    assert!(Utc::now() >= due, "send_at returned before it was due");
    assert!(reply >= 1);
    let _: u64 = client.join_reply(notified).await.unwrap();
    let mut keys = journal.keys("at-1");
    keys.sort();
    assert_eq!(keys, ["n", "s"]);
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn streams_arrive_in_order() {
    let (runner, client) =
        runner_with(fast_config(), TestEntity::new("T", Journal::default())).await;
    let id = EntityId::new("s-1");
    let values: Vec<u32> = client
        .send_stream::<_, u32>(&id, "count", &500u32)
        .await
        .unwrap()
        .map(|v| v.unwrap())
        .collect()
        .await;
    assert_eq!(values, (0..500).collect::<Vec<_>>());
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn handler_errors_come_back_as_their_variant() {
    let (runner, client) =
        runner_with(fast_config(), TestEntity::new("T", Journal::default())).await;
    let id = EntityId::new("f-1");
    let err = client
        .send::<_, ()>(&id, "fail", &"nope")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::Handler { ref message } if message == "nope"),
        "{err}"
    );
    let err = client.send::<_, ()>(&id, "panic", &()).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::Handler { ref message } if message.contains("panicked")),
        "{err}"
    );
    // the entity survives a panic
    let ok: String = client.send(&id, "echo", &"still here").await.unwrap();
    assert_eq!(ok, "still here");
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_type_unknown_tag_and_malformed_payload_are_clear_errors() {
    let (runner, client) =
        runner_with(fast_config(), TestEntity::new("T", Journal::default())).await;
    let id = EntityId::new("bad-1");
    let err = client
        .send::<_, String>(&id, "no-such-rpc", &"x")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::UnknownTag { ref tag, .. } if tag == "no-such-rpc"),
        "{err}"
    );

    let err = client
        .send::<_, String>(&id, "echo", &12345u64)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::MalformedMessage { .. }),
        "{err}"
    );

    let ghost = EntityClient::new(runner.sharding().clone(), EntityType::new("Ghost"));
    let err = ghost
        .send::<_, String>(&id, "echo", &"x")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::EntityNotRegistered { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("register"));

    // a reply that does not decode into the expected type
    let err = client
        .send::<_, u64>(&id, "echo", &"text")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::MalformedMessage { .. }),
        "{err}"
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_mailbox_is_refused_at_once() {
    let mut entity = TestEntity::new("Slow", Journal::default());
    entity.options.mailbox_capacity = Some(2);
    let (runner, client) = runner_with(fast_config(), entity).await;
    let id = EntityId::new("m-1");
    let mut pending = Vec::new();
    for i in 0..3 {
        let c = client.clone();
        let id = id.clone();
        pending.push(tokio::spawn(async move {
            c.send::<_, ()>(&id, "sleep", &500u64).await
        }));
        if i == 0 {
            // let the first one start running, so two more fill the mailbox
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = tokio::time::timeout(
        Duration::from_secs(1),
        client.send::<_, ()>(&id, "sleep", &1u64),
    )
    .await
    .expect("a full mailbox must not hang")
    .unwrap_err();
    assert!(
        matches!(err, ClusterError::MailboxFull { capacity: 2, .. }),
        "{err}"
    );
    for p in pending {
        p.await.unwrap().unwrap();
    }
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrency_option_runs_requests_in_parallel() {
    let mut entity = TestEntity::new("Par", Journal::default());
    entity.options.concurrency = Some(4);
    let (runner, client) = runner_with(fast_config(), entity).await;
    let id = EntityId::new("c-1");
    let start = std::time::Instant::now();
    let calls = (0..4).map(|_| client.send::<_, ()>(&id, "sleep", &300u64));
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_millis(1100),
        "4 sleeps of 300 ms ran one by one"
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn idle_entities_are_evicted_and_reactivated() {
    let journal = Journal::default();
    let mut entity = TestEntity::new("Idle", journal.clone());
    entity.options.max_idle_time = Some(Duration::from_millis(100));
    let (runner, client) = runner_with(fast_config(), entity).await;
    let id = EntityId::new("i-1");
    let _: String = client.send(&id, "echo", &"a").await.unwrap();
    assert!(eventually(Duration::from_secs(3), || journal.passivated() == ["i-1"]).await);
    assert_eq!(
        runner.sharding().active_entities()[&EntityType::new("Idle")],
        0
    );
    let _: String = client.send(&id, "echo", &"b").await.unwrap();
    assert_eq!(
        journal.spawned(),
        ["i-1", "i-1"],
        "re-activated transparently"
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_drains_running_requests_then_refuses_new_ones() {
    let (runner, client) =
        runner_with(fast_config(), TestEntity::new("T", Journal::default())).await;
    let id = EntityId::new("d-1");
    let c = client.clone();
    let id2 = id.clone();
    let running = tokio::spawn(async move { c.send::<_, ()>(&id2, "sleep", &200u64).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    runner.shutdown().await.unwrap();
    running.await.unwrap().unwrap();
    let err = client
        .send::<_, String>(&id, "echo", &"x")
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::ShuttingDown), "{err}");
    assert!(
        runner.sharding().owned_shards().is_empty(),
        "locks released"
    );
}

#[tokio::test]
async fn dead_letters_after_the_retry_limit() {
    let config = ShardingConfig {
        storage_poll_interval: Duration::from_millis(20),
        storage_message_max_retries: 3,
        storage_retry_backoff_base: Duration::from_millis(10),
        storage_retry_backoff_max: Duration::from_millis(50),
        ..Default::default()
    };
    let (runner, client) = runner_with(config, TestEntity::new("T", Journal::default())).await;
    let id = EntityId::new("dl-1");
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        client.send_persisted::<_, ()>(&id, "panic", &(), false),
    )
    .await
    .expect("dead-lettering must end the wait")
    .unwrap_err();
    assert!(err.to_string().contains("dead-lettered"), "{err}");
    let storage = runner.sharding().message_storage().unwrap().clone();
    let dead = storage.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(runner.sharding().metrics().messages_dead_lettered.get(), 1);
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn singletons_run_once_and_restart_after_failure() {
    let config = ShardingConfig {
        singleton_crash_backoff_base: Duration::from_millis(10),
        ..fast_config()
    };
    let runner = SingleRunner::builder()
        .config(config)
        .build()
        .await
        .unwrap();
    let starts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let s = starts.clone();
    register_singleton(
        runner.sharding().as_ref(),
        "flaky",
        move |ctx: SingletonContext| {
            let s = s.clone();
            async move {
                let n = s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n < 2 {
                    return Err(ClusterError::handler("boom"));
                }
                ctx.cancellation().cancelled().await;
                Ok(())
            }
        },
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(3), || starts
            .load(std::sync::atomic::Ordering::SeqCst)
            == 3)
        .await
    );
    assert_eq!(runner.sharding().running_singletons(), ["flaky"]);
    let err = register_singleton(runner.sharding().as_ref(), "flaky", |_ctx| async { Ok(()) })
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::InvalidConfig { .. }));
    tokio::time::timeout(Duration::from_secs(3), runner.shutdown())
        .await
        .expect("graceful singleton stops")
        .unwrap();
    assert_eq!(
        runner
            .sharding()
            .metrics()
            .singleton_restarts
            .with_label_values(&["flaky"])
            .get(),
        2
    );
}

#[tokio::test]
async fn singleton_without_cancellation_is_force_cancelled() {
    let runner = SingleRunner::builder()
        .config(fast_config())
        .build()
        .await
        .unwrap();
    cruster::singleton::singleton("stubborn", |_ctx: SingletonContext| async move {
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    })
    .register(runner.sharding().as_ref())
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(2), || runner
            .sharding()
            .running_singletons()
            == ["stubborn"])
        .await
    );
    tokio::time::timeout(Duration::from_secs(2), runner.shutdown())
        .await
        .expect("force-cancelled, not waited for")
        .unwrap();
}

#[tokio::test]
async fn persisted_messaging_without_storage_is_a_clear_error() {
    let network = cruster::transport::in_process::InProcessNetwork::new();
    let sharding = ShardingImpl::new_with_engines(
        Arc::new(ShardingConfig::default()),
        Arc::new(network.runners()),
        None,
        None,
        None,
        None,
        None,
        Arc::new(ClusterMetrics::unregistered()),
    )
    .unwrap();
    sharding
        .register_entity(Arc::new(TestEntity::new("T", Journal::default())))
        .await
        .unwrap();
    sharding.start().await.unwrap();
    let client = EntityClient::new(sharding.clone(), EntityType::new("T"));
    let err = client
        .send_persisted::<_, String>(&EntityId::new("x"), "echo", &"x", false)
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Unsupported { .. }), "{err}");
    let plain: String = client
        .send(&EntityId::new("x"), "echo", &"x")
        .await
        .unwrap();
    assert_eq!(plain, "x");
    sharding.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_config_is_rejected() {
    let config = ShardingConfig {
        shards_per_group: 0,
        ..Default::default()
    };
    let err = SingleRunner::builder()
        .config(config)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::InvalidConfig { .. }), "{err}");
}

#[tokio::test]
async fn a_storage_error_in_a_persisted_handler_is_retried_not_answered() {
    let journal = Journal::default();
    let config = ShardingConfig {
        storage_poll_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let (runner, client) = runner_with(config, TestEntity::new("T", journal.clone())).await;
    let attempts: u64 = tokio::time::timeout(
        Duration::from_secs(5),
        client.send_persisted(&EntityId::new("sf-1"), "storage-flaky", &"k", false),
    )
    .await
    .expect("retried by the storage poll")
    .unwrap();
    assert_eq!(attempts, 3, "two storage failures, then success");
    let err = client
        .send::<_, u64>(&EntityId::new("sf-2"), "storage-flaky", &"k")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::PersistenceError { .. }),
        "a plain send gets the error as its answer: {err}"
    );
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_caller_that_goes_away_interrupts_its_plain_request() {
    let (runner, client) =
        runner_with(fast_config(), TestEntity::new("T", Journal::default())).await;
    let id = EntityId::new("int-1");
    // The caller gives up after 100 ms: the 5 s handler is interrupted, not waited for.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        client.send::<_, ()>(&id, "sleep", &5000u64),
    )
    .await;
    assert!(gave_up.is_err());
    let next: String =
        tokio::time::timeout(Duration::from_secs(2), client.send(&id, "echo", &"next"))
            .await
            .expect("the entity was freed by the interrupt")
            .unwrap();
    assert_eq!(next, "next");
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_persisted_request_is_interrupted_by_id() {
    let (runner, client) =
        runner_with(fast_config(), TestEntity::new("T", Journal::default())).await;
    let id = EntityId::new("int-2");
    let request_id = client
        .notify_persisted(&id, "sleep", &5000u64)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    runner
        .sharding()
        .interrupt(cruster::types::Interrupt {
            request_id,
            address: client.address(&id),
        })
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(2), client.join_reply::<()>(request_id))
        .await
        .expect("the interrupted request has its reply")
        .unwrap_err();
    assert!(matches!(err, ClusterError::Interrupted { .. }), "{err}");
    runner.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_entity_type_in_its_own_shard_group_is_routed_there() {
    let mut entity = TestEntity::new("Premium", Journal::default());
    entity.options.shard_group = Some("premium".into());
    let (runner, client) = runner_with(fast_config(), entity).await;
    let id = EntityId::new("vip-1");
    assert_eq!(&*client.address(&id).shard_id.group, "premium");
    let echoed: String = client.send(&id, "echo", &"hi").await.unwrap();
    assert_eq!(echoed, "hi");
    let groups: std::collections::HashSet<String> = runner
        .sharding()
        .owned_shards()
        .iter()
        .map(|s| s.group.to_string())
        .collect();
    assert!(
        groups.contains("premium") && groups.contains("default"),
        "{groups:?}"
    );
    runner.shutdown().await.unwrap();
}
