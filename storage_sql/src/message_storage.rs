//! [`SqlMessageStorage`]: `MessageStorage` on the `cruster_messages` and `cruster_replies`
//! tables.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cruster_message_storage::{
    AttemptFailure, AttemptStart, DeadLetter, FailedAttempt, FinishedRequest, MessageCounts,
    MessageStorage, PollQuery, SaveResult, StoredRequest,
};
use cruster_types::{
    ClusterError, EntityAddress, EntityType, EnvelopeRequest, Reply, ShardId, Snowflake,
    StoreLocation,
};

use crate::batch_writer::Answer;
use crate::dialect::per_dialect;
use crate::group_commit::{GroupCommit, ReplyItem, RequestItem};
use crate::pool::SqlPool;
use crate::rows::{self, failed, nanos, sql_limit, Columns, RequestRow};

/// How often `save_request` retries when the row it conflicted with vanished before it
/// could be read (an entity history cleared in between).
const SAVE_ATTEMPTS: usize = 3;

/// Persisted requests and replies in PostgreSQL or SQLite.
///
/// * `save_request` is one `INSERT … ON CONFLICT DO NOTHING` on the happy path; only a
///   duplicate costs a second statement, which reads the first request and its reply.
///   With group commit (the default, see [`SqlMessageStorage::with_group_commit`]),
///   concurrent saves share that insert, and concurrent `save_reply` calls theirs.
/// * `save_reply`, `mark_processed`, `record_failed_attempt` and `start_attempts` are one
///   statement each (`record_failed_attempt` counts, dead-letters or sets the retry
///   instant in one `UPDATE … RETURNING`; `start_attempts` counts a whole poll page at
///   once), so concurrent runners cannot lose an update.
/// * `poll_unprocessed` is one query for all shards, served by the partial index
///   `cruster_messages_poll` (pending rows by request id): it starts at the cursor and stops
///   at the limit, so its cost follows the page, not the backlog. It does not lock rows: a
///   shard is owned by one runner at a time (shard locks), and that runner is the only one
///   polling it.
///
/// A pending row that cannot be decoded (its columns were written by something other than
/// this crate, or damaged) is dead-lettered by `unprocessed` with the decoding error as
/// reason and logged, so it never blocks the rows behind it; retrying cannot repair stored
/// bytes. The request payload is never decoded here: a payload the handler cannot read is
/// delivered, fails, and is retried and dead-lettered by the runtime like any failure.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), cruster_types::ClusterError> {
/// use std::sync::Arc;
/// use cruster_message_storage::MessageStorage;
/// use cruster_storage_sql::SqlMessageStorage;
///
/// let storage = SqlMessageStorage::new(pool);
/// storage.migrate().await?;
/// let storage: Arc<dyn MessageStorage> = Arc::new(storage);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SqlMessageStorage {
    pool: SqlPool,
    /// The shared writers of group commit, `None` when turned off.
    group_commit: Option<Arc<GroupCommit>>,
}

crate::backend_constructors!(
    SqlMessageStorage,
    "message storage",
    group_commit: Some(Arc::new(GroupCommit::new())),
);

impl SqlMessageStorage {
    /// Turns group commit on (the default) or off.
    ///
    /// With group commit, concurrent `save_request` calls (and, separately, concurrent
    /// `save_reply` calls) of this storage and its clones share a writer and are committed
    /// together: one multi-row statement on PostgreSQL, one transaction on
    /// SQLite. Callers waiting at the same time share one commit (and on PostgreSQL one
    /// round trip). There is no timer: a lone call goes out at once, and a batch forms only
    /// from the calls that queued while the previous batch was being written (at most 256
    /// per batch). Each caller still gets exactly its own answer, only after the commit
    /// carrying its row; a batch that fails is retried one row at a time, so a bad row
    /// fails only its own call. A lone call writes its own row on its own task; a task
    /// writes queued calls only while there are some.
    ///
    /// Turn it off to have every call run its own statement and commit. See the crate
    /// docs, section "Group commit".
    ///
    /// ```no_run
    /// # fn run(pool: sqlx::PgPool) {
    /// use cruster_storage_sql::SqlMessageStorage;
    /// let storage = SqlMessageStorage::new(pool).with_group_commit(false);
    /// # }
    /// ```
    #[must_use]
    pub fn with_group_commit(self, enabled: bool) -> Self {
        Self {
            group_commit: enabled.then(|| Arc::new(GroupCommit::new())),
            ..self
        }
    }

