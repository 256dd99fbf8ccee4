//! What differs between PostgreSQL and SQLite, in one place.
//!
//! [`per_dialect!`] matches a pool (or an open transaction) and runs the same body for
//! whichever database it holds, with `d` naming that dialect's module: `d::sql` for its
//! statements and `d::shard_list` for binding a list of shards. The body is compiled once
//! per dialect, so it is checked against each driver's own types.

/// Runs `$body` for the dialect `$value` (a `SqlPool` or a transaction enum) holds.
///
/// `$enum` is the enum's name (in scope at the call site); `$inner` binds the variant's
/// payload and `$d` the dialect module (`crate::dialect::postgres` or `::sqlite`).
macro_rules! per_dialect {
    ($value:expr, $enum:ident, |$inner:ident, $d:ident| $body:expr) => {
        match $value {
            #[cfg(feature = "postgres")]
            $enum::Postgres($inner) => {
                #[allow(unused_imports)]
                use $crate::dialect::postgres as $d;
                $body
            }
            #[cfg(feature = "sqlite")]
            $enum::Sqlite($inner) => {
                #[allow(unused_imports)]
                use $crate::dialect::sqlite as $d;
                $body
            }
        }
    };
}
pub(crate) use per_dialect;

/// PostgreSQL: shard lists are bound as `TEXT[]`.
#[cfg(feature = "postgres")]
pub(crate) mod postgres {
    use cruster_types::{ClusterError, ShardId, Snowflake};

    pub(crate) use crate::queries::postgres as sql;

    /// The database's display name.
    pub(crate) const NAME: &str = "PostgreSQL";

    /// The embedded migrations.
    pub(crate) fn migrator() -> sqlx::migrate::Migrator {
        crate::migrations::postgres()
    }

    /// The shards as a `TEXT[]` parameter of `group:number` strings.
    pub(crate) fn shard_list(shards: &[ShardId]) -> Result<Vec<String>, ClusterError> {
        Ok(shards.iter().map(ToString::to_string).collect())
    }

    /// Request ids as a `BIGINT[]` parameter.
    pub(crate) fn id_list(ids: &[Snowflake]) -> Result<Vec<i64>, ClusterError> {
        Ok(ids.iter().map(|id| id.0).collect())
    }

    /// Strings (execution ids) as a `TEXT[]` parameter.
    pub(crate) fn text_list(texts: &[String]) -> Result<Vec<String>, ClusterError> {
        Ok(texts.to_vec())
    }

    /// Writes `finish` in the open transaction `tx`.
    pub(crate) async fn write_finish(
        finish: &crate::finish::Finish<'_>,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> Result<(), sqlx::Error> {
        finish.write_postgres(&mut **tx).await
    }
}

/// SQLite: shard lists are bound as one JSON array, unpacked with `json_each`.
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite {
    use cruster_types::{ClusterError, ShardId, Snowflake};

    pub(crate) use crate::queries::sqlite as sql;

    /// The database's display name.
    pub(crate) const NAME: &str = "SQLite";

    /// The embedded migrations.
    pub(crate) fn migrator() -> sqlx::migrate::Migrator {
        crate::migrations::sqlite()
    }

    /// The shards as a JSON array of `group:number` strings.
    pub(crate) fn shard_list(shards: &[ShardId]) -> Result<String, ClusterError> {
        let names: Vec<String> = shards.iter().map(ToString::to_string).collect();
        serde_json::to_string(&names)
            .map_err(|e| ClusterError::malformed("cannot encode the shard list as JSON", e))
    }

    /// Request ids as a JSON array.
    pub(crate) fn id_list(ids: &[Snowflake]) -> Result<String, ClusterError> {
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        serde_json::to_string(&ids)
            .map_err(|e| ClusterError::malformed("cannot encode the request ids as JSON", e))
    }

    /// Strings (execution ids) as a JSON array.
    pub(crate) fn text_list(texts: &[String]) -> Result<String, ClusterError> {
        serde_json::to_string(texts)
            .map_err(|e| ClusterError::malformed("cannot encode the id list as JSON", e))
    }

    /// Writes `finish` in the open transaction `tx`.
    pub(crate) async fn write_finish(
        finish: &crate::finish::Finish<'_>,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    ) -> Result<(), sqlx::Error> {
        finish.write_sqlite(tx).await
    }
}
