//! PostgreSQL and SQLite implementations of cruster's storage ports:
//! [`SqlMessageStorage`] (`MessageStorage`), [`SqlWorkflowStorage`] (`WorkflowStorage`, with
//! activity transactions that are database transactions), [`SqlWorkflowEngine`]
//! (`WorkflowEngine`) and [`SqlRunnerStorage`] (`RunnerStorage` and `RunnerHealth`:
//! membership and shard locks, for a cluster on PostgreSQL alone).
//!
//! # Features
//!
//! * `postgres`: PostgreSQL, through `sqlx::PgPool`.
//! * `sqlite`: SQLite (bundled), through `sqlx::SqlitePool`.
//!
//! Both are off by default; the `cruster` crate turns them on through its own `postgres` /
//! `sqlite` features. With neither, this crate compiles to this page only.
//!
//! # Constructing a backend
//!
//! Each backend is built from a pool and creates its tables with `migrate()`:
//!
//! | database   | constructor                                    |
//! |------------|------------------------------------------------|
//! | PostgreSQL | `SqlMessageStorage::new(pg_pool)`              |
//! | SQLite     | `SqlMessageStorage::sqlite(sqlite_pool)`       |
//! | either     | `SqlMessageStorage::from_pool(pool)` with any `Into<`[`SqlPool`]`>` |
//!
//! The same holds for [`SqlWorkflowStorage`], [`SqlWorkflowEngine`] and
//! [`SqlRunnerStorage`]; all may share one pool, but give the runner storage a small pool
//! of its own ([`SqlRunnerStorage::connect_dedicated`]), so its lock renewals never wait
//! for a connection behind application work. [`SqlPool::connect`] opens a pool from a URL
//! (`postgres://…` or `sqlite:path`, the latter in WAL mode).
//!
//! ```no_run
//! # async fn run() -> Result<(), cruster_types::ClusterError> {
//! use cruster_storage_sql::{SqlMessageStorage, SqlWorkflowEngine, SqlWorkflowStorage};
//!
//! let pool = sqlx::PgPool::connect("postgres://cruster:cruster@127.0.0.1:5432/cruster").await?;
//! let messages = SqlMessageStorage::new(pool.clone());
//! messages.migrate().await?; // creates every table of this crate, once
//! let journal = SqlWorkflowStorage::new(pool.clone());
//! let engine = SqlWorkflowEngine::new(pool);
//! # Ok(()) }
//! ```
//!
//! # Schema
//!
//! One schema, created by embedded migrations (`migrations/postgres/`,
//! `migrations/sqlite/`, one numbered file per change, never edited once released), applied
//! by `migrate()` and recorded by sqlx in `_cruster_migrations`. Running `migrate()` again
//! does nothing; several runners may run it at once (PostgreSQL serialises them with an
//! advisory lock). A database migrated by a newer cruster (a migration this build does not
//! know) is refused with a `PersistenceError`.
//!
//! | table | key | holds |
//! |---|---|---|
//! | `cruster_messages` | `request_id` | persisted requests: the envelope spread over columns (address, tag, payload, flags, `deliver_at_ns`, `dedupe_key`, MessagePack trace context), `attempts`, `processed`, `dead_lettered`, `last_error` |
//! | `cruster_replies` | `(request_id, is_final, sequence)` | chunk and final replies (MessagePack `Reply`) |
//! | `cruster_journal` | `(execution_id, sequence, activity)` | activity journal entries (MessagePack `ExitResult`) |
//! | `cruster_activity_values` | `key` | key-value writes of activity transactions |
//! | `cruster_executions` | `execution_id` | workflow executions |
//! | `cruster_timers` | `(execution_id, timer_key)` | durable timers |
//! | `cruster_deferred` | `(execution_id, name)` | deferred values |
//! | `cruster_runners` | `address` | runner registrations: machine id (unique index), weight, `expires_at_ms` (database clock) |
//! | `cruster_shard_locks` | `shard` | shard locks: `owner` (indexed), `acquired_at_ms`, `expires_at_ms` (database clock) |
//!
//! Indexes serve the queries run on every send and poll: a partial index of pending
//! requests by `(shard, deliver_at_ns, request_id)`, a unique index on `(entity_type,
//! entity_id, shard, dedupe_key)` (dedupe keys are unique per entity address; it also serves
//! clearing an address), replies by their request id (primary key), a partial index of
//! uncompleted timers by `fire_at_ns`. Instants are stored as `BIGINT` unix nanoseconds, so
//! every record reads back exactly as written (a `TIMESTAMPTZ` keeps microseconds only).
//!
//! # Guarantees
//!
//! * Every write a method makes is one statement, or one transaction, and is durable when
//!   the method returns `Ok`. Hot-path writes (`save_request`, `save_reply`, journal
//!   commits, attempt counts) are single statements whose conflicts are resolved by the
//!   database (`ON CONFLICT`, `UPDATE … RETURNING`), so concurrent runners never lose or
//!   double an update; with group commit (below) several calls' rows share one statement
//!   or transaction, with the same conflict resolution.
//! * `unprocessed` takes no row locks: the runtime polls only shards it holds the lock of,
//!   so one shard's messages are polled by one runner at a time.
//! * A final reply marks its request processed in the same statement (a trigger on
//!   `cruster_replies`); a request saved after its reply starts out processed.
//! * Bad input never panics: an unreachable database or a refused schema gives
//!   `PersistenceError`; a stored row that does not decode gives `MalformedMessage` when
//!   read by id, and is dead-lettered (and logged) when met by `unprocessed`, which goes on
//!   serving the other rows.
//!
//! # Group commit
//!
//! [`SqlMessageStorage`] batches its two hot-path writes by default. Concurrent
//! `save_request` calls (and, separately, concurrent `save_reply` calls) of one storage and
//! its clones share a writer: a call finding it idle writes its own row at once, on its own
//! task, as the usual single-row statement (so a lone call's latency is unchanged); calls
//! arriving while a write is in the database queue up and are committed together next (up
//! to 256 calls): on PostgreSQL as one multi-row
//! `INSERT … SELECT … FROM UNNEST(…) ON CONFLICT DO NOTHING` statement, on SQLite as one
//! transaction. N callers waiting at the same time thus share one commit (and, on
//! PostgreSQL, one round trip). There is no timer.
//!
//! Answers are those of calls made one at a time: within a batch, a second save of a
//! request id, or of an address + dedupe key, is `Duplicate` naming the first; the first
//! final reply of a request wins. A call returns `Ok` only after the commit carrying its
//! row. If a batch fails (say one row holds data the database refuses), nothing of it was
//! stored and each of its calls is retried alone, so only the bad row's caller sees an
//! error. A task writes queued calls only while there are some.
//! [`SqlMessageStorage::with_group_commit`]`(false)` turns it off.
//!
//! [`SqlWorkflowEngine`] batches `upsert_execution` the same way (every workflow run's
//! `Running` record goes through it): one multi-row upsert on PostgreSQL, one transaction
//! on SQLite. An execution id repeated among the queued upserts is written after the
//! batch, so the later write still wins.
//!
//! # Activity transactions (`self.tx`)
//!
//! [`SqlWorkflowStorage::begin_activity`](cruster_workflow_storage::WorkflowStorage::begin_activity)
//! opens a database transaction; `ActivityTransaction::backend_mut()` is that
//! `sqlx::Transaction<'static, sqlx::Postgres>` (or `…, sqlx::Sqlite>`), which
//! [`postgres_transaction`] / [`sqlite_transaction`] downcast to. Writes made through it
//! commit together with the activity's journal entry, or not at all.
//!
//! On PostgreSQL ([`WorkflowStorage::chains_activities`](cruster_workflow_storage::WorkflowStorage::chains_activities))
//! the runtime chains a run's activities through one such transaction:
//! `carry_on` writes an activity's entry into it without committing, `mark` sets a
//! savepoint (`SAVEPOINT cruster_activity`) for the next activity, `rollback_to_mark`
//! discards only that activity's writes, and the chain commits once, with the execution's
//! end. SQLite refuses chains with `Unsupported` (one writer at a time: a chain would hold
//! the write lock between activities).
#![deny(missing_docs)]