    /// Inserts a request through group commit: `None` when the caller should run the
    /// statement itself (group commit off or not running, or a failed batch).
    async fn grouped_insert(
        &self,
        envelope: &EnvelopeRequest,
        row: &RequestRow<'_>,
    ) -> Option<Result<bool, sqlx::Error>> {
        let group_commit = self.group_commit.as_ref()?;
        let item = RequestItem::new(envelope, row);
        match group_commit.save_request(&self.pool, item).await {
            Answer::Done(inserted) => Some(inserted),
            Answer::RunAlone => None,
        }
    }

    /// Inserts a reply through group commit; `None` as for [`Self::grouped_insert`].
    async fn grouped_reply(
        &self,
        reply_row: &(i64, bool, i64, Bytes),
    ) -> Option<Result<(), sqlx::Error>> {
        let group_commit = self.group_commit.as_ref()?;
        let item = ReplyItem::new(reply_row.clone());
        match group_commit.save_reply(&self.pool, item).await {
            Answer::Done(written) => Some(written),
            Answer::RunAlone => None,
        }
    }
}

#[async_trait]
impl MessageStorage for SqlMessageStorage {
    async fn save_request(&self, envelope: &EnvelopeRequest) -> Result<SaveResult, ClusterError> {
        let row = RequestRow::new(envelope)?;
        let request_id = envelope.request_id;
        for attempt in 0..SAVE_ATTEMPTS {
            // Only the first attempt is grouped: a retry follows a conflict with a vanished
            // row, which is rare and gains nothing from batching.
            let grouped = if attempt == 0 {
                self.grouped_insert(envelope, &row).await
            } else {
                None
            };
            let inserted = if let Some(inserted) = grouped {
                inserted
            } else {
                per_dialect!(&self.pool, SqlPool, |pool, d| {
                    sqlx::query(d::sql::INSERT_REQUEST)
                        .bind(row.request_id)
                        .bind(row.shard.as_str())
                        .bind(row.entity_type)
                        .bind(row.entity_id)
                        .bind(row.tag)
                        .bind(row.payload)
                        .bind(row.persisted)
                        .bind(row.uninterruptible)
                        .bind(row.streaming)
                        .bind(row.expects_reply)
                        .bind(row.deliver_at_ns)
                        .bind(row.dedupe_key)
                        .bind(row.trace.as_ref())
                        .fetch_optional(pool)
                        .await
                        .map(|inserted| inserted.is_some())
                })
            }
            .map_err(|e| failed(format_args!("saving request {request_id}"), e))?;
            if inserted {
                return Ok(SaveResult::Saved);
            }
            let duplicate = per_dialect!(&self.pool, SqlPool, |pool, d| {
                let found = sqlx::query(d::sql::FIND_DUPLICATE)
                    .bind(row.request_id)
                    .bind(row.entity_type)
                    .bind(row.entity_id)
                    .bind(row.shard.as_str())
                    .bind(row.dedupe_key)
                    .fetch_optional(pool)
                    .await
                    .map_err(|e| {
                        failed(
                            format_args!("reading the duplicate of request {request_id}"),
                            e,
                        )
                    })?;
                found.map(|found| duplicate(&found)).transpose()
            })?;
            if let Some(duplicate) = duplicate {
                return Ok(duplicate);
            }
        }
        Err(ClusterError::PersistenceError {
            reason: format!(
                "saving request {request_id} kept conflicting with a request that was deleted \
                 before it could be read; retry the send"
            ),
            source: None,
        })
    }

    async fn save_reply(&self, reply: &Reply) -> Result<(), ClusterError> {
        let reply_row = rows::reply_row(reply)?;
        let written = if let Some(written) = self.grouped_reply(&reply_row).await {
            written
        } else {
            let (request_id, is_final, sequence, body) = reply_row;
            per_dialect!(&self.pool, SqlPool, |pool, d| {
                sqlx::query(d::sql::INSERT_REPLY)
                    .bind(request_id)
                    .bind(is_final)
                    .bind(sequence)
                    .bind(body.as_ref())
                    .execute(pool)
                    .await
                    .map(drop)
            })
        };
        written.map_err(|e| {
            failed(
                format_args!("saving a reply to request {}", reply.request_id()),
                e,
            )
        })
    }

    fn location(&self) -> Option<StoreLocation> {
        Some(self.pool.location())
    }

