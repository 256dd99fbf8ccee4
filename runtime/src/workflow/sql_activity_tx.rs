//! `self.tx` as an `sqlx::Executor`: SQL written by an activity runs in the database
//! transaction that also records the activity's journal entry.
//!
//! sqlx ties an executor to one database through `Executor::Database`, so one type can be
//! an executor of one database only:
//!
//! * **PostgreSQL** (feature `postgres`): `&ActivityTx` itself is an
//!   `Executor<Database = Postgres>`, so the README's `query(..).execute(&self.tx)` works as
//!   written. [`ActivityTx::postgres`] gives the same executor by name.
//! * **SQLite** (feature `sqlite`): [`ActivityTx::sqlite`] returns a [`SqliteActivityTx`],
//!   an `Executor<Database = Sqlite>`: `query(..).execute(self.tx.sqlite())`.
//!
//! Each call locks the activity's transaction for its duration (concurrent calls from one
//! activity run one after the other), opening it at the activity's first statement (see
//! [`ActivityTx`]), and runs the statement on the open `sqlx::Transaction` of [`SqlWorkflowStorage`](crate::storage::sql_workflow::SqlWorkflowStorage).
//! Rows a query returns are read to the end before the lock is released, so
//! `fetch`/`fetch_many` buffer their results.
//!
//! # When the workflow storage is not SQL
//!
//! On any other workflow storage (memory, a custom backend), or a storage of the other SQL
//! dialect, every call fails with `sqlx::Error::Configuration` wrapping a
//! `ClusterError::Unsupported` that names the problem; nothing is written anywhere. With
//! `?` in an activity returning `Result<_, ClusterError>` it becomes that
//! `ClusterError::Unsupported` again (cruster-types unwraps it), so it is not retried as a
//! storage failure. Using `self.tx` after the activity returned fails the same way with
//! `InvalidConfig`.

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt};
use sqlx::Either;

use cruster_types::ClusterError;
use cruster_workflow_storage::ActivityTransaction;

use crate::workflow::ActivityTx;

/// The activity's transaction has been committed or rolled back already.
fn finished() -> sqlx::Error {
    sqlx::Error::Configuration(Box::new(ClusterError::InvalidConfig {
        field: "self.tx".into(),
        reason: "the activity's transaction was already committed or rolled back; use self.tx \
                 only while the activity runs"
            .into(),
    }))
}

/// The workflow storage has no database transaction of the wanted dialect.
fn unsupported(wanted: &str, tx: &mut dyn ActivityTransaction) -> sqlx::Error {
    let found = describe_backend(tx);
    sqlx::Error::Configuration(Box::new(ClusterError::Unsupported {
        operation: format!(
            "self.tx as a {wanted} executor (the workflow storage is {found}; \
             {wanted} writes through self.tx need SqlWorkflowStorage on a {wanted} pool{hint})",
            hint = hint(wanted, found)
        ),
        backend: "this workflow storage".into(),
    }))
}

fn hint(wanted: &str, found: &str) -> &'static str {
    match (wanted, found) {
        ("PostgreSQL", "SQLite") => ", or write through self.tx.sqlite() on SQLite",
        ("SQLite", "PostgreSQL") => ", or write through &self.tx on PostgreSQL",
        _ => "; nothing was written",
    }
}

#[allow(unused_variables)]
fn describe_backend(tx: &mut dyn ActivityTransaction) -> &'static str {
    #[cfg(feature = "postgres")]
    if cruster_storage_sql::postgres_transaction(tx).is_some() {
        return "PostgreSQL";
    }
    #[cfg(feature = "sqlite")]
    if cruster_storage_sql::sqlite_transaction(tx).is_some() {
        return "SQLite";
    }
    "not SQL-backed"
}

