//! How many commits each durable path costs on PostgreSQL, counted by the database itself:
//! row triggers record the transaction id of every write to the runtime's message, reply,
//! execution and journal tables, and the distinct ids are the commits. The README's table of
//! commits per path states these numbers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;

use cruster::prelude::*;
use cruster::sqlx::{self, PgPool};
use sql_support::{pg_exec, pg_i64, PgTestDb};

/// Every write to the audited tables, with the id of its transaction.
const AUDIT: &str = "
    CREATE TABLE commit_audit (tbl TEXT NOT NULL, xid BIGINT NOT NULL);
    CREATE FUNCTION commit_audit_write() RETURNS trigger AS $$
    BEGIN
        INSERT INTO commit_audit (tbl, xid) VALUES (TG_TABLE_NAME, txid_current());
        RETURN NULL;
    END $$ LANGUAGE plpgsql;
    CREATE TRIGGER audit_requests AFTER INSERT ON cruster_messages
        FOR EACH ROW EXECUTE FUNCTION commit_audit_write();
    CREATE TRIGGER audit_replies AFTER INSERT ON cruster_replies
        FOR EACH ROW EXECUTE FUNCTION commit_audit_write();
    CREATE TRIGGER audit_executions AFTER INSERT OR UPDATE ON cruster_executions
        FOR EACH ROW EXECUTE FUNCTION commit_audit_write();
    CREATE TRIGGER audit_journal AFTER INSERT ON cruster_journal
        FOR EACH ROW EXECUTE FUNCTION commit_audit_write();
    CREATE TABLE effects (id TEXT PRIMARY KEY);
";

/// The commits since the last call, and forgets them.
async fn commits(pool: &PgPool) -> i64 {
    let counted = pg_i64(pool, "SELECT count(DISTINCT xid) FROM commit_audit").await;
    pg_exec(pool, "DELETE FROM commit_audit").await;
    counted
}

#[entity]
#[derive(Clone)]
struct Echo;

#[entity_impl]
impl Echo {
    #[rpc(persisted)]
    pub async fn echo(&self, n: u64) -> Result<u64, ClusterError> {
        Ok(n)
    }
}

/// Three activities writing through `self.tx`.
#[workflow]
#[derive(Clone)]
struct ThreeSqlSteps;

#[workflow_impl(key = |job: &String| format!("sql-{job}"), hash = false)]
impl ThreeSqlSteps {
    async fn execute(&self, job: String) -> Result<u32, ClusterError> {
        for step in 1..=3u32 {
            self.write(job.clone(), step).await?;
        }
        Ok(3)
    }

    #[activity]
    async fn write(&self, job: String, step: u32) -> Result<(), ClusterError> {
        sqlx::query("INSERT INTO effects (id) VALUES ($1)")
            .bind(format!("{job}/{step}"))
            .execute(&self.tx)
            .await?;
        Ok(())
    }
}

/// Three activities that write nothing of their own.
#[workflow]
#[derive(Clone)]
struct ThreeJournalSteps;

#[workflow_impl(key = |job: &String| format!("journal-{job}"), hash = false)]
impl ThreeJournalSteps {
    async fn execute(&self, job: String) -> Result<u32, ClusterError> {
        let mut total = 0;
        for step in 1..=3u32 {
            total += self.add(job.clone(), step).await?;
        }
        Ok(total)
    }

    #[activity]
    async fn add(&self, _job: String, step: u32) -> Result<u32, ClusterError> {
        Ok(step)
    }
}

/// A runner on a fresh schema with the commit audit installed, holding activity commits
/// back for `hold`.
async fn audited_runner(hold: std::time::Duration) -> Option<(PgTestDb, PgPool, SingleRunner)> {
    let db = PgTestDb::new().await?;
    let pool = db.pool_with_max_connections(10).await;
    let config = ShardingConfig {
        workflow_commit_hold: hold,
        ..ShardingConfig::default()
    };
    let runner = SingleRunner::builder()
        .config(config)
        .postgres(pool.clone())
        .build()
        .await
        .unwrap();
    pg_exec(&pool, AUDIT).await;
    Some((db, pool, runner))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_durable_path_costs_the_commits_the_readme_states() {
    // A hold far longer than any pause between steps on a loaded machine, so the counts
    // below do not depend on timing (the default, 20 ms, gives the same counts whenever
    // the steps follow each other within it).
    let Some((db, pool, runner)) = audited_runner(std::time::Duration::from_secs(30)).await else {
        return;
    };
    let echo = Echo.register(runner.sharding().clone()).await.unwrap();
    let sql_steps = ThreeSqlSteps
        .register(runner.sharding().clone())
        .await
        .unwrap();
    let journal_steps = ThreeJournalSteps
        .register(runner.sharding().clone())
        .await
        .unwrap();

    // A persisted send: the request, then its reply (which marks it processed).
    assert_eq!(echo.echo(&EntityId::new("e-1"), &7).await.unwrap(), 7);
    assert_eq!(commits(&pool).await, 2, "persisted send");

    // A three-activity workflow writing through `self.tx`: the request, the `Running`
    // record, and one transaction the three activities chain through, committed with the
    // execution's end (record and reply).
    assert_eq!(sql_steps.execute(&"a".to_string()).await.unwrap(), 3);
    assert_eq!(commits(&pool).await, 3, "three SQL activities");
    assert_eq!(pg_i64(&pool, "SELECT count(*) FROM effects").await, 3);
    assert_eq!(
        pg_i64(
            &pool,
            "SELECT count(*) FROM cruster_executions \
             WHERE execution_id = 'sql-a' AND status = 'completed'"
        )
        .await,
        1,
        "the execution is recorded as completed"
    );
    assert_eq!(
        pg_i64(
            &pool,
            "SELECT count(*) FROM cruster_journal WHERE execution_id = 'sql-a'"
        )
        .await,
        3
    );

    // Journal-only activities chain the same way: the request, the `Running` record, and
    // one transaction holding the three entries and the end.
    assert_eq!(journal_steps.execute(&"b".to_string()).await.unwrap(), 6);
    assert_eq!(commits(&pool).await, 3, "three journal-only activities");

    // The same key again is answered from storage: no commit at all.
    assert_eq!(sql_steps.execute(&"a".to_string()).await.unwrap(), 3);
    assert_eq!(commits(&pool).await, 0, "a repeated execute");
    assert_eq!(pg_i64(&pool, "SELECT count(*) FROM effects").await, 3);

    runner.shutdown().await.unwrap();
    pool.close().await;
    db.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_hold_commits_every_activity_on_its_own() {
    let Some((db, pool, runner)) = audited_runner(std::time::Duration::ZERO).await else {
        return;
    };
    let sql_steps = ThreeSqlSteps
        .register(runner.sharding().clone())
        .await
        .unwrap();
    // The request, the `Running` record, each activity, and the end (record and reply).
    assert_eq!(sql_steps.execute(&"z".to_string()).await.unwrap(), 3);
    assert_eq!(commits(&pool).await, 6, "three SQL activities, no hold");
    assert_eq!(pg_i64(&pool, "SELECT count(*) FROM effects").await, 3);

    runner.shutdown().await.unwrap();
    pool.close().await;
    db.drop_schema().await;
}
