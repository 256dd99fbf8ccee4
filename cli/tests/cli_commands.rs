//! The real `cruster` binary against a running node's admin API: every subcommand, tables
//! and `--json`, the token from the environment, a refused action and an unreachable runner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cruster::admin::AdminOptions;
use serde_json::Value;
use support::{eventually, Node, ShipRequest};

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cruster <args>` against `admin` (blocking work on a blocking thread).
async fn cruster(admin: &str, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cruster"));
    command
        .env_remove("CRUSTER_ADMIN_TOKEN")
        .arg("--admin")
        .arg(admin)
        .args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the cruster binary runs");
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_prints_tables_and_json() {
    let node = Node::single(AdminOptions::default().allow_actions(true)).await;
    let admin = node.admin_url();
    let me = node.sharding.runner_address().to_string();

    let status = cruster(&admin, &[], &["status"]).await;
    assert!(status.ok, "{}", status.stderr);
    assert!(
        status.stdout.contains(&format!("runner   {me}")),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains("ready    true (300 of 300 assigned shards held, storage ok)"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("live     true"), "{}", status.stdout);
    assert!(
        status.stdout.contains(&format!("{me} *")),
        "{}",
        status.stdout
    );

    let shards = cruster(&admin, &[], &["shards"]).await;
    assert!(
        shards
            .stdout
            .contains("group default (300 shards, 300 held by this runner)"),
        "{}",
        shards.stdout
    );
    let json = cruster(&admin, &[], &["--json", "shards"]).await;
    let parsed: Value = serde_json::from_str(&json.stdout).expect("--json prints JSON");
    assert_eq!(parsed["shard_groups"][0]["shards"], 300);

    let id = node.dead_letter("cli").await;
    let entities = cruster(&admin, &[], &["entities"]).await;
    assert!(
        entities.stdout.starts_with("ENTITY TYPE"),
        "{}",
        entities.stdout
    );
    assert!(entities.stdout.contains("Switch"), "{}", entities.stdout);

    let letters = cruster(&admin, &[], &["dead-letters"]).await;
    assert!(letters.ok, "{}", letters.stderr);
    assert!(letters.stdout.starts_with("REQUEST"), "{}", letters.stdout);
    assert!(letters.stdout.contains(&id), "{}", letters.stdout);
    assert!(
        letters.stdout.contains("switch is broken while doing cli"),
        "{}",
        letters.stdout
    );
    let listed = cruster(&admin, &[], &["dead-letters", "--json"]).await;
    let parsed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(parsed["dead_letters"][0]["request_id"], id.as_str());

    node.switch.broken.store(false, Ordering::SeqCst);
    let retried = cruster(&admin, &[], &["dead-letters", "retry", &id]).await;
    assert!(retried.ok, "{}", retried.stderr);
    assert_eq!(retried.stdout, format!("retried dead letter {id}\n"));
    let gone = eventually(Duration::from_secs(10), || async {
        cruster(&admin, &[], &["dead-letters"]).await.stdout == "no dead letters\n"
    })
    .await;
    assert!(gone, "the retried dead letter is still listed");

    let second = node.dead_letter("cli-2").await;
    let purged = cruster(&admin, &[], &["dead-letters", "purge", "--all"]).await;
    assert_eq!(
        purged.stdout, "purged 1 dead letter(s)\n",
        "{}",
        purged.stderr
    );
    let unknown = cruster(&admin, &[], &["dead-letters", "purge", &second]).await;
    assert!(!unknown.ok);
    assert!(
        unknown.stderr.contains("the admin API answered 404"),
        "{}",
        unknown.stderr
    );

    let exec_id = node
        .shipments
        .start(&ShipRequest {
            order_id: "cli-order".into(),
        })
        .await
        .unwrap();
    let completed = eventually(Duration::from_secs(10), || async {
        cruster(&admin, &[], &["workflows", "--status", "completed"])
            .await
            .stdout
            .contains("cli-order")
    })
    .await;
    assert!(completed, "the workflow never showed as completed");
    let workflows = cruster(&admin, &[], &["workflows"]).await;
    assert!(
        workflows.stdout.starts_with("WORKFLOW"),
        "{}",
        workflows.stdout
    );
    assert!(
        workflows.stdout.contains("Shipment"),
        "{}",
        workflows.stdout
    );
    let shown = cruster(&admin, &[], &["workflows", "show", &exec_id]).await;
    assert!(shown.ok, "{}", shown.stderr);
    assert!(
        shown.stdout.contains("status    completed"),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains("pack"), "{}", shown.stdout);
    assert!(shown.stdout.contains("send_parcel"), "{}", shown.stdout);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_node_refuses_actions_and_the_token_comes_from_the_environment() {
    let node = Node::single(AdminOptions::default().bearer_token("t0ken")).await;
    let admin = node.admin_url();
    let refused = cruster(&admin, &[], &["status"]).await;
    assert!(!refused.ok);
    assert!(refused.stderr.contains("401"), "{}", refused.stderr);

    let token = [("CRUSTER_ADMIN_TOKEN", "t0ken")];
    let status = cruster(&admin, &token, &["status"]).await;
    assert!(status.ok, "{}", status.stderr);
    let retry = cruster(&admin, &token, &["dead-letters", "retry", "--all"]).await;
    assert!(!retry.ok);
    assert!(
        retry.stderr.contains("403") && retry.stderr.contains("read-only"),
        "{}",
        retry.stderr
    );
    node.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_runner_is_a_clear_error() {
    // Port 9 (discard) on loopback: nothing listens there in the test environment.
    let run = cruster("http://127.0.0.1:9", &[], &["status"]).await;
    assert!(!run.ok);
    assert!(
        run.stderr
            .starts_with("error: cannot reach the admin API at http://127.0.0.1:9"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--admin"), "{}", run.stderr);
    let bad = cruster("localhost:9090", &[], &["status"]).await;
    assert!(
        bad.stderr.contains("is not an admin address"),
        "{}",
        bad.stderr
    );
}
