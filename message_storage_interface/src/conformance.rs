//! Conformance suite of [`MessageStorage`].
//!
//! Each `pub async fn` below checks one behaviour of the contract in the crate docs and is
//! named for it: idempotent saves (by request id and by `dedupe_key`, scoped to the
//! entity), unprocessed requests (shards, `deliver_at`, order, limit), replies (chunk order,
//! final reply, first one wins), failed attempts and dead letters, retry instants, attempts
//! counted before a redelivery and given back, the poll's cursor and skipped entities, `clear_address`,
//! concurrent use, and a property test against a simple model. A backend's
//! test file calls every function, so a reader sees at a glance which behaviours it passes.
//!
//! # Running it
//!
//! Enable the `conformance` feature in the backend's dev-dependencies:
//!
//! ```toml
//! [dev-dependencies]
//! cruster-message-storage = { version = "0.1", features = ["conformance"] }
//! ```
//!
//! then call the functions one per test (the usual layout, and what failing CI output
//! names), with the backend held directly or as `Arc<dyn MessageStorage>`:
//!
//! ```ignore
//! use cruster_message_storage::conformance;
//!
//! #[tokio::test]
//! async fn duplicate_save_returns_first_id() {
//!     conformance::duplicate_save_returns_first_id(&MyStorage::new()).await;
//! }
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn concurrent_saves_of_one_request_store_it_once() {
//!     conformance::concurrent_saves_of_one_request_store_it_once(Arc::new(MyStorage::new())).await;
//! }
//! ```
//!
//! or run everything at once with [`run_all`], giving a factory that returns a fresh backend
//! each time it is called.
//!
//! # Assumptions
//!
//! * Each function gets a backend nobody else writes to while it runs (a fresh instance,
//!   or for a shared server a fresh schema). Request ids are small numbers chosen by the
//!   suite.
//! * Time is an argument: the suite passes `now` to `unprocessed` and never waits.
//!   Instants it builds have whole milliseconds, so backends storing microseconds
//!   round-trip them exactly.
//! * The `concurrent_*` functions take an `Arc` and spawn tasks; run them on a
//!   multi-thread runtime (`#[tokio::test(flavor = "multi_thread")]`) so they really race.
//! * The property test generates its 32 cases up front and runs them one after another
//!   against one backend (each case in its own shard group and entity type); a failure
//!   prints the whole operation sequence and the model's state rather than a shrunk case.
//!
//! # Readings of the contract the suite pins
//!
//! * `dedupe_key` is scoped to the entity (entity type + entity id): the same key sent to
//!   another entity is a new request.
//! * A save whose request id is stored is a duplicate of that id; only a save with a new
//!   id looks at its `dedupe_key`.
//! * A final reply saved before its request (by another runner) is kept: the request, once
//!   saved, is not unprocessed.
//! * A chunk saved twice with the same sequence is stored once.
//! * `record_failed_attempt` dead-letters when the count *reaches* `max_attempts`;
//!   `start_attempts` dead-letters a request whose count already reached it.
//! * A request is due when both its `deliver_at` and its retry instant are absent or not
//!   after `now` (the later of the two decides).
//! * Dead letters are listed oldest request first (by request id, like `unprocessed`).
//! * `clear_address` also deletes the entity's dead letters and frees its dedupe keys.
//! * A retried dead letter starts again from zero attempts and is due at once (its
//!   `deliver_at`, if any, still applies); a purged one frees its dedupe key.
//! * `delete_processed_before` compares the cutoff with the instant the backend recorded
//!   when the request became processed (its own clock): the suite's cutoffs are an hour
//!   before and a minute after the wall clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use cruster_types::{
    ClusterError, EntityAddress, EntityId, EntityType, EnvelopeRequest, ExitResult, Reply,
    ReplyChunk, ReplyWithExit, ShardId, Snowflake,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use crate::{
    AttemptFailure, AttemptStart, DeadLetter, FailedAttempt, FinishedRequest, MessageCounts,
    MessageStorage, PollQuery, SaveResult, StoredRequest,
};

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// The instant the suite calls "now": fixed, with whole milliseconds.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_900_000_000_000).expect("a valid instant")
}

fn shard(n: u32) -> ShardId {
    ShardId::new("conformance", n)
}

fn address(entity_id: &str, shard_number: u32) -> EntityAddress {
    EntityAddress {
        shard_id: shard(shard_number),
        entity_type: EntityType::new("Conformance"),
        entity_id: EntityId::new(entity_id),
    }
}

/// A persisted request with a payload naming its id.
fn request(id: i64, address: EntityAddress) -> EnvelopeRequest {
    let mut envelope = EnvelopeRequest::new(
        Snowflake(id),
        address,
        "conformance",
        Bytes::from(format!("payload of {id}")),
    );
    envelope.persisted = true;
    envelope
}

fn with_dedupe_key(mut envelope: EnvelopeRequest, key: &str) -> EnvelopeRequest {
    envelope.dedupe_key = Some(key.to_owned());
    envelope
}

fn delivered_at(mut envelope: EnvelopeRequest, at: DateTime<Utc>) -> EnvelopeRequest {
    envelope.deliver_at = Some(at);
    envelope
}

fn success(id: i64, text: &str) -> ReplyWithExit {
    ReplyWithExit {
        request_id: Snowflake(id),
        exit: ExitResult::Success(Bytes::from(text.to_owned())),
    }
}

fn failure(id: i64, message: &str) -> ReplyWithExit {
    ReplyWithExit {
        request_id: Snowflake(id),
        exit: ExitResult::failure(&ClusterError::handler(message)),
    }
}

fn chunk(id: i64, sequence: u32) -> ReplyChunk {
    ReplyChunk {
        request_id: Snowflake(id),
        sequence,
        values: vec![Bytes::from(format!("{id}/{sequence}"))],
    }
}

fn ids_of(requests: &[StoredRequest]) -> Vec<i64> {
    requests.iter().map(|r| r.envelope.request_id.0).collect()
}

fn dead_ids(dead: &[DeadLetter]) -> Vec<i64> {
    dead.iter().map(|d| d.envelope.request_id.0).collect()
}

async fn save<S: MessageStorage + ?Sized>(storage: &S, envelope: &EnvelopeRequest) -> SaveResult {
    storage
        .save_request(envelope)
        .await
        .unwrap_or_else(|err| panic!("save_request({}) failed: {err}", envelope.request_id))
}

async fn save_all<S: MessageStorage + ?Sized>(storage: &S, envelopes: &[EnvelopeRequest]) {
    for envelope in envelopes {
        let result = save(storage, envelope).await;
        assert_eq!(
            result,
            SaveResult::Saved,
            "a new request {} should be saved",
            envelope.request_id
        );
    }
}

async fn reply<S: MessageStorage + ?Sized>(storage: &S, reply: Reply) {
    storage
        .save_reply(&reply)
        .await
        .unwrap_or_else(|err| panic!("save_reply({reply:?}) failed: {err}"));
}

async fn stored<S: MessageStorage + ?Sized>(storage: &S, id: i64) -> Option<StoredRequest> {
    storage.request(Snowflake(id)).await.unwrap()
}

async fn pending<S: MessageStorage + ?Sized>(
    storage: &S,
    shards: &[ShardId],
    now: DateTime<Utc>,
) -> Vec<StoredRequest> {
    storage.unprocessed(shards, now, 10_000).await.unwrap()
}

async fn pending_ids<S: MessageStorage + ?Sized>(storage: &S, shards: &[ShardId]) -> Vec<i64> {
    ids_of(&pending(storage, shards, t0()).await)
}

async fn fail<S: MessageStorage + ?Sized>(
    storage: &S,
    id: i64,
    reason: &str,
    max_attempts: u32,
) -> FailedAttempt {
    let failure = AttemptFailure {
        reason,
        max_attempts,
        retry_at: t0(),
        counted: false,
    };
    storage
        .record_failed_attempt(Snowflake(id), &failure)
        .await
        .unwrap()
}

async fn poll_ids<S: MessageStorage + ?Sized>(storage: &S, query: PollQuery<'_>) -> Vec<i64> {
    ids_of(&storage.poll_unprocessed(&query).await.unwrap())
}

async fn start<S: MessageStorage + ?Sized>(
    storage: &S,
    ids: &[i64],
    max_attempts: u32,
) -> Vec<AttemptStart> {
    let ids: Vec<Snowflake> = ids.iter().copied().map(Snowflake).collect();
    storage
        .start_attempts(&ids, max_attempts, "attempts used up")
        .await
        .unwrap()
}

#[track_caller]
fn expect_duplicate(result: &SaveResult, original: i64, reply: Option<&ReplyWithExit>, what: &str) {
    let expected = SaveResult::Duplicate {
        original_request_id: Snowflake(original),
        reply: reply.cloned(),
    };
    assert_eq!(result, &expected, "{what}");
}

// ---------------------------------------------------------------------------------------
// Saving
// ---------------------------------------------------------------------------------------