    async fn replies_for(&self, request_id: Snowflake) -> Result<Vec<Reply>, ClusterError> {
        let bodies: Vec<Vec<u8>> = per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query_scalar(d::sql::REPLIES_FOR)
                .bind(request_id.0)
                .fetch_all(pool)
                .await
        })
        .map_err(|e| {
            failed(
                format_args!("reading the replies to request {request_id}"),
                e,
            )
        })?;
        bodies
            .iter()
            .map(|body| rows::reply(request_id, body))
            .collect()
    }

    async fn request(&self, request_id: Snowflake) -> Result<Option<StoredRequest>, ClusterError> {
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            let row = sqlx::query(d::sql::REQUEST_BY_ID)
                .bind(request_id.0)
                .fetch_optional(pool)
                .await
                .map_err(|e| failed(format_args!("reading request {request_id}"), e))?;
            row.map(|row| rows::stored_request(&row)).transpose()
        })
    }

    async fn finished_requests(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<FinishedRequest>, ClusterError> {
        if request_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, Option<Vec<u8>>, i64)> =
            per_dialect!(&self.pool, SqlPool, |pool, d| {
                sqlx::query_as(d::sql::FINISHED_REQUESTS)
                    .bind(d::id_list(request_ids)?)
                    .fetch_all(pool)
                    .await
            })
            .map_err(|e| failed("reading the finished requests of waiting callers", e))?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for (id, body, attempts) in rows {
            let request_id = Snowflake(id);
            let finished = match body {
                Some(body) => match rows::reply(request_id, &body)? {
                    Reply::WithExit(reply) => FinishedRequest::Answered(reply),
                    Reply::Chunk(_) => continue,
                },
                None => FinishedRequest::DeadLettered {
                    request_id,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                },
            };
            found.entry(id).or_insert(finished);
        }
        Ok(request_ids
            .iter()
            .filter_map(|id| found.remove(&id.0))
            .collect())
    }

    async fn poll_unprocessed(
        &self,
        query: &PollQuery<'_>,
    ) -> Result<Vec<StoredRequest>, ClusterError> {
        if query.shards.is_empty() || query.limit == 0 {
            return Ok(Vec::new());
        }
        let now_ns = nanos(query.now, "now")?;
        let after = query.after.map_or(i64::MIN, |after| after.0);
        let skipped = rows::entity_list(query.skip_entities)?;
        let decoded: Vec<Result<StoredRequest, (i64, ClusterError)>> =
            per_dialect!(&self.pool, SqlPool, |pool, d| {
                sqlx::query(d::sql::POLL_UNPROCESSED)
                    .bind(d::shard_list(query.shards)?)
                    .bind(now_ns)
                    .bind(after)
                    .bind(skipped.as_str())
                    .bind(sql_limit(query.limit))
                    .fetch_all(pool)
                    .await
                    .map(|rows| rows.iter().map(pending_request).collect())
            })
            .map_err(|e| failed("polling unprocessed requests", e))?;
        let mut requests = Vec::with_capacity(decoded.len());
        for row in decoded {
            match row {
                Ok(request) => requests.push(request),
                Err((request_id, err)) => self.quarantine(request_id, &err, now_ns).await?,
            }
        }
        Ok(requests)
    }

    async fn mark_processed(&self, request_id: Snowflake) -> Result<(), ClusterError> {
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query(d::sql::MARK_PROCESSED)
                .bind(request_id.0)
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(|e| failed(format_args!("marking request {request_id} processed"), e))
    }

    async fn start_attempts(
        &self,
        request_ids: &[Snowflake],
        max_attempts: u32,
        reason: &str,
    ) -> Result<Vec<AttemptStart>, ClusterError> {
        if request_ids.is_empty() {
            return Ok(Vec::new());
        }
        let now_ns = nanos(Utc::now(), "now")?;
        let counted: Vec<(i64, i64, bool)> = per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query_as(d::sql::START_ATTEMPTS)
                .bind(d::id_list(request_ids)?)
                .bind(i64::from(max_attempts))
                .bind(now_ns)
                .bind(reason)
                .fetch_all(pool)
                .await
        })
        .map_err(|e| failed("counting the attempts of a redelivery", e))?;
        let counted: std::collections::HashMap<i64, (i64, bool)> = counted
            .into_iter()
            .map(|(id, attempts, dead)| (id, (attempts, dead)))
            .collect();
        Ok(request_ids
            .iter()
            .map(|&request_id| match counted.get(&request_id.0) {
                None => AttemptStart::NotPending { request_id },
                Some(&(attempts, dead_lettered)) => {
                    let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
                    if dead_lettered {
                        AttemptStart::DeadLettered {
                            request_id,
                            attempts,
                        }
                    } else {
                        AttemptStart::Deliver {
                            request_id,
                            attempt: attempts,
                        }
                    }
                }
            })
            .collect())
    }

    async fn release_attempts(&self, request_ids: &[Snowflake]) -> Result<(), ClusterError> {
        if request_ids.is_empty() {
            return Ok(());
        }
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query(d::sql::RELEASE_ATTEMPTS)
                .bind(d::id_list(request_ids)?)
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(|e| failed("giving back attempts that were not made", e))
    }

    async fn record_failed_attempt(
        &self,
        request_id: Snowflake,
        failure: &AttemptFailure<'_>,
    ) -> Result<FailedAttempt, ClusterError> {
        let now_ns = nanos(Utc::now(), "now")?;
        let retry_at_ns = nanos(failure.retry_at, "retry_at")?;
        let increment: i64 = if failure.counted { 0 } else { 1 };
        let counted: Option<(i64, bool)> = per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query_as(d::sql::RECORD_FAILED_ATTEMPT)
                .bind(request_id.0)
                .bind(failure.reason)
                .bind(i64::from(failure.max_attempts))
                .bind(now_ns)
                .bind(increment)
                .bind(retry_at_ns)
                .fetch_optional(pool)
                .await
        })
        .map_err(|e| {
            failed(
                format_args!("recording a failed attempt of request {request_id}"),
                e,
            )
        })?;
        let Some((attempts, dead_lettered)) = counted else {
            return Ok(FailedAttempt::NotPending);
        };
        let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
        Ok(if dead_lettered {
            FailedAttempt::DeadLettered { attempts }
        } else {
            FailedAttempt::WillRetry { attempts }
        })
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, ClusterError> {
        let decoded: Vec<Result<DeadLetter, ClusterError>> =
            per_dialect!(&self.pool, SqlPool, |pool, d| {
                sqlx::query(d::sql::DEAD_LETTERS)
                    .bind(sql_limit(limit))
                    .fetch_all(pool)
                    .await
                    .map(|rows| rows.iter().map(rows::dead_letter).collect())
            })
            .map_err(|e| failed("reading dead letters", e))?;
        Ok(decoded
            .into_iter()
            .filter_map(|row| {
                row.map_err(|err| {
                    tracing::error!(
                        %err,
                        "a dead letter cannot be decoded and is left out of the listing; \
                         inspect table cruster_messages directly"
                    )
                })
                .ok()
            })
            .collect())
    }

    async fn retry_dead_letters(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<Snowflake>, ClusterError> {
        if request_ids.is_empty() {
            return Ok(Vec::new());
        }
        let changed: Vec<(i64,)> = per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query_as(d::sql::RETRY_DEAD_LETTERS)
                .bind(d::id_list(request_ids)?)
                .fetch_all(pool)
                .await
        })
        .map_err(|e| failed("taking dead letters back", e))?;
        Ok(in_request_order(request_ids, changed))
    }

    async fn purge_dead_letters(
        &self,
        request_ids: &[Snowflake],
    ) -> Result<Vec<Snowflake>, ClusterError> {
        if request_ids.is_empty() {
            return Ok(Vec::new());
        }
        let deleted: Vec<(i64,)> = per_dialect!(&self.pool, SqlPool, |pool, d| {
            let ids = d::id_list(request_ids)?;
            async {
                let mut tx = pool.begin().await?;
                sqlx::query(d::sql::DELETE_DEAD_LETTER_REPLIES)
                    .bind(ids.clone())
                    .execute(&mut *tx)
                    .await?;
                let deleted: Vec<(i64,)> = sqlx::query_as(d::sql::PURGE_DEAD_LETTERS)
                    .bind(ids)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(deleted)
            }
            .await
        })
        .map_err(|e| failed("purging dead letters", e))?;
        Ok(in_request_order(request_ids, deleted))
    }

    async fn delete_processed_before(
        &self,
        shards: &[ShardId],
        processed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, ClusterError> {
        if shards.is_empty() || limit == 0 {
            return Ok(0);
        }
        let cutoff_ns = nanos(processed_before, "processed_before")?;
        // One short transaction per batch: pick at most `limit` ids through the partial
        // index, delete their replies, then the requests (re-checked: still processed and
        // not dead).
        let deleted: u64 = per_dialect!(&self.pool, SqlPool, |pool, d| {
            let shard_list = d::shard_list(shards)?;
            async {
                let mut tx = pool.begin().await?;
                let picked: Vec<(i64,)> = sqlx::query_as(d::sql::PROCESSED_BEFORE)
                    .bind(shard_list)
                    .bind(cutoff_ns)
                    .bind(sql_limit(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                if picked.is_empty() {
                    return Ok(0);
                }
                let ids: Vec<Snowflake> = picked.into_iter().map(|(id,)| Snowflake(id)).collect();
                let ids = d::id_list(&ids).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                sqlx::query(d::sql::DELETE_REPLIES_OF)
                    .bind(ids.clone())
                    .execute(&mut *tx)
                    .await?;
                let deleted = sqlx::query(d::sql::DELETE_PROCESSED)
                    .bind(ids)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(deleted)
            }
            .await
        })
        .map_err(|e| failed("deleting processed requests past their retention", e))?;
        Ok(deleted)
    }

    async fn message_counts(&self) -> Result<Vec<MessageCounts>, ClusterError> {
        let rows: Vec<(String, String, i64, i64, i64)> =
            per_dialect!(&self.pool, SqlPool, |pool, d| {
                sqlx::query_as(d::sql::MESSAGE_COUNTS).fetch_all(pool).await
            })
            .map_err(|e| failed("counting stored messages", e))?;
        let mut counts = rows
            .into_iter()
            .map(|(shard, entity_type, pending, retrying, dead)| {
                let shard_id = shard.parse::<ShardId>().map_err(|e| {
                    rows::undecodable(format_args!("a message count (shard `{shard}`)"), e)
                })?;
                let count = |n: i64| u64::try_from(n).unwrap_or(0);
                Ok(MessageCounts {
                    shard_id,
                    entity_type: EntityType::new(entity_type),
                    pending: count(pending),
                    retrying: count(retrying),
                    dead_lettered: count(dead),
                })
            })
            .collect::<Result<Vec<_>, ClusterError>>()?;
        counts.sort_by(|a, b| (&a.shard_id, &a.entity_type).cmp(&(&b.shard_id, &b.entity_type)));
        Ok(counts)
    }

    async fn clear_address(&self, address: &EntityAddress) -> Result<(), ClusterError> {
        let shard = address.shard_id.to_string();
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            async {
                let mut tx = pool.begin().await?;
                for statement in [
                    d::sql::CLEAR_ADDRESS_REPLIES,
                    d::sql::CLEAR_ADDRESS_REQUESTS,
                ] {
                    sqlx::query(statement)
                        .bind(address.entity_type.as_str())
                        .bind(address.entity_id.as_str())
                        .bind(shard.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
            .await
        })
        .map_err(|e| failed(format_args!("clearing the history of {address}"), e))
    }
}

/// The ids of `rows` that are among `request_ids`, in the order of `request_ids`.
fn in_request_order(request_ids: &[Snowflake], rows: Vec<(i64,)>) -> Vec<Snowflake> {
    let found: std::collections::HashSet<i64> = rows.into_iter().map(|(id,)| id).collect();
    let mut seen = std::collections::HashSet::new();
    request_ids
        .iter()
        .copied()
        .filter(|id| found.contains(&id.0) && seen.insert(id.0))
        .collect()
}

impl SqlMessageStorage {
    /// Dead-letters a pending row that cannot be decoded, so the poll keeps serving the
    /// rows behind it, and logs why.
    async fn quarantine(
        &self,
        request_id: i64,
        err: &ClusterError,
        now_ns: i64,
    ) -> Result<(), ClusterError> {
        tracing::error!(
            request_id,
            %err,
            "a persisted request cannot be decoded; it is dead-lettered and left in table \
             cruster_messages for inspection"
        );
        let reason = format!("the stored request cannot be decoded: {err}");
        per_dialect!(&self.pool, SqlPool, |pool, d| {
            sqlx::query(d::sql::QUARANTINE_UNDECODABLE)
                .bind(request_id)
                .bind(now_ns)
                .bind(reason.as_str())
                .execute(pool)
                .await
                .map(drop)
        })
        .map_err(|e| {
            failed(
                format_args!("dead-lettering undecodable request {request_id}"),
                e,
            )
        })
    }
}

/// A pending row, or its request id and why it does not decode.
fn pending_request(row: &impl Columns) -> Result<StoredRequest, (i64, ClusterError)> {
    rows::stored_request(row).map_err(|err| (row.int("request_id").unwrap_or_default(), err))
}

/// The answer to a conflicting save, from a `FIND_DUPLICATE` row.
fn duplicate(row: &impl Columns) -> Result<SaveResult, ClusterError> {
    let original = Snowflake(
        row.int("request_id")
            .map_err(|e| rows::undecodable("duplicate request", e))?,
    );
    let reply = row
        .opt_bytes("final_reply")
        .map_err(|e| rows::undecodable(format_args!("final reply to request {original}"), e))?
        .map(|body| match rows::reply(original, &body)? {
            Reply::WithExit(reply) => Ok(reply),
            Reply::Chunk(_) => Err(rows::undecodable(
                format_args!("final reply to request {original}"),
                "a chunk is stored as the final reply",
            )),
        })
        .transpose()?;
    Ok(SaveResult::Duplicate {
        original_request_id: original,
        reply,
    })
}
