//! Shared set-up of the PostgreSQL and SQLite test files: a fresh, isolated database per
//! test, the conformance-suite test lists, and scenarios both dialects run.
//!
//! * PostgreSQL: every test gets its own schema in the database of `DATABASE_URL` (the
//!   pool's connections set `search_path` to it), so tests run in parallel without seeing
//!   each other; the schema is dropped when the test passes. Without `DATABASE_URL` a test
//!   prints `SKIPPED: DATABASE_URL is not set` and returns.
//! * SQLite: every test gets a file in its own temporary directory, opened in WAL mode.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod runner_scenarios;
pub mod scenarios;

use std::sync::atomic::{AtomicU32, Ordering};

use cruster_storage_sql::SqlPool;
use sqlx::AssertSqlSafe;

/// Which database a [`TestDatabase`] lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// A fresh database (PostgreSQL schema or SQLite file) for one test.
pub struct TestDatabase {
    pub dialect: Dialect,
    /// PostgreSQL: the server URL and the test's schema.
    postgres: Option<(String, String)>,
    /// SQLite: the directory holding the file (deleted on drop) and the file's URL.
    sqlite: Option<(tempfile::TempDir, String)>,
}

static NEXT_SCHEMA: AtomicU32 = AtomicU32::new(0);

impl TestDatabase {
    /// A fresh PostgreSQL schema, or `None` (after a loud message) without `DATABASE_URL`.
    pub async fn postgres() -> Option<TestDatabase> {
        let Ok(url) = std::env::var("DATABASE_URL") else {
            eprintln!(
                "\n==============================================================\n\
                 SKIPPED: DATABASE_URL is not set, so this PostgreSQL test did not run.\n\
                 Run `source .ci/services.sh` (CI always does) to start PostgreSQL.\n\
                 ==============================================================\n"
            );
            return None;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let schema = format!(
            "cruster_test_{}_{}_{}",
            std::process::id(),
            NEXT_SCHEMA.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        let admin = sqlx::PgPool::connect(&url)
            .await
            .expect("DATABASE_URL must point at a reachable PostgreSQL");
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        Some(TestDatabase {
            dialect: Dialect::Postgres,
            postgres: Some((url, schema)),
            sqlite: None,
        })
    }

    /// A fresh SQLite file in a temporary directory.
    pub async fn sqlite() -> TestDatabase {
        let dir = tempfile::Builder::new()
            .prefix("cruster-sqlite-test-")
            .tempdir()
            .unwrap();
        let url = format!("sqlite:{}", dir.path().join("cruster.db").display());
        TestDatabase {
            dialect: Dialect::Sqlite,
            postgres: None,
            sqlite: Some((dir, url)),
        }
    }

    /// A new pool on this database (a new one each call, as a restarted process would open).
    pub async fn open(&self) -> SqlPool {
        self.open_with_max_connections(16).await
    }

    /// [`open`](Self::open) with a pool of at most `max` connections.
    pub async fn open_with_max_connections(&self, max: u32) -> SqlPool {
        match (&self.postgres, &self.sqlite) {
            (Some((url, schema)), _) => {
                use std::str::FromStr;
                let options = sqlx::postgres::PgConnectOptions::from_str(url)
                    .unwrap()
                    .options([("search_path", schema.as_str())]);
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(max)
                    .connect_with(options)
                    .await
                    .unwrap();
                SqlPool::from(pool)
            }
            // As `SqlPool::connect` opens a file, with a chosen pool size.
            (_, Some((_, url))) => {
                use std::str::FromStr;
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                    .unwrap()
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                    .busy_timeout(std::time::Duration::from_secs(5));
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(max)
                    .connect_with(options)
                    .await
                    .unwrap();
                SqlPool::from(pool)
            }
            _ => unreachable!("a test database is PostgreSQL or SQLite"),
        }
    }

    /// A new pool with the schema migrated.
    pub async fn migrated(&self) -> SqlPool {
        let pool = self.open().await;
        pool.migrate().await.unwrap();
        pool
    }

    /// A migrated pool whose connections are all open already. Opening a PostgreSQL
    /// connection (SCRAM, in an unoptimised test build) takes long enough to outlast the
    /// runner-storage suite's 300 ms TTLs, so the timing checks must not pay for it.
    pub async fn migrated_and_warm(&self) -> SqlPool {
        let pool = self.migrated().await;
        match &pool {
            SqlPool::Postgres(pg) => {
                let size = pg.options().get_max_connections();
                let held = futures::future::join_all((0..size).map(|_| pg.acquire())).await;
                drop(held);
            }
            SqlPool::Sqlite(_) => {}
            _ => unreachable!("a test database is PostgreSQL or SQLite"),
        }
        pool
    }

    /// Runs statements as written (test set-up and deliberate damage).
    pub async fn execute(&self, pool: &SqlPool, sql: &str) {
        match pool {
            SqlPool::Postgres(pool) => {
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(pool)
                    .await
                    .unwrap();
            }
            SqlPool::Sqlite(pool) => {
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(pool)
                    .await
                    .unwrap();
            }
            _ => unreachable!("a test database is PostgreSQL or SQLite"),
        }
    }

    /// One integer read with a query (for checks the ports do not expose).
    pub async fn fetch_i64(&self, pool: &SqlPool, sql: &str) -> i64 {
        match pool {
            SqlPool::Postgres(pool) => sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
                .fetch_one(pool)
                .await
                .unwrap(),
            SqlPool::Sqlite(pool) => sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
                .fetch_one(pool)
                .await
                .unwrap(),
            _ => unreachable!("a test database is PostgreSQL or SQLite"),
        }
    }

    /// A binary literal in this dialect (`'\x…'::bytea` or `X'…'`).
    pub fn blob_literal(&self, hex: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("'\\x{hex}'::bytea"),
            Dialect::Sqlite => format!("X'{hex}'"),
        }
    }

    /// Removes the database (PostgreSQL: drops the schema; SQLite: the directory goes on
    /// drop). Called at the end of a passing test; a failing one leaves it for inspection.
    pub async fn remove(self) {
        if let Some((url, schema)) = &self.postgres {
            let admin = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
        }
    }
}

/// One test per conformance function, each on a fresh database from `$fresh` (an async
/// fn returning `Option<TestDatabase>`), once with the concrete backend and once through
/// `Arc<dyn Port>`. Functions that race tasks take an `Arc` and run multi-threaded.
#[macro_export]
macro_rules! sql_conformance_tests {
    (
        $module:ident, $fresh:path, $backend:ident, $port:path,
        by_ref: [$($name:ident),* $(,)?],
        by_arc: [$($racing:ident),* $(,)?] $(,)?
    ) => {
        mod $module {
            use super::*;
            mod direct {
                use super::*;
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let Some(db) = $fresh().await else { return };
                        conformance::$name(&$backend::from_pool(db.migrated().await)).await;
                        db.remove().await;
                    }
                )*
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $racing() {
                        let Some(db) = $fresh().await else { return };
                        conformance::$racing(Arc::new($backend::from_pool(db.migrated().await)))
                            .await;
                        db.remove().await;
                    }
                )*
            }
            mod as_dyn {
                use super::*;
                async fn backend(db: &TestDatabase) -> Arc<dyn $port> {
                    Arc::new($backend::from_pool(db.migrated().await))
                }
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let Some(db) = $fresh().await else { return };
                        conformance::$name(&*backend(&db).await).await;
                        db.remove().await;
                    }
                )*
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $racing() {
                        let Some(db) = $fresh().await else { return };
                        conformance::$racing(backend(&db).await).await;
                        db.remove().await;
                    }
                )*
            }
        }
    };
}