/// A new request is saved and read back exactly as sent: unprocessed, no attempts.
pub async fn saved_request_is_returned_as_stored<S: MessageStorage + ?Sized>(storage: &S) {
    let mut envelope = delivered_at(request(1, address("e-1", 0)), t0());
    envelope.streaming = true;
    envelope.uninterruptible = true;
    envelope.dedupe_key = Some("key".into());
    envelope
        .trace
        .0
        .push(("traceparent".into(), "00-abc-def-01".into()));
    assert_eq!(save(storage, &envelope).await, SaveResult::Saved);

    let expected = StoredRequest {
        envelope: envelope.clone(),
        attempts: 0,
        processed: false,
        dead_lettered: false,
    };
    assert_eq!(stored(storage, 1).await, Some(expected.clone()));
    assert_eq!(pending(storage, &[shard(0)], t0()).await, vec![expected]);
    assert_eq!(
        stored(storage, 2).await,
        None,
        "an unknown request id reads as None"
    );
    assert!(storage.replies_for(Snowflake(1)).await.unwrap().is_empty());
}

/// Saving a request id a second time stores nothing and names the first request; the
/// stored envelope stays the first one even if the second differs.
pub async fn duplicate_save_returns_first_id<S: MessageStorage + ?Sized>(storage: &S) {
    let first = request(1, address("e-1", 0));
    save_all(storage, std::slice::from_ref(&first)).await;

    let mut second = first.clone();
    second.payload = Bytes::from_static(b"a retried send with another payload");
    let result = save(storage, &second).await;
    expect_duplicate(&result, 1, None, "second save of request 1");

    let kept = stored(storage, 1).await.expect("request 1 is stored");
    assert_eq!(
        kept.envelope, first,
        "a duplicate save must not overwrite the stored request"
    );
    assert_eq!(pending_ids(storage, &[shard(0)]).await, vec![1]);
}

/// A duplicate of an answered request gets the stored final reply back.
pub async fn duplicate_save_after_reply_returns_the_reply<S: MessageStorage + ?Sized>(storage: &S) {
    let envelope = request(1, address("e-1", 0));
    save_all(storage, std::slice::from_ref(&envelope)).await;
    let answer = success(1, "done");
    reply(storage, Reply::WithExit(answer.clone())).await;

    let result = save(storage, &envelope).await;
    expect_duplicate(&result, 1, Some(&answer), "save of an answered request");
}

/// A new request id reusing an entity's `dedupe_key` is a duplicate of the first request:
/// it is not stored, and gets the first one's final reply once there is one.
pub async fn dedupe_key_duplicate_returns_first_reply<S: MessageStorage + ?Sized>(storage: &S) {
    let entity = address("e-1", 0);
    let first = with_dedupe_key(request(10, entity.clone()), "order-42");
    save_all(storage, std::slice::from_ref(&first)).await;

    let retry = with_dedupe_key(request(11, entity.clone()), "order-42");
    let result = save(storage, &retry).await;
    expect_duplicate(&result, 10, None, "same entity and key, before the reply");
    assert_eq!(
        stored(storage, 11).await,
        None,
        "the duplicate request 11 must not be stored"
    );
    assert_eq!(pending_ids(storage, &[shard(0)]).await, vec![10]);

    let answer = failure(10, "out of stock");
    reply(storage, Reply::WithExit(answer.clone())).await;
    let late_retry = with_dedupe_key(request(12, entity), "order-42");
    let result = save(storage, &late_retry).await;
    expect_duplicate(
        &result,
        10,
        Some(&answer),
        "same entity and key, after the reply",
    );
    assert_eq!(stored(storage, 12).await, None);
}

/// A `dedupe_key` belongs to one entity: the same key sent to another entity id, or to
/// another entity type with the same id, is a new request.
pub async fn dedupe_key_is_scoped_to_the_entity<S: MessageStorage + ?Sized>(storage: &S) {
    let first = with_dedupe_key(request(1, address("e-1", 0)), "shared-key");
    let other_id = with_dedupe_key(request(2, address("e-2", 0)), "shared-key");
    let mut other_type_address = address("e-1", 0);
    other_type_address.entity_type = EntityType::new("AnotherType");
    let other_type = with_dedupe_key(request(3, other_type_address), "shared-key");
    let no_key = request(4, address("e-1", 0));

    for envelope in [&first, &other_id, &other_type, &no_key] {
        let result = save(storage, envelope).await;
        assert_eq!(
            result,
            SaveResult::Saved,
            "request {} ({}, key {:?}) is not a duplicate",
            envelope.request_id,
            envelope.address,
            envelope.dedupe_key
        );
    }
    assert_eq!(pending_ids(storage, &[shard(0)]).await, vec![1, 2, 3, 4]);
}

// ---------------------------------------------------------------------------------------
// Unprocessed requests
// ---------------------------------------------------------------------------------------

/// `unprocessed` answers oldest first (by request id), whatever the order of the saves.
pub async fn unprocessed_is_ordered_by_request_id<S: MessageStorage + ?Sized>(storage: &S) {
    let order = [7, 3, 9, 1, 5, 2, 8, 4, 6];
    for id in order {
        let entity = format!("e-{}", id % 3);
        save_all(storage, &[request(id, address(&entity, 0))]).await;
    }
    assert_eq!(
        pending_ids(storage, &[shard(0)]).await,
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
        "saved in the order {order:?}"
    );
}

/// `unprocessed` answers only requests of the shards asked for (a shard is its group and
/// its number).
pub async fn unprocessed_only_returns_requested_shards<S: MessageStorage + ?Sized>(storage: &S) {
    let mut other_group = address("e-9", 1);
    other_group.shard_id = ShardId::new("another-group", 1);
    save_all(
        storage,
        &[
            request(1, address("e-1", 0)),
            request(2, address("e-2", 1)),
            request(3, address("e-3", 2)),
            request(4, other_group),
            request(5, address("e-5", 1)),
        ],
    )
    .await;

    assert_eq!(pending_ids(storage, &[shard(1)]).await, vec![2, 5]);
    assert_eq!(
        pending_ids(storage, &[shard(0), shard(2)]).await,
        vec![1, 3]
    );
    assert_eq!(
        pending_ids(storage, &[ShardId::new("another-group", 1)]).await,
        vec![4]
    );
    assert_eq!(pending_ids(storage, &[shard(7)]).await, Vec::<i64>::new());
    assert_eq!(pending_ids(storage, &[]).await, Vec::<i64>::new());
}

/// A request whose `deliver_at` is after `now` is not unprocessed yet; it is at
/// `deliver_at` exactly and after it.
pub async fn future_deliver_at_is_not_returned_early<S: MessageStorage + ?Sized>(storage: &S) {
    let later = t0() + Duration::minutes(5);
    save_all(
        storage,
        &[
            request(1, address("e-1", 0)),
            delivered_at(request(2, address("e-1", 0)), later),
            delivered_at(request(3, address("e-1", 0)), t0() - Duration::seconds(1)),
        ],
    )
    .await;

    let at = |now| async move { ids_of(&pending(storage, &[shard(0)], now).await) };
    assert_eq!(
        at(t0()).await,
        vec![1, 3],
        "at t0, request 2 is due at {later}"
    );
    assert_eq!(
        at(later - Duration::milliseconds(1)).await,
        vec![1, 3],
        "one millisecond before deliver_at"
    );
    assert_eq!(at(later).await, vec![1, 2, 3], "at deliver_at");
    assert_eq!(at(later + Duration::hours(1)).await, vec![1, 2, 3]);
}

/// `unprocessed` and `dead_letters` answer at most `limit` requests: the oldest ones.
pub async fn limit_is_honoured<S: MessageStorage + ?Sized>(storage: &S) {
    for id in (1..=12).rev() {
        save_all(
            storage,
            &[request(id, address(&format!("e-{id}"), id as u32 % 3))],
        )
        .await;
    }
    let shards = [shard(0), shard(1), shard(2)];
    for limit in [0, 1, 3, 12, 50] {
        let got = ids_of(&storage.unprocessed(&shards, t0(), limit).await.unwrap());
        let expected: Vec<i64> = (1..=12).take(limit).collect();
        assert_eq!(got, expected, "unprocessed with limit {limit}");
    }

    for id in [9, 4, 11, 2] {
        assert_eq!(
            fail(storage, id, "boom", 1).await,
            FailedAttempt::DeadLettered { attempts: 1 }
        );
    }
    let dead = dead_ids(&storage.dead_letters(3).await.unwrap());
    assert_eq!(dead, vec![2, 4, 9], "dead_letters with limit 3");
    let got = ids_of(&storage.unprocessed(&shards, t0(), 4).await.unwrap());
    assert_eq!(got, vec![1, 3, 5, 6], "limit 4 once 2, 4, 9, 11 are dead");
}

// ---------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------

/// A final reply marks its request processed: no longer unprocessed, and the reply is
/// read back.
pub async fn final_reply_marks_processed<S: MessageStorage + ?Sized>(storage: &S) {
    save_all(
        storage,
        &[request(1, address("e-1", 0)), request(2, address("e-1", 0))],
    )
    .await;
    let answer = success(1, "done");
    reply(storage, Reply::WithExit(answer.clone())).await;

    let first = stored(storage, 1).await.expect("request 1 is kept");
    assert!(
        first.processed && !first.dead_lettered,
        "request 1 after its final reply: {first:?}"
    );
    assert_eq!(pending_ids(storage, &[shard(0)]).await, vec![2]);
    assert_eq!(
        storage.replies_for(Snowflake(1)).await.unwrap(),
        vec![Reply::WithExit(answer)]
    );
    assert!(storage.replies_for(Snowflake(2)).await.unwrap().is_empty());
}

