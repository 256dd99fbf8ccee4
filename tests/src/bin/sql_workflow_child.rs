//! A single cruster node on PostgreSQL that runs one two-activity workflow whose activities
//! write through `self.tx`, for the SIGKILL test (`tests/sql_sigkill.rs`).
//!
//! `sql_workflow_child <database url> <schema> <block|finish> <commit hold in ms>`
//!
//! * `block`: the second activity writes its row, prints `WRITTEN-NOT-COMMITTED` and waits
//!   forever before returning, so its transaction stays open until the parent kills the
//!   process.
//! * `finish`: runs (or resumes) the workflow to the end and prints `WORKFLOW-DONE`.
//!
//! The hold is `workflow_commit_hold`: 0 commits the first activity before the second
//! begins; a long one makes the second continue the first's transaction (a chain).

use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

use cruster::prelude::*;
use cruster::sqlx::{self, postgres::PgConnectOptions, postgres::PgPoolOptions};
use cruster_tests::{WORKFLOW_DONE, WRITTEN_NOT_COMMITTED};

#[workflow]
#[derive(Clone)]
struct TwoStepWorkflow {
    block: bool,
}

#[workflow_impl(key = |job: &String| job.clone(), hash = false)]
impl TwoStepWorkflow {
    async fn execute(&self, job: String) -> Result<String, ClusterError> {
        self.step(job.clone(), "one".into()).await?;
        self.last_step(job.clone()).await?;
        Ok(format!("{job} done"))
    }

    #[activity]
    async fn step(&self, job: String, name: String) -> Result<(), ClusterError> {
        sqlx::query("INSERT INTO effects (job, step) VALUES ($1, $2)")
            .bind(&job)
            .bind(&name)
            .execute(&self.tx)
            .await?;
        Ok(())
    }

    #[activity]
    async fn last_step(&self, job: String) -> Result<(), ClusterError> {
        sqlx::query("INSERT INTO effects (job, step) VALUES ($1, 'two')")
            .bind(&job)
            .execute(&self.tx)
            .await?;
        if self.block {
            say(WRITTEN_NOT_COMMITTED);
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, schema, mode, hold_ms] = args.as_slice() else {
        return Err(
            "usage: sql_workflow_child <database url> <schema> <block|finish> <hold ms>".into(),
        );
    };
    let hold = Duration::from_millis(hold_ms.parse()?);
    let options = PgConnectOptions::from_str(url)?.options([("search_path", schema.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?;
    let runner = SingleRunner::builder()
        .config(ShardingConfig {
            storage_poll_interval: Duration::from_millis(50),
            workflow_commit_hold: hold,
            ..Default::default()
        })
        .postgres(pool)
        // The killed process cannot release its lease: wait (briefly) for it to expire.
        .lease_ttl(Duration::from_millis(600))
        .standby(true)
        .build()
        .await?;
    let client = TwoStepWorkflow {
        block: mode == "block",
    }
    .register(runner.sharding().clone())
    .await?;
    let result = client.execute(&"job-1".to_string()).await?;
    say(&format!("{WORKFLOW_DONE} {result}"));
    runner.shutdown().await?;
    Ok(())
}
