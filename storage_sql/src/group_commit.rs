//! Group commit: concurrent `save_request` calls (and, separately, concurrent `save_reply`
//! calls) share one commit, so N callers waiting at once cost one commit (and on PostgreSQL
//! one round trip) instead of N.
//!
//! Each kind of write has a [`BatchWriter`](crate::batch_writer::BatchWriter): a caller
//! finding it idle writes its own row at once, on its own task, as the same single-row
//! statement the direct path runs; callers arriving while a write is in the database queue
//! up and go out together next (at most `MAX_BATCH` writes): on PostgreSQL as one
//! multi-row statement (`UNNEST` arrays), on SQLite as one transaction of single-row
//! statements (in-process, so only the commit, an fsync, is worth sharing). Each caller is
//! answered through its oneshot once that commit is done. There is no timer: batches form
//! only while an earlier write is in the database.
//!
//! What this module owns, and what it must never do:
//! * The writers hold a queue and a busy flag, nothing else; a drain task exists only while
//!   queued writes are being written (see `batch_writer.rs`).
//! * No lock is held across an await.
//! * Semantics stay the database's. A row that would conflict with an earlier row of the
//!   same batch (same request id, or same address + dedupe key) is not sent; its caller
//!   hears "not inserted" after the batch committed and looks up the duplicate exactly as
//!   after any conflict. Replies repeating an earlier key of the batch are dropped, which is
//!   what `ON CONFLICT DO NOTHING` would do: the first one wins.
//! * A failed batch stored nothing (it is one statement, or one transaction rolled back),
//!   so every caller of that batch is told to run its write alone ([`Answer::RunAlone`]):
//!   one bad row fails only its own caller.

use std::collections::HashSet;

use bytes::Bytes;
use cruster_types::EnvelopeRequest;

use crate::batch_writer::{answer_all, Answer, BatchWriter, Queued};

use crate::dialect::per_dialect;
use crate::pool::SqlPool;
use crate::rows::RequestRow;

/// A request's bind values, owned so it can wait in a queue.
pub(crate) struct RequestItem {
    request_id: i64,
    shard: String,
    entity_type: String,
    entity_id: String,
    tag: String,
    payload: Bytes,
    persisted: bool,
    uninterruptible: bool,
    streaming: bool,
    expects_reply: bool,
    deliver_at_ns: Option<i64>,
    dedupe_key: Option<String>,
    trace: Bytes,
}

impl RequestItem {
    /// The queued form of `row`, the bind values of `envelope`.
    pub(crate) fn new(envelope: &EnvelopeRequest, row: &RequestRow<'_>) -> Self {
        RequestItem {
            request_id: row.request_id,
            shard: row.shard.clone(),
            entity_type: row.entity_type.to_owned(),
            entity_id: row.entity_id.to_owned(),
            tag: row.tag.to_owned(),
            payload: envelope.payload.clone(),
            persisted: row.persisted,
            uninterruptible: row.uninterruptible,
            streaming: row.streaming,
            expects_reply: row.expects_reply,
            deliver_at_ns: row.deliver_at_ns,
            dedupe_key: row.dedupe_key.map(str::to_owned),
            trace: row.trace.clone(),
        }
    }

    /// The key a later row of the same batch must not repeat, besides the request id.
    fn dedupe(&self) -> Option<(&str, &str, &str, &str)> {
        self.dedupe_key.as_deref().map(|key| {
            (
                self.entity_type.as_str(),
                self.entity_id.as_str(),
                self.shard.as_str(),
                key,
            )
        })
    }
}

/// A reply's bind values: request id, final flag, sequence, body.
pub(crate) struct ReplyItem {
    request_id: i64,
    is_final: bool,
    sequence: i64,
    body: Bytes,
}

impl ReplyItem {
    /// The queued form of a reply row (`rows::reply_row`).
    pub(crate) fn new((request_id, is_final, sequence, body): (i64, bool, i64, Bytes)) -> Self {
        ReplyItem {
            request_id,
            is_final,
            sequence,
            body,
        }
    }

    fn key(&self) -> (i64, bool, i64) {
        (self.request_id, self.is_final, self.sequence)
    }
}

/// The writers a message storage (and its clones) shares.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    requests: BatchWriter<RequestItem, bool>,
    replies: BatchWriter<ReplyItem, ()>,
}

