//! The README's SQL workflows on a real database: `OrderWorkflow` writing through `self.tx`,
//! `transfer_funds` in one transaction, the activity-group order workflow, atomicity of an
//! activity's writes with its journal entry, `self.tx.sqlite()`, and `self.tx` on a
//! storage that is not SQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sql_support;

use cruster::prelude::*;
use cruster::sqlx::{self, PgPool};
use cruster::types::ExitResult;
use cruster::workflow::workflow_journal;
use serde::{Deserialize, Serialize};
use sql_support::{pg_exec, pg_i64, sqlite_exec, sqlite_i64, PgTestDb, SqliteTestDb};

#[derive(Serialize, Deserialize, Clone)]
struct ProcessOrderRequest {
    order_id: String,
    item_count: u32,
    amount: i64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct OrderResult {
    order_id: String,
    status: String,
}

fn order(id: &str) -> ProcessOrderRequest {
    ProcessOrderRequest {
        order_id: id.into(),
        item_count: 3,
        amount: 9900,
    }
}

async fn pg_runner(db: &PgTestDb, tables: &str) -> Option<(SingleRunner, PgPool)> {
    let pool = db.pool().await;
    pg_exec(&pool, tables).await;
    let runner = SingleRunner::builder()
        .postgres(pool.clone())
        .build()
        .await
        .unwrap();
    Some((runner, pool))
}

mod readme_order {
    //! The README's `OrderWorkflow`, as written there.
    use super::*;

    #[workflow]
    #[derive(Clone)]
    pub(super) struct OrderWorkflow;

    #[workflow_impl(
        key = |req: &ProcessOrderRequest| req.order_id.clone(),
        hash = false,
    )]
    impl OrderWorkflow {
        async fn execute(&self, request: ProcessOrderRequest) -> Result<OrderResult, ClusterError> {
            // Each activity is journaled. On replay, completed steps return cached results.
            self.reserve_inventory(request.order_id.clone(), request.item_count)
                .await?;
            self.charge_payment(request.order_id.clone(), request.amount)
                .await?;
            self.confirm_order(request.order_id.clone()).await?;

            Ok(OrderResult {
                order_id: request.order_id,
                status: "completed".into(),
            })
        }

        #[activity]
        async fn reserve_inventory(
            &self,
            order_id: String,
            count: u32,
        ) -> Result<(), ClusterError> {
            // self.tx is an ActivityTx -- a SQL transaction committed atomically with the journal
            sqlx::query("INSERT INTO reservations (order_id, count) VALUES ($1, $2)")
                .bind(&order_id)
                .bind(count as i64)
                .execute(&self.tx)
                .await
                .map_err(|e| ClusterError::PersistenceError {
                    reason: e.to_string(),
                    source: Some(Box::new(e)),
                })?;
            Ok(())
        }

        #[activity]
        async fn charge_payment(&self, order_id: String, amount: i64) -> Result<(), ClusterError> {
            sqlx::query("INSERT INTO payments (order_id, amount) VALUES ($1, $2)")
                .bind(&order_id)
                .bind(amount)
                .execute(&self.tx)
                .await?;
            Ok(())
        }

        #[activity]
        async fn confirm_order(&self, order_id: String) -> Result<(), ClusterError> {
            sqlx::query("UPDATE orders SET status = 'confirmed' WHERE id = $1")
                .bind(&order_id)
                .execute(&self.tx)
                .await?;
            Ok(())
        }
    }

    #[tokio::test]
    async fn readme_order_workflow_writes_through_self_tx_on_postgres() {
        let Some(db) = PgTestDb::new().await else {
            return;
        };
        let (runner, pool) = pg_runner(
            &db,
            "CREATE TABLE reservations (order_id TEXT PRIMARY KEY, count BIGINT NOT NULL);
             CREATE TABLE payments (order_id TEXT PRIMARY KEY, amount BIGINT NOT NULL);
             CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT NOT NULL);
             INSERT INTO orders VALUES ('order-42', 'new');",
        )
        .await
        .unwrap();
        let client = OrderWorkflow
            .register(runner.sharding().clone())
            .await
            .unwrap();
        let result = client.execute(&order("order-42")).await.unwrap();
        assert_eq!(result.status, "completed");
        // Executing again returns the stored result; nothing runs twice.
        let again = client.execute(&order("order-42")).await.unwrap();
        assert_eq!(again, result);

        assert_eq!(
            pg_i64(
                &pool,
                "SELECT count FROM reservations WHERE order_id = 'order-42'"
            )
            .await,
            3
        );
        assert_eq!(
            pg_i64(
                &pool,
                "SELECT amount FROM payments WHERE order_id = 'order-42'"
            )
            .await,
            9900
        );
        let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = 'order-42'")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(status, "confirmed");
        assert_eq!(
            pg_i64(
                &pool,
                "SELECT COUNT(*) FROM cruster_journal WHERE execution_id = 'order-42'"
            )
            .await,
            3,
            "one journal entry per activity"
        );
        runner.shutdown().await.unwrap();
        pool.close().await;
        db.drop_schema().await;
    }
}

