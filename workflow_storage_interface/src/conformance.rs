//! Conformance suites of [`WorkflowStorage`] (with [`ActivityTransaction`]) and
//! [`WorkflowEngine`].
//!
//! Each `pub async fn` below checks one behaviour of the contract in the crate docs and is
//! named for it. For the journal: entries come back exactly and sorted, a commit applies
//! the entry and the staged writes together or (rolled back, dropped, beaten by another
//! runner) not at all, the journal is unique by `(execution, sequence)`, and concurrent
//! commits at one position have one winner. For the engine: executions are upserted and
//! listed by filter (parked and cancelled ones too), cancellation requests are recorded
//! once and survive upserts, timers are due only once
//! `fire_at` has passed and keep their first schedule, deferred values are write-once.
//! Both suites end with a property test against a simple model. A backend's test file
//! calls every function, so a reader sees at a glance which behaviours it passes.
//!
//! # Running it
//!
//! Enable the `conformance` feature in the backend's dev-dependencies:
//!
//! ```toml
//! [dev-dependencies]
//! cruster-workflow-storage = { version = "0.1", features = ["conformance"] }
//! ```
//!
//! then call the functions one per test, with the backend held directly or as
//! `Arc<dyn WorkflowStorage>` / `Arc<dyn WorkflowEngine>`:
//!
//! ```ignore
//! use cruster_workflow_storage::conformance;
//!
//! #[tokio::test]
//! async fn rollback_applies_nothing() {
//!     conformance::rollback_applies_nothing(&MyJournal::new()).await;
//! }
//! ```
//!
//! or run everything at once with [`run_all_storage`] and [`run_all_engine`], giving a
//! factory that returns a fresh backend each time it is called.
//!
//! # The key-value capability
//!
//! [`ActivityTransaction::put`] and [`WorkflowStorage::get_value`] are optional. A backend
//! without them must answer `ClusterError::Unsupported` to both; the suite checks that
//! exact answer (and that the journal entry still commits), and checks the writes
//! themselves only when `put` succeeds. [`key_value_writes_are_supported_or_refused_explicitly`]
//! pins which of the two a backend chose.
//!
//! # Assumptions
//!
//! * Each function gets a backend nobody else writes to while it runs.
//! * Time is an argument: the suite passes `now` to `due_timers` and never waits. Instants
//!   it builds have whole milliseconds, so backends storing microseconds round-trip them.
//! * The `concurrent_*` functions take an `Arc` and spawn tasks; run them on a
//!   multi-thread runtime (`#[tokio::test(flavor = "multi_thread")]`).
//! * The property tests generate 32 cases up front and run them one after another against
//!   one backend (each case under its own execution ids); a failure prints the whole
//!   operation sequence and the model rather than a shrunk case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use cruster_types::{ClusterError, EntityAddress, EntityId, EntityType, ExitResult, ShardId};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use crate::{
    ActivityKey, ActivityTransaction, CommitOutcome, DurableTimer, ExecutionFilter,
    ExecutionRecord, ExecutionStatus, JournalEntry, WorkflowEngine, WorkflowStorage,
};

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// The instant the suite calls "now": fixed, with whole milliseconds.
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_900_000_000_000).expect("a valid instant")
}

fn key(name: &str, sequence: u32) -> ActivityKey {
    ActivityKey {
        name: name.to_owned(),
        sequence,
    }
}

fn entry(execution_id: &str, key: &ActivityKey, result: &str) -> JournalEntry {
    JournalEntry {
        execution_id: execution_id.to_owned(),
        key: key.clone(),
        result: ExitResult::Success(Bytes::from(result.to_owned())),
        attempts: 1,
        recorded_at: t0() + Duration::milliseconds(i64::from(key.sequence)),
    }
}

fn bytes(text: &str) -> Bytes {
    Bytes::from(text.to_owned())
}

fn is_unsupported(err: &ClusterError) -> bool {
    matches!(err, ClusterError::Unsupported { .. })
}

/// Whether a backend took a key-value write or refused it with `Unsupported`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyValues {
    Supported,
    Unsupported,
}

/// Stages a write; any answer other than `Ok` or `Unsupported` fails the suite.
async fn stage(tx: &mut dyn ActivityTransaction, key: &str, value: &str) -> KeyValues {
    match tx.put(key, bytes(value)).await {
        Ok(()) => KeyValues::Supported,
        Err(err) if is_unsupported(&err) => KeyValues::Unsupported,
        Err(err) => panic!("put({key}) must succeed or answer Unsupported, got: {err:?}"),
    }
}

/// The committed value of `key`, or `None` for a backend without the capability (after
/// checking that it says so with `Unsupported`).
async fn committed_value<S: WorkflowStorage + ?Sized>(
    storage: &S,
    support: KeyValues,
    key: &str,
) -> Option<Bytes> {
    match (support, storage.get_value(key).await) {
        (KeyValues::Supported, Ok(value)) => value,
        (KeyValues::Unsupported, Err(err)) if is_unsupported(&err) => None,
        (support, answer) => panic!(
            "get_value({key}) answered {answer:?}, but put said the capability is {support:?}"
        ),
    }
}

async fn begin<S: WorkflowStorage + ?Sized>(
    storage: &S,
    execution_id: &str,
    key: &ActivityKey,
) -> Box<dyn ActivityTransaction> {
    storage
        .begin_activity(execution_id, key)
        .await
        .unwrap_or_else(|err| panic!("begin_activity({execution_id}, {key:?}) failed: {err}"))
}

async fn commit_plain<S: WorkflowStorage + ?Sized>(storage: &S, entry: &JournalEntry) {
    let tx = begin(storage, &entry.execution_id, &entry.key).await;
    let outcome = tx.commit(entry).await.unwrap();
    assert_eq!(
        outcome,
        CommitOutcome::Committed,
        "first commit of {entry:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Journal
// ---------------------------------------------------------------------------------------

/// Committed entries come back exactly as written (success and failure results, attempts,
/// timestamps); keys and executions without entries read as nothing.
pub async fn journal_entries_are_returned_exactly<S: WorkflowStorage + ?Sized>(storage: &S) {
    let ok = entry("exec-1", &key("reserve", 0), "reserved");
    let mut failed = entry("exec-1", &key("charge", 1), "");
    failed.result = ExitResult::failure(&ClusterError::ActivityFailed {
        execution_id: "exec-1".into(),
        activity: "charge".into(),
        attempts: 3,
        message: "card declined".into(),
    });
    failed.attempts = 3;
    let mut binary = entry("exec-2", &key("encode", 0), "");
    binary.result = ExitResult::Success(Bytes::from_static(&[0, 159, 146, 150, 255]));

    for e in [&ok, &failed, &binary] {
        commit_plain(storage, e).await;
    }

    for e in [&ok, &failed, &binary] {
        let got = storage
            .journal_entry(&e.execution_id, &e.key)
            .await
            .unwrap();
        assert_eq!(
            got.as_ref(),
            Some(e),
            "journal_entry({}, {:?})",
            e.execution_id,
            e.key
        );
    }
    assert_eq!(storage.journal("exec-1").await.unwrap(), vec![ok, failed]);
    assert_eq!(storage.journal("exec-2").await.unwrap(), vec![binary]);
    assert_eq!(
        storage
            .journal_entry("exec-1", &key("reserve", 1))
            .await
            .unwrap(),
        None,
        "same name, another sequence"
    );
    assert_eq!(
        storage
            .journal_entry("exec-1", &key("refund", 0))
            .await
            .unwrap(),
        None,
        "same sequence, another name"
    );
    assert!(storage.journal("exec-unknown").await.unwrap().is_empty());
}

/// `journal` lists an execution's entries by sequence, whatever the commit order.
pub async fn journal_is_sorted_by_sequence<S: WorkflowStorage + ?Sized>(storage: &S) {
    let names = ["zeta", "alpha", "mid", "beta", "omega"];
    for sequence in [3u32, 0, 4, 2, 1] {
        let activity = key(names[sequence as usize], sequence);
        commit_plain(storage, &entry("exec-sorted", &activity, "r")).await;
    }
    let sequences: Vec<(u32, String)> = storage
        .journal("exec-sorted")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key.sequence, e.key.name))
        .collect();
    let expected: Vec<(u32, String)> = (0..5).map(|s| (s, names[s as usize].to_owned())).collect();
    assert_eq!(sequences, expected);
}