/// The constructors and `migrate` every backend of this crate has.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
macro_rules! backend_constructors {
    ($backend:ident, $what:literal $(, $(#[$attr:meta])* $field:ident: $init:expr)* $(,)?) => {
        impl $backend {
            #[doc = concat!("A PostgreSQL ", $what, " on `pool`.")]
            ///
            /// Call `migrate()` once before first use (it is idempotent).
            #[cfg(feature = "postgres")]
            pub fn new(pool: sqlx::PgPool) -> Self {
                Self::from_pool(pool)
            }

            #[doc = concat!("A SQLite ", $what, " on `pool`.")]
            ///
            /// Open the pool on a file in WAL mode (as [`SqlPool::connect`] does for
            /// `sqlite:path`); call `migrate()` once before first use.
            #[cfg(feature = "sqlite")]
            pub fn sqlite(pool: sqlx::SqlitePool) -> Self {
                Self::from_pool(pool)
            }

            #[doc = concat!("A ", $what, " on a PostgreSQL or SQLite pool.")]
            pub fn from_pool(pool: impl Into<$crate::SqlPool>) -> Self {
                Self {
                    pool: pool.into(),
                    $($(#[$attr])* $field: $init,)*
                }
            }

            /// The pool this backend runs on.
            pub fn pool(&self) -> &$crate::SqlPool {
                &self.pool
            }

            /// Creates or upgrades this crate's tables (all of them, for every backend
            /// sharing the database). Idempotent; see [`SqlPool::migrate`].
            ///
            /// # Errors
            /// `PersistenceError` when the database cannot be reached or holds a schema
            /// from a newer cruster.
            pub async fn migrate(&self) -> Result<(), ::cruster_types::ClusterError> {
                self.pool.migrate().await
            }
        }
    };
}
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) use backend_constructors;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod batch_writer;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod dialect;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod execution_group_commit;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod finish;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod group_commit;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod message_storage;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod migrations;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod pool;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod queries;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod rows;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod runner_storage;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod workflow_engine;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod workflow_storage;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use message_storage::SqlMessageStorage;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use pool::SqlPool;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use runner_storage::SqlRunnerStorage;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use workflow_engine::SqlWorkflowEngine;
#[cfg(feature = "postgres")]
pub use workflow_storage::postgres_transaction;
#[cfg(feature = "sqlite")]
pub use workflow_storage::sqlite_transaction;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use workflow_storage::SqlWorkflowStorage;
