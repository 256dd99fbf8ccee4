//! A runner killed with SIGKILL between an activity's `self.tx` write and its commit: the
//! write is gone, and a restarted runner completes the workflow with each activity's
//! effect present exactly once (PostgreSQL). With no commit hold the first activity was
//! committed before the second began; with a hold the second continued the first's
//! transaction (a chain), so the kill takes both and the restart runs both again.
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
fn spawn_child(
    url: &str,
    schema: &str,
    mode: &str,
    hold_ms: &str,
) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(CHILD)
        .args([url, schema, mode, hold_ms])
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
    // No hold: step one is committed on its own before step two begins.
    kill_mid_step_then_finish("0", 1).await;
}

#[tokio::test]
async fn sigkill_inside_a_chain_takes_its_earlier_steps_and_restart_completes_once() {
    // A hold far longer than the test: step two continues step one's transaction, so
    // step one is not committed either when the process dies.
    kill_mid_step_then_finish("600000", 0).await;
}

/// Kills the child while step two's write is uncommitted, checks that `step_one_committed`
/// rows of step one (and as many journal entries) survived and none of step two, then
/// finishes the workflow in a new process and checks each effect is there exactly once.
async fn kill_mid_step_then_finish(hold_ms: &str, step_one_committed: i64) {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!(
            "\n==============================================================\n\
             SKIPPED: DATABASE_URL is not set, so this PostgreSQL test did not run.\n\
             Run `source .ci/services.sh` (CI always does) to start PostgreSQL.\n\
             ==============================================================\n"
        );
        return;
    };
    let schema = format!("cruster_sigkill_{}_{hold_ms}", std::process::id());
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
    let (mut child, lines) = spawn_child(&url, &schema, "block", hold_ms);
    wait_for(&lines, WRITTEN_NOT_COMMITTED, Duration::from_secs(60));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();

    assert_eq!(
        count(&pool, "SELECT COUNT(*) FROM effects WHERE step = 'one'").await,
        step_one_committed,
        "step one committed before the kill (hold {hold_ms} ms)"
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
        step_one_committed,
        "only a committed step one is journaled"
    );

    // 2. A new process on the same database finishes the workflow.
    let (mut child, lines) = spawn_child(&url, &schema, "finish", hold_ms);
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
