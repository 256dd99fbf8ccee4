//! A runner killed with SIGKILL between an activity's `self.tx` write and its commit: the
//! write is gone, and a restarted runner completes the workflow with each activity's
//! effect present exactly once (PostgreSQL).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Duration;

use cruster::sqlx::{self, postgres::PgConnectOptions, AssertSqlSafe, PgPool};
use cruster_tests::{WORKFLOW_DONE, WRITTEN_NOT_COMMITTED};

const CHILD: &str = env!("CARGO_BIN_EXE_sql_workflow_child");

/// Starts the child and returns it with a channel of its stdout lines.
fn spawn_child(url: &str, schema: &str, mode: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(CHILD)
        .args([url, schema, mode])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the child binary starts");
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (child, received)
}

fn wait_for(lines: &mpsc::Receiver<String>, prefix: &str, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => continue,
            Err(err) => panic!("the child never printed `{prefix}` ({err})"),
        }
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn sigkill_between_write_and_commit_leaves_nothing_and_restart_completes_once() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!(
            "\n==============================================================\n\
             SKIPPED: DATABASE_URL is not set, so this PostgreSQL test did not run.\n\
             Run `source .ci/services.sh` (CI always does) to start PostgreSQL.\n\
             ==============================================================\n"
        );
        return;
    };
    let schema = format!("cruster_sigkill_{}", std::process::id());
    let admin = PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; \
         CREATE TABLE {schema}.effects (job TEXT NOT NULL, step TEXT NOT NULL)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_with(
            PgConnectOptions::from_str(&url)
                .unwrap()
                .options([("search_path", schema.as_str())]),
        )
        .await
        .unwrap();

    // 1. The child writes step two through self.tx and blocks before committing: SIGKILL.
    let (mut child, lines) = spawn_child(&url, &schema, "block");
    wait_for(&lines, WRITTEN_NOT_COMMITTED, Duration::from_secs(60));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();

    assert_eq!(
        count(&pool, "SELECT COUNT(*) FROM effects WHERE step = 'one'").await,
        1,
        "step one committed before the kill"
    );
    assert_eq!(
        count(&pool, "SELECT COUNT(*) FROM effects WHERE step = 'two'").await,
        0,
        "step two's uncommitted write died with the process"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM cruster_journal WHERE execution_id = 'job-1'"
        )
        .await,
        1,
        "only step one is journaled"
    );

    // 2. A new process on the same database finishes the workflow.
    let (mut child, lines) = spawn_child(&url, &schema, "finish");
    let done = wait_for(&lines, WORKFLOW_DONE, Duration::from_secs(60));
    assert!(done.ends_with("job-1 done"), "{done}");
    assert!(child.wait().unwrap().success());

    let steps: Vec<(String, i64)> =
        sqlx::query_as("SELECT step, COUNT(*) FROM effects GROUP BY step ORDER BY step")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        steps,
        [("one".to_string(), 1), ("two".to_string(), 1)],
        "each activity's effect exactly once"
    );
    pool.close().await;
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}