/// Chunks are read back in sequence order whatever the order they were saved in, the
/// final reply last; chunks alone do not mark a request processed.
pub async fn chunks_are_returned_in_sequence_order<S: MessageStorage + ?Sized>(storage: &S) {
    let mut envelope = request(1, address("e-1", 0));
    envelope.streaming = true;
    save_all(storage, &[envelope]).await;
    for sequence in [2, 0, 3, 1] {
        reply(storage, Reply::Chunk(chunk(1, sequence))).await;
    }
    assert_eq!(
        pending_ids(storage, &[shard(0)]).await,
        vec![1],
        "chunks are not a final reply"
    );

    let end = success(1, "end of stream");
    reply(storage, Reply::WithExit(end.clone())).await;
    let expected: Vec<Reply> = (0..4)
        .map(|sequence| Reply::Chunk(chunk(1, sequence)))
        .chain([Reply::WithExit(end)])
        .collect();
    assert_eq!(storage.replies_for(Snowflake(1)).await.unwrap(), expected);
    assert_eq!(pending_ids(storage, &[shard(0)]).await, Vec::<i64>::new());
}

/// Saving a final reply again is harmless and the first one wins; a chunk saved twice is
/// stored once.
pub async fn saving_a_reply_twice_keeps_the_first<S: MessageStorage + ?Sized>(storage: &S) {
    save_all(storage, &[request(1, address("e-1", 0))]).await;
    reply(storage, Reply::Chunk(chunk(1, 0))).await;
    reply(storage, Reply::Chunk(chunk(1, 0))).await;
    let first = success(1, "first");
    reply(storage, Reply::WithExit(first.clone())).await;
    reply(storage, Reply::WithExit(first.clone())).await;
    reply(storage, Reply::WithExit(failure(1, "second"))).await;

    assert_eq!(
        storage.replies_for(Snowflake(1)).await.unwrap(),
        vec![Reply::Chunk(chunk(1, 0)), Reply::WithExit(first.clone())]
    );
    let result = save(storage, &request(1, address("e-1", 0))).await;
    expect_duplicate(
        &result,
        1,
        Some(&first),
        "duplicate after two final replies",
    );
}

/// A reply for a request this storage has not seen is stored anyway (another runner may
/// have saved the request an instant earlier); once the request arrives it counts as
/// answered and is not unprocessed.
pub async fn reply_saved_before_its_request_is_kept<S: MessageStorage + ?Sized>(storage: &S) {
    let answer = success(1, "early");
    reply(storage, Reply::Chunk(chunk(1, 0))).await;
    reply(storage, Reply::WithExit(answer.clone())).await;
    assert_eq!(
        storage.replies_for(Snowflake(1)).await.unwrap(),
        vec![Reply::Chunk(chunk(1, 0)), Reply::WithExit(answer.clone())]
    );

    let envelope = request(1, address("e-1", 0));
    let result = save(storage, &envelope).await;
    assert!(
        matches!(result, SaveResult::Saved | SaveResult::Duplicate { .. }),
        "{result:?}"
    );
    if let SaveResult::Duplicate {
        original_request_id,
        reply,
    } = &result
    {
        assert_eq!(*original_request_id, Snowflake(1));
        assert_eq!(reply.as_ref(), Some(&answer));
    }
    assert_eq!(
        pending_ids(storage, &[shard(0)]).await,
        Vec::<i64>::new(),
        "request 1 already has a final reply"
    );
}

/// `mark_processed` (a `notify` whose handler finished) takes a request out of the
/// unprocessed ones without a reply; a later duplicate has no reply to return.
pub async fn mark_processed_removes_from_unprocessed<S: MessageStorage + ?Sized>(storage: &S) {
    let mut notify = request(1, address("e-1", 0));
    notify.expects_reply = false;
    save_all(storage, &[notify.clone(), request(2, address("e-1", 0))]).await;
    storage.mark_processed(Snowflake(1)).await.unwrap();
    storage.mark_processed(Snowflake(1)).await.unwrap();

    let marked = stored(storage, 1).await.expect("request 1 is kept");
    assert!(marked.processed && !marked.dead_lettered, "{marked:?}");
    assert_eq!(pending_ids(storage, &[shard(0)]).await, vec![2]);
    assert!(storage.replies_for(Snowflake(1)).await.unwrap().is_empty());
    let result = save(storage, &notify).await;
    expect_duplicate(&result, 1, None, "duplicate of a processed notify");
    storage
        .mark_processed(Snowflake(99))
        .await
        .expect("marking an unknown request is not an error");
}

// ---------------------------------------------------------------------------------------
// Retries and dead letters
// ---------------------------------------------------------------------------------------

/// Failed attempts are counted (and visible on the unprocessed request) until the count
/// reaches `max_attempts`; then the request is a dead letter, no longer unprocessed, kept
/// with the last reason. Further attempts count nothing.
pub async fn failed_attempts_dead_letter_at_the_limit<S: MessageStorage + ?Sized>(storage: &S) {
    save_all(
        storage,
        &[request(1, address("e-1", 0)), request(2, address("e-1", 0))],
    )
    .await;

    assert_eq!(
        fail(storage, 1, "timeout", 3).await,
        FailedAttempt::WillRetry { attempts: 1 }
    );
    assert_eq!(
        fail(storage, 1, "timeout", 3).await,
        FailedAttempt::WillRetry { attempts: 2 }
    );
    let waiting = pending(storage, &[shard(0)], t0()).await;
    assert_eq!(
        waiting.iter().map(|r| r.attempts).collect::<Vec<_>>(),
        vec![2, 0],
        "attempts of requests 1 and 2: {waiting:?}"
    );

    assert_eq!(
        fail(storage, 1, "handler panicked", 3).await,
        FailedAttempt::DeadLettered { attempts: 3 }
    );
    assert_eq!(
        fail(storage, 1, "again", 3).await,
        FailedAttempt::NotPending
    );
    assert_eq!(pending_ids(storage, &[shard(0)]).await, vec![2]);

    let dead = stored(storage, 1)
        .await
        .expect("a dead letter stays inspectable");
    assert!(dead.dead_lettered, "{dead:?}");
    assert_eq!(dead.attempts, 3, "{dead:?}");
    let letters = storage.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].envelope, request(1, address("e-1", 0)));
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(letters[0].reason, "handler panicked");

    storage.mark_processed(Snowflake(2)).await.unwrap();
    assert_eq!(
        fail(storage, 2, "late", 3).await,
        FailedAttempt::NotPending,
        "a processed request"
    );
    assert_eq!(
        fail(storage, 77, "unknown", 3).await,
        FailedAttempt::NotPending,
        "an unknown request"
    );
}

/// Dead letters are listed oldest request first, whatever the order they died in.
pub async fn dead_letters_are_listed_oldest_first<S: MessageStorage + ?Sized>(storage: &S) {
    for id in 1..=6 {
        save_all(storage, &[request(id, address("e-1", id as u32 % 2))]).await;
    }
    for id in [5, 1, 6, 3] {
        fail(storage, id, &format!("reason {id}"), 1).await;
    }
    let letters = storage.dead_letters(100).await.unwrap();
    assert_eq!(dead_ids(&letters), vec![1, 3, 5, 6]);
    for letter in &letters {
        assert_eq!(
            letter.reason,
            format!("reason {}", letter.envelope.request_id)
        );
    }
}

/// A failed attempt with a retry instant leaves the request pending but not due before
/// that instant (the later of `deliver_at` and the retry instant decides); the attempt
/// count stays visible.
pub async fn failed_attempt_is_not_due_before_retry_at<S: MessageStorage + ?Sized>(storage: &S) {
    let scheduled_at = t0() + Duration::seconds(30);
    save_all(
        storage,
        &[
            request(1, address("e-1", 0)),
            request(2, address("e-2", 0)),
            delivered_at(request(3, address("e-3", 0)), scheduled_at),
        ],
    )
    .await;
    for (id, retry_at) in [
        (1, t0() + Duration::seconds(10)),
        (3, t0() + Duration::seconds(5)),
    ] {
        let failure = AttemptFailure {
            reason: "storage outage",
            max_attempts: 5,
            retry_at,
            counted: false,
        };
        let got = storage
            .record_failed_attempt(Snowflake(id), &failure)
            .await
            .unwrap();
        assert_eq!(
            got,
            FailedAttempt::WillRetry { attempts: 1 },
            "request {id}"
        );
    }
    let at = |now| async move { ids_of(&pending(storage, &[shard(0)], now).await) };
    assert_eq!(
        at(t0()).await,
        vec![2],
        "request 1 backs off until t0 + 10 s"
    );
    assert_eq!(
        at(t0() + Duration::milliseconds(9_999)).await,
        vec![2],
        "one millisecond before the retry instant"
    );
    assert_eq!(at(t0() + Duration::seconds(10)).await, vec![1, 2]);
    assert_eq!(
        at(t0() + Duration::seconds(29)).await,
        vec![1, 2],
        "request 3's deliver_at is later than its retry instant"
    );
    assert_eq!(at(scheduled_at).await, vec![1, 2, 3]);
    let first = stored(storage, 1).await.expect("stored");
    assert_eq!(
        (first.attempts, first.processed, first.dead_lettered),
        (1, false, false)
    );
}

