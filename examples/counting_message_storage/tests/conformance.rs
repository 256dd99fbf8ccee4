//! `CountingMessageStorage<MemoryMessageStorage>` against the full `MessageStorage`
//! conformance suite: one test per behaviour, each checking that the calls went through
//! the wrapper (its counters moved), then the whole suite at once through `run_all`.
//!
//! This is the file a backend author copies: swap the storage for your own.

use std::sync::Arc;

use counting_message_storage::{CallCounters, CountingMessageStorage};
use cruster_message_storage::conformance;
use cruster_storage_memory::MemoryMessageStorage;

type Storage = CountingMessageStorage<MemoryMessageStorage>;

fn storage() -> Arc<Storage> {
    Arc::new(CountingMessageStorage::new(MemoryMessageStorage::new()))
}

/// Every behaviour saves requests and reads them back through the wrapper.
fn assert_counted(storage: &Storage, behaviour: &str) {
    let counts = storage.counts();
    assert!(
        counts.save_request > 0 && counts.total() > counts.save_request,
        "{behaviour}: the calls did not go through the wrapper: {counts:?}"
    );
}

macro_rules! conformance_tests {
    (by_ref: [$($name:ident),* $(,)?], by_arc: [$($racing:ident),* $(,)?] $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let storage = storage();
                conformance::$name(&*storage).await;
                assert_counted(&storage, stringify!($name));
            }
        )*
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $racing() {
                let storage = storage();
                conformance::$racing(Arc::clone(&storage)).await;
                assert_counted(&storage, stringify!($racing));
            }
        )*
    };
}

conformance_tests!(
    by_ref: [
        saved_request_is_returned_as_stored,
        duplicate_save_returns_first_id,
        duplicate_save_after_reply_returns_the_reply,
        dedupe_key_duplicate_returns_first_reply,
        dedupe_key_is_scoped_to_the_entity,
        unprocessed_is_ordered_by_request_id,
        unprocessed_only_returns_requested_shards,
        future_deliver_at_is_not_returned_early,
        limit_is_honoured,
        final_reply_marks_processed,
        chunks_are_returned_in_sequence_order,
        saving_a_reply_twice_keeps_the_first,
        reply_saved_before_its_request_is_kept,
        mark_processed_removes_from_unprocessed,
        failed_attempts_dead_letter_at_the_limit,
        dead_letters_are_listed_oldest_first,
        failed_attempt_is_not_due_before_retry_at,
        start_attempts_counts_before_delivery,
        counted_failure_is_not_counted_twice,
        released_attempts_are_given_back,
        poll_continues_after_the_cursor,
        poll_skips_saturated_entities,
        clear_address_deletes_requests_and_replies,
        random_operations_match_a_model,
    ],
    by_arc: [
        concurrent_saves_of_one_request_store_it_once,
        concurrent_saves_of_one_dedupe_key_have_one_winner,
        concurrent_writers_do_not_corrupt_state,
    ],
);

/// The whole suite at once, every fresh storage counting into one set of counters: every
/// method of the trait is exercised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_calls_every_method() {
    let counters = Arc::new(CallCounters::default());
    conformance::run_all(|| {
        let counters = Arc::clone(&counters);
        async move { CountingMessageStorage::with_counters(MemoryMessageStorage::new(), counters) }
    })
    .await;
    let counts = counters.snapshot();
    assert_eq!(
        counts.uncalled(),
        Vec::<&str>::new(),
        "methods the suite never called: {counts:?}"
    );
}