/// `commit` makes the entry and the staged writes visible together: before it neither is,
/// after it both are, and a reader polling during the commit never sees one without the
/// other.
pub async fn commit_applies_writes_and_entry_atomically<S: WorkflowStorage + ?Sized>(storage: &S) {
    let activity = key("transfer", 0);
    let committed = entry("exec-atomic", &activity, "moved");
    let mut tx = begin(storage, "exec-atomic", &activity).await;
    let support = stage(&mut *tx, "account/a", "90").await;
    if support == KeyValues::Supported {
        assert_eq!(
            stage(&mut *tx, "account/b", "110").await,
            KeyValues::Supported
        );
    }

    assert_eq!(
        storage
            .journal_entry("exec-atomic", &activity)
            .await
            .unwrap(),
        None,
        "the entry is invisible before commit"
    );
    assert_eq!(
        committed_value(storage, support, "account/a").await,
        None,
        "staged writes are invisible before commit"
    );

    let observed = std::sync::Mutex::new(Vec::<(bool, bool, bool)>::new());
    let finished = std::sync::atomic::AtomicBool::new(false);
    let reader = async {
        loop {
            let done = finished.load(std::sync::atomic::Ordering::Acquire);
            let has_entry = storage
                .journal_entry("exec-atomic", &activity)
                .await
                .unwrap()
                .is_some();
            let a = committed_value(storage, support, "account/a")
                .await
                .is_some();
            let b = committed_value(storage, support, "account/b")
                .await
                .is_some();
            observed.lock().unwrap().push((has_entry, a, b));
            if done {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    let writer = async {
        tokio::task::yield_now().await;
        let outcome = tx.commit(&committed).await.unwrap();
        finished.store(true, std::sync::atomic::Ordering::Release);
        outcome
    };
    let (outcome, ()) = tokio::join!(writer, reader);
    assert_eq!(outcome, CommitOutcome::Committed);

    let observed = observed.into_inner().unwrap();
    if support == KeyValues::Supported {
        for (has_entry, a, b) in &observed {
            // Reads are separate calls, so the entry may be read before the commit and the
            // values after it, never the other way round.
            assert!(
                !*has_entry || (*a && *b),
                "saw the entry without its writes (entry, a, b): {observed:?}"
            );
        }
    }
    assert_eq!(
        storage
            .journal_entry("exec-atomic", &activity)
            .await
            .unwrap(),
        Some(committed)
    );
    if support == KeyValues::Supported {
        assert_eq!(
            committed_value(storage, support, "account/a").await,
            Some(bytes("90"))
        );
        assert_eq!(
            committed_value(storage, support, "account/b").await,
            Some(bytes("110"))
        );
    }
}

/// A transaction reads its own staged writes, falls back to committed values, and its
/// staged writes are seen by no other transaction.
pub async fn transaction_reads_its_own_staged_writes<S: WorkflowStorage + ?Sized>(storage: &S) {
    let mut setup = begin(storage, "exec-read", &key("setup", 0)).await;
    let support = stage(&mut *setup, "shared", "committed").await;
    setup
        .commit(&entry("exec-read", &key("setup", 0), "ok"))
        .await
        .unwrap();
    if support == KeyValues::Unsupported {
        let mut tx = begin(storage, "exec-read", &key("read", 1)).await;
        match tx.get("shared").await {
            Ok(None) => {}
            Err(err) if is_unsupported(&err) => {}
            other => panic!("get without the capability must be Unsupported or None: {other:?}"),
        }
        return;
    }

    let mut tx = begin(storage, "exec-read", &key("read", 1)).await;
    let mut other = begin(storage, "exec-other", &key("read", 0)).await;
    assert_eq!(tx.get("shared").await.unwrap(), Some(bytes("committed")));
    assert_eq!(tx.get("mine").await.unwrap(), None);
    stage(&mut *tx, "mine", "staged").await;
    stage(&mut *tx, "shared", "overwritten").await;
    assert_eq!(tx.get("mine").await.unwrap(), Some(bytes("staged")));
    assert_eq!(tx.get("shared").await.unwrap(), Some(bytes("overwritten")));
    assert_eq!(
        other.get("mine").await.unwrap(),
        None,
        "another transaction must not see staged writes"
    );
    assert_eq!(other.get("shared").await.unwrap(), Some(bytes("committed")));
    tx.rollback().await.unwrap();
    other.rollback().await.unwrap();
}

/// A rolled-back transaction applies nothing, and the activity can still be committed.
pub async fn rollback_applies_nothing<S: WorkflowStorage + ?Sized>(storage: &S) {
    let activity = key("flaky", 0);
    let mut tx = begin(storage, "exec-rollback", &activity).await;
    let support = stage(&mut *tx, "flaky/output", "half-done").await;
    tx.rollback().await.unwrap();

    assert_eq!(
        storage
            .journal_entry("exec-rollback", &activity)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        committed_value(storage, support, "flaky/output").await,
        None
    );

    let retried = entry("exec-rollback", &activity, "second try");
    commit_plain(storage, &retried).await;
    assert_eq!(
        storage.journal("exec-rollback").await.unwrap(),
        vec![retried]
    );
}

/// A transaction dropped without commit or rollback (a cancelled activity) applies
/// nothing, and the activity can still be committed.
pub async fn dropped_transaction_applies_nothing<S: WorkflowStorage + ?Sized>(storage: &S) {
    let activity = key("cancelled", 0);
    let mut tx = begin(storage, "exec-drop", &activity).await;
    let support = stage(&mut *tx, "cancelled/output", "half-done").await;
    drop(tx);

    assert_eq!(
        storage.journal_entry("exec-drop", &activity).await.unwrap(),
        None
    );
    assert_eq!(
        committed_value(storage, support, "cancelled/output").await,
        None
    );
    commit_plain(storage, &entry("exec-drop", &activity, "after the drop")).await;
}

/// When an entry for the key already exists, a commit applies nothing of its transaction
/// and answers `AlreadyRecorded` with the existing entry.
pub async fn second_commit_of_same_key_returns_already_recorded_and_discards_writes<
    S: WorkflowStorage + ?Sized,
>(
    storage: &S,
) {
    let activity = key("charge", 0);
    let first = entry("exec-twice", &activity, "charged once");
    let mut tx = begin(storage, "exec-twice", &activity).await;
    let support = stage(&mut *tx, "balance", "90").await;
    assert_eq!(tx.commit(&first).await.unwrap(), CommitOutcome::Committed);

    let mut second_entry = entry("exec-twice", &activity, "charged twice");
    second_entry.attempts = 2;
    let mut tx = begin(storage, "exec-twice", &activity).await;
    stage(&mut *tx, "balance", "80").await;
    stage(&mut *tx, "audit", "second charge").await;
    assert_eq!(
        tx.commit(&second_entry).await.unwrap(),
        CommitOutcome::AlreadyRecorded(first.clone())
    );

    assert_eq!(
        storage
            .journal_entry("exec-twice", &activity)
            .await
            .unwrap(),
        Some(first.clone())
    );
    assert_eq!(storage.journal("exec-twice").await.unwrap(), vec![first]);
    if support == KeyValues::Supported {
        assert_eq!(
            committed_value(storage, support, "balance").await,
            Some(bytes("90")),
            "the losing transaction's write was applied"
        );
    }
    assert_eq!(committed_value(storage, support, "audit").await, None);
}

/// `append_entry` stores an entry alone, as an empty transaction's commit would: the
/// first entry at a position wins, and a later one (same or other activity) gets it back.
pub async fn append_entry_stores_the_first_entry_at_a_position<S: WorkflowStorage + ?Sized>(
    storage: &S,
) {
    let step = key("notify", 0);
    let first = entry("exec-append", &step, "sent");
    assert_eq!(
        storage.append_entry(&first).await.unwrap(),
        CommitOutcome::Committed
    );
    let mut again = entry("exec-append", &step, "sent twice");
    again.attempts = 2;
    assert_eq!(
        storage.append_entry(&again).await.unwrap(),
        CommitOutcome::AlreadyRecorded(first.clone())
    );
    let other = entry("exec-append", &key("other", 0), "another step here");
    assert_eq!(
        storage.append_entry(&other).await.unwrap(),
        CommitOutcome::AlreadyRecorded(first.clone())
    );
    // A transaction's commit at a taken position also loses to the appended entry.
    let tx = begin(storage, "exec-append", &step).await;
    assert_eq!(
        tx.commit(&again).await.unwrap(),
        CommitOutcome::AlreadyRecorded(first.clone())
    );
    let next = entry("exec-append", &key("notify", 1), "sent next");
    assert_eq!(
        storage.append_entry(&next).await.unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(
        storage.journal("exec-append").await.unwrap(),
        vec![first, next]
    );
}

/// Journal-only steps held back together ([`WorkflowStorage::append_entries`]): stored all
/// or none; with carried entries a taken position fails with `PersistenceError` and
/// applies nothing; alone, the last entry answers as [`WorkflowStorage::append_entry`]. A
/// storage without chains answers `Unsupported` for carried entries.
pub async fn held_back_entries_are_appended_all_or_none<S: WorkflowStorage + ?Sized>(storage: &S) {
    let alone = entry("exec-held-alone", &key("notify", 0), "sent");
    assert_eq!(
        storage.append_entries(&[], &alone).await.unwrap(),
        CommitOutcome::Committed
    );
    let again = entry("exec-held-alone", &key("other", 0), "other");
    assert_eq!(
        storage.append_entries(&[], &again).await.unwrap(),
        CommitOutcome::AlreadyRecorded(alone.clone()),
        "alone, a taken position answers with the entry holding it"
    );

    let first = entry("exec-held", &key("reserve", 0), "reserved");
    let second = entry("exec-held", &key("charge", 1), "charged");
    let third = entry("exec-held", &key("ship", 2), "shipped");
    let stored = storage
        .append_entries(&[first.clone(), second.clone()], &third)
        .await;
    if !storage.chains_activities() {
        assert!(
            stored.as_ref().is_err_and(is_unsupported),
            "a storage without chains refuses carried entries, got {stored:?}"
        );
        assert!(storage.journal("exec-held").await.unwrap().is_empty());
        return;
    }
    assert_eq!(stored.unwrap(), CommitOutcome::Committed);
    assert_eq!(
        storage.journal("exec-held").await.unwrap(),
        vec![first.clone(), second.clone(), third.clone()]
    );

    // One taken position among them: nothing is applied, whichever entry it is.
    let fourth = entry("exec-held", &key("invoice", 3), "invoiced");
    let retaken = entry("exec-held", &key("ship", 2), "shipped again");
    for (carried, last) in [
        (vec![retaken.clone()], fourth.clone()),
        (vec![fourth.clone()], retaken.clone()),
    ] {
        let outcome = storage.append_entries(&carried, &last).await;
        assert!(
            matches!(outcome, Err(ClusterError::PersistenceError { .. })),
            "a taken position among held-back entries must fail, not answer {outcome:?}"
        );
    }
    assert_eq!(
        storage.journal("exec-held").await.unwrap(),
        vec![first, second, third]
    );
}

/// A chain: [`ActivityTransaction::carry_on`] keeps an activity's entry and writes in its
/// transaction for the next activity, and they commit with the chain's final commit;
/// [`ActivityTransaction::rollback_to_mark`] discards only what came after the
/// [`ActivityTransaction::mark`]; a
/// dropped chain applies nothing; a chain whose final position (or a carried one) is taken
/// fails instead of dropping what it carried; [`ActivityTransaction::commit_carried`]
/// commits the carried entries alone. A backend without chains answers `Unsupported`.
pub async fn chained_transactions_commit_carried_entries_together<S: WorkflowStorage + ?Sized>(
    storage: &S,
) {
    let first = entry("exec-chain", &key("reserve", 0), "reserved");
    let second = entry("exec-chain", &key("charge", 1), "charged");
    let mut tx = begin(storage, "exec-chain", &first.key).await;
    let support = stage(tx.as_mut(), "chain/a", "a").await;
    match tx.carry_on(Some(&first)).await {
        Ok(()) => {}
        Err(err) if is_unsupported(&err) => {
            assert!(
                !storage.chains_activities(),
                "a storage that chains activities must carry them on"
            );
            let mark = tx.mark().await;
            assert!(
                mark.as_ref().is_err_and(is_unsupported),
                "carry_on answered Unsupported, so mark must too: {mark:?}"
            );
            let back = tx.rollback_to_mark().await;
            assert!(
                back.as_ref().is_err_and(is_unsupported),
                "carry_on answered Unsupported, so rollback_to_mark must too: {back:?}"
            );
            tx.rollback().await.unwrap();
            assert!(storage.journal("exec-chain").await.unwrap().is_empty());
            return;
        }
        Err(err) => panic!("carry_on must succeed or answer Unsupported, got: {err:?}"),
    }
    tx.mark().await.unwrap();
    stage(tx.as_mut(), "chain/b", "b").await;
    tx.rollback_to_mark().await.unwrap();
    stage(tx.as_mut(), "chain/c", "c").await;
    assert_eq!(tx.commit(&second).await.unwrap(), CommitOutcome::Committed);
    assert_eq!(
        storage.journal("exec-chain").await.unwrap(),
        vec![first.clone(), second.clone()]
    );
    assert_eq!(
        committed_value(storage, support, "chain/a").await,
        (support == KeyValues::Supported).then(|| bytes("a"))
    );
    assert_eq!(committed_value(storage, support, "chain/b").await, None);
    assert_eq!(
        committed_value(storage, support, "chain/c").await,
        (support == KeyValues::Supported).then(|| bytes("c"))
    );

    // Dropped: nothing carried is applied.
    let dropped = entry("exec-chain-dropped", &key("reserve", 0), "reserved");
    let mut tx = begin(storage, "exec-chain-dropped", &dropped.key).await;
    tx.carry_on(Some(&dropped)).await.unwrap();
    drop(tx);
    assert!(storage
        .journal("exec-chain-dropped")
        .await
        .unwrap()
        .is_empty());

    // The final position is taken (written before the chain began, so single-writer
    // databases need not wait for the chain): the commit fails and applies nothing.
    let taken = entry(
        "exec-chain-taken",
        &key("charge", 1),
        "charged by another run",
    );
    assert_eq!(
        storage.append_entry(&taken).await.unwrap(),
        CommitOutcome::Committed
    );
    let carried = entry("exec-chain-taken", &key("reserve", 0), "reserved");
    let mut tx = begin(storage, "exec-chain-taken", &carried.key).await;
    tx.carry_on(Some(&carried)).await.unwrap();
    let outcome = tx
        .commit(&entry("exec-chain-taken", &key("charge", 1), "charged"))
        .await;
    assert!(
        matches!(outcome, Err(ClusterError::PersistenceError { .. })),
        "a chain's commit at a taken position must fail, not answer {outcome:?}"
    );
    assert_eq!(
        storage.journal("exec-chain-taken").await.unwrap(),
        vec![taken.clone()]
    );

    // A carried position that is taken fails at once.
    let mut tx = begin(storage, "exec-chain-taken", &taken.key).await;
    let again = entry("exec-chain-taken", &key("charge", 1), "charged again");
    let carried = tx.carry_on(Some(&again)).await;
    assert!(
        matches!(carried, Err(ClusterError::PersistenceError { .. })),
        "carrying an entry at a taken position must fail, not answer {carried:?}"
    );
    drop(tx);
    assert_eq!(
        storage.journal("exec-chain-taken").await.unwrap(),
        vec![taken]
    );

    // Carried entries commit alone.
    let alone = entry("exec-chain-alone", &key("reserve", 0), "reserved");
    let mut tx = begin(storage, "exec-chain-alone", &alone.key).await;
    tx.carry_on(Some(&alone)).await.unwrap();
    tx.carry_on(None).await.unwrap();
    tx.commit_carried().await.unwrap();
    assert_eq!(
        storage.journal("exec-chain-alone").await.unwrap(),
        vec![alone]
    );
}

/// `delete_journal` forgets one execution's entries (so its activities can be recorded
/// again) and no other execution's.
pub async fn delete_journal_forgets_only_that_execution<S: WorkflowStorage + ?Sized>(storage: &S) {
    let kept = entry("exec-kept", &key("a", 0), "kept");
    commit_plain(storage, &entry("exec-gone", &key("a", 0), "gone")).await;
    commit_plain(storage, &entry("exec-gone", &key("b", 1), "gone")).await;
    commit_plain(storage, &kept).await;

    storage.delete_journal("exec-gone").await.unwrap();
    storage
        .delete_journal("exec-never-existed")
        .await
        .expect("deleting an unknown journal is not an error");

    assert!(storage.journal("exec-gone").await.unwrap().is_empty());
    assert_eq!(
        storage
            .journal_entry("exec-gone", &key("a", 0))
            .await
            .unwrap(),
        None
    );
    assert_eq!(storage.journal("exec-kept").await.unwrap(), vec![kept]);
    commit_plain(storage, &entry("exec-gone", &key("a", 0), "recorded again")).await;
}

/// Writes through an activity transaction either work end to end (staged, committed,
/// read back with `get_value`) or are refused with exactly `ClusterError::Unsupported` by
/// both `put` and `get_value`, with the journal entry still committed.
pub async fn key_value_writes_are_supported_or_refused_explicitly<S: WorkflowStorage + ?Sized>(
    storage: &S,
) {
    let activity = key("write", 0);
    let recorded = entry("exec-kv", &activity, "wrote");
    let mut tx = begin(storage, "exec-kv", &activity).await;
    let support = stage(&mut *tx, "kv/key", "value").await;
    assert_eq!(
        tx.commit(&recorded).await.unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(
        storage.journal_entry("exec-kv", &activity).await.unwrap(),
        Some(recorded)
    );
    match support {
        KeyValues::Supported => {
            assert_eq!(
                storage.get_value("kv/key").await.unwrap(),
                Some(bytes("value"))
            );
            assert_eq!(storage.get_value("kv/missing").await.unwrap(), None);
        }
        KeyValues::Unsupported => {
            let err = storage.get_value("kv/key").await.unwrap_err();
            assert!(
                is_unsupported(&err),
                "get_value must answer Unsupported: {err:?}"
            );
        }
    }
}

/// Many transactions racing to commit the same activity: exactly one is `Committed`,
/// every other one gets `AlreadyRecorded` with the winner's entry, and only the winner's
/// writes are applied.
pub async fn concurrent_commits_of_one_activity_have_exactly_one_winner<
    S: WorkflowStorage + ?Sized,
>(
    storage: Arc<S>,
) {
    const RACERS: u32 = 16;
    let activity = key("race", 0);
    let start = Arc::new(tokio::sync::Barrier::new(RACERS as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for racer in 0..RACERS {
        let storage = Arc::clone(&storage);
        let start = Arc::clone(&start);
        let activity = activity.clone();
        tasks.spawn(async move {
            // The racers line up before opening their transactions, not inside them: a
            // backend with pessimistic locks (SQLite's single writer) may make one
            // transaction wait for another to finish.
            start.wait().await;
            let mut tx = storage
                .begin_activity("exec-race", &activity)
                .await
                .unwrap();
            let support = stage(&mut *tx, &format!("race/racer-{racer}"), "written").await;
            let mut mine = entry("exec-race", &activity, &format!("racer {racer}"));
            mine.attempts = racer + 1;
            let outcome = tx.commit(&mine).await.unwrap();
            (mine, outcome, support)
        });
    }
    let results = tasks.join_all().await;
    let winners: Vec<&JournalEntry> = results
        .iter()
        .filter(|(_, outcome, _)| *outcome == CommitOutcome::Committed)
        .map(|(mine, _, _)| mine)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "winners: {winners:?}; all outcomes: {:?}",
        results.iter().map(|(_, o, _)| o).collect::<Vec<_>>()
    );
    let winner = winners[0].clone();
    for (mine, outcome, _) in &results {
        if *mine != winner {
            assert_eq!(
                outcome,
                &CommitOutcome::AlreadyRecorded(winner.clone()),
                "the loser with attempts {}",
                mine.attempts
            );
        }
    }
    assert_eq!(
        storage.journal("exec-race").await.unwrap(),
        vec![winner.clone()]
    );
    let support = results[0].2;
    let winning_racer = winner.attempts - 1;
    for racer in 0..RACERS {
        let written = committed_value(&*storage, support, &format!("race/racer-{racer}")).await;
        let want =
            (support == KeyValues::Supported && racer == winning_racer).then(|| bytes("written"));
        assert_eq!(
            written, want,
            "write of racer {racer} (the winner is racer {winning_racer})"
        );
    }
}

/// The journal is unique by `(execution, sequence)`: committing another activity at an
/// occupied position applies nothing (neither entry nor writes) and returns the entry that
/// holds the position; `journal_entry` under the other name reads nothing; the same
/// position of another execution is free.
pub async fn journal_is_unique_by_execution_and_sequence<S: WorkflowStorage + ?Sized>(storage: &S) {
    let first = entry("exec-unique", &key("reserve", 0), "reserved");
    let mut tx = begin(storage, "exec-unique", &first.key).await;
    let support = stage(&mut *tx, "unique/first", "1").await;
    assert_eq!(tx.commit(&first).await.unwrap(), CommitOutcome::Committed);

    let other = entry("exec-unique", &key("charge", 0), "charged");
    let mut tx = begin(storage, "exec-unique", &other.key).await;
    stage(&mut *tx, "unique/other", "2").await;
    assert_eq!(
        tx.commit(&other).await.unwrap(),
        CommitOutcome::AlreadyRecorded(first.clone()),
        "a second activity at an occupied position"
    );
    assert_eq!(
        storage.journal("exec-unique").await.unwrap(),
        vec![first.clone()]
    );
    assert_eq!(
        storage
            .journal_entry("exec-unique", &other.key)
            .await
            .unwrap(),
        None,
        "the position holds another name"
    );
    assert_eq!(
        committed_value(storage, support, "unique/other").await,
        None,
        "the loser's writes are not applied"
    );
    if support == KeyValues::Supported {
        assert_eq!(
            committed_value(storage, support, "unique/first").await,
            Some(bytes("1"))
        );
    }

    let elsewhere = entry("exec-unique-2", &key("charge", 0), "charged");
    commit_plain(storage, &elsewhere).await;
    let next = entry("exec-unique", &key("charge", 1), "charged");
    commit_plain(storage, &next).await;
    assert_eq!(
        storage.journal("exec-unique").await.unwrap(),
        vec![first, next]
    );
}

/// Transactions of *different* activities racing for one position: exactly one commits,
/// every other gets `AlreadyRecorded` with the winner's entry (whose name differs from
/// theirs), and the journal holds one entry there.
pub async fn concurrent_commits_of_different_activities_at_one_position_have_one_winner<
    S: WorkflowStorage + ?Sized,
>(
    storage: Arc<S>,
) {
    const RACERS: u32 = 8;
    let start = Arc::new(tokio::sync::Barrier::new(RACERS as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for racer in 0..RACERS {
        let storage = Arc::clone(&storage);
        let start = Arc::clone(&start);
        tasks.spawn(async move {
            start.wait().await;
            let activity = key(&format!("activity-{racer}"), 0);
            let tx = storage
                .begin_activity("exec-position-race", &activity)
                .await
                .unwrap();
            let mine = entry("exec-position-race", &activity, &format!("racer {racer}"));
            let outcome = tx.commit(&mine).await.unwrap();
            (mine, outcome)
        });
    }
    let results = tasks.join_all().await;
    let winners: Vec<&JournalEntry> = results
        .iter()
        .filter(|(_, outcome)| *outcome == CommitOutcome::Committed)
        .map(|(mine, _)| mine)
        .collect();
    assert_eq!(winners.len(), 1, "outcomes: {results:?}");
    let winner = winners[0].clone();
    for (mine, outcome) in &results {
        if *mine != winner {
            assert_eq!(outcome, &CommitOutcome::AlreadyRecorded(winner.clone()));
        }
    }
    assert_eq!(
        storage.journal("exec-position-race").await.unwrap(),
        vec![winner]
    );
}

// ---------------------------------------------------------------------------------------
// Journal property: random transactions against a model
// ---------------------------------------------------------------------------------------

const TX_KEYS: u8 = 3;

/// One step of a generated journal case. At most one transaction is open at a time: two
/// writing transactions interleaved in one task would wait for each other forever on a
/// backend with pessimistic locks, which the contract allows.
#[derive(Clone, Debug)]
enum TxOp {
    /// Opens a transaction (dropping the open one, if any).
    Begin {
        execution: u8,
        sequence: u32,
        name: u8,
    },
    Put {
        key: u8,
        value: u8,
    },
    Get {
        key: u8,
    },
    Commit,
    Rollback,
    Drop,
    DeleteJournal {
        execution: u8,
    },
}

fn tx_ops() -> impl Strategy<Value = Vec<TxOp>> {
    let op = prop_oneof![
        3 => (0..2u8, 0..3u32, 0..2u8)
            .prop_map(|(execution, sequence, name)| TxOp::Begin { execution, sequence, name }),
        4 => (0..TX_KEYS, any::<u8>()).prop_map(|(key, value)| TxOp::Put { key, value }),
        1 => (0..TX_KEYS).prop_map(|key| TxOp::Get { key }),
        3 => Just(TxOp::Commit),
        1 => Just(TxOp::Rollback),
        1 => Just(TxOp::Drop),
        1 => (0..2u8).prop_map(|execution| TxOp::DeleteJournal { execution }),
    ];
    proptest::collection::vec(op, 1..24)
}

struct OpenTx {
    tx: Box<dyn ActivityTransaction>,
    entry: JournalEntry,
    staged: BTreeMap<String, Bytes>,
}

#[derive(Debug, Default)]
struct JournalModel {
    journals: BTreeMap<String, BTreeMap<u32, JournalEntry>>,
    values: BTreeMap<String, Bytes>,
}

async fn run_tx_case<S: WorkflowStorage + ?Sized>(
    storage: &S,
    support: KeyValues,
    case: usize,
    ops: &[TxOp],
) {
    let execution = |n: u8| format!("model-{case}-exec-{n}");
    let kv_key = |n: u8| format!("model-{case}/key-{n}");
    let mut open: Option<OpenTx> = None;
    let mut model = JournalModel::default();

    for (step, op) in ops.iter().enumerate() {
        let context = |model: &JournalModel| {
            format!("case {case}, step {step} ({op:?}) of {ops:?}; model: {model:?}")
        };
        match op {
            TxOp::Begin {
                execution: n,
                sequence,
                name,
            } => {
                drop(open.take());
                let activity = key(&format!("activity-{name}"), *sequence);
                let tx = begin(storage, &execution(*n), &activity).await;
                let mut recorded = entry(&execution(*n), &activity, &format!("step {step}"));
                recorded.attempts = step as u32;
                open = Some(OpenTx {
                    tx,
                    entry: recorded,
                    staged: BTreeMap::new(),
                });
            }
            TxOp::Put { key, value } => {
                if let Some(open) = open.as_mut() {
                    let value = Bytes::from(vec![*value]);
                    match open.tx.put(&kv_key(*key), value.clone()).await {
                        Ok(()) if support == KeyValues::Supported => {
                            open.staged.insert(kv_key(*key), value);
                        }
                        Err(err) if is_unsupported(&err) && support == KeyValues::Unsupported => {}
                        answer => panic!(
                            "put answered {answer:?} with the capability {support:?} at {}",
                            context(&model)
                        ),
                    }
                }
            }
            TxOp::Get { key } => {
                if let (Some(open), KeyValues::Supported) = (open.as_mut(), support) {
                    let got = open.tx.get(&kv_key(*key)).await.unwrap();
                    let want = open
                        .staged
                        .get(&kv_key(*key))
                        .or_else(|| model.values.get(&kv_key(*key)))
                        .cloned();
                    assert_eq!(got, want, "transaction get at {}", context(&model));
                }
            }
            TxOp::Commit => {
                if let Some(open) = open.take() {
                    let got = open.tx.commit(&open.entry).await.unwrap();
                    let journal = model
                        .journals
                        .entry(open.entry.execution_id.clone())
                        .or_default();
                    let journal_key = open.entry.key.sequence;
                    let want = match journal.get(&journal_key) {
                        Some(existing) => CommitOutcome::AlreadyRecorded(existing.clone()),
                        None => {
                            journal.insert(journal_key, open.entry.clone());
                            model.values.extend(open.staged);
                            CommitOutcome::Committed
                        }
                    };
                    assert_eq!(got, want, "commit outcome at {}", context(&model));
                }
            }
            TxOp::Rollback => {
                if let Some(open) = open.take() {
                    open.tx.rollback().await.unwrap();
                }
            }
            TxOp::Drop => drop(open.take()),
            TxOp::DeleteJournal { execution: n } => {
                storage.delete_journal(&execution(*n)).await.unwrap();
                model.journals.remove(&execution(*n));
            }
        }

        for n in 0..2 {
            let got = storage.journal(&execution(n)).await.unwrap();
            let want: Vec<JournalEntry> = model
                .journals
                .get(&execution(n))
                .map(|j| j.values().cloned().collect())
                .unwrap_or_default();
            assert_eq!(
                got,
                want,
                "journal of {} at {}",
                execution(n),
                context(&model)
            );
        }
        for n in 0..TX_KEYS {
            let got = committed_value(storage, support, &kv_key(n)).await;
            let want = model.values.get(&kv_key(n)).cloned();
            assert_eq!(got, want, "value {} at {}", kv_key(n), context(&model));
        }
    }
    drop(open);
}

/// Random sequences of transactions (begin, put, get, commit, rollback, drop) and journal
/// deletions agree with a model in which a commit applies its entry and writes together,
/// the first commit at a position wins (whatever the names), and nothing else applies anything (32 generated
/// cases).
pub async fn random_transactions_match_a_model<S: WorkflowStorage + ?Sized>(storage: &S) {
    let probe_key = key("probe", 0);
    let mut probe = begin(storage, "model-probe", &probe_key).await;
    let support = stage(&mut *probe, "model-probe", "x").await;
    probe.rollback().await.unwrap();

    let mut generator = TestRunner::default();
    let strategy = tx_ops();
    for case in 0..32 {
        let ops = strategy
            .new_tree(&mut generator)
            .expect("generate a case")
            .current();
        run_tx_case(storage, support, case, &ops).await;
    }
}

// ---------------------------------------------------------------------------------------
// Engine: executions
// ---------------------------------------------------------------------------------------

fn execution(
    id: &str,
    workflow: &str,
    status: ExecutionStatus,
    created_minute: i64,
) -> ExecutionRecord {
    let created_at = t0() + Duration::minutes(created_minute);
    let mut record = ExecutionRecord::new(
        id,
        workflow,
        Bytes::from(format!("request of {id}")),
        created_at,
    );
    record.status = status;
    record
}

fn execution_ids(records: &[ExecutionRecord]) -> Vec<&str> {
    records.iter().map(|r| r.execution_id.as_str()).collect()
}

/// Executions are created and replaced by id (last write wins), read back exactly, and
/// listed oldest first, filtered by workflow and by status name, at most `limit` (0 means
/// no limit).
pub async fn executions_upsert_and_list_by_filter<E: WorkflowEngine + ?Sized>(engine: &E) {
    let records = [
        execution("o-3", "order", ExecutionStatus::Running, 3),
        execution("o-1", "order", ExecutionStatus::Running, 1),
        execution(
            "o-2",
            "order",
            ExecutionStatus::Suspended {
                until: Some(t0() + Duration::hours(1)),
            },
            2,
        ),
        execution("s-1", "shipping", ExecutionStatus::Running, 0),
        execution(
            "s-2",
            "shipping",
            ExecutionStatus::Suspended { until: None },
            4,
        ),
    ];
    for record in &records {
        engine.upsert_execution(record).await.unwrap();
    }
    for record in &records {
        assert_eq!(
            engine
                .execution(&record.execution_id)
                .await
                .unwrap()
                .as_ref(),
            Some(record)
        );
    }
    assert_eq!(engine.execution("missing").await.unwrap(), None);

    let mut finished = records[1].clone();
    finished.status = ExecutionStatus::Completed;
    finished.result = Some(ExitResult::Success(bytes("shipped")));
    finished.updated_at = t0() + Duration::minutes(10);
    engine.upsert_execution(&finished).await.unwrap();
    assert_eq!(
        engine.execution("o-1").await.unwrap(),
        Some(finished),
        "the last upsert wins"
    );

    let list = |workflow: Option<&str>, status: Option<&'static str>, limit: usize| {
        let filter = ExecutionFilter {
            workflow: workflow.map(str::to_owned),
            status,
            limit,
        };
        async move { engine.list_executions(&filter).await.unwrap() }
    };
    assert_eq!(
        execution_ids(&list(None, None, 0).await),
        vec!["s-1", "o-1", "o-2", "o-3", "s-2"]
    );
    assert_eq!(
        execution_ids(&list(Some("order"), None, 0).await),
        vec!["o-1", "o-2", "o-3"]
    );
    assert_eq!(
        execution_ids(&list(None, Some("running"), 0).await),
        vec!["s-1", "o-3"]
    );
    assert_eq!(
        execution_ids(&list(None, Some("suspended"), 0).await),
        vec!["o-2", "s-2"]
    );
    assert_eq!(
        execution_ids(&list(Some("order"), Some("completed"), 0).await),
        vec!["o-1"]
    );
    assert_eq!(
        execution_ids(&list(Some("shipping"), Some("failed"), 0).await),
        Vec::<&str>::new()
    );
    assert_eq!(
        execution_ids(&list(None, None, 2).await),
        vec!["s-1", "o-1"]
    );
    assert_eq!(
        execution_ids(&list(Some("order"), None, 1).await),
        vec!["o-1"]
    );
}

/// The new statuses and the attempt bookkeeping round-trip: a parked execution keeps its
/// attempts, progress mark and last error (and its failure as `result`), a cancelled one
/// reads back cancelled, and both are listed by their status names.
pub async fn parked_and_cancelled_executions_round_trip<E: WorkflowEngine + ?Sized>(engine: &E) {
    let mut parked = execution("p-1", "order", ExecutionStatus::Parked, 1);
    parked.attempts = 3;
    parked.progress_mark = 2;
    let panic = ClusterError::handler("activity `charge` panicked: card service down").to_wire();
    parked.last_error = Some(panic.clone());
    parked.result = Some(ExitResult::Failure(panic));
    let cancelled = execution("c-1", "order", ExecutionStatus::Cancelled, 2);
    let mut running = execution("r-1", "order", ExecutionStatus::Running, 3);
    running.attempts = 1;
    running.progress_mark = 7;
    for record in [&parked, &cancelled, &running] {
        engine.upsert_execution(record).await.unwrap();
        assert_eq!(
            engine
                .execution(&record.execution_id)
                .await
                .unwrap()
                .as_ref(),
            Some(record),
            "{} reads back exactly",
            record.execution_id
        );
    }
    let list = |status: &'static str| {
        let filter = ExecutionFilter {
            status: Some(status),
            ..Default::default()
        };
        async move { engine.list_executions(&filter).await.unwrap() }
    };
    assert_eq!(list("parked").await, vec![parked.clone()]);
    assert_eq!(execution_ids(&list("cancelled").await), vec!["c-1"]);
    assert_eq!(execution_ids(&list("running").await), vec!["r-1"]);

    // Resuming a parked execution is an upsert back to running with the count cleared.
    let mut resumed = parked.clone();
    resumed.status = ExecutionStatus::Running;
    resumed.attempts = 0;
    resumed.last_error = None;
    resumed.result = None;
    engine.upsert_execution(&resumed).await.unwrap();
    assert_eq!(engine.execution("p-1").await.unwrap(), Some(resumed));
    assert!(list("parked").await.is_empty());
}

/// `stopped_executions` answers, in one call and in the order asked, the executions that
/// stopped running (completed, failed, cancelled, parked) exactly as stored; running,
/// suspended and unknown ids are left out.
pub async fn stopped_executions_are_answered_in_one_read<E: WorkflowEngine + ?Sized>(engine: &E) {
    let mut completed = execution("done", "order", ExecutionStatus::Completed, 1);
    completed.result = Some(ExitResult::Success(Bytes::from_static(b"42")));
    let mut failed = execution("failed", "order", ExecutionStatus::Failed, 2);
    failed.result = Some(ExitResult::failure(&ClusterError::handler("out of stock")));
    let cancelled = execution("cancelled", "order", ExecutionStatus::Cancelled, 3);
    let parked = execution("parked", "order", ExecutionStatus::Parked, 4);
    let running = execution("running", "order", ExecutionStatus::Running, 5);
    let suspended = execution(
        "sleeping",
        "order",
        ExecutionStatus::Suspended {
            until: Some(t0() + Duration::hours(1)),
        },
        6,
    );
    for record in [
        &completed, &failed, &cancelled, &parked, &running, &suspended,
    ] {
        engine.upsert_execution(record).await.unwrap();
    }
    let asked: Vec<String> = [
        "parked",
        "running",
        "done",
        "unknown",
        "sleeping",
        "cancelled",
        "failed",
    ]
    .map(String::from)
    .to_vec();
    let stopped = engine.stopped_executions(&asked).await.unwrap();
    assert_eq!(
        stopped,
        vec![parked, completed, cancelled, failed],
        "asked {asked:?}: running, suspended and unknown executions must be left out"
    );
    assert!(engine.stopped_executions(&[]).await.unwrap().is_empty());
}

/// A cancellation request is recorded once on an unfinished execution (the first instant
/// is kept), survives every later upsert of the record, is not recorded on a finished
/// execution, and is `None` for an unknown one.
pub async fn cancellation_is_recorded_once_and_kept_by_upserts<E: WorkflowEngine + ?Sized>(
    engine: &E,
) {
    let first = t0() + Duration::minutes(5);
    let second = t0() + Duration::minutes(6);
    assert_eq!(
        engine.request_cancellation("nobody", first).await.unwrap(),
        None
    );
    assert_eq!(engine.cancellation_requested("nobody").await.unwrap(), None);

    let suspended = execution(
        "s-1",
        "order",
        ExecutionStatus::Suspended {
            until: Some(t0() + Duration::hours(1)),
        },
        1,
    );
    engine.upsert_execution(&suspended).await.unwrap();
    assert_eq!(engine.cancellation_requested("s-1").await.unwrap(), None);
    let after = engine
        .request_cancellation("s-1", first)
        .await
        .unwrap()
        .expect("the execution exists");
    assert_eq!(after.cancel_requested_at, Some(first));
    assert_eq!(
        after.status, suspended.status,
        "a request changes no status"
    );
    assert_eq!(
        engine.cancellation_requested("s-1").await.unwrap(),
        Some(first)
    );

    let again = engine
        .request_cancellation("s-1", second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.cancel_requested_at,
        Some(first),
        "the first request is kept"
    );

    // A runner saving the record it read before the request keeps the request.
    let mut running = suspended.clone();
    running.status = ExecutionStatus::Running;
    running.attempts = 1;
    engine.upsert_execution(&running).await.unwrap();
    assert_eq!(
        engine.cancellation_requested("s-1").await.unwrap(),
        Some(first)
    );
    let stored = engine.execution("s-1").await.unwrap().unwrap();
    assert_eq!(stored.status, ExecutionStatus::Running);
    assert_eq!(stored.cancel_requested_at, Some(first));

    // Finished executions take no request.
    for (id, status) in [
        ("done", ExecutionStatus::Completed),
        ("failed", ExecutionStatus::Failed),
        ("cancelled", ExecutionStatus::Cancelled),
    ] {
        engine
            .upsert_execution(&execution(id, "order", status.clone(), 2))
            .await
            .unwrap();
        let after = engine
            .request_cancellation(id, first)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.status, status);
        assert_eq!(after.cancel_requested_at, None, "{id} is finished");
        assert_eq!(engine.cancellation_requested(id).await.unwrap(), None);
    }

    // A parked execution has not finished: it can be cancelled.
    engine
        .upsert_execution(&execution("parked", "order", ExecutionStatus::Parked, 3))
        .await
        .unwrap();
    let after = engine
        .request_cancellation("parked", first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.cancel_requested_at, Some(first));
}

// ---------------------------------------------------------------------------------------
// Engine: timers
// ---------------------------------------------------------------------------------------

fn timer(execution_id: &str, timer_key: &str, fire_at: DateTime<Utc>) -> DurableTimer {
    DurableTimer {
        execution_id: execution_id.to_owned(),
        timer_key: timer_key.to_owned(),
        address: EntityAddress {
            shard_id: ShardId::new("workflows", 3),
            entity_type: EntityType::new("Workflow/order"),
            entity_id: EntityId::new(execution_id),
        },
        fire_at,
        completed: false,
    }
}

fn timer_keys(timers: &[DurableTimer]) -> Vec<(&str, &str)> {
    timers
        .iter()
        .map(|t| (t.execution_id.as_str(), t.timer_key.as_str()))
        .collect()
}

/// A timer is due once `now` reaches its `fire_at` (not before), due timers come
/// earliest first, at most `limit`, and read back exactly.
pub async fn timers_are_due_only_after_fire_at<E: WorkflowEngine + ?Sized>(engine: &E) {
    let late = timer("exec-a", "sleep/1", t0() + Duration::seconds(20));
    let early = timer("exec-b", "sleep/0", t0() + Duration::seconds(10));
    let middle = timer("exec-a", "sleep/0", t0() + Duration::seconds(15));
    for t in [&late, &early, &middle] {
        engine.schedule_timer(t).await.unwrap();
    }
    for t in [&late, &early, &middle] {
        assert_eq!(
            engine
                .timer(&t.execution_id, &t.timer_key)
                .await
                .unwrap()
                .as_ref(),
            Some(t)
        );
    }
    assert_eq!(engine.timer("exec-a", "sleep/9").await.unwrap(), None);

    let due = |after_ms: i64, limit: usize| async move {
        engine
            .due_timers(t0() + Duration::milliseconds(after_ms), limit)
            .await
            .unwrap()
    };
    assert!(due(0, 10).await.is_empty(), "nothing is due at t0");
    assert!(
        due(9_999, 10).await.is_empty(),
        "one millisecond before the first fire_at"
    );
    assert_eq!(
        due(10_000, 10).await,
        vec![early.clone()],
        "at fire_at exactly"
    );
    assert_eq!(
        timer_keys(&due(60_000, 10).await),
        vec![
            ("exec-b", "sleep/0"),
            ("exec-a", "sleep/0"),
            ("exec-a", "sleep/1")
        ],
        "earliest first"
    );
    assert_eq!(
        timer_keys(&due(60_000, 2).await),
        vec![("exec-b", "sleep/0"), ("exec-a", "sleep/0")],
        "limit 2"
    );
}

/// Scheduling a timer key again keeps the first schedule.
pub async fn scheduling_a_timer_twice_keeps_the_first<E: WorkflowEngine + ?Sized>(engine: &E) {
    let first = timer("exec-1", "sleep/0", t0() + Duration::seconds(30));
    engine.schedule_timer(&first).await.unwrap();
    let sooner = timer("exec-1", "sleep/0", t0() + Duration::seconds(5));
    engine.schedule_timer(&sooner).await.unwrap();

    assert_eq!(
        engine.timer("exec-1", "sleep/0").await.unwrap(),
        Some(first.clone())
    );
    assert!(
        engine
            .due_timers(t0() + Duration::seconds(10), 10)
            .await
            .unwrap()
            .is_empty(),
        "the second schedule must not make the timer due sooner"
    );
    assert_eq!(
        engine
            .due_timers(t0() + Duration::seconds(30), 10)
            .await
            .unwrap(),
        vec![first]
    );
}

/// A completed timer is no longer due, reads back as completed, and scheduling it again
/// does not revive it.
pub async fn completed_timers_are_not_due<E: WorkflowEngine + ?Sized>(engine: &E) {
    let fired = timer("exec-1", "sleep/0", t0());
    let other = timer("exec-1", "sleep/1", t0());
    engine.schedule_timer(&fired).await.unwrap();
    engine.schedule_timer(&other).await.unwrap();
    engine.complete_timer("exec-1", "sleep/0").await.unwrap();
    engine.complete_timer("exec-1", "sleep/0").await.unwrap();
    engine
        .complete_timer("exec-1", "never-scheduled")
        .await
        .expect("completing an unknown timer is not an error");

    let later = t0() + Duration::hours(1);
    assert_eq!(engine.due_timers(later, 10).await.unwrap(), vec![other]);
    let read = engine.timer("exec-1", "sleep/0").await.unwrap();
    assert_eq!(
        read,
        Some(DurableTimer {
            completed: true,
            ..fired.clone()
        })
    );

    engine.schedule_timer(&fired).await.unwrap();
    assert_eq!(
        timer_keys(&engine.due_timers(later, 10).await.unwrap()),
        vec![("exec-1", "sleep/1")],
        "rescheduling a completed timer keeps it completed"
    );
}

// ---------------------------------------------------------------------------------------
// Engine: retention
// ---------------------------------------------------------------------------------------

fn updated(mut record: ExecutionRecord, minutes_after_t0: i64) -> ExecutionRecord {
    record.updated_at = t0() + Duration::minutes(minutes_after_t0);
    record
}

fn fired(mut timer: DurableTimer) -> DurableTimer {
    timer.completed = true;
    timer
}

/// Finished executions (completed, failed, cancelled) last updated at or before the cutoff
/// are listed oldest first, at most `limit`; deleting them takes their timers and deferred
/// values too. Parked, running and suspended executions, newer finished ones and ids that
/// are not finished are left alone, whatever the list passed.
pub async fn finished_executions_past_retention_are_deleted<E: WorkflowEngine + ?Sized>(
    engine: &E,
) {
    let records = [
        updated(execution("done", "order", ExecutionStatus::Completed, 0), 0),
        updated(execution("failed", "order", ExecutionStatus::Failed, 0), 1),
        updated(
            execution("cancelled", "order", ExecutionStatus::Cancelled, 0),
            2,
        ),
        updated(execution("parked", "order", ExecutionStatus::Parked, 0), 0),
        updated(
            execution("running", "order", ExecutionStatus::Running, 0),
            0,
        ),
        updated(
            execution(
                "sleeping",
                "order",
                ExecutionStatus::Suspended { until: None },
                0,
            ),
            0,
        ),
        updated(
            execution("recent", "order", ExecutionStatus::Completed, 0),
            120,
        ),
    ];
    for record in &records {
        engine.upsert_execution(record).await.unwrap();
    }
    for id in ["done", "running"] {
        engine
            .schedule_timer(&fired(timer(id, "sleep/0", t0())))
            .await
            .unwrap();
        let value = ExitResult::Success(bytes("approved"));
        assert!(engine
            .resolve_deferred(id, "approval", &value)
            .await
            .unwrap());
    }

    let cutoff = t0() + Duration::hours(1);
    assert_eq!(
        engine.finished_executions_before(cutoff, 10).await.unwrap(),
        vec!["done", "failed", "cancelled"],
        "finished before the cutoff, oldest first"
    );
    assert_eq!(
        engine.finished_executions_before(cutoff, 2).await.unwrap(),
        vec!["done", "failed"],
        "at most limit"
    );
    assert!(engine
        .finished_executions_before(t0() - Duration::hours(1), 10)
        .await
        .unwrap()
        .is_empty());

    let asked: Vec<String> = records.iter().map(|r| r.execution_id.clone()).collect();
    let mut asked = asked;
    asked.push("missing".into());
    assert_eq!(
        engine
            .delete_finished_executions(&asked, cutoff)
            .await
            .unwrap(),
        3
    );
    for id in ["done", "failed", "cancelled"] {
        assert_eq!(engine.execution(id).await.unwrap(), None, "{id} is deleted");
    }
    for id in ["parked", "running", "sleeping", "recent"] {
        assert!(engine.execution(id).await.unwrap().is_some(), "{id} stays");
    }
    assert_eq!(engine.timer("done", "sleep/0").await.unwrap(), None);
    assert_eq!(engine.deferred("done", "approval").await.unwrap(), None);
    assert!(engine.timer("running", "sleep/0").await.unwrap().is_some());
    assert!(engine
        .deferred("running", "approval")
        .await
        .unwrap()
        .is_some());
    assert!(engine
        .finished_executions_before(cutoff, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        engine
            .delete_finished_executions(&asked, cutoff)
            .await
            .unwrap(),
        0,
        "deleting again changes nothing"
    );
}

/// Fired timers with `fire_at` at or before the cutoff are deleted, at most `limit` per
/// call, when their execution has finished or no longer exists; timers of unfinished
/// executions, timers that have not fired and later ones stay.
pub async fn fired_timers_of_finished_executions_are_deleted<E: WorkflowEngine + ?Sized>(
    engine: &E,
) {
    engine
        .upsert_execution(&execution("done", "order", ExecutionStatus::Completed, 0))
        .await
        .unwrap();
    engine
        .upsert_execution(&execution(
            "sleeping",
            "order",
            ExecutionStatus::Suspended { until: None },
            0,
        ))
        .await
        .unwrap();
    let timers = [
        fired(timer("done", "sleep/0", t0())),
        fired(timer("done", "sleep/1", t0() + Duration::hours(2))),
        timer("done", "sleep/2", t0()),
        fired(timer("sleeping", "sleep/0", t0())),
        fired(timer("gone", "sleep/0", t0())),
    ];
    for timer in &timers {
        engine.schedule_timer(timer).await.unwrap();
    }

    let cutoff = t0() + Duration::hours(1);
    let mut batches = Vec::new();
    loop {
        let deleted = engine.delete_fired_timers_before(cutoff, 1).await.unwrap();
        batches.push(deleted);
        if deleted < 1 {
            break;
        }
    }
    assert_eq!(batches, vec![1, 1, 0], "two fired timers, one per call");
    assert_eq!(engine.timer("done", "sleep/0").await.unwrap(), None);
    assert_eq!(engine.timer("gone", "sleep/0").await.unwrap(), None);
    for (execution_id, key) in [
        ("done", "sleep/1"),
        ("done", "sleep/2"),
        ("sleeping", "sleep/0"),
    ] {
        assert!(
            engine.timer(execution_id, key).await.unwrap().is_some(),
            "{execution_id}/{key} stays"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Engine: deferred values
// ---------------------------------------------------------------------------------------

/// The first resolution of a deferred value wins (`true`); later ones answer `false` and
/// change nothing. Values are scoped by execution and name.
pub async fn deferred_values_are_write_once<E: WorkflowEngine + ?Sized>(engine: &E) {
    assert_eq!(engine.deferred("exec-1", "approval").await.unwrap(), None);
    let approved = ExitResult::Success(bytes("approved"));
    let denied = ExitResult::failure(&ClusterError::handler("denied"));
    assert!(engine
        .resolve_deferred("exec-1", "approval", &approved)
        .await
        .unwrap());
    assert!(!engine
        .resolve_deferred("exec-1", "approval", &denied)
        .await
        .unwrap());
    assert!(!engine
        .resolve_deferred("exec-1", "approval", &approved)
        .await
        .unwrap());
    assert_eq!(
        engine.deferred("exec-1", "approval").await.unwrap(),
        Some(approved)
    );

    assert_eq!(engine.deferred("exec-1", "payment").await.unwrap(), None);
    assert_eq!(engine.deferred("exec-2", "approval").await.unwrap(), None);
    assert!(engine
        .resolve_deferred("exec-2", "approval", &denied)
        .await
        .unwrap());
    assert_eq!(
        engine.deferred("exec-2", "approval").await.unwrap(),
        Some(denied)
    );
}

/// Many tasks resolving one deferred value at once: exactly one answer is `true`, and its
/// value is the one stored.
pub async fn concurrent_resolves_of_one_deferred_have_exactly_one_winner<
    E: WorkflowEngine + ?Sized,
>(
    engine: Arc<E>,
) {
    const RACERS: usize = 16;
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = tokio::task::JoinSet::new();
    for racer in 0..RACERS {
        let engine = Arc::clone(&engine);
        let start = Arc::clone(&start);
        tasks.spawn(async move {
            let value = ExitResult::Success(bytes(&format!("racer {racer}")));
            start.wait().await;
            let won = engine
                .resolve_deferred("exec-race", "signal", &value)
                .await
                .unwrap();
            (value, won)
        });
    }
    let results = tasks.join_all().await;
    let winners: Vec<&ExitResult> = results
        .iter()
        .filter(|(_, won)| *won)
        .map(|(value, _)| value)
        .collect();
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(
        engine
            .deferred("exec-race", "signal")
            .await
            .unwrap()
            .as_ref(),
        Some(winners[0])
    );
}

// ---------------------------------------------------------------------------------------
// Engine property: random timer operations against a model
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum TimerOp {
    Schedule { timer: u8, fire_second: u8 },
    Complete { timer: u8 },
    Due { at_second: u8, limit: usize },
}

fn timer_ops() -> impl Strategy<Value = Vec<TimerOp>> {
    let op = prop_oneof![
        3 => (0..6u8, 0..30u8).prop_map(|(timer, fire_second)| TimerOp::Schedule { timer, fire_second }),
        1 => (0..6u8).prop_map(|timer| TimerOp::Complete { timer }),
        2 => (0..40u8, 1..5usize).prop_map(|(at_second, limit)| TimerOp::Due { at_second, limit }),
    ];
    proptest::collection::vec(op, 1..24)
}

async fn run_timer_case<E: WorkflowEngine + ?Sized>(engine: &E, case: usize, ops: &[TimerOp]) {
    // Each case lives in its own execution and day, and completes its timers when it ends,
    // so `due_timers` answers only this case's timers.
    let base = t0() + Duration::days(case as i64 + 1);
    let execution_id = format!("timers-{case}");
    let timer_key = |n: u8| format!("sleep/{n}");
    let mut model: BTreeMap<u8, DurableTimer> = BTreeMap::new();
    for (step, op) in ops.iter().enumerate() {
        let context = |model: &BTreeMap<u8, DurableTimer>| {
            format!("case {case}, step {step} ({op:?}) of {ops:?}; model: {model:?}")
        };
        match op {
            TimerOp::Schedule {
                timer: n,
                fire_second,
            } => {
                let scheduled = timer(
                    &execution_id,
                    &timer_key(*n),
                    base + Duration::seconds(i64::from(*fire_second)),
                );
                engine.schedule_timer(&scheduled).await.unwrap();
                model.entry(*n).or_insert(scheduled);
            }
            TimerOp::Complete { timer: n } => {
                engine
                    .complete_timer(&execution_id, &timer_key(*n))
                    .await
                    .unwrap();
                if let Some(t) = model.get_mut(n) {
                    t.completed = true;
                }
            }
            TimerOp::Due { at_second, limit } => {
                let now = base + Duration::seconds(i64::from(*at_second));
                let got = engine.due_timers(now, *limit).await.unwrap();
                let mut want: Vec<DurableTimer> = model
                    .values()
                    .filter(|t| !t.completed && t.fire_at <= now)
                    .cloned()
                    .collect();
                want.sort_by(|a, b| (a.fire_at, &a.timer_key).cmp(&(b.fire_at, &b.timer_key)));
                want.truncate(*limit);
                // Earliest first; timers firing at the same instant may come in any order.
                let fire_times =
                    |ts: &[DurableTimer]| ts.iter().map(|t| t.fire_at).collect::<Vec<_>>();
                assert_eq!(
                    fire_times(&got),
                    fire_times(&want),
                    "due timers {got:?} at {}",
                    context(&model)
                );
                let due_in_model: Vec<&DurableTimer> = model
                    .values()
                    .filter(|t| !t.completed && t.fire_at <= now)
                    .collect();
                for (i, t) in got.iter().enumerate() {
                    assert!(
                        due_in_model.contains(&t) && !got[..i].contains(t),
                        "due_timers answered {t:?}, not due in the model or repeated, at {}",
                        context(&model)
                    );
                }
            }
        }
        for (n, want) in &model {
            let got = engine.timer(&execution_id, &timer_key(*n)).await.unwrap();
            assert_eq!(got.as_ref(), Some(want), "timer {n} at {}", context(&model));
        }
    }
    for n in model.keys() {
        engine
            .complete_timer(&execution_id, &timer_key(*n))
            .await
            .unwrap();
    }
}

/// Random schedules, completions and due-queries of six timers agree with a model in
/// which the first schedule of a key wins and due timers are uncompleted ones with
/// `fire_at <= now`, earliest first (32 generated cases).
pub async fn random_timer_operations_match_a_model<E: WorkflowEngine + ?Sized>(engine: &E) {
    let mut generator = TestRunner::default();
    let strategy = timer_ops();
    for case in 0..32 {
        let ops = strategy
            .new_tree(&mut generator)
            .expect("generate a case")
            .current();
        run_timer_case(engine, case, &ops).await;
    }
}

// ---------------------------------------------------------------------------------------
// Everything
// ---------------------------------------------------------------------------------------

/// Runs every [`WorkflowStorage`] function of the suite, each against a fresh backend.
///
/// The `concurrent_*` function spawns tasks: call this from a multi-thread runtime.
pub async fn run_all_storage<S, F, Fut>(mut new_storage: F)
where
    S: WorkflowStorage,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    journal_entries_are_returned_exactly(&new_storage().await).await;
    journal_is_sorted_by_sequence(&new_storage().await).await;
    commit_applies_writes_and_entry_atomically(&new_storage().await).await;
    transaction_reads_its_own_staged_writes(&new_storage().await).await;
    rollback_applies_nothing(&new_storage().await).await;
    dropped_transaction_applies_nothing(&new_storage().await).await;
    second_commit_of_same_key_returns_already_recorded_and_discards_writes(&new_storage().await)
        .await;
    delete_journal_forgets_only_that_execution(&new_storage().await).await;
    append_entry_stores_the_first_entry_at_a_position(&new_storage().await).await;
    chained_transactions_commit_carried_entries_together(&new_storage().await).await;
    held_back_entries_are_appended_all_or_none(&new_storage().await).await;
    key_value_writes_are_supported_or_refused_explicitly(&new_storage().await).await;
    concurrent_commits_of_one_activity_have_exactly_one_winner(Arc::new(new_storage().await)).await;
    journal_is_unique_by_execution_and_sequence(&new_storage().await).await;
    concurrent_commits_of_different_activities_at_one_position_have_one_winner(Arc::new(
        new_storage().await,
    ))
    .await;
    random_transactions_match_a_model(&new_storage().await).await;
}

/// Runs every [`WorkflowEngine`] function of the suite, each against a fresh backend.
///
/// The `concurrent_*` function spawns tasks: call this from a multi-thread runtime.
pub async fn run_all_engine<E, F, Fut>(mut new_engine: F)
where
    E: WorkflowEngine,
    F: FnMut() -> Fut,
    Fut: Future<Output = E>,
{
    executions_upsert_and_list_by_filter(&new_engine().await).await;
    parked_and_cancelled_executions_round_trip(&new_engine().await).await;
    stopped_executions_are_answered_in_one_read(&new_engine().await).await;
    cancellation_is_recorded_once_and_kept_by_upserts(&new_engine().await).await;
    timers_are_due_only_after_fire_at(&new_engine().await).await;
    scheduling_a_timer_twice_keeps_the_first(&new_engine().await).await;
    completed_timers_are_not_due(&new_engine().await).await;
    finished_executions_past_retention_are_deleted(&new_engine().await).await;
    fired_timers_of_finished_executions_are_deleted(&new_engine().await).await;
    deferred_values_are_write_once(&new_engine().await).await;
    concurrent_resolves_of_one_deferred_have_exactly_one_winner(Arc::new(new_engine().await)).await;
    random_timer_operations_match_a_model(&new_engine().await).await;
}