/// `start_attempts` counts the attempt a redelivery is about to make: a pending request
/// gets one more and is to be delivered; one that already used `max_attempts` becomes a
/// dead letter with the given reason and is not to be delivered; processed, dead and
/// unknown requests count nothing. Answers come in the order asked.
pub async fn start_attempts_counts_before_delivery<S: MessageStorage + ?Sized>(storage: &S) {
    save_all(
        storage,
        &(1..=5)
            .map(|id| request(id, address(&format!("e-{id}"), 0)))
            .collect::<Vec<_>>(),
    )
    .await;
    fail(storage, 2, "first", 3).await;
    fail(storage, 2, "second", 3).await;
    reply(storage, Reply::WithExit(success(4, "done"))).await;
    fail(storage, 5, "dead", 1).await;

    let answers = start(storage, &[3, 1, 2, 4, 5, 99], 3).await;
    assert_eq!(
        answers,
        vec![
            AttemptStart::Deliver {
                request_id: Snowflake(3),
                attempt: 1
            },
            AttemptStart::Deliver {
                request_id: Snowflake(1),
                attempt: 1
            },
            AttemptStart::Deliver {
                request_id: Snowflake(2),
                attempt: 3
            },
            AttemptStart::NotPending {
                request_id: Snowflake(4)
            },
            AttemptStart::NotPending {
                request_id: Snowflake(5)
            },
            AttemptStart::NotPending {
                request_id: Snowflake(99)
            },
        ]
    );
    assert_eq!(stored(storage, 1).await.expect("stored").attempts, 1);
    assert_eq!(
        stored(storage, 4).await.expect("stored").attempts,
        0,
        "a processed request counts nothing"
    );

    // Request 2 used its three attempts (the third crashed without an outcome): the next
    // redelivery dead-letters it instead of making a fourth.
    assert_eq!(
        start(storage, &[2], 3).await,
        vec![AttemptStart::DeadLettered {
            request_id: Snowflake(2),
            attempts: 3
        }]
    );
    let dead = stored(storage, 2)
        .await
        .expect("a dead letter stays inspectable");
    assert!(dead.dead_lettered && !dead.processed, "{dead:?}");
    assert_eq!(dead.attempts, 3);
    let letters = storage.dead_letters(10).await.unwrap();
    assert_eq!(dead_ids(&letters), vec![2, 5]);
    assert_eq!(letters[0].reason, "attempts used up");
    assert_eq!(pending_ids(storage, &[shard(0)]).await, vec![1, 3]);
    assert_eq!(start(storage, &[], 3).await, Vec::new());
}

/// A failure whose attempt was counted when it started (`counted: true`) is not counted
/// again: it only sets the retry instant, or dead-letters when the counted attempt was
/// the last one.
pub async fn counted_failure_is_not_counted_twice<S: MessageStorage + ?Sized>(storage: &S) {
    save_all(
        storage,
        &[request(1, address("e-1", 0)), request(2, address("e-2", 0))],
    )
    .await;
    let counted = |reason, retry_at| AttemptFailure {
        reason,
        max_attempts: 2,
        retry_at,
        counted: true,
    };
    start(storage, &[1, 2], 2).await;
    let got = storage
        .record_failed_attempt(Snowflake(1), &counted("first", t0() + Duration::seconds(1)))
        .await
        .unwrap();
    assert_eq!(got, FailedAttempt::WillRetry { attempts: 1 });
    assert_eq!(stored(storage, 1).await.expect("stored").attempts, 1);
    assert_eq!(
        pending_ids(storage, &[shard(0)]).await,
        vec![2],
        "request 1 waits for its retry instant"
    );

    start(storage, &[1], 2).await;
    let got = storage
        .record_failed_attempt(Snowflake(1), &counted("second", t0()))
        .await
        .unwrap();
    assert_eq!(
        got,
        FailedAttempt::DeadLettered { attempts: 2 },
        "the counted attempt was the last one"
    );
    let letters = storage.dead_letters(10).await.unwrap();
    assert_eq!(dead_ids(&letters), vec![1]);
    assert_eq!(letters[0].reason, "second");
    assert_eq!(stored(storage, 2).await.expect("stored").attempts, 1);
}

/// `release_attempts` gives back attempts counted by `start_attempts` that were never
/// made: the count goes down by one per call, never below zero, and only for pending
/// requests.
pub async fn released_attempts_are_given_back<S: MessageStorage + ?Sized>(storage: &S) {
    save_all(
        storage,
        &(1..=4)
            .map(|id| request(id, address(&format!("e-{id}"), 0)))
            .collect::<Vec<_>>(),
    )
    .await;
    start(storage, &[1, 2, 3], 5).await;
    start(storage, &[1], 5).await;
    fail(storage, 3, "dead", 1).await;
    let ids = |ids: &[i64]| ids.iter().copied().map(Snowflake).collect::<Vec<_>>();
    storage
        .release_attempts(&ids(&[1, 2, 3, 4, 99]))
        .await
        .unwrap();
    let attempts = |id| async move { stored(storage, id).await.expect("stored").attempts };
    assert_eq!(attempts(1).await, 1, "two counted, one given back");
    assert_eq!(attempts(2).await, 0);
    assert_eq!(attempts(3).await, 2, "a dead letter keeps its count");
    assert_eq!(attempts(4).await, 0, "never below zero");
    storage.release_attempts(&[]).await.unwrap();
    assert_eq!(
        start(storage, &[2], 1).await,
        vec![AttemptStart::Deliver {
            request_id: Snowflake(2),
            attempt: 1
        }],
        "a given-back attempt can be made again"
    );
}

/// The poll's cursor: only requests with an id after `after` are answered, still oldest
/// first and at most `limit`, so paging through the backlog reads each request once.
pub async fn poll_continues_after_the_cursor<S: MessageStorage + ?Sized>(storage: &S) {
    for id in (1..=9).rev() {
        save_all(
            storage,
            &[request(
                id,
                address(&format!("e-{}", id % 4), id as u32 % 2),
            )],
        )
        .await;
    }
    let shards = [shard(0), shard(1)];
    let page = |after, limit| PollQuery::new(&shards, t0(), limit).after(after);
    assert_eq!(poll_ids(storage, page(None, 4)).await, vec![1, 2, 3, 4]);
    assert_eq!(
        poll_ids(storage, page(Some(Snowflake(4)), 4)).await,
        vec![5, 6, 7, 8]
    );
    assert_eq!(
        poll_ids(storage, page(Some(Snowflake(8)), 4)).await,
        vec![9]
    );
    assert_eq!(
        poll_ids(storage, page(Some(Snowflake(9)), 4)).await,
        Vec::<i64>::new()
    );
    assert_eq!(
        poll_ids(storage, page(Some(Snowflake(0)), 100)).await,
        (1..=9).collect::<Vec<_>>()
    );
    fail(storage, 6, "boom", 1).await;
    assert_eq!(
        poll_ids(storage, page(Some(Snowflake(4)), 2)).await,
        vec![5, 7],
        "a dead letter is not answered after the cursor either"
    );
}

/// The poll leaves out every request of the entities it is told to skip (matched by
/// entity type and entity id), so a saturated entity's backlog does not fill the page.
pub async fn poll_skips_saturated_entities<S: MessageStorage + ?Sized>(storage: &S) {
    let hot = address("hot", 0);
    let mut hot_type_twin = address("hot", 0);
    hot_type_twin.entity_type = EntityType::new("OtherType");
    let mut envelopes: Vec<EnvelopeRequest> = (1..=20).map(|id| request(id, hot.clone())).collect();
    envelopes.push(request(21, address("cold-1", 0)));
    envelopes.push(request(22, hot_type_twin.clone()));
    envelopes.push(request(23, address("cold-2", 1)));
    envelopes.push(request(24, address("warm", 1)));
    save_all(storage, &envelopes).await;
    let shards = [shard(0), shard(1)];

    assert_eq!(
        poll_ids(storage, PollQuery::new(&shards, t0(), 5)).await,
        vec![1, 2, 3, 4, 5],
        "without skips the hot entity fills the page"
    );
    let skipped = [hot.clone(), address("warm", 1)];
    assert_eq!(
        poll_ids(storage, PollQuery::new(&shards, t0(), 5).skipping(&skipped)).await,
        vec![21, 22, 23],
        "the same entity id under another type is not skipped"
    );
    let mut hot_elsewhere = hot.clone();
    hot_elsewhere.shard_id = shard(7);
    assert_eq!(
        poll_ids(
            storage,
            PollQuery::new(&shards, t0(), 2)
                .skipping(std::slice::from_ref(&hot_elsewhere))
                .after(Some(Snowflake(21)))
        )
        .await,
        vec![22, 23],
        "skips match type and id, whatever the shard; combined with the cursor"
    );
}

// ---------------------------------------------------------------------------------------
// Clearing an entity
// ---------------------------------------------------------------------------------------