/// The whole conformance list of all three ports for one dialect, plus the suites'
/// `run_all` functions and the shared scenarios.
#[macro_export]
macro_rules! sql_backend_tests {
    ($fresh:path) => {
        use std::sync::Arc;

        use cruster_message_storage::MessageStorage;
        use cruster_storage_sql::{SqlMessageStorage, SqlWorkflowEngine, SqlWorkflowStorage};
        use cruster_workflow_storage::{WorkflowEngine, WorkflowStorage};

        mod message_storage {
            use super::*;
            use cruster_message_storage::conformance;
            $crate::sql_conformance_tests!(
                suite, $fresh, SqlMessageStorage, MessageStorage,
                by_ref: [
                    saved_request_is_returned_as_stored,
                    duplicate_save_returns_first_id,
                    duplicate_save_after_reply_returns_the_reply,
                    dedupe_key_duplicate_returns_first_reply,
                    dedupe_key_is_scoped_to_the_entity,
                    unprocessed_is_ordered_by_request_id,
                    unprocessed_only_returns_requested_shards,
                    future_deliver_at_is_not_returned_early,
                    limit_is_honoured,
                    final_reply_marks_processed,
                    chunks_are_returned_in_sequence_order,
                    saving_a_reply_twice_keeps_the_first,
                    reply_saved_before_its_request_is_kept,
                    mark_processed_removes_from_unprocessed,
                    failed_attempts_dead_letter_at_the_limit,
                    dead_letters_are_listed_oldest_first,
                    retried_dead_letter_is_pending_again,
                    retried_dead_letter_with_a_reply_is_processed,
                    purged_dead_letter_is_gone,
                    message_counts_are_per_shard_and_entity_type,
                    finished_requests_answers_replies_and_dead_letters,
                    processed_requests_past_retention_are_deleted_with_their_replies,
                    failed_attempt_is_not_due_before_retry_at,
                    start_attempts_counts_before_delivery,
                    counted_failure_is_not_counted_twice,
                    released_attempts_are_given_back,
                    poll_continues_after_the_cursor,
                    poll_skips_saturated_entities,
                    clear_address_deletes_requests_and_replies,
                    random_operations_match_a_model,
                ],
                by_arc: [
                    concurrent_saves_of_one_request_store_it_once,
                    concurrent_saves_of_one_dedupe_key_have_one_winner,
                    concurrent_writers_do_not_corrupt_state,
                ],
            );
        }

        mod workflow_storage {
            use super::*;
            use cruster_workflow_storage::conformance;
            $crate::sql_conformance_tests!(
                suite, $fresh, SqlWorkflowStorage, WorkflowStorage,
                by_ref: [
                    journal_entries_are_returned_exactly,
                    journal_is_sorted_by_sequence,
                    commit_applies_writes_and_entry_atomically,
                    transaction_reads_its_own_staged_writes,
                    rollback_applies_nothing,
                    dropped_transaction_applies_nothing,
                    second_commit_of_same_key_returns_already_recorded_and_discards_writes,
                    delete_journal_forgets_only_that_execution,
                    append_entry_stores_the_first_entry_at_a_position,
                    chained_transactions_commit_carried_entries_together,
                    held_back_entries_are_appended_all_or_none,
                    key_value_writes_are_supported_or_refused_explicitly,
                    journal_is_unique_by_execution_and_sequence,
                    random_transactions_match_a_model,
                ],
                by_arc: [
                    concurrent_commits_of_one_activity_have_exactly_one_winner,
                    concurrent_commits_of_different_activities_at_one_position_have_one_winner,
                ],
            );
        }

        mod workflow_engine {
            use super::*;
            use cruster_workflow_storage::conformance;
            $crate::sql_conformance_tests!(
                suite, $fresh, SqlWorkflowEngine, WorkflowEngine,
                by_ref: [
                    executions_upsert_and_list_by_filter,
                    parked_and_cancelled_executions_round_trip,
                    stopped_executions_are_answered_in_one_read,
                    cancellation_is_recorded_once_and_kept_by_upserts,
                    timers_are_due_only_after_fire_at,
                    scheduling_a_timer_twice_keeps_the_first,
                    completed_timers_are_not_due,
                    finished_executions_past_retention_are_deleted,
                    fired_timers_of_finished_executions_are_deleted,
                    deferred_values_are_write_once,
                    random_timer_operations_match_a_model,
                ],
                by_arc: [concurrent_resolves_of_one_deferred_have_exactly_one_winner],
            );
        }

        mod runner_storage {
            use super::*;
            $crate::sql_runner_conformance_tests!(
                $fresh,
                by_ref: [
                    register_assigns_unique_machine_ids,
                    runners_lists_live_runners_sorted_by_address,
                    machine_ids_of_departed_runners_are_reused,
                    registration_expires_without_keep_alive,
                    keep_alive_extends_registration,
                    keep_alive_reports_expired_registration,
                    unregister_releases_shard_locks,
                    watch_sees_joins_and_leaves,
                    watch_sees_expiry,
                    lock_is_exclusive,
                    lock_expires_after_ttl_and_can_be_stolen,
                    refresh_keeps_lock_and_omits_lost_ones,
                    release_only_frees_own_locks,
                    acquire_is_idempotent_for_the_owner,
                    random_lock_operations_match_a_single_owner_model,
                ],
                by_arc: [concurrent_acquisition_has_exactly_one_winner],
            );

            mod scenarios {
                use super::*;
                $crate::sql_runner_scenario_tests!(
                    $fresh,
                    lock_expiry_is_set_by_the_database_clock,
                    undecodable_runner_rows_are_skipped_not_fatal,
                    renewals_use_their_own_pool_while_the_application_pool_is_exhausted,
                    a_call_past_the_statement_timeout_is_a_persistence_error,
                    watch_of_another_storage_sees_changes_by_polling,
                );
            }
        }

        /// The suites' own `run_all` lists, with a fresh database per function, to catch a
        /// function added to a suite but not yet to the lists above.
        mod run_all {
            use super::*;

            /// Keeps every database a factory created until the suite is over.
            async fn run_with_databases<F, Fut>(suite: F)
            where
                F: FnOnce(Arc<tokio::sync::Mutex<Vec<TestDatabase>>>) -> Fut,
                Fut: std::future::Future<Output = ()>,
            {
                let databases = Arc::new(tokio::sync::Mutex::new(Vec::new()));
                suite(Arc::clone(&databases)).await;
                let databases = std::mem::take(&mut *databases.lock().await);
                for db in databases {
                    db.remove().await;
                }
            }

            async fn fresh_pool(
                databases: &tokio::sync::Mutex<Vec<TestDatabase>>,
            ) -> Option<cruster_storage_sql::SqlPool> {
                let db = $fresh().await?;
                let pool = db.migrated().await;
                databases.lock().await.push(db);
                Some(pool)
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn message_storage_suite_passes() {
                let Some(probe) = $fresh().await else { return };
                probe.remove().await;
                run_with_databases(|dbs| async move {
                    cruster_message_storage::conformance::run_all(|| {
                        let dbs = Arc::clone(&dbs);
                        async move {
                            SqlMessageStorage::from_pool(fresh_pool(&dbs).await.unwrap())
                        }
                    })
                    .await
                })
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn workflow_storage_suite_passes() {
                let Some(probe) = $fresh().await else { return };
                probe.remove().await;
                run_with_databases(|dbs| async move {
                    cruster_workflow_storage::conformance::run_all_storage(|| {
                        let dbs = Arc::clone(&dbs);
                        async move {
                            SqlWorkflowStorage::from_pool(fresh_pool(&dbs).await.unwrap())
                        }
                    })
                    .await
                })
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runner_storage_suite_passes() {
                let Some(probe) = $fresh().await else { return };
                let config = $crate::support::runner_suite_config(probe.dialect);
                probe.remove().await;
                run_with_databases(|dbs| async move {
                    cruster_runner_storage::conformance::run_all_with_health(
                        &config,
                        || {
                            let dbs = Arc::clone(&dbs);
                            async move {
                                let db = $fresh().await.unwrap();
                                let pool = db.migrated_and_warm().await;
                                dbs.lock().await.push(db);
                                cruster_storage_sql::SqlRunnerStorage::from_pool(pool)
                            }
                        },
                    )
                    .await
                })
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn workflow_engine_suite_passes() {
                let Some(probe) = $fresh().await else { return };
                probe.remove().await;
                run_with_databases(|dbs| async move {
                    cruster_workflow_storage::conformance::run_all_engine(|| {
                        let dbs = Arc::clone(&dbs);
                        async move {
                            SqlWorkflowEngine::from_pool(fresh_pool(&dbs).await.unwrap())
                        }
                    })
                    .await
                })
                .await;
            }
        }

        /// Behaviours beyond the ports' contracts: durability, migrations, bad input,
        /// activity transactions carrying the user's own SQL, races between two pools.
        mod scenarios {
            use super::*;
            $crate::sql_scenario_tests!(
                $fresh,
                everything_written_survives_reopening_the_database,
                migrating_twice_changes_nothing,
                migrating_a_journal_with_two_entries_at_one_position_keeps_the_first,
                migrating_to_retention_stamps_processed_requests_with_the_upgrade_instant,
                schema_from_a_newer_version_is_refused,
                undecodable_pending_row_is_dead_lettered_and_the_rest_still_served,
                undecodable_rows_read_by_id_are_malformed_not_panics,
                activity_sql_commits_with_its_journal_entry,
                activity_sql_is_discarded_by_rollback_and_by_a_lost_race,
                attempt_counts_from_two_pools_are_never_lost,
                final_replies_racing_from_two_pools_keep_the_first,
                finished_execution_is_stored_with_its_reply,
                held_back_steps_are_stored_with_the_end_of_their_run,
            );
        }
    };
}

/// One test per shared scenario of [`scenarios`], each on a fresh database.
#[macro_export]
macro_rules! sql_scenario_tests {
    ($fresh:path, $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(db) = $fresh().await else { return };
                $crate::support::scenarios::$name(&db).await;
                db.remove().await;
            }
        )*
    };
}

/// The timing of the runner-storage suite: 1 s TTLs (as for etcd) rather than the
/// default 300 ms. The model test runs 32 cases at once, each step a commit (with fsync:
/// a few ms each on a loaded CI machine, and SQLite runs the 32 commits one after the
/// other) and a few reads; at 300 ms two steps can outlast a short lock, which then
/// expires before the model expects it to.
pub fn runner_suite_config(_dialect: Dialect) -> cruster_runner_storage::conformance::SuiteConfig {
    cruster_runner_storage::conformance::SuiteConfig::with_short_ttl(
        std::time::Duration::from_secs(1),
    )
}

/// The runner-storage conformance list on fresh databases from `$fresh`: once on
/// `SqlRunnerStorage` itself and once through `Arc<dyn RunnerStorage>` (and
/// `Arc<dyn RunnerHealth>`), with the timing of [`runner_suite_config`].
#[macro_export]
macro_rules! sql_runner_conformance_tests {
    (
        $fresh:path,
        by_ref: [$($name:ident),* $(,)?],
        by_arc: [$($racing:ident),* $(,)?] $(,)?
    ) => {
        use cruster_runner_storage::conformance;
        use cruster_runner_storage::{RunnerHealth, RunnerStorage};
        use cruster_storage_sql::SqlRunnerStorage;

        mod direct {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $fresh().await else { return };
                    let storage = SqlRunnerStorage::from_pool(db.migrated_and_warm().await);
                    conformance::$name(&storage, &$crate::support::runner_suite_config(db.dialect)).await;
                    db.remove().await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $racing() {
                    let Some(db) = $fresh().await else { return };
                    let storage = Arc::new(SqlRunnerStorage::from_pool(db.migrated_and_warm().await));
                    conformance::$racing(storage, &$crate::support::runner_suite_config(db.dialect)).await;
                    db.remove().await;
                }
            )*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn health_follows_registration() {
                let Some(db) = $fresh().await else { return };
                let storage = SqlRunnerStorage::from_pool(db.migrated_and_warm().await);
                conformance::health_follows_registration(&storage, &storage, &$crate::support::runner_suite_config(db.dialect))
                    .await;
                db.remove().await;
            }
        }

        mod as_dyn {
            use super::*;
            async fn backend(db: &TestDatabase) -> Arc<dyn RunnerStorage> {
                Arc::new(SqlRunnerStorage::from_pool(db.migrated_and_warm().await))
            }
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $fresh().await else { return };
                    conformance::$name(&*backend(&db).await, &$crate::support::runner_suite_config(db.dialect)).await;
                    db.remove().await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $racing() {
                    let Some(db) = $fresh().await else { return };
                    conformance::$racing(backend(&db).await, &$crate::support::runner_suite_config(db.dialect)).await;
                    db.remove().await;
                }
            )*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn health_follows_registration() {
                let Some(db) = $fresh().await else { return };
                let concrete = Arc::new(SqlRunnerStorage::from_pool(db.migrated_and_warm().await));
                let storage: Arc<dyn RunnerStorage> = concrete.clone();
                let health: Arc<dyn RunnerHealth> = concrete;
                conformance::health_follows_registration(
                    &*storage,
                    &*health,
                    &$crate::support::runner_suite_config(db.dialect),
                )
                .await;
                db.remove().await;
            }
        }
    };
}

/// One test per runner-storage scenario of [`runner_scenarios`], each on a fresh database.
#[macro_export]
macro_rules! sql_runner_scenario_tests {
    ($fresh:path, $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(db) = $fresh().await else { return };
                $crate::support::runner_scenarios::$name(&db).await;
                db.remove().await;
            }
        )*
    };
}