mod transfer {
    //! The README's `transfer_funds`: two updates in the activity's one transaction.
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub(super) struct Transfer {
        from: String,
        to: String,
        amount: i64,
    }

    #[workflow]
    #[derive(Clone)]
    struct TransferWorkflow;

    #[workflow_impl(key = |req: &Transfer| format!("{}->{}:{}", req.from, req.to, req.amount))]
    impl TransferWorkflow {
        async fn execute(&self, request: Transfer) -> Result<(), ClusterError> {
            self.transfer_funds(request.from, request.to, request.amount)
                .await
        }

        #[activity]
        async fn transfer_funds(
            &self,
            from: String,
            to: String,
            amount: i64,
        ) -> Result<(), ClusterError> {
            sqlx::query("UPDATE accounts SET balance = balance - $2 WHERE id = $1")
                .bind(&from)
                .bind(amount)
                .execute(&self.tx) // committed with journal
                .await?;

            sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
                .bind(&to)
                .bind(amount)
                .execute(&self.tx) // same transaction
                .await?;

            Ok(())
        }
    }

    #[tokio::test]
    async fn transfer_funds_moves_money_in_one_transaction_on_postgres() {
        let Some(db) = PgTestDb::new().await else {
            return;
        };
        // A balance may not go negative: the second transfer's debit fails, and its
        // credit (never reached) and debit both roll back with the journal entry.
        let (runner, pool) = pg_runner(
            &db,
            "CREATE TABLE accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL CHECK (balance >= 0));
             INSERT INTO accounts VALUES ('alice', 100), ('bob', 0);",
        )
        .await
        .unwrap();
        let client = TransferWorkflow
            .register(runner.sharding().clone())
            .await
            .unwrap();
        client
            .execute(&Transfer {
                from: "alice".into(),
                to: "bob".into(),
                amount: 60,
            })
            .await
            .unwrap();
        let overdraft = client
            .execute(&Transfer {
                from: "alice".into(),
                to: "bob".into(),
                amount: 50,
            })
            .await;
        assert!(overdraft.is_err(), "alice has only 40 left");
        assert_eq!(
            pg_i64(&pool, "SELECT balance FROM accounts WHERE id = 'alice'").await,
            40
        );
        assert_eq!(
            pg_i64(&pool, "SELECT balance FROM accounts WHERE id = 'bob'").await,
            60
        );
        assert_eq!(
            pg_i64(
                &pool,
                "SELECT COUNT(*) FROM cruster_journal WHERE activity = 'transfer_funds'"
            )
            .await,
            2,
            "the successful transfer and the failed one's failure record"
        );
        runner.shutdown().await.unwrap();
        pool.close().await;
        db.drop_schema().await;
    }
}

mod groups {
    //! The README's activity-group version of the order workflow.
    use super::*;

    #[activity_group]
    #[derive(Clone)]
    struct Inventory;

    #[activity_group_impl]
    impl Inventory {
        #[activity]
        async fn reserve(&self, order_id: String, count: u32) -> Result<String, ClusterError> {
            let id = format!("res-{order_id}-{count}");
            sqlx::query("INSERT INTO reservations (id, order_id, count) VALUES ($1, $2, $3)")
                .bind(&id)
                .bind(&order_id)
                .bind(count as i64)
                .execute(&self.tx)
                .await?;
            Ok(id)
        }
    }

    #[activity_group]
    #[derive(Clone)]
    struct Payments;