/// `clear_address` deletes every request of the entity (pending, processed, dead) and
/// their replies, frees its dedupe keys, and touches no other entity.
pub async fn clear_address_deletes_requests_and_replies<S: MessageStorage + ?Sized>(storage: &S) {
    let cleared = address("cleared", 0);
    let neighbour = address("neighbour", 0);
    save_all(
        storage,
        &[
            with_dedupe_key(request(1, cleared.clone()), "k"),
            request(2, cleared.clone()),
            request(3, cleared.clone()),
            with_dedupe_key(request(4, neighbour.clone()), "k"),
            request(5, neighbour.clone()),
        ],
    )
    .await;
    reply(storage, Reply::Chunk(chunk(1, 0))).await;
    reply(storage, Reply::WithExit(success(1, "one"))).await;
    fail(storage, 3, "boom", 1).await;
    fail(storage, 5, "boom", 1).await;
    reply(storage, Reply::WithExit(success(4, "four"))).await;

    storage.clear_address(&cleared).await.unwrap();

    for id in 1..=3 {
        assert_eq!(stored(storage, id).await, None, "request {id} was cleared");
        let replies = storage.replies_for(Snowflake(id)).await.unwrap();
        assert!(replies.is_empty(), "replies of request {id}: {replies:?}");
    }
    assert_eq!(pending_ids(storage, &[shard(0)]).await, Vec::<i64>::new());
    assert_eq!(dead_ids(&storage.dead_letters(10).await.unwrap()), vec![5]);
    assert!(stored(storage, 4).await.is_some_and(|r| r.processed));
    assert_eq!(storage.replies_for(Snowflake(4)).await.unwrap().len(), 1);

    let reused = with_dedupe_key(request(6, cleared), "k");
    assert_eq!(
        save(storage, &reused).await,
        SaveResult::Saved,
        "the cleared entity's dedupe key is free again"
    );
    let neighbour_retry = with_dedupe_key(request(7, neighbour), "k");
    let result = save(storage, &neighbour_retry).await;
    expect_duplicate(
        &result,
        4,
        Some(&success(4, "four")),
        "the neighbour keeps its key",
    );
}

// ---------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------

const RACERS: usize = 32;

/// Many tasks saving the same request at once: exactly one is told `Saved`, every other
/// one `Duplicate` of it, and it is stored once.
pub async fn concurrent_saves_of_one_request_store_it_once<S: MessageStorage + ?Sized>(
    storage: Arc<S>,
) {
    let envelope = request(1, address("e-1", 0));
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..RACERS {
        let storage = Arc::clone(&storage);
        let start = Arc::clone(&start);
        let envelope = envelope.clone();
        tasks.spawn(async move {
            start.wait().await;
            storage.save_request(&envelope).await.unwrap()
        });
    }
    let results = tasks.join_all().await;
    let saved = results.iter().filter(|r| **r == SaveResult::Saved).count();
    assert_eq!(saved, 1, "answers: {results:?}");
    for result in &results {
        if *result != SaveResult::Saved {
            expect_duplicate(result, 1, None, "a racing save");
        }
    }
    assert_eq!(pending_ids(&*storage, &[shard(0)]).await, vec![1]);
}

/// Many tasks saving different request ids with the same entity and `dedupe_key` at once:
/// exactly one is stored, and every other save names it.
pub async fn concurrent_saves_of_one_dedupe_key_have_one_winner<S: MessageStorage + ?Sized>(
    storage: Arc<S>,
) {
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = tokio::task::JoinSet::new();
    for id in 1..=RACERS as i64 {
        let storage = Arc::clone(&storage);
        let start = Arc::clone(&start);
        let envelope = with_dedupe_key(request(id, address("e-1", 0)), "once");
        tasks.spawn(async move {
            start.wait().await;
            (id, storage.save_request(&envelope).await.unwrap())
        });
    }
    let results = tasks.join_all().await;
    let winners: Vec<i64> = results
        .iter()
        .filter(|(_, r)| *r == SaveResult::Saved)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(winners.len(), 1, "answers: {results:?}");
    let winner = winners[0];
    for (id, result) in &results {
        if *id != winner {
            expect_duplicate(result, winner, None, &format!("save of request {id}"));
        }
    }
    assert_eq!(pending_ids(&*storage, &[shard(0)]).await, vec![winner]);
}

