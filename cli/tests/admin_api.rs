//! The admin HTTP API, endpoint by endpoint, over real HTTP: on a memory `SingleRunner`, a
//! three-runner `MemoryCluster` and a PostgreSQL `SingleRunner` (dead letters and
//! workflows), with bad input, unknown ids, the read-only default and the bearer token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use cruster::admin::AdminOptions;
use cruster::prelude::*;
use serde_json::Value;
use support::{eventually, Node, ShipRequest, Work};

/// A workflow that sleeps an hour: it is still running when the test cancels it.
#[workflow]
#[derive(Clone)]
struct Nap;

#[workflow_impl(key = |name: &String| name.clone(), hash = false)]
impl Nap {
    async fn execute(&self, name: String) -> Result<String, ClusterError> {
        self.sleep(Duration::from_secs(3600)).await?;
        Ok(format!("{name} woke up"))
    }
}

fn acting() -> AdminOptions {
    AdminOptions::default().allow_actions(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_as_prometheus_text() {
    let node = Node::single(AdminOptions::default()).await;
    let reply = node
        .switches
        .work(&EntityId::new("m-1"), &Work { label: "m".into() })
        .await
        .unwrap();
    assert_eq!(reply, "done m");
    let (status, body) = node.get("/metrics").await;
    assert_eq!(status, 200);
    let text = body.as_str().expect("metrics are text, not JSON");
    assert!(
        text.contains("# TYPE cruster_messages_sent_total counter"),
        "{text}"
    );
    assert!(
        text.contains("cruster_messages_persisted_total 1"),
        "{text}"
    );
    assert!(text.contains("cruster_shards_owned 300"), "{text}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_once_every_assigned_shard_is_held_and_storage_answers() {
    let node = Node::single(AdminOptions::default()).await;
    let (status, ready) = node.get("/health/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["shards_assigned"], 300);
    assert_eq!(ready["shards_held"], 300);
    assert_eq!(ready["storage"], "ok");
    let (status, live) = node.get("/health/live").await;
    assert_eq!(status, 200, "{live}");
    assert_eq!(live["live"], true);
    assert_eq!(live["pending_requests"], 0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_turns_false_while_delivery_is_stalled_and_true_after() {
    let options = AdminOptions::default().stall_timeout(Duration::from_millis(300));
    let node = Node::single(options).await;
    // A handler that waits for a gate: the request stays pending with no progress.
    let switches = node.switches.clone();
    let blocked = tokio::spawn(async move { switches.block(&EntityId::new("stuck")).await });
    let stalled = eventually(Duration::from_secs(10), || async {
        let (status, live) = node.get("/health/live").await;
        status == 503 && live["live"] == false && live["pending_requests"] == 1
    })
    .await;
    let (_, live) = node.get("/health/live").await;
    assert!(stalled, "/health/live never reported the stall: {live}");
    assert!(
        live["waiting_without_progress_ms"].as_u64().unwrap() > 300,
        "{live}"
    );

    node.switch.gate.add_permits(1);
    blocked.await.unwrap().unwrap();
    let recovered = eventually(Duration::from_secs(10), || async {
        let (status, live) = node.get("/health/live").await;
        status == 200 && live["live"] == true
    })
    .await;
    let (_, live) = node.get("/health/live").await;
    assert!(recovered, "/health/live did not recover: {live}");
    assert_eq!(live["pending_requests"], 0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shows_the_runner_its_shard_table_and_moves() {
    let node = Node::single(AdminOptions::default()).await;
    let (status, cluster) = node.get("/api/cluster").await;
    assert_eq!(status, 200, "{cluster}");
    let me = node.sharding.runner_address().to_string();
    assert_eq!(cluster["runner"], me.as_str());
    assert_eq!(cluster["actions_allowed"], false);
    let runners = cluster["runners"].as_array().unwrap();
    assert_eq!(runners.len(), 1, "{cluster}");
    assert_eq!(runners[0]["address"], me.as_str());
    assert_eq!(runners[0]["is_self"], true);
    assert_eq!(runners[0]["weight"], 1);
    let group = &cluster["shard_groups"][0];
    assert_eq!(group["group"], "default");
    assert_eq!(group["shards"], 300);
    assert_eq!(group["shards_per_runner"][me.as_str()], 300);
    assert_eq!(group["held_here"].as_array().unwrap().len(), 300);
    let moves = cluster["recent_shard_moves"].as_array().unwrap();
    assert!(
        !moves.is_empty(),
        "acquiring the shards is a move: {cluster}"
    );
    assert_eq!(moves[0]["direction"], "acquired");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_show_active_instances_mailbox_depth_and_the_busiest() {
    let node = Node::single(AdminOptions::default()).await;
    for i in 0..3 {
        node.switches
            .work(
                &EntityId::new(format!("e-{i}")),
                &Work { label: "x".into() },
            )
            .await
            .unwrap();
    }
    let switches = node.switches.clone();
    let blocked = tokio::spawn(async move { switches.block(&EntityId::new("busy")).await });
    let busy = eventually(Duration::from_secs(10), || async {
        let (_, entities) = node.get("/api/entities").await;
        entities["busiest"][0]["entity_id"] == "busy"
    })
    .await;
    let (status, entities) = node.get("/api/entities").await;
    assert!(busy, "{entities}");
    assert_eq!(status, 200);
    let switch = entities["entity_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["entity_type"] == "Switch")
        .unwrap_or_else(|| panic!("no Switch type in {entities}"));
    assert_eq!(switch["active"], 4, "{entities}");
    assert_eq!(switch["mailbox_depth"], 1, "{entities}");
    assert_eq!(entities["busiest"][0]["pending"], 1);
    node.switch.gate.add_permits(1);
    blocked.await.unwrap().unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_by_default_refuses_every_action() {
    let node = Node::single(AdminOptions::default()).await;
    let id = node.dead_letter("ro").await;
    for path in [
        format!("/api/dead-letters/{id}/retry"),
        format!("/api/dead-letters/{id}/purge"),
        "/api/dead-letters/retry".to_owned(),
        "/api/dead-letters/purge".to_owned(),
    ] {
        let (status, body) = node.post(&path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("read-only"),
            "{body}"
        );
    }
    let (_, letters) = node.get("/api/dead-letters").await;
    assert_eq!(
        letters["dead_letters"].as_array().unwrap().len(),
        1,
        "untouched"
    );
    node.shutdown().await;
}

/// Lists dead letters, counts messages, retries one (it then succeeds), purges one, and
/// checks that repeating each action changes nothing and bad ids are refused.
async fn dead_letters_round_trip(node: &Node) {
    let first = node.dead_letter("one").await;
    let second = node.dead_letter("two").await;

    let (status, letters) = node.get("/api/dead-letters").await;
    assert_eq!(status, 200);
    let listed: Vec<&Value> = letters["dead_letters"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 2, "{letters}");
    assert_eq!(listed[0]["request_id"], first.as_str());
    assert_eq!(listed[0]["tag"], "work");
    assert_eq!(listed[0]["attempts"], 2);
    assert!(
        listed[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("switch is broken while doing one"),
        "{letters}"
    );

    let (status, counts) = node.get("/api/messages").await;
    assert_eq!(status, 200);
    assert_eq!(counts["total"]["dead_lettered"], 2, "{counts}");
    assert_eq!(counts["by_entity_type"][0]["entity_type"], "Switch");

    // Bad input.
    let (status, body) = node.post("/api/dead-letters/not-a-number/retry").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not-a-number"));
    let (status, body) = node.post("/api/dead-letters/4242/retry").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = node.post("/api/dead-letters/4242/purge").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = node.get("/api/dead-letters?limit=0").await;
    assert_eq!(status, 400, "{body}");

    // Retry the first with the switch repaired: it is delivered and processed.
    node.switch.broken.store(false, Ordering::SeqCst);
    let (status, body) = node.post(&format!("/api/dead-letters/{first}/retry")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["retried"], true);
    let processed = eventually(Duration::from_secs(10), || async {
        let (_, body) = node.post(&format!("/api/dead-letters/{first}/retry")).await;
        body["state"] == "processed"
    })
    .await;
    let (status, again) = node.post(&format!("/api/dead-letters/{first}/retry")).await;
    assert!(
        processed,
        "the retried dead letter was not processed: {again}"
    );
    assert_eq!(status, 200);
    assert_eq!(again["retried"], false, "retrying again changes nothing");

    // Purge the second; purging again finds nothing.
    let (status, body) = node
        .post(&format!("/api/dead-letters/{second}/purge"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["purged"], true);
    let (status, body) = node
        .post(&format!("/api/dead-letters/{second}/purge"))
        .await;
    assert_eq!(status, 404, "{body}");
    let (_, letters) = node.get("/api/dead-letters").await;
    assert!(
        letters["dead_letters"].as_array().unwrap().is_empty(),
        "{letters}"
    );

    // All at once.
    node.dead_letter("three").await;
    node.dead_letter("four").await;
    let (status, body) = node.post("/api/dead-letters/purge").await;
    assert_eq!((status, &body["purged"]), (200, &Value::from(2)), "{body}");
    let (status, body) = node.post("/api/dead-letters/purge").await;
    assert_eq!((status, &body["purged"]), (200, &Value::from(0)), "{body}");
    node.dead_letter("five").await;
    node.switch.broken.store(false, Ordering::SeqCst);
    let (status, body) = node.post("/api/dead-letters/retry").await;
    assert_eq!((status, &body["retried"]), (200, &Value::from(1)), "{body}");
    let drained = eventually(Duration::from_secs(10), || async {
        let (_, counts) = node.get("/api/messages").await;
        counts["total"]["pending"] == 0 && counts["total"]["dead_lettered"] == 0
    })
    .await;
    let (_, counts) = node.get("/api/messages").await;
    assert!(drained, "{counts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_counted_retried_and_purged() {
    let node = Node::single(acting()).await;
    dead_letters_round_trip(&node).await;
    node.shutdown().await;
}

/// Runs a workflow, then lists executions (counts, filters) and reads its journal.
async fn workflows_round_trip(node: &Node) {
    let result = node
        .shipments
        .execute(&ShipRequest {
            order_id: "o-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(result, "shipped parcel-o-1");

    let (status, workflows) = node.get("/api/workflows").await;
    assert_eq!(status, 200, "{workflows}");
    let counts = workflows["counts"].as_array().unwrap();
    assert!(
        counts
            .iter()
            .any(|c| c["workflow"] == "Shipment" && c["status"] == "completed" && c["count"] == 1),
        "{workflows}"
    );
    let execution = &workflows["executions"][0];
    assert_eq!(execution["workflow"], "Shipment");
    assert_eq!(execution["status"]["name"], "completed");
    let id = execution["execution_id"].as_str().unwrap().to_owned();

    let (_, none) = node.get("/api/workflows?status=running").await;
    assert!(none["executions"].as_array().unwrap().is_empty(), "{none}");
    let (_, only) = node
        .get("/api/workflows?workflow=Shipment&status=completed")
        .await;
    assert_eq!(only["executions"].as_array().unwrap().len(), 1, "{only}");
    let (status, body) = node.get("/api/workflows?limit=x").await;
    assert_eq!(status, 400, "{body}");

    let (status, shown) = node.get(&format!("/api/workflows/{id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["result"]["ok"], "shipped parcel-o-1");
    let journal = shown["journal"].as_array().unwrap();
    assert_eq!(journal.len(), 2, "{shown}");
    assert_eq!(journal[0]["activity"], "pack");
    assert_eq!(journal[0]["result"]["ok"], "parcel-o-1");
    assert_eq!(journal[1]["activity"], "send_parcel");

    let (status, body) = node.get("/api/workflows/no-such-execution").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("no-such-execution"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_are_counted_listed_and_journals_shown() {
    let node = Node::single(AdminOptions::default()).await;
    workflows_round_trip(&node).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_guards_everything_but_the_console_files() {
    let node = Node::single(acting().bearer_token("s3cret")).await;
    for path in [
        "/api/cluster",
        "/metrics",
        "/health/live",
        "/api/dead-letters",
    ] {
        let (status, body) = node.get(path).await;
        assert_eq!(status, 401, "{path}: {body}");
        let (status, body) = node.call("GET", path, Some("wrong")).await;
        assert_eq!(status, 401, "{path}: {body}");
        let (status, body) = node.call("GET", path, Some("s3cret")).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = node.post("/api/dead-letters/retry").await;
    assert_eq!(status, 401, "actions too: {body}");
    let (status, page) = node.get("/").await;
    assert_eq!(status, 200);
    assert!(page
        .as_str()
        .unwrap()
        .contains("<title>cruster console</title>"));
    let (status, _) = node.get("/console.js").await;
    assert_eq!(status, 200);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_json_404s() {
    let node = Node::single(AdminOptions::default()).await;
    let (status, body) = node.get("/api/nothing-here").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("/api/nothing-here"));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_cluster_shows_every_runner_and_shares_dead_letters_and_workflows() {
    let node = Node::cluster(3, acting()).await;
    let (status, cluster) = node.get("/api/cluster").await;
    assert_eq!(status, 200, "{cluster}");
    let runners = cluster["runners"].as_array().unwrap();
    assert_eq!(runners.len(), 3, "{cluster}");
    assert_eq!(
        runners.iter().filter(|r| r["is_self"] == true).count(),
        1,
        "{cluster}"
    );
    let per_runner = cluster["shard_groups"][0]["shards_per_runner"]
        .as_object()
        .unwrap();
    assert_eq!(per_runner.len(), 3, "{cluster}");
    assert_eq!(
        per_runner
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>(),
        300
    );
    let held_here = cluster["shard_groups"][0]["held_here"]
        .as_array()
        .unwrap()
        .len() as u64;
    let mine = per_runner[&node.sharding.runner_address().to_string()]
        .as_u64()
        .unwrap();
    assert_eq!(held_here, mine, "runner 0 holds what it is assigned");
    let (status, ready) = node.get("/health/ready").await;
    assert_eq!(status, 200, "{ready}");

    let (status, entities) = node.get("/api/entities").await;
    assert_eq!(status, 200, "{entities}");
    dead_letters_round_trip(&node).await;
    workflows_round_trip(&node).await;
    node.shutdown().await;
}

mod postgres {
    use super::*;

    /// A pool whose connections use a fresh schema of their own.
    async fn pool(schema: &str) -> Option<cruster::sqlx::PgPool> {
        use std::str::FromStr;
        let Ok(url) = std::env::var("DATABASE_URL") else {
            eprintln!("SKIPPED: DATABASE_URL is not set");
            return None;
        };
        let admin = cruster::sqlx::PgPool::connect(&url).await.unwrap();
        for statement in [
            format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
            format!("CREATE SCHEMA {schema}"),
        ] {
            cruster::sqlx::query(cruster::sqlx::AssertSqlSafe(statement))
                .execute(&admin)
                .await
                .unwrap();
        }
        admin.close().await;
        let options = cruster::sqlx::postgres::PgConnectOptions::from_str(&url)
            .unwrap()
            .options([("search_path", schema)]);
        Some(
            cruster::sqlx::postgres::PgPoolOptions::new()
                .max_connections(8)
                .connect_with(options)
                .await
                .unwrap(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dead_letters_and_workflows_on_postgres() {
        let Some(pool) = pool("admin_api_pg").await else {
            return;
        };
        let node = Node::postgres(pool.clone(), acting()).await;
        dead_letters_round_trip(&node).await;
        workflows_round_trip(&node).await;
        let (status, ready) = node.get("/health/ready").await;
        assert_eq!(status, 200, "{ready}");
        node.shutdown().await;
        cruster::sqlx::query("DROP SCHEMA admin_api_pg CASCADE")
            .execute(&pool)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_workflow_is_cancelled_and_resume_refuses_one_that_is_not_parked() {
    let node = Node::single(acting()).await;
    let naps = Nap.register(node.sharding.clone()).await.unwrap();
    let id = naps.start(&"cat".to_string()).await.unwrap();
    // Known to the engine once its first run recorded it.
    assert!(
        eventually(Duration::from_secs(10), || {
            let node = &node;
            let id = id.clone();
            async move { node.get(&format!("/api/workflows/{id}")).await.0 == 200 }
        })
        .await,
        "the execution was never recorded"
    );
    // Its journal view shows the hour-long sleep's timer, not fired yet.
    assert!(
        eventually(Duration::from_secs(10), || {
            let node = &node;
            let id = id.clone();
            async move {
                let (_, shown) = node.get(&format!("/api/workflows/{id}")).await;
                shown["timers"][0]["timer"] == "sleep/0" && shown["timers"][0]["fired"] == false
            }
        })
        .await,
        "the sleep's timer is not shown"
    );
    let (status, body) = node.post(&format!("/api/workflows/{id}/cancel")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cancelled"], true, "{body}");
    let joined = tokio::time::timeout(Duration::from_secs(20), naps.join(&id))
        .await
        .expect("the hour-long sleep was cut short by the cancellation");
    assert!(
        matches!(joined, Err(ClusterError::WorkflowCancelled { .. })),
        "{joined:?}"
    );
    let (_, shown) = node.get(&format!("/api/workflows/{id}")).await;
    assert_eq!(shown["status"]["name"], "cancelled", "{shown}");

    // Again: nothing changes, and the answer says it had finished.
    let (status, body) = node.post(&format!("/api/workflows/{id}/cancel")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cancelled"], false, "{body}");
    assert_eq!(body["status"]["name"], "cancelled", "{body}");

    // Resume is for parked executions only; unknown ids are 404s.
    let (status, body) = node.post(&format!("/api/workflows/{id}/resume")).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("cancelled"),
        "{body}"
    );
    for action in ["cancel", "resume"] {
        let (status, body) = node
            .post(&format!("/api/workflows/no-such-execution/{action}"))
            .await;
        assert_eq!(status, 404, "{action}: {body}");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_actions_are_refused_read_only() {
    let node = Node::single(AdminOptions::default()).await;
    for action in ["cancel", "resume"] {
        let (status, body) = node.post(&format!("/api/workflows/any/{action}")).await;
        assert_eq!(status, 403, "{action}: {body}");
    }
    node.shutdown().await;
}
