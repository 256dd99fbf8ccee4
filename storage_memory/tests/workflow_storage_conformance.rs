//! `MemoryWorkflowStorage` and `MemoryWorkflowEngine` against the workflow conformance
//! suites, once as the concrete types and once through `Arc<dyn WorkflowStorage>` /
//! `Arc<dyn WorkflowEngine>`.

use std::sync::Arc;

use cruster_storage_memory::{MemoryWorkflowEngine, MemoryWorkflowStorage};
use cruster_workflow_storage::{conformance, WorkflowEngine, WorkflowStorage};

/// One test per conformance function and way of holding the backend. Functions that race
/// tasks take an `Arc` and run on a multi-thread runtime.
macro_rules! conformance_tests {
    (
        $module:ident, $backend:ty, $port:path,
        by_ref: [$($name:ident),* $(,)?],
        by_arc: [$($racing:ident),* $(,)?] $(,)?
    ) => {
        mod $module {
            use super::*;
            mod direct {
                use super::*;
                $(
                    #[tokio::test]
                    async fn $name() {
                        conformance::$name(&<$backend>::new()).await;
                    }
                )*
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $racing() {
                        conformance::$racing(Arc::new(<$backend>::new())).await;
                    }
                )*
            }
            mod as_dyn {
                use super::*;
                fn backend() -> Arc<dyn $port> {
                    Arc::new(<$backend>::new())
                }
                $(
                    #[tokio::test]
                    async fn $name() {
                        conformance::$name(&*backend()).await;
                    }
                )*
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $racing() {
                        conformance::$racing(backend()).await;
                    }
                )*
            }
        }
    };
}

conformance_tests!(
    journal, MemoryWorkflowStorage, WorkflowStorage,
    by_ref: [
        journal_entries_are_returned_exactly,
        journal_is_sorted_by_sequence,
        commit_applies_writes_and_entry_atomically,
        transaction_reads_its_own_staged_writes,
        rollback_applies_nothing,
        dropped_transaction_applies_nothing,
        second_commit_of_same_key_returns_already_recorded_and_discards_writes,
        delete_journal_forgets_only_that_execution,
        append_entry_stores_the_first_entry_at_a_position,
        chained_transactions_commit_carried_entries_together,
        held_back_entries_are_appended_all_or_none,
        key_value_writes_are_supported_or_refused_explicitly,
        journal_is_unique_by_execution_and_sequence,
        random_transactions_match_a_model,
    ],
    by_arc: [
        concurrent_commits_of_one_activity_have_exactly_one_winner,
        concurrent_commits_of_different_activities_at_one_position_have_one_winner,
    ],
);

conformance_tests!(
    engine, MemoryWorkflowEngine, WorkflowEngine,
    by_ref: [
        executions_upsert_and_list_by_filter,
        parked_and_cancelled_executions_round_trip,
        stopped_executions_are_answered_in_one_read,
        cancellation_is_recorded_once_and_kept_by_upserts,
        timers_are_due_only_after_fire_at,
        scheduling_a_timer_twice_keeps_the_first,
        completed_timers_are_not_due,
        finished_executions_past_retention_are_deleted,
        fired_timers_of_finished_executions_are_deleted,
        deferred_values_are_write_once,
        random_timer_operations_match_a_model,
    ],
    by_arc: [concurrent_resolves_of_one_deferred_have_exactly_one_winner],
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_storage_passes() {
    conformance::run_all_storage(|| async { MemoryWorkflowStorage::new() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_engine_passes() {
    conformance::run_all_engine(|| async { MemoryWorkflowEngine::new() }).await;
}