impl GroupCommit {
    /// Idle writers.
    pub(crate) fn new() -> Self {
        GroupCommit {
            requests: BatchWriter::new(),
            replies: BatchWriter::new(),
        }
    }

    /// Inserts a request with whatever other requests are waiting: `Done(Ok(true))` when
    /// it was inserted, `Done(Ok(false))` when it conflicted (look up the duplicate).
    pub(crate) async fn save_request(&self, pool: &SqlPool, item: RequestItem) -> Answer<bool> {
        self.requests
            .submit(pool, item, |pool, batch| {
                Box::pin(write_requests(pool, batch))
            })
            .await
    }

    /// Inserts a reply with whatever other replies are waiting.
    pub(crate) async fn save_reply(&self, pool: &SqlPool, item: ReplyItem) -> Answer<()> {
        self.replies
            .submit(pool, item, |pool, batch| {
                Box::pin(write_replies(pool, batch))
            })
            .await
    }
}

/// Writes a batch of requests: one row alone, several in one `INSERT_REQUESTS`.
async fn write_requests(pool: &SqlPool, batch: &mut Vec<Queued<RequestItem, bool>>) {
    if batch.len() == 1 {
        if let Some(queued) = batch.pop() {
            let inserted = insert_request(pool, &queued.item).await;
            let _ = queued.answer.send(Answer::Done(inserted));
        }
        return;
    }
    // Rows conflicting with an earlier row of the batch stay out of the statement, so each
    // id `RETURNING` names belongs to exactly one sent row.
    let mut ids = HashSet::with_capacity(batch.len());
    let mut keys = HashSet::new();
    let mut sent = Vec::with_capacity(batch.len());
    let mut rows = Vec::with_capacity(batch.len());
    for queued in batch.iter() {
        let item = &queued.item;
        let key = item.dedupe();
        let repeats = ids.contains(&item.request_id) || key.is_some_and(|key| keys.contains(&key));
        sent.push(!repeats);
        if !repeats {
            ids.insert(item.request_id);
            keys.extend(key);
            rows.push(item);
        }
    }
    match insert_requests(pool, &rows).await {
        Ok(inserted) => answer_all(batch, |position, item| {
            let was_sent = sent.get(position).copied().unwrap_or(false);
            Answer::Done(Ok(was_sent && inserted.contains(&item.request_id)))
        }),
        Err(err) => {
            tracing::debug!(
                %err,
                rows = batch.len(),
                "a group-committed batch of requests failed; each request is retried alone"
            );
            answer_all(batch, |_, _| Answer::RunAlone);
        }
    }
}

/// Writes a batch of replies: one alone, several in one `INSERT_REPLIES`.
async fn write_replies(pool: &SqlPool, batch: &mut Vec<Queued<ReplyItem, ()>>) {
    if batch.len() == 1 {
        if let Some(queued) = batch.pop() {
            let written = insert_reply(pool, &queued.item).await;
            let _ = queued.answer.send(Answer::Done(written));
        }
        return;
    }
    // A reply repeating the key of an earlier one in the batch would be skipped by
    // `ON CONFLICT DO NOTHING` anyway; leaving it out keeps "the first one wins" independent
    // of the order the database inserts rows in.
    let mut keys = HashSet::with_capacity(batch.len());
    let rows: Vec<&ReplyItem> = batch
        .iter()
        .map(|queued| &queued.item)
        .filter(|item| keys.insert(item.key()))
        .collect();
    match insert_replies(pool, &rows).await {
        Ok(()) => answer_all(batch, |_, _| Answer::Done(Ok(()))),
        Err(err) => {
            tracing::debug!(
                %err,
                rows = batch.len(),
                "a group-committed batch of replies failed; each reply is retried alone"
            );
            answer_all(batch, |_, _| Answer::RunAlone);
        }
    }
}

/// Binds a request's values to `INSERT_REQUEST` (both dialects take the same types).
macro_rules! bind_request {
    ($query:expr, $item:expr) => {
        $query
            .bind($item.request_id)
            .bind($item.shard.as_str())
            .bind($item.entity_type.as_str())
            .bind($item.entity_id.as_str())
            .bind($item.tag.as_str())
            .bind($item.payload.as_ref())
            .bind($item.persisted)
            .bind($item.uninterruptible)
            .bind($item.streaming)
            .bind($item.expects_reply)
            .bind($item.deliver_at_ns)
            .bind($item.dedupe_key.as_deref())
            .bind($item.trace.as_ref())
    };
}