/// Implements `sqlx::Executor` for `$ty` on database `$db`, running every statement on the
/// activity's transaction found by `$downcast`.
macro_rules! activity_executor {
    ($ty:ty, $lt:lifetime, $db:ty, $name:literal, $downcast:path, |$this:ident| $tx:expr) => {
        impl<$lt> sqlx::Executor<$lt> for $ty {
            type Database = $db;

            fn fetch_many<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxStream<
                'e,
                Result<
                    Either<<$db as sqlx::Database>::QueryResult, <$db as sqlx::Database>::Row>,
                    sqlx::Error,
                >,
            >
            where
                $lt: 'e,
                E: 'q + sqlx::Execute<'q, Self::Database>,
            {
                let $this = self;
                let tx: &ActivityTx = $tx;
                let all = async move {
                    let mut slot = tx.open_transaction().await.map_err(not_opened)?;
                    let conn =
                        open::<$db>(slot.transaction().map_err(not_opened)?, $name, $downcast)?;
                    let items: Vec<_> = conn.fetch_many(query).collect().await;
                    Ok::<_, sqlx::Error>(items)
                };
                stream::once(all)
                    .flat_map(|result| match result {
                        Ok(items) => stream::iter(items).left_stream(),
                        Err(err) => stream::iter([Err(err)]).right_stream(),
                    })
                    .boxed()
            }

            fn execute<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxFuture<'e, Result<<$db as sqlx::Database>::QueryResult, sqlx::Error>>
            where
                $lt: 'e,
                E: 'q + sqlx::Execute<'q, Self::Database>,
            {
                let $this = self;
                let tx: &ActivityTx = $tx;
                Box::pin(async move {
                    let mut slot = tx.open_transaction().await.map_err(not_opened)?;
                    open::<$db>(slot.transaction().map_err(not_opened)?, $name, $downcast)?
                        .execute(query)
                        .await
                })
            }

            fn fetch_all<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxFuture<'e, Result<Vec<<$db as sqlx::Database>::Row>, sqlx::Error>>
            where
                $lt: 'e,
                E: 'q + sqlx::Execute<'q, Self::Database>,
            {
                let $this = self;
                let tx: &ActivityTx = $tx;
                Box::pin(async move {
                    let mut slot = tx.open_transaction().await.map_err(not_opened)?;
                    open::<$db>(slot.transaction().map_err(not_opened)?, $name, $downcast)?
                        .fetch_all(query)
                        .await
                })
            }

            fn fetch_optional<'e, 'q: 'e, E>(
                self,
                query: E,
            ) -> BoxFuture<'e, Result<Option<<$db as sqlx::Database>::Row>, sqlx::Error>>
            where
                $lt: 'e,
                E: 'q + sqlx::Execute<'q, Self::Database>,
            {
                let $this = self;
                let tx: &ActivityTx = $tx;
                Box::pin(async move {
                    let mut slot = tx.open_transaction().await.map_err(not_opened)?;
                    open::<$db>(slot.transaction().map_err(not_opened)?, $name, $downcast)?
                        .fetch_optional(query)
                        .await
                })
            }

            fn prepare_with<'e>(
                self,
                sql: sqlx::SqlStr,
                parameters: &'e [<$db as sqlx::Database>::TypeInfo],
            ) -> BoxFuture<'e, Result<<$db as sqlx::Database>::Statement, sqlx::Error>>
            where
                $lt: 'e,
            {
                let $this = self;
                let tx: &ActivityTx = $tx;
                Box::pin(async move {
                    let mut slot = tx.open_transaction().await.map_err(not_opened)?;
                    open::<$db>(slot.transaction().map_err(not_opened)?, $name, $downcast)?
                        .prepare_with(sql, parameters)
                        .await
                })
            }

            #[doc(hidden)]
            fn describe<'e>(
                self,
                sql: sqlx::SqlStr,
            ) -> BoxFuture<'e, Result<sqlx::Describe<$db>, sqlx::Error>>
            where
                $lt: 'e,
            {
                let $this = self;
                let tx: &ActivityTx = $tx;
                Box::pin(async move {
                    let mut slot = tx.open_transaction().await.map_err(not_opened)?;
                    open::<$db>(slot.transaction().map_err(not_opened)?, $name, $downcast)?
                        .describe(sql)
                        .await
                })
            }
        }
    };
}