    #[activity_group_impl]
    impl Payments {
        #[activity]
        async fn charge(&self, order_id: String, amount: i64) -> Result<String, ClusterError> {
            let tx_id = format!("tx-{order_id}");
            sqlx::query("INSERT INTO payments (id, order_id, amount) VALUES ($1, $2, $3)")
                .bind(&tx_id)
                .bind(&order_id)
                .bind(amount)
                .execute(&self.tx)
                .await?;
            Ok(tx_id)
        }
    }

    #[workflow]
    #[derive(Clone)]
    struct OrderWorkflow;

    #[workflow_impl(
        key = |req: &ProcessOrderRequest| req.order_id.clone(),
        hash = false,
        activity_groups(Inventory, Payments)
    )]
    impl OrderWorkflow {
        async fn execute(&self, request: ProcessOrderRequest) -> Result<OrderResult, ClusterError> {
            // Call activities from composed groups
            let reservation_id = self
                .reserve(request.order_id.clone(), request.item_count)
                .await?;
            let tx_id = self
                .charge(request.order_id.clone(), request.amount)
                .await?;

            // Local activities work alongside group activities
            self.finalize(request.order_id.clone(), reservation_id, tx_id)
                .await?;

            Ok(OrderResult {
                order_id: request.order_id,
                status: "done".into(),
            })
        }

        #[activity]
        async fn finalize(
            &self,
            order_id: String,
            res_id: String,
            tx_id: String,
        ) -> Result<(), ClusterError> {
            sqlx::query(
                "UPDATE orders SET status = 'done', reservation = $2, payment = $3 WHERE id = $1",
            )
            .bind(&order_id)
            .bind(&res_id)
            .bind(&tx_id)
            .execute(&self.tx)
            .await?;
            Ok(())
        }
    }

    #[tokio::test]
    async fn activity_group_order_workflow_writes_through_self_tx_on_postgres() {
        let Some(db) = PgTestDb::new().await else {
            return;
        };
        let (runner, pool) = pg_runner(
            &db,
            "CREATE TABLE reservations (id TEXT PRIMARY KEY, order_id TEXT NOT NULL, count BIGINT NOT NULL);
             CREATE TABLE payments (id TEXT PRIMARY KEY, order_id TEXT NOT NULL, amount BIGINT NOT NULL);
             CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT NOT NULL, reservation TEXT, payment TEXT);
             INSERT INTO orders (id, status) VALUES ('order-7', 'new');",
        )
        .await
        .unwrap();
        let client = OrderWorkflow
            .register(runner.sharding().clone(), Inventory, Payments)
            .await
            .unwrap();
        let result = client.execute(&order("order-7")).await.unwrap();
        assert_eq!(result.status, "done");
        let row: (String, String, String) =
            sqlx::query_as("SELECT status, reservation, payment FROM orders WHERE id = 'order-7'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            row,
            ("done".into(), "res-order-7-3".into(), "tx-order-7".into())
        );
        assert_eq!(pg_i64(&pool, "SELECT COUNT(*) FROM reservations").await, 1);
        assert_eq!(pg_i64(&pool, "SELECT COUNT(*) FROM payments").await, 1);
        runner.shutdown().await.unwrap();
        pool.close().await;
        db.drop_schema().await;
    }
}

mod atomicity {
    //! An activity's `self.tx` writes and its journal entry commit together or not at all.
    use super::*;

    #[workflow]
    #[derive(Clone)]
    struct WriteThenMaybeFail;

    #[workflow_impl(key = |req: &(String, bool)| req.0.clone(), hash = false)]
    impl WriteThenMaybeFail {
        async fn execute(&self, request: (String, bool)) -> Result<(), ClusterError> {
            self.write(request.0, request.1).await
        }

        #[activity]
        async fn write(&self, id: String, fail: bool) -> Result<(), ClusterError> {
            sqlx::query("INSERT INTO effects (id) VALUES ($1)")
                .bind(&id)
                .execute(&self.tx)
                .await?;
            if fail {
                return Err(ClusterError::Handler {
                    message: format!("{id} failed after writing"),
                });
            }
            Ok(())
        }
    }

    fn journal_of(id: &str) -> String {
        format!("SELECT COUNT(*) FROM cruster_journal WHERE execution_id = '{id}'")
    }

