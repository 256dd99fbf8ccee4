//! Translation between cruster's records and table rows, shared by both dialects.
//!
//! [`Columns`] reads a column of either driver's row by name; the decoders below turn a row
//! into a record and say precisely what was wrong with a row that does not decode. The
//! encoders turn record fields into bind values (instants as unix nanoseconds, counters as
//! `BIGINT`, MessagePack for the few structured values).

use std::fmt::Display;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use cruster_message_storage::{DeadLetter, StoredRequest};
use cruster_types::{
    wire, ClusterError, EntityAddress, EntityId, EntityType, EnvelopeRequest, ExitResult, Reply,
    ShardId, Snowflake, TraceContext, WireError,
};
use cruster_workflow_storage::{
    ActivityKey, DurableTimer, ExecutionRecord, ExecutionStatus, JournalEntry,
};

/// Reads one column of a row, whichever driver produced it.
pub(crate) trait Columns {
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>, sqlx::Error>;
    fn opt_bytes(&self, column: &str) -> Result<Option<Vec<u8>>, sqlx::Error>;
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;
}

macro_rules! impl_columns {
    ($row:ty) => {
        impl Columns for $row {
            fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn text(&self, column: &str) -> Result<String, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn bytes(&self, column: &str) -> Result<Vec<u8>, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn opt_bytes(&self, column: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
        }
    };
}

#[cfg(feature = "postgres")]
impl_columns!(sqlx::postgres::PgRow);
#[cfg(feature = "sqlite")]
impl_columns!(sqlx::sqlite::SqliteRow);

// ---- errors ------------------------------------------------------------------------------

/// A database call that failed, as a retryable `PersistenceError` naming what was being done.
pub(crate) fn failed(doing: impl Display, err: sqlx::Error) -> ClusterError {
    ClusterError::PersistenceError {
        reason: format!("{doing} failed: {err}"),
        source: Some(Box::new(err)),
    }
}

/// A stored row that cannot be turned back into its record.
pub(crate) fn undecodable(what: impl Display, err: impl Display) -> ClusterError {
    ClusterError::MalformedMessage {
        reason: format!("stored {what} cannot be decoded: {err}"),
        source: None,
    }
}

fn column<T>(
    row_name: &str,
    column: &str,
    value: Result<T, sqlx::Error>,
) -> Result<T, ClusterError> {
    value.map_err(|e| ClusterError::MalformedMessage {
        reason: format!("stored {row_name} has an unreadable `{column}` column: {e}"),
        source: Some(Box::new(e)),
    })
}

// ---- bind values -------------------------------------------------------------------------

/// An instant as unix nanoseconds (exact, unlike a microsecond `TIMESTAMPTZ`).
///
/// # Errors
/// `MalformedMessage` for instants outside 1677-09-21 ..= 2262-04-11, which 64-bit
/// nanoseconds cannot hold.
pub(crate) fn nanos(instant: DateTime<Utc>, what: &str) -> Result<i64, ClusterError> {
    instant
        .timestamp_nanos_opt()
        .ok_or_else(|| ClusterError::MalformedMessage {
            reason: format!(
                "{what} {instant} cannot be stored: SQL backends store instants between \
                 1677-09-21 and 2262-04-11"
            ),
            source: None,
        })
}

/// Unix nanoseconds back to an instant.
pub(crate) fn instant(nanos: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(nanos)
}

/// A `usize` limit as a SQL `LIMIT` (saturating; `LIMIT` takes a `BIGINT`).
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn counter(row_name: &str, column: &str, value: i64) -> Result<u32, ClusterError> {
    u32::try_from(value).map_err(|e| ClusterError::MalformedMessage {
        reason: format!("stored {row_name} has `{column}` = {value}, outside 0..=4294967295"),
        source: Some(Box::new(e)),
    })
}

fn address(row_name: &str, row: &impl Columns) -> Result<EntityAddress, ClusterError> {
    let shard = column(row_name, "shard", row.text("shard"))?;
    let shard_id = shard
        .parse::<ShardId>()
        .map_err(|e| undecodable(format_args!("{row_name} (shard `{shard}`)"), e))?;
    Ok(EntityAddress {
        shard_id,
        entity_type: EntityType::new(column(row_name, "entity_type", row.text("entity_type"))?),
        entity_id: EntityId::new(column(row_name, "entity_id", row.text("entity_id"))?),
    })
}

// ---- message storage ---------------------------------------------------------------------

/// The bind values of a request's row, computed before the statement runs.
pub(crate) struct RequestRow<'a> {
    pub(crate) request_id: i64,
    pub(crate) shard: String,
    pub(crate) entity_type: &'a str,
    pub(crate) entity_id: &'a str,
    pub(crate) tag: &'a str,
    pub(crate) payload: &'a [u8],
    pub(crate) persisted: bool,
    pub(crate) uninterruptible: bool,
    pub(crate) streaming: bool,
    pub(crate) expects_reply: bool,
    pub(crate) deliver_at_ns: Option<i64>,
    pub(crate) dedupe_key: Option<&'a str>,
    pub(crate) trace: Bytes,
}