/// Writers saving, answering and failing their own requests while racing on a shared one
/// and while readers poll: every request ends in the state its writer drove it to, and
/// the shared request has exactly one final reply.
pub async fn concurrent_writers_do_not_corrupt_state<S: MessageStorage + ?Sized>(storage: Arc<S>) {
    const WRITERS: i64 = 8;
    const PER_WRITER: i64 = 30;
    const SHARED: i64 = 1;
    let shards: Vec<ShardId> = (0..4).map(shard).collect();
    save_all(&*storage, &[request(SHARED, address("shared", 0))]).await;

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let storage = Arc::clone(&storage);
        let done = Arc::clone(&done);
        let shards = shards.clone();
        tokio::spawn(async move {
            let mut polls = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || polls == 0 {
                let batch = storage.unprocessed(&shards, t0(), 25).await.unwrap();
                let ids = ids_of(&batch);
                assert!(
                    batch.len() <= 25,
                    "limit 25 answered {} requests",
                    batch.len()
                );
                assert!(
                    ids.windows(2).all(|w| w[0] < w[1]),
                    "unprocessed out of order or repeated: {ids:?}"
                );
                assert!(
                    batch.iter().all(|r| !r.processed && !r.dead_lettered),
                    "unprocessed answered a finished request: {batch:?}"
                );
                storage.dead_letters(25).await.unwrap();
                polls += 1;
                tokio::task::yield_now().await;
            }
        })
    };

    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let storage = Arc::clone(&storage);
        writers.spawn(async move {
            let id = |i: i64| 1_000 * (writer + 1) + i;
            let entity = format!("writer-{writer}");
            for i in 0..PER_WRITER {
                let envelope = request(id(i), address(&entity, (i % 4) as u32));
                assert_eq!(
                    storage.save_request(&envelope).await.unwrap(),
                    SaveResult::Saved
                );
            }
            storage
                .save_reply(&Reply::WithExit(success(
                    SHARED,
                    &format!("writer {writer}"),
                )))
                .await
                .unwrap();
            for i in 0..PER_WRITER {
                let request_id = Snowflake(id(i));
                match i % 3 {
                    0 => {
                        storage
                            .save_reply(&Reply::Chunk(chunk(id(i), 0)))
                            .await
                            .unwrap();
                        storage
                            .save_reply(&Reply::WithExit(success(id(i), "ok")))
                            .await
                            .unwrap();
                    }
                    1 => {
                        fail(&*storage, request_id.0, "first", 2).await;
                        fail(&*storage, request_id.0, "second", 2).await;
                    }
                    _ => {
                        fail(&*storage, request_id.0, "once", 5).await;
                    }
                }
            }
        });
    }
    writers.join_all().await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.await.expect("the reader saw a consistent state");

    let mut expected_pending = Vec::new();
    let mut expected_dead = Vec::new();
    for writer in 0..WRITERS {
        for i in 0..PER_WRITER {
            let id = 1_000 * (writer + 1) + i;
            let state = stored(&*storage, id).await.expect("every request is kept");
            let got = (state.attempts, state.processed, state.dead_lettered);
            let want = match i % 3 {
                0 => (0, true, false),
                1 => (2, false, true),
                _ => (1, false, false),
            };
            assert_eq!(got, want, "request {id} (attempts, processed, dead)");
            match i % 3 {
                0 => {
                    let replies = storage.replies_for(Snowflake(id)).await.unwrap();
                    assert_eq!(
                        replies,
                        vec![
                            Reply::Chunk(chunk(id, 0)),
                            Reply::WithExit(success(id, "ok"))
                        ]
                    );
                }
                1 => expected_dead.push(id),
                _ => expected_pending.push(id),
            }
        }
    }
    expected_pending.sort_unstable();
    expected_dead.sort_unstable();
    assert_eq!(
        ids_of(&pending(&*storage, &shards, t0()).await),
        expected_pending
    );
    assert_eq!(
        dead_ids(&storage.dead_letters(10_000).await.unwrap()),
        expected_dead
    );
    let shared = storage.replies_for(Snowflake(SHARED)).await.unwrap();
    assert_eq!(
        shared.len(),
        1,
        "the shared request has one final reply: {shared:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Property: random operations against a model
// ---------------------------------------------------------------------------------------

/// How many request ids, entities and dedupe keys a generated case uses.
const MODEL_REQUESTS: u8 = 8;
const MODEL_ENTITIES: u8 = 3;

/// What a generated request id always carries (a retried send repeats its request).
#[derive(Clone, Debug)]
struct ModelRequestShape {
    entity: u8,
    dedupe_key: Option<u8>,
    delayed: bool,
}

#[derive(Clone, Debug)]
enum ModelOp {
    Save(u8),
    Chunk { request: u8, sequence: u32 },
    Final { request: u8, ok: bool },
    MarkProcessed(u8),
    Fail { request: u8, max_attempts: u32 },
    Start { request: u8, max_attempts: u32 },
    Clear(u8),
}

#[derive(Clone, Debug)]
struct ModelCase {
    shapes: Vec<ModelRequestShape>,
    ops: Vec<ModelOp>,
}

fn model_case() -> impl Strategy<Value = ModelCase> {
    let shape = (
        0..MODEL_ENTITIES,
        proptest::option::of(0..2u8),
        any::<bool>(),
    )
        .prop_map(|(entity, dedupe_key, delayed)| ModelRequestShape {
            entity,
            dedupe_key,
            delayed,
        });
    let request = 0..MODEL_REQUESTS;
    let op = prop_oneof![
        4 => request.clone().prop_map(ModelOp::Save),
        2 => (request.clone(), 0..3u32)
            .prop_map(|(request, sequence)| ModelOp::Chunk { request, sequence }),
        2 => (request.clone(), any::<bool>()).prop_map(|(request, ok)| ModelOp::Final { request, ok }),
        1 => request.clone().prop_map(ModelOp::MarkProcessed),
        3 => (request, 1..4u32)
            .prop_map(|(request, max_attempts)| ModelOp::Fail { request, max_attempts }),
        1 => (0..MODEL_REQUESTS, 1..4u32)
            .prop_map(|(request, max_attempts)| ModelOp::Start { request, max_attempts }),
        1 => (0..MODEL_ENTITIES).prop_map(ModelOp::Clear),
    ];
    (
        proptest::collection::vec(shape, MODEL_REQUESTS as usize),
        proptest::collection::vec(op, 1..28),
    )
        .prop_map(|(shapes, ops)| ModelCase { shapes, ops })
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ModelState {
    Pending,
    Processed,
    Dead { reason: String },
}

#[derive(Clone, Debug)]
struct ModelRequest {
    attempts: u32,
    state: ModelState,
}

#[derive(Clone, Debug, Default)]
struct ModelReplies {
    chunks: BTreeMap<u32, ReplyChunk>,
    final_reply: Option<ReplyWithExit>,
}

#[derive(Debug, Default)]
struct Model {
    requests: BTreeMap<u8, ModelRequest>,
    replies: BTreeMap<u8, ModelReplies>,
}

/// Where a generated case lives, so cases never see each other.
struct ModelSpace {
    case: usize,
}

impl ModelSpace {
    fn id(&self, request: u8) -> i64 {
        (self.case as i64 + 1) * 1_000 + i64::from(request)
    }

    fn entity_type(&self) -> EntityType {
        EntityType::new(format!("Model{}", self.case))
    }

    fn shard(&self, number: u32) -> ShardId {
        ShardId::new(format!("model-{}", self.case), number)
    }

    fn shards(&self) -> Vec<ShardId> {
        (0..2).map(|n| self.shard(n)).collect()
    }

    /// Entities 0 and 2 share shard 0; entity 1 lives on shard 1.
    fn shard_of(entity: u8) -> u32 {
        u32::from(entity % 2)
    }

    fn address(&self, entity: u8) -> EntityAddress {
        EntityAddress {
            shard_id: self.shard(Self::shard_of(entity)),
            entity_type: self.entity_type(),
            entity_id: EntityId::new(format!("entity-{entity}")),
        }
    }

    fn envelope(&self, request_index: u8, shape: &ModelRequestShape) -> EnvelopeRequest {
        let mut envelope = request(self.id(request_index), self.address(shape.entity));
        envelope.dedupe_key = shape.dedupe_key.map(|k| format!("key-{k}"));
        if shape.delayed {
            envelope.deliver_at = Some(t0() + Duration::hours(1));
        }
        envelope
    }

    fn final_reply(&self, request_index: u8, ok: bool) -> ReplyWithExit {
        let id = self.id(request_index);
        if ok {
            success(id, "model ok")
        } else {
            failure(id, "model failure")
        }
    }
}

impl Model {
    fn final_of(&self, request: u8) -> Option<ReplyWithExit> {
        self.replies
            .get(&request)
            .and_then(|r| r.final_reply.clone())
    }

    fn save(&mut self, space: &ModelSpace, shapes: &[ModelRequestShape], index: u8) -> SaveResult {
        let duplicate_of = if self.requests.contains_key(&index) {
            Some(index)
        } else {
            let shape = &shapes[usize::from(index)];
            shape.dedupe_key.and_then(|key| {
                self.requests.keys().copied().find(|other| {
                    let other_shape = &shapes[usize::from(*other)];
                    other_shape.entity == shape.entity && other_shape.dedupe_key == Some(key)
                })
            })
        };
        if let Some(original) = duplicate_of {
            return SaveResult::Duplicate {
                original_request_id: Snowflake(space.id(original)),
                reply: self.final_of(original),
            };
        }
        let state = if self.final_of(index).is_some() {
            ModelState::Processed
        } else {
            ModelState::Pending
        };
        self.requests
            .insert(index, ModelRequest { attempts: 0, state });
        SaveResult::Saved
    }

    fn finish(&mut self, index: u8) {
        if let Some(request) = self.requests.get_mut(&index) {
            if request.state == ModelState::Pending {
                request.state = ModelState::Processed;
            }
        }
    }

    fn start(
        &mut self,
        index: u8,
        request_id: Snowflake,
        reason: &str,
        max_attempts: u32,
    ) -> AttemptStart {
        match self.requests.get_mut(&index) {
            Some(request) if request.state == ModelState::Pending => {
                if request.attempts >= max_attempts {
                    request.state = ModelState::Dead {
                        reason: reason.to_owned(),
                    };
                    AttemptStart::DeadLettered {
                        request_id,
                        attempts: request.attempts,
                    }
                } else {
                    request.attempts += 1;
                    AttemptStart::Deliver {
                        request_id,
                        attempt: request.attempts,
                    }
                }
            }
            _ => AttemptStart::NotPending { request_id },
        }
    }

    fn fail(&mut self, index: u8, reason: &str, max_attempts: u32) -> FailedAttempt {
        match self.requests.get_mut(&index) {
            Some(request) if request.state == ModelState::Pending => {
                request.attempts += 1;
                if request.attempts >= max_attempts {
                    request.state = ModelState::Dead {
                        reason: reason.to_owned(),
                    };
                    FailedAttempt::DeadLettered {
                        attempts: request.attempts,
                    }
                } else {
                    FailedAttempt::WillRetry {
                        attempts: request.attempts,
                    }
                }
            }
            _ => FailedAttempt::NotPending,
        }
    }
}

async fn run_model_case<S: MessageStorage + ?Sized>(
    storage: &S,
    case: usize,
    generated: &ModelCase,
) {
    let space = ModelSpace { case };
    let shapes = &generated.shapes;
    let mut model = Model::default();
    for (step, op) in generated.ops.iter().enumerate() {
        let context = |model: &Model| {
            format!(
                "case {case}, step {step} ({op:?})\nrequest shapes: {shapes:?}\noperations: {:?}\nmodel after the step: {model:?}",
                generated.ops
            )
        };
        match op {
            ModelOp::Save(index) => {
                let envelope = space.envelope(*index, &shapes[usize::from(*index)]);
                let got = storage.save_request(&envelope).await.unwrap();
                let want = model.save(&space, shapes, *index);
                assert_eq!(
                    got,
                    want,
                    "save_request answer differs at {}",
                    context(&model)
                );
            }
            ModelOp::Chunk { request, sequence } => {
                let reply = chunk(space.id(*request), *sequence);
                storage
                    .save_reply(&Reply::Chunk(reply.clone()))
                    .await
                    .unwrap();
                model
                    .replies
                    .entry(*request)
                    .or_default()
                    .chunks
                    .entry(*sequence)
                    .or_insert(reply);
            }
            ModelOp::Final { request, ok } => {
                let reply = space.final_reply(*request, *ok);
                storage
                    .save_reply(&Reply::WithExit(reply.clone()))
                    .await
                    .unwrap();
                let replies = model.replies.entry(*request).or_default();
                if replies.final_reply.is_none() {
                    replies.final_reply = Some(reply);
                    model.finish(*request);
                }
            }
            ModelOp::MarkProcessed(index) => {
                storage
                    .mark_processed(Snowflake(space.id(*index)))
                    .await
                    .unwrap();
                model.finish(*index);
            }
            ModelOp::Fail {
                request,
                max_attempts,
            } => {
                let reason = format!("failure at step {step}");
                let got = fail(storage, space.id(*request), &reason, *max_attempts).await;
                let want = model.fail(*request, &reason, *max_attempts);
                assert_eq!(
                    got,
                    want,
                    "record_failed_attempt answer differs at {}",
                    context(&model)
                );
            }
            ModelOp::Start {
                request,
                max_attempts,
            } => {
                let request_id = Snowflake(space.id(*request));
                let reason = format!("attempts used up at step {step}");
                let got = storage
                    .start_attempts(&[request_id], *max_attempts, &reason)
                    .await
                    .unwrap();
                let want = model.start(*request, request_id, &reason, *max_attempts);
                assert_eq!(
                    got,
                    vec![want],
                    "start_attempts answer differs at {}",
                    context(&model)
                );
            }
            ModelOp::Clear(entity) => {
                storage
                    .clear_address(&space.address(*entity))
                    .await
                    .unwrap();
                let cleared: Vec<u8> = model
                    .requests
                    .keys()
                    .copied()
                    .filter(|index| shapes[usize::from(*index)].entity == *entity)
                    .collect();
                for index in cleared {
                    model.requests.remove(&index);
                    model.replies.remove(&index);
                }
            }
        }
        check_against_model(storage, &space, shapes, &model, &context(&model)).await;
    }
}

async fn check_against_model<S: MessageStorage + ?Sized>(
    storage: &S,
    space: &ModelSpace,
    shapes: &[ModelRequestShape],
    model: &Model,
    context: &str,
) {
    for index in 0..MODEL_REQUESTS {
        let id = space.id(index);
        let got = storage.request(Snowflake(id)).await.unwrap();
        match (model.requests.get(&index), got) {
            (None, None) => {}
            (Some(want), Some(got)) => {
                assert_eq!(
                    got.envelope,
                    space.envelope(index, &shapes[usize::from(index)]),
                    "request {id} at {context}"
                );
                assert_eq!(got.attempts, want.attempts, "attempts of {id} at {context}");
                match &want.state {
                    ModelState::Pending => assert!(
                        !got.processed && !got.dead_lettered,
                        "request {id} should be pending, is {got:?}, at {context}"
                    ),
                    ModelState::Processed => assert!(
                        got.processed && !got.dead_lettered,
                        "request {id} should be processed, is {got:?}, at {context}"
                    ),
                    // Whether a final reply to a dead letter sets `processed` is left open.
                    ModelState::Dead { .. } => assert!(
                        got.dead_lettered,
                        "request {id} should be dead, is {got:?}, at {context}"
                    ),
                }
            }
            (want, got) => panic!("request {id}: model {want:?}, storage {got:?}, at {context}"),
        }

        let replies = storage.replies_for(Snowflake(id)).await.unwrap();
        let want: Vec<Reply> = model
            .replies
            .get(&index)
            .map(|r| {
                r.chunks
                    .values()
                    .cloned()
                    .map(Reply::Chunk)
                    .chain(r.final_reply.clone().map(Reply::WithExit))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(replies, want, "replies of {id} at {context}");
    }

    let pending_at = |delayed_due: bool| -> Vec<(i64, u32)> {
        model
            .requests
            .iter()
            .filter(|(index, r)| {
                r.state == ModelState::Pending
                    && (delayed_due || !shapes[usize::from(**index)].delayed)
            })
            .map(|(index, r)| (space.id(*index), r.attempts))
            .collect()
    };
    let listed = |requests: Vec<StoredRequest>| -> Vec<(i64, u32)> {
        requests
            .iter()
            .map(|r| (r.envelope.request_id.0, r.attempts))
            .collect()
    };
    let shards = space.shards();
    let now = listed(pending(storage, &shards, t0()).await);
    assert_eq!(now, pending_at(false), "unprocessed at t0 at {context}");
    let later = listed(pending(storage, &shards, t0() + Duration::hours(2)).await);
    assert_eq!(
        later,
        pending_at(true),
        "unprocessed two hours later at {context}"
    );

    let entity_type = space.entity_type();
    let dead: Vec<(i64, u32, String)> = storage
        .dead_letters(100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.envelope.address.entity_type == entity_type)
        .map(|d| (d.envelope.request_id.0, d.attempts, d.reason))
        .collect();
    let want_dead: Vec<(i64, u32, String)> = model
        .requests
        .iter()
        .filter_map(|(index, r)| match &r.state {
            ModelState::Dead { reason } => Some((space.id(*index), r.attempts, reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(dead, want_dead, "dead letters at {context}");
}

/// Random sequences of saves (with and without dedupe keys and `deliver_at`), chunks,
/// final replies, `mark_processed`, failed attempts, `start_attempts` and `clear_address`
/// agree with a simple model after every step (32 generated cases).
pub async fn random_operations_match_a_model<S: MessageStorage + ?Sized>(storage: &S) {
    let mut generator = TestRunner::default();
    let strategy = model_case();
    for case in 0..32 {
        let generated = strategy
            .new_tree(&mut generator)
            .expect("generate a case")
            .current();
        run_model_case(storage, case, &generated).await;
    }
}

// ---------------------------------------------------------------------------------------
// Operator actions on dead letters, and counts
// ---------------------------------------------------------------------------------------

fn snowflakes(ids: &[i64]) -> Vec<Snowflake> {
    ids.iter().copied().map(Snowflake).collect()
}

/// `retry_dead_letters` makes a dead letter pending again with zero attempts, due at once;
/// it touches nothing else (pending, processed and unknown ids), and calling it again
/// changes nothing.
pub async fn retried_dead_letter_is_pending_again<S: MessageStorage + ?Sized>(storage: &S) {
    save_all(
        storage,
        &[
            request(1, address("e-1", 0)),
            request(2, address("e-2", 0)),
            request(3, address("e-3", 0)),
        ],
    )
    .await;
    assert_eq!(
        fail(storage, 1, "boom", 2).await,
        FailedAttempt::WillRetry { attempts: 1 }
    );
    assert_eq!(
        fail(storage, 1, "boom", 2).await,
        FailedAttempt::DeadLettered { attempts: 2 }
    );
    storage.mark_processed(Snowflake(3)).await.unwrap();
    assert_eq!(pending_ids(storage, &[shard(0)]).await, vec![2]);

    let retried = storage
        .retry_dead_letters(&snowflakes(&[99, 3, 2, 1]))
        .await
        .unwrap();
    assert_eq!(
        retried,
        vec![Snowflake(1)],
        "only the dead letter is taken back"
    );
    let again = stored(storage, 1).await.expect("still stored");
    assert!(!again.dead_lettered && !again.processed, "{again:?}");
    assert_eq!(
        again.attempts, 0,
        "a retried dead letter starts from zero attempts"
    );
    assert_eq!(pending_ids(storage, &[shard(0)]).await, vec![1, 2]);
    assert!(storage.dead_letters(10).await.unwrap().is_empty());
    assert!(
        stored(storage, 3).await.expect("kept").processed,
        "a processed request stays processed"
    );

    let twice = storage.retry_dead_letters(&snowflakes(&[1])).await.unwrap();
    assert!(
        twice.is_empty(),
        "retrying again changes nothing: {twice:?}"
    );
    assert_eq!(
        fail(storage, 1, "boom again", 1).await,
        FailedAttempt::DeadLettered { attempts: 1 },
        "a retried request counts its attempts from zero"
    );
}

/// A dead letter whose final reply was stored while it was dead is taken back as
/// processed, never delivered again.
pub async fn retried_dead_letter_with_a_reply_is_processed<S: MessageStorage + ?Sized>(
    storage: &S,
) {
    save_all(storage, &[request(1, address("e-1", 0))]).await;
    fail(storage, 1, "boom", 1).await;
    reply(storage, Reply::WithExit(success(1, "late answer"))).await;
    let retried = storage.retry_dead_letters(&snowflakes(&[1])).await.unwrap();
    assert_eq!(retried, vec![Snowflake(1)]);
    let request = stored(storage, 1).await.expect("still stored");
    assert!(request.processed && !request.dead_lettered, "{request:?}");
    assert!(pending_ids(storage, &[shard(0)]).await.is_empty());
    assert!(storage.dead_letters(10).await.unwrap().is_empty());
}

/// `purge_dead_letters` deletes dead letters with their replies and frees their dedupe
/// keys; pending and unknown ids are left alone, and purging again changes nothing.
pub async fn purged_dead_letter_is_gone<S: MessageStorage + ?Sized>(storage: &S) {
    save_all(
        storage,
        &[
            with_dedupe_key(request(1, address("e-1", 0)), "key-1"),
            request(2, address("e-2", 0)),
        ],
    )
    .await;
    reply(storage, Reply::Chunk(chunk(1, 0))).await;
    fail(storage, 1, "boom", 1).await;

    let purged = storage
        .purge_dead_letters(&snowflakes(&[2, 1, 42]))
        .await
        .unwrap();
    assert_eq!(
        purged,
        vec![Snowflake(1)],
        "only the dead letter is deleted"
    );
    assert_eq!(stored(storage, 1).await, None);
    assert!(storage.replies_for(Snowflake(1)).await.unwrap().is_empty());
    assert!(storage.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(
        pending_ids(storage, &[shard(0)]).await,
        vec![2],
        "pending untouched"
    );

    let twice = storage.purge_dead_letters(&snowflakes(&[1])).await.unwrap();
    assert!(twice.is_empty(), "purging again changes nothing: {twice:?}");
    assert_eq!(
        save(
            storage,
            &with_dedupe_key(request(3, address("e-1", 0)), "key-1")
        )
        .await,
        SaveResult::Saved,
        "a purged dead letter frees its dedupe key"
    );
}

/// `message_counts` counts pending (retrying included), retrying and dead requests per
/// shard and entity type, leaves processed ones out, and orders by shard then type.
pub async fn message_counts_are_per_shard_and_entity_type<S: MessageStorage + ?Sized>(storage: &S) {
    assert!(storage.message_counts().await.unwrap().is_empty());
    let mut other_type = address("o-1", 1);
    other_type.entity_type = EntityType::new("Another");
    save_all(
        storage,
        &[
            request(1, address("e-1", 0)),
            request(2, address("e-2", 0)),
            delivered_at(request(3, address("e-3", 0)), t0() + Duration::hours(1)),
            request(4, address("e-4", 0)),
            request(5, address("e-5", 1)),
            request(6, other_type.clone()),
            request(7, other_type),
        ],
    )
    .await;
    fail(storage, 2, "once", 5).await;
    fail(storage, 4, "dead", 1).await;
    fail(storage, 7, "dead", 1).await;
    storage.mark_processed(Snowflake(5)).await.unwrap();

    let counts = storage.message_counts().await.unwrap();
    let expected = vec![
        MessageCounts {
            shard_id: shard(0),
            entity_type: EntityType::new("Conformance"),
            pending: 3,
            retrying: 1,
            dead_lettered: 1,
        },
        MessageCounts {
            shard_id: shard(1),
            entity_type: EntityType::new("Another"),
            pending: 1,
            retrying: 0,
            dead_lettered: 1,
        },
    ];
    assert_eq!(counts, expected);
}

/// `finished_requests` answers, in one call and in the order asked, the final reply of each
/// answered request and the attempts of each dead letter; pending, notified (processed
/// without a reply) and unknown ids are left out, and chunks are not final replies.
pub async fn finished_requests_answers_replies_and_dead_letters<S: MessageStorage + ?Sized>(
    storage: &S,
) {
    let mut notify = request(4, address("e-1", 0));
    notify.expects_reply = false;
    let mut streaming = request(5, address("e-1", 0));
    streaming.streaming = true;
    save_all(
        storage,
        &[
            request(1, address("e-1", 0)),
            request(2, address("e-2", 0)),
            request(3, address("e-3", 1)),
            notify,
            streaming,
        ],
    )
    .await;
    let answer = failure(1, "no stock");
    reply(storage, Reply::WithExit(answer.clone())).await;
    let early = success(9, "saved before its request");
    reply(storage, Reply::WithExit(early.clone())).await;
    assert_eq!(
        fail(storage, 3, "poison", 1).await,
        FailedAttempt::DeadLettered { attempts: 1 }
    );
    storage.mark_processed(Snowflake(4)).await.unwrap();
    reply(storage, Reply::Chunk(chunk(5, 0))).await;

    let asked = [9, 2, 3, 4, 5, 77, 1].map(Snowflake);
    let finished = storage.finished_requests(&asked).await.unwrap();
    assert_eq!(
        finished,
        vec![
            FinishedRequest::Answered(early),
            FinishedRequest::DeadLettered {
                request_id: Snowflake(3),
                attempts: 1
            },
            FinishedRequest::Answered(answer),
        ],
        "asked {asked:?}: pending 2, notified 4, streaming 5 (a chunk only) and unknown 77 \
         must be left out"
    );
    assert!(storage.finished_requests(&[]).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------------

/// `delete_processed_before` deletes processed requests of the asked shards with their
/// replies, at most `limit` per call, and frees their dedupe keys; requests processed
/// after the cutoff, pending requests, dead letters (even one whose final reply came while
/// it was dead) and other shards' requests stay. The backend stamps the processing instant
/// with its own clock, so the cutoffs here are relative to the wall clock.
pub async fn processed_requests_past_retention_are_deleted_with_their_replies<
    S: MessageStorage + ?Sized,
>(
    storage: &S,
) {
    save_all(
        storage,
        &[
            with_dedupe_key(request(1, address("e-1", 0)), "key-1"),
            request(2, address("e-2", 0)),
            request(3, address("e-3", 0)),
            request(4, address("e-4", 0)),
            request(5, address("e-5", 0)),
            request(6, address("e-6", 1)),
            request(7, address("e-7", 0)),
        ],
    )
    .await;
    reply(storage, Reply::WithExit(success(1, "first answer"))).await;
    reply(storage, Reply::Chunk(chunk(2, 0))).await;
    reply(storage, Reply::WithExit(success(2, "streamed"))).await;
    storage.mark_processed(Snowflake(3)).await.unwrap();
    fail(storage, 5, "dead", 1).await;
    reply(storage, Reply::WithExit(success(6, "other shard"))).await;
    fail(storage, 7, "dead", 1).await;
    reply(storage, Reply::WithExit(success(7, "late answer"))).await;

    let an_hour_ago = Utc::now() - Duration::hours(1);
    assert_eq!(
        storage
            .delete_processed_before(&[shard(0), shard(1)], an_hour_ago, 100)
            .await
            .unwrap(),
        0,
        "nothing was processed an hour ago"
    );
    assert!(stored(storage, 1).await.is_some());

    let cutoff = Utc::now() + Duration::minutes(1);
    let mut batches = Vec::new();
    loop {
        let deleted = storage
            .delete_processed_before(&[shard(0)], cutoff, 2)
            .await
            .unwrap();
        batches.push(deleted);
        if deleted < 2 {
            break;
        }
    }
    assert_eq!(
        batches,
        vec![2, 1],
        "three processed requests of shard 0, at most two per call"
    );
    for id in [1, 2, 3] {
        assert_eq!(stored(storage, id).await, None, "request {id} is deleted");
        assert!(
            storage.replies_for(Snowflake(id)).await.unwrap().is_empty(),
            "the replies of request {id} are deleted"
        );
    }
    assert_eq!(
        pending_ids(storage, &[shard(0)]).await,
        vec![4],
        "pending stays"
    );
    assert_eq!(
        dead_ids(&storage.dead_letters(10).await.unwrap()),
        vec![5, 7],
        "dead letters stay"
    );
    assert_eq!(
        storage.replies_for(Snowflake(7)).await.unwrap().len(),
        1,
        "the reply of a dead letter stays"
    );
    assert!(
        stored(storage, 6).await.is_some_and(|r| r.processed),
        "another shard's processed request stays"
    );
    assert_eq!(
        save(
            storage,
            &with_dedupe_key(request(8, address("e-1", 0)), "key-1")
        )
        .await,
        SaveResult::Saved,
        "a deleted request frees its dedupe key: the same key is a new request"
    );

    assert_eq!(
        storage
            .delete_processed_before(&[shard(1)], cutoff, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(stored(storage, 6).await, None);
    assert_eq!(
        storage
            .delete_processed_before(&[shard(0), shard(1)], cutoff, 100)
            .await
            .unwrap(),
        0,
        "deleting again finds nothing"
    );
}

// ---------------------------------------------------------------------------------------
// Everything
// ---------------------------------------------------------------------------------------

/// Runs every function of the suite, each against a fresh backend from `new_storage`.
///
/// The `concurrent_*` functions spawn tasks: call this from a multi-thread runtime.
pub async fn run_all<S, F, Fut>(mut new_storage: F)
where
    S: MessageStorage,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    saved_request_is_returned_as_stored(&new_storage().await).await;
    duplicate_save_returns_first_id(&new_storage().await).await;
    duplicate_save_after_reply_returns_the_reply(&new_storage().await).await;
    dedupe_key_duplicate_returns_first_reply(&new_storage().await).await;
    dedupe_key_is_scoped_to_the_entity(&new_storage().await).await;
    unprocessed_is_ordered_by_request_id(&new_storage().await).await;
    unprocessed_only_returns_requested_shards(&new_storage().await).await;
    future_deliver_at_is_not_returned_early(&new_storage().await).await;
    limit_is_honoured(&new_storage().await).await;
    final_reply_marks_processed(&new_storage().await).await;
    chunks_are_returned_in_sequence_order(&new_storage().await).await;
    saving_a_reply_twice_keeps_the_first(&new_storage().await).await;
    reply_saved_before_its_request_is_kept(&new_storage().await).await;
    mark_processed_removes_from_unprocessed(&new_storage().await).await;
    failed_attempts_dead_letter_at_the_limit(&new_storage().await).await;
    dead_letters_are_listed_oldest_first(&new_storage().await).await;
    failed_attempt_is_not_due_before_retry_at(&new_storage().await).await;
    start_attempts_counts_before_delivery(&new_storage().await).await;
    counted_failure_is_not_counted_twice(&new_storage().await).await;
    released_attempts_are_given_back(&new_storage().await).await;
    poll_continues_after_the_cursor(&new_storage().await).await;
    poll_skips_saturated_entities(&new_storage().await).await;
    clear_address_deletes_requests_and_replies(&new_storage().await).await;
    retried_dead_letter_is_pending_again(&new_storage().await).await;
    retried_dead_letter_with_a_reply_is_processed(&new_storage().await).await;
    purged_dead_letter_is_gone(&new_storage().await).await;
    message_counts_are_per_shard_and_entity_type(&new_storage().await).await;
    finished_requests_answers_replies_and_dead_letters(&new_storage().await).await;
    processed_requests_past_retention_are_deleted_with_their_replies(&new_storage().await).await;
    concurrent_saves_of_one_request_store_it_once(Arc::new(new_storage().await)).await;
    concurrent_saves_of_one_dedupe_key_have_one_winner(Arc::new(new_storage().await)).await;
    concurrent_writers_do_not_corrupt_state(Arc::new(new_storage().await)).await;
    random_operations_match_a_model(&new_storage().await).await;
}
