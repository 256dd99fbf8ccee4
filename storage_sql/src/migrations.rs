//! The embedded schema migrations, one list per dialect.
//!
//! `sqlx::migrate!` needs sqlx's `macros` feature, which builds the database drivers a
//! second time for the host; instead each migration file is embedded with `include_str!`
//! and handed to [`Migrator::with_migrations`]. The effect is the same: the SQL is compiled
//! into the binary, sqlx checksums every file and records what it applied, and running the
//! migrator again applies only what is new. A released file is never edited (sqlx would
//! report the checksum mismatch); a change is a new, higher-numbered file added to the
//! list below.
//!
//! Applied versions are recorded in `_cruster_migrations` rather than sqlx's default
//! `_sqlx_migrations`, so an application that runs its own sqlx migrations against the
//! same database keeps its own history and neither side sees the other's versions as
//! "missing".

use std::borrow::Cow;

use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::SqlSafeStr;

use cruster_types::ClusterError;

/// The table recording applied migrations.
pub(crate) const MIGRATIONS_TABLE: &str = "_cruster_migrations";

/// One embedded migration file: version, description, SQL.
type Embedded = (i64, &'static str, &'static str);

#[cfg(feature = "postgres")]
const POSTGRES: &[Embedded] = &[
    (
        1,
        "initial schema",
        include_str!("../migrations/postgres/0001_initial_schema.sql"),
    ),
    (
        2,
        "single node lease",
        include_str!("../migrations/postgres/0002_single_node_lease.sql"),
    ),
    (
        3,
        "runner storage",
        include_str!("../migrations/postgres/0003_runner_storage.sql"),
    ),
    (
        4,
        "redelivery backoff and fair poll",
        include_str!("../migrations/postgres/0004_redelivery_backoff_and_fair_poll.sql"),
    ),
    (
        5,
        "journal unique by position",
        include_str!("../migrations/postgres/0005_journal_unique_by_position.sql"),
    ),
    (
        6,
        "workflow cancellation and parking",
        include_str!("../migrations/postgres/0006_workflow_cancellation_and_parking.sql"),
    ),
    (
        7,
        "retention",
        include_str!("../migrations/postgres/0007_retention.sql"),
    ),
    (
        8,
        "mark processed per statement",
        include_str!("../migrations/postgres/0008_mark_processed_per_statement.sql"),
    ),
];

#[cfg(feature = "sqlite")]
const SQLITE: &[Embedded] = &[
    (
        1,
        "initial schema",
        include_str!("../migrations/sqlite/0001_initial_schema.sql"),
    ),
    (
        2,
        "single node lease",
        include_str!("../migrations/sqlite/0002_single_node_lease.sql"),
    ),
    (
        3,
        "runner storage",
        include_str!("../migrations/sqlite/0003_runner_storage.sql"),
    ),
    (
        4,
        "redelivery backoff and fair poll",
        include_str!("../migrations/sqlite/0004_redelivery_backoff_and_fair_poll.sql"),
    ),
    (
        5,
        "journal unique by position",
        include_str!("../migrations/sqlite/0005_journal_unique_by_position.sql"),
    ),
    (
        6,
        "workflow cancellation and parking",
        include_str!("../migrations/sqlite/0006_workflow_cancellation_and_parking.sql"),
    ),
    (
        7,
        "retention",
        include_str!("../migrations/sqlite/0007_retention.sql"),
    ),
    (
        8,
        "mark processed per statement",
        include_str!("../migrations/sqlite/0008_mark_processed_per_statement.sql"),
    ),
];

fn migrator(files: &[Embedded]) -> Migrator {
    let migrations = files
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

/// The PostgreSQL migrator. It takes a database-wide advisory lock while it runs, so
/// runners starting together migrate one after the other.
#[cfg(feature = "postgres")]
pub(crate) fn postgres() -> Migrator {
    migrator(POSTGRES)
}

/// The SQLite migrator.
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite() -> Migrator {
    migrator(SQLITE)
}

/// A migration failure as a `PersistenceError` that says what to do about it.
pub(crate) fn migration_error(backend: &str, err: MigrateError) -> ClusterError {
    let reason = match &err {
        MigrateError::VersionMissing(version) => format!(
            "the {backend} database was migrated by a newer cruster (its migration {version} \
             is unknown to this build): upgrade this runner, or point it at another database"
        ),
        MigrateError::VersionMismatch(version) => format!(
            "migration {version} applied to the {backend} database differs from the one in \
             this build: a released migration was edited; restore it and add a new migration"
        ),
        MigrateError::Dirty(version) => format!(
            "migration {version} of the {backend} database is partially applied: repair it by \
             hand and remove its row from `{MIGRATIONS_TABLE}`"
        ),
        other => format!("migrating the {backend} database failed: {other}"),
    };
    ClusterError::PersistenceError {
        reason,
        source: Some(Box::new(err)),
    }
}