impl<'a> RequestRow<'a> {
    pub(crate) fn new(envelope: &'a EnvelopeRequest) -> Result<Self, ClusterError> {
        Ok(RequestRow {
            request_id: envelope.request_id.0,
            shard: envelope.address.shard_id.to_string(),
            entity_type: envelope.address.entity_type.as_str(),
            entity_id: envelope.address.entity_id.as_str(),
            tag: &envelope.tag,
            payload: &envelope.payload,
            persisted: envelope.persisted,
            uninterruptible: envelope.uninterruptible,
            streaming: envelope.streaming,
            expects_reply: envelope.expects_reply,
            deliver_at_ns: envelope
                .deliver_at
                .map(|at| nanos(at, "deliver_at"))
                .transpose()?,
            dedupe_key: envelope.dedupe_key.as_deref(),
            trace: wire::encode(&envelope.trace)?,
        })
    }
}

/// Entities (type and id; the shard is ignored) as a JSON array of `[entity_type,
/// entity_id]` pairs, the form both dialects unpack for the poll's skipped entities.
pub(crate) fn entity_list(entities: &[EntityAddress]) -> Result<String, ClusterError> {
    let pairs: Vec<[&str; 2]> = entities
        .iter()
        .map(|e| [e.entity_type.as_str(), e.entity_id.as_str()])
        .collect();
    serde_json::to_string(&pairs)
        .map_err(|e| ClusterError::malformed("cannot encode the skipped entities as JSON", e))
}

/// A `cruster_messages` row back to a [`StoredRequest`].
pub(crate) fn stored_request(row: &impl Columns) -> Result<StoredRequest, ClusterError> {
    let request_id = column("request", "request_id", row.int("request_id"))?;
    let name = format!("request {request_id}");
    let name = name.as_str();
    let trace_bytes = column(name, "trace", row.bytes("trace"))?;
    let trace: TraceContext = wire::decode(&trace_bytes)
        .map_err(|e| undecodable(format_args!("{name} (trace context)"), e))?;
    let envelope = EnvelopeRequest {
        request_id: Snowflake(request_id),
        address: address(name, row)?,
        tag: column(name, "tag", row.text("tag"))?.into(),
        payload: Bytes::from(column(name, "payload", row.bytes("payload"))?),
        persisted: column(name, "persisted", row.flag("persisted"))?,
        uninterruptible: column(name, "uninterruptible", row.flag("uninterruptible"))?,
        streaming: column(name, "streaming", row.flag("streaming"))?,
        expects_reply: column(name, "expects_reply", row.flag("expects_reply"))?,
        deliver_at: column(name, "deliver_at_ns", row.opt_int("deliver_at_ns"))?.map(instant),
        dedupe_key: column(name, "dedupe_key", row.opt_text("dedupe_key"))?,
        trace,
    };
    Ok(StoredRequest {
        envelope,
        attempts: counter(
            name,
            "attempts",
            column(name, "attempts", row.int("attempts"))?,
        )?,
        processed: column(name, "processed", row.flag("processed"))?,
        dead_lettered: column(name, "dead_lettered", row.flag("dead_lettered"))?,
    })
}

/// A dead-lettered `cruster_messages` row back to a [`DeadLetter`].
pub(crate) fn dead_letter(row: &impl Columns) -> Result<DeadLetter, ClusterError> {
    let stored = stored_request(row)?;
    let name = format!("request {}", stored.envelope.request_id);
    let name = name.as_str();
    Ok(DeadLetter {
        attempts: stored.attempts,
        reason: column(name, "last_error", row.opt_text("last_error"))?.unwrap_or_default(),
        dead_lettered_at: column(
            name,
            "dead_lettered_at_ns",
            row.opt_int("dead_lettered_at_ns"),
        )?
        .map(instant)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
        envelope: stored.envelope,
    })
}

/// The bind values of a reply's row: request id, is_final, sequence, body.
pub(crate) fn reply_row(reply: &Reply) -> Result<(i64, bool, i64, Bytes), ClusterError> {
    let body = wire::encode_reply(reply)?;
    Ok(match reply {
        Reply::WithExit(r) => (r.request_id.0, true, 0, body),
        Reply::Chunk(c) => (c.request_id.0, false, i64::from(c.sequence), body),
    })
}

/// A stored reply body back to a [`Reply`].
pub(crate) fn reply(request_id: Snowflake, body: &[u8]) -> Result<Reply, ClusterError> {
    wire::decode_reply(body)
        .map_err(|e| undecodable(format_args!("reply to request {request_id}"), e))
}

// ---- workflow journal --------------------------------------------------------------------

/// An [`ExitResult`] as MessagePack.
pub(crate) fn exit_bytes(result: &ExitResult) -> Result<Bytes, ClusterError> {
    wire::encode(result)
}

