//! SQLite statements: the portable ones, plus those binding a shard list as a JSON array
//! (SQLite has no array type; `json_each` unpacks the list inside the one statement).

pub(crate) use super::portable::*;
use super::{pending, request_columns};

/// Pending, due requests of the shards in `$1` (a JSON array of `group:number`), oldest
/// first, at most `$3`. `$2` is now in unix nanoseconds.
pub(crate) const UNPROCESSED: &str = concat!(
    "SELECT ",
    request_columns!(),
    " FROM cruster_messages WHERE shard IN (SELECT value FROM json_each($1)) AND ",
    pending!(),
    " AND (deliver_at_ns IS NULL OR deliver_at_ns <= $2) ORDER BY request_id LIMIT $3"
);

/// Restarts the attempt count of the pending requests of the shards in `$1`.
pub(crate) const RESET_SHARDS: &str = concat!(
    "UPDATE cruster_messages SET attempts = 0 WHERE shard IN (SELECT value FROM json_each($1)) AND ",
    pending!(),
    " AND attempts > 0"
);