    /// The journal of `execution_id`, as (activity, succeeded) pairs. A final failure is
    /// journaled on its own, after the activity's transaction rolled back, so replays
    /// return the same error; it carries none of the activity's writes.
    async fn outcomes(runner: &SingleRunner, execution_id: &str) -> Vec<(String, bool)> {
        workflow_journal(runner.sharding(), execution_id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.key.name, matches!(e.result, ExitResult::Success(_))))
            .collect()
    }

    fn effects_of(id: &str) -> String {
        format!("SELECT COUNT(*) FROM effects WHERE id = '{id}'")
    }

    #[tokio::test]
    async fn failed_activity_leaves_no_rows_and_no_success_entry_and_success_leaves_both_on_postgres(
    ) {
        let Some(db) = PgTestDb::new().await else {
            return;
        };
        let (runner, pool) = pg_runner(&db, "CREATE TABLE effects (id TEXT PRIMARY KEY)")
            .await
            .unwrap();
        let client = WriteThenMaybeFail
            .register(runner.sharding().clone())
            .await
            .unwrap();
        let err = client
            .execute(&("bad".to_string(), true))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("failed after writing"), "{err}");
        assert_eq!(
            pg_i64(&pool, &effects_of("bad")).await,
            0,
            "write rolled back"
        );
        assert_eq!(
            outcomes(&runner, "bad").await,
            [("write".to_string(), false)],
            "no success entry: only the failure is recorded"
        );

        client.execute(&("good".to_string(), false)).await.unwrap();
        assert_eq!(
            pg_i64(&pool, &effects_of("good")).await,
            1,
            "write committed"
        );
        assert_eq!(
            pg_i64(&pool, &journal_of("good")).await,
            1,
            "with its entry"
        );
        runner.shutdown().await.unwrap();
        pool.close().await;
        db.drop_schema().await;
    }

    /// The same workflow written for SQLite, through `self.tx.sqlite()`.
    #[workflow]
    #[derive(Clone)]
    struct SqliteWriteThenMaybeFail;

    #[workflow_impl(key = |req: &(String, bool)| req.0.clone(), hash = false)]
    impl SqliteWriteThenMaybeFail {
        async fn execute(&self, request: (String, bool)) -> Result<(), ClusterError> {
            self.write(request.0, request.1).await
        }

        #[activity]
        async fn write(&self, id: String, fail: bool) -> Result<(), ClusterError> {
            sqlx::query("INSERT INTO effects (id) VALUES ($1)")
                .bind(&id)
                .execute(self.tx.sqlite())
                .await?;
            let (seen,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM effects WHERE id = $1")
                .bind(&id)
                .fetch_one(self.tx.sqlite())
                .await?;
            assert_eq!(seen, 1, "the activity reads its own uncommitted write");
            if fail {
                return Err(ClusterError::Handler {
                    message: format!("{id} failed after writing"),
                });
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn failed_activity_leaves_no_rows_and_no_success_entry_and_success_leaves_both_on_sqlite()
    {
        let db = SqliteTestDb::new();
        let pool = db.pool().await;
        sqlite_exec(&pool, "CREATE TABLE effects (id TEXT PRIMARY KEY)").await;
        let runner = SingleRunner::builder()
            .sqlite(pool.clone())
            .build()
            .await
            .unwrap();
        let client = SqliteWriteThenMaybeFail
            .register(runner.sharding().clone())
            .await
            .unwrap();
        client
            .execute(&("bad".to_string(), true))
            .await
            .unwrap_err();
        assert_eq!(
            sqlite_i64(&pool, &effects_of("bad")).await,
            0,
            "write rolled back"
        );
        assert_eq!(
            outcomes(&runner, "bad").await,
            [("write".to_string(), false)],
            "no success entry: only the failure is recorded"
        );
        client.execute(&("good".to_string(), false)).await.unwrap();
        assert_eq!(sqlite_i64(&pool, &effects_of("good")).await, 1);
        assert_eq!(sqlite_i64(&pool, &journal_of("good")).await, 1);
        runner.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn self_tx_on_memory_storage_is_a_clear_unsupported_error_and_writes_nothing() {
        let runner = SingleRunner::builder().build().await.unwrap();
        let client = WriteThenMaybeFail
            .register(runner.sharding().clone())
            .await
            .unwrap();
        let err = client.execute(&("m".to_string(), false)).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("self.tx as a PostgreSQL executor") && text.contains("not SQL-backed"),
            "says what is unsupported: {text}"
        );
        runner.shutdown().await.unwrap();
    }
}