fn exit_result(what: impl Display, bytes: &[u8]) -> Result<ExitResult, ClusterError> {
    wire::decode(bytes).map_err(|e| undecodable(what, e))
}

/// A `cruster_journal` row back to a [`JournalEntry`].
pub(crate) fn journal_entry(row: &impl Columns) -> Result<JournalEntry, ClusterError> {
    let execution_id = column("journal entry", "execution_id", row.text("execution_id"))?;
    let activity = column("journal entry", "activity", row.text("activity"))?;
    let sequence = column("journal entry", "sequence", row.int("sequence"))?;
    let name = format!("journal entry {execution_id}/{activity}#{sequence}");
    let name = name.as_str();
    let result = exit_result(name, &column(name, "result", row.bytes("result"))?)?;
    Ok(JournalEntry {
        key: ActivityKey {
            name: activity,
            sequence: counter(name, "sequence", sequence)?,
        },
        result,
        attempts: counter(
            name,
            "attempts",
            column(name, "attempts", row.int("attempts"))?,
        )?,
        recorded_at: instant(column(name, "recorded_at_ns", row.int("recorded_at_ns"))?),
        execution_id,
    })
}

// ---- workflow engine ---------------------------------------------------------------------

/// The status columns of an execution: name and `suspended_until_ns`.
pub(crate) fn status_columns(
    status: &ExecutionStatus,
) -> Result<(&'static str, Option<i64>), ClusterError> {
    let until = match status {
        ExecutionStatus::Suspended { until: Some(at) } => Some(nanos(*at, "suspended until")?),
        _ => None,
    };
    Ok((status.name(), until))
}

/// The last error of an execution as a bind value (MessagePack).
pub(crate) fn last_error_bytes(error: &WireError) -> Result<Bytes, ClusterError> {
    wire::encode(error)
}

/// A `cruster_executions` row back to an [`ExecutionRecord`].
pub(crate) fn execution(row: &impl Columns) -> Result<ExecutionRecord, ClusterError> {
    let execution_id = column("execution", "execution_id", row.text("execution_id"))?;
    let name = format!("execution {execution_id}");
    let name = name.as_str();
    let status_name = column(name, "status", row.text("status"))?;
    let until = column(
        name,
        "suspended_until_ns",
        row.opt_int("suspended_until_ns"),
    )?;
    let status = match status_name.as_str() {
        "running" => ExecutionStatus::Running,
        "suspended" => ExecutionStatus::Suspended {
            until: until.map(instant),
        },
        "completed" => ExecutionStatus::Completed,
        "failed" => ExecutionStatus::Failed,
        "cancelled" => ExecutionStatus::Cancelled,
        "parked" => ExecutionStatus::Parked,
        other => return Err(undecodable(name, format_args!("unknown status `{other}`"))),
    };
    let result = column(name, "result", row.opt_bytes("result"))?
        .map(|bytes| exit_result(format_args!("result of {name}"), &bytes))
        .transpose()?;
    let last_error = column(name, "last_error", row.opt_bytes("last_error"))?
        .map(|bytes| {
            wire::decode::<WireError>(&bytes)
                .map_err(|e| undecodable(format_args!("last error of {name}"), e))
        })
        .transpose()?;
    Ok(ExecutionRecord {
        attempts: counter(
            name,
            "attempts",
            column(name, "attempts", row.int("attempts"))?,
        )?,
        progress_mark: counter(
            name,
            "progress_mark",
            column(name, "progress_mark", row.int("progress_mark"))?,
        )?,
        last_error,
        cancel_requested_at: column(
            name,
            "cancel_requested_at_ns",
            row.opt_int("cancel_requested_at_ns"),
        )?
        .map(instant),
        workflow: column(name, "workflow", row.text("workflow"))?,
        status,
        request: Bytes::from(column(name, "request", row.bytes("request"))?),
        result,
        created_at: instant(column(name, "created_at_ns", row.int("created_at_ns"))?),
        updated_at: instant(column(name, "updated_at_ns", row.int("updated_at_ns"))?),
        execution_id,
    })
}

/// A `cruster_timers` row back to a [`DurableTimer`].
pub(crate) fn timer(row: &impl Columns) -> Result<DurableTimer, ClusterError> {
    let execution_id = column("timer", "execution_id", row.text("execution_id"))?;
    let timer_key = column("timer", "timer_key", row.text("timer_key"))?;
    let name = format!("timer {execution_id}/{timer_key}");
    let name = name.as_str();
    Ok(DurableTimer {
        address: address(name, row)?,
        fire_at: instant(column(name, "fire_at_ns", row.int("fire_at_ns"))?),
        completed: column(name, "completed", row.flag("completed"))?,
        execution_id,
        timer_key,
    })
}

/// A stored deferred value back to its [`ExitResult`].
pub(crate) fn deferred(
    execution_id: &str,
    name: &str,
    bytes: &[u8],
) -> Result<ExitResult, ClusterError> {
    exit_result(format_args!("deferred value {execution_id}/{name}"), bytes)
}
