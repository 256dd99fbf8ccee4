//! `MemoryMessageStorage` against the `MessageStorage` conformance suite, once as the
//! concrete type and once through `Arc<dyn MessageStorage>`.

use std::sync::Arc;

use cruster_message_storage::{conformance, MessageStorage};
use cruster_storage_memory::MemoryMessageStorage;

/// One test per conformance function and way of holding the storage. Functions that race
/// tasks take an `Arc` and run on a multi-thread runtime.
macro_rules! conformance_tests {
    (by_ref: [$($name:ident),* $(,)?], by_arc: [$($racing:ident),* $(,)?] $(,)?) => {
        mod direct {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    conformance::$name(&MemoryMessageStorage::new()).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $racing() {
                    conformance::$racing(Arc::new(MemoryMessageStorage::new())).await;
                }
            )*
        }
        mod as_dyn {
            use super::*;
            fn storage() -> Arc<dyn MessageStorage> {
                Arc::new(MemoryMessageStorage::new())
            }
            $(
                #[tokio::test]
                async fn $name() {
                    conformance::$name(&*storage()).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $racing() {
                    conformance::$racing(storage()).await;
                }
            )*
        }
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
        retried_dead_letter_is_pending_again,
        retried_dead_letter_with_a_reply_is_processed,
        purged_dead_letter_is_gone,
        message_counts_are_per_shard_and_entity_type,
        finished_requests_answers_replies_and_dead_letters,
        processed_requests_past_retention_are_deleted_with_their_replies,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes() {
    conformance::run_all(|| async { MemoryMessageStorage::new() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes_with_a_small_retention() {
    // The suite never keeps more than a few hundred processed requests alive at once.
    conformance::run_all(|| async { MemoryMessageStorage::with_retention(1_000) }).await;
}