/// The activity's transaction could not be opened (finished, or a pool or storage error);
/// `?` in an activity turns it back into the `ClusterError`.
fn not_opened(err: ClusterError) -> sqlx::Error {
    sqlx::Error::Configuration(Box::new(err))
}

/// The open database transaction, as a connection of `DB`.
fn open<'s, DB: sqlx::Database>(
    tx: &'s mut dyn ActivityTransaction,
    name: &str,
    downcast: fn(&mut dyn ActivityTransaction) -> Option<&mut sqlx::Transaction<'static, DB>>,
) -> Result<&'s mut DB::Connection, sqlx::Error> {
    // Probe first, then borrow again: the error path needs `tx` back, which the borrow
    // returned on the success path would not allow.
    if downcast(tx).is_none() {
        return Err(unsupported(name, tx));
    }
    downcast(tx).map(|open| &mut **open).ok_or_else(finished)
}

#[cfg(feature = "postgres")]
activity_executor!(
    &'c ActivityTx,
    'c,
    sqlx::Postgres,
    "PostgreSQL",
    cruster_storage_sql::postgres_transaction,
    |this| this
);

#[cfg(feature = "postgres")]
activity_executor!(
    PostgresActivityTx<'c>,
    'c,
    sqlx::Postgres,
    "PostgreSQL",
    cruster_storage_sql::postgres_transaction,
    |this| this.0
);

#[cfg(feature = "sqlite")]
activity_executor!(
    SqliteActivityTx<'c>,
    'c,
    sqlx::Sqlite,
    "SQLite",
    cruster_storage_sql::sqlite_transaction,
    |this| this.0
);

/// `self.tx` as a PostgreSQL `sqlx::Executor` (feature `postgres`), from
/// [`ActivityTx::postgres`]. `&self.tx` is the same executor; this name exists for symmetry
/// with [`SqliteActivityTx`].
#[cfg(feature = "postgres")]
#[derive(Clone, Copy, Debug)]
pub struct PostgresActivityTx<'a>(&'a ActivityTx);

/// `self.tx` as a SQLite `sqlx::Executor` (feature `sqlite`), from [`ActivityTx::sqlite`].
///
/// ```no_run
/// # use cruster::prelude::*;
/// # async fn activity(tx: &cruster::workflow::ActivityTx) -> Result<(), ClusterError> {
/// cruster::sqlx::query("INSERT INTO payments (order_id, amount) VALUES ($1, $2)")
///     .bind("order-42")
///     .bind(9900_i64)
///     .execute(tx.sqlite()) // in an activity: self.tx.sqlite()
///     .await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "sqlite")]
#[derive(Clone, Copy, Debug)]
pub struct SqliteActivityTx<'a>(&'a ActivityTx);

impl ActivityTx {
    /// This transaction as a PostgreSQL executor; the same as `&self.tx`.
    ///
    /// Fails at each call (with `sqlx::Error::Configuration` wrapping
    /// `ClusterError::Unsupported`) when the workflow storage is not PostgreSQL; see the
    /// [`sql_workflow`](crate::storage::sql_workflow) docs.
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> PostgresActivityTx<'_> {
        PostgresActivityTx(self)
    }

    /// This transaction as a SQLite executor: `query(..).execute(self.tx.sqlite())` writes in
    /// the activity's transaction on a SQLite workflow storage.
    ///
    /// Fails at each call (with `sqlx::Error::Configuration` wrapping
    /// `ClusterError::Unsupported`) when the workflow storage is not SQLite.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(&self) -> SqliteActivityTx<'_> {
        SqliteActivityTx(self)
    }
}