/// Binds a reply's values to `INSERT_REPLY`.
macro_rules! bind_reply {
    ($query:expr, $item:expr) => {
        $query
            .bind($item.request_id)
            .bind($item.is_final)
            .bind($item.sequence)
            .bind($item.body.as_ref())
    };
}

/// One request, as the direct path writes it: is it inserted?
async fn insert_request(pool: &SqlPool, item: &RequestItem) -> Result<bool, sqlx::Error> {
    per_dialect!(pool, SqlPool, |pool, d| {
        bind_request!(sqlx::query(d::sql::INSERT_REQUEST), item)
            .fetch_optional(pool)
            .await
            .map(|inserted| inserted.is_some())
    })
}

/// Several requests committed together: the ids of those inserted.
async fn insert_requests(
    pool: &SqlPool,
    rows: &[&RequestItem],
) -> Result<HashSet<i64>, sqlx::Error> {
    match pool {
        #[cfg(feature = "postgres")]
        SqlPool::Postgres(pool) => {
            let inserted: Vec<i64> = sqlx::query_scalar(crate::queries::postgres::INSERT_REQUESTS)
                .bind(column(rows, |r| r.request_id))
                .bind(column(rows, |r| r.shard.as_str()))
                .bind(column(rows, |r| r.entity_type.as_str()))
                .bind(column(rows, |r| r.entity_id.as_str()))
                .bind(column(rows, |r| r.tag.as_str()))
                .bind(column(rows, |r| r.payload.as_ref()))
                .bind(column(rows, |r| r.persisted))
                .bind(column(rows, |r| r.uninterruptible))
                .bind(column(rows, |r| r.streaming))
                .bind(column(rows, |r| r.expects_reply))
                .bind(column(rows, |r| r.deliver_at_ns))
                .bind(column(rows, |r| r.dedupe_key.as_deref()))
                .bind(column(rows, |r| r.trace.as_ref()))
                .fetch_all(pool)
                .await?;
            Ok(inserted.into_iter().collect())
        }
        #[cfg(feature = "sqlite")]
        SqlPool::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let mut inserted = HashSet::with_capacity(rows.len());
            for row in rows {
                let returned =
                    bind_request!(sqlx::query(crate::queries::sqlite::INSERT_REQUEST), row)
                        .fetch_optional(&mut *tx)
                        .await?;
                if returned.is_some() {
                    inserted.insert(row.request_id);
                }
            }
            tx.commit().await?;
            Ok(inserted)
        }
    }
}

/// One column of a multi-row statement: `value` of every row, in order.
#[cfg(feature = "postgres")]
pub(crate) fn column<'a, R, T>(rows: &[&'a R], value: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(|row| value(row)).collect()
}

/// One reply, as the direct path writes it.
async fn insert_reply(pool: &SqlPool, item: &ReplyItem) -> Result<(), sqlx::Error> {
    per_dialect!(pool, SqlPool, |pool, d| {
        bind_reply!(sqlx::query(d::sql::INSERT_REPLY), item)
            .execute(pool)
            .await
            .map(drop)
    })
}

/// Several replies committed together.
async fn insert_replies(pool: &SqlPool, rows: &[&ReplyItem]) -> Result<(), sqlx::Error> {
    match pool {
        #[cfg(feature = "postgres")]
        SqlPool::Postgres(pool) => {
            let request_ids: Vec<i64> = rows.iter().map(|r| r.request_id).collect();
            let finals: Vec<bool> = rows.iter().map(|r| r.is_final).collect();
            let sequences: Vec<i64> = rows.iter().map(|r| r.sequence).collect();
            let bodies: Vec<&[u8]> = rows.iter().map(|r| r.body.as_ref()).collect();
            sqlx::query(crate::queries::postgres::INSERT_REPLIES)
                .bind(request_ids)
                .bind(finals)
                .bind(sequences)
                .bind(bodies)
                .execute(pool)
                .await
                .map(drop)
        }
        #[cfg(feature = "sqlite")]
        SqlPool::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            for row in rows {
                bind_reply!(sqlx::query(crate::queries::sqlite::INSERT_REPLY), row)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
    }
}
