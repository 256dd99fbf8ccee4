//! Callers waiting on this runner: for the final reply of a persisted request
//! ([`ReplyWaiters`], keyed by request id) and for the result of a workflow execution
//! ([`ExecutionWaiters`], keyed by execution id).
//!
//! Owns the map `key → waiters`. Whoever learns the outcome wakes every waiter of its key
//! at once: the runner that stores a reply or finishes an execution, a push from another
//! runner, or the waiters' fallback check (`waiter_fallback.rs`), which reads the keys of
//! all waiters in one batched storage call. Never holds a lock across an await; a dropped
//! waiter removes itself. The registry counts its waiters in a gauge.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cruster_types::{ReplyWithExit, Snowflake};
use cruster_workflow_storage::ExecutionRecord;
use dashmap::DashMap;
use prometheus::IntGauge;
use tokio::sync::oneshot;

/// How a persisted request that callers wait for ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReplyOutcome {
    /// Its final reply was stored.
    Reply(ReplyWithExit),
    /// It was dead-lettered after `attempts` attempts: no reply will come unless an
    /// operator retries it.
    DeadLettered { attempts: u32 },
}

/// Callers waiting for the final reply of a persisted request.
pub(crate) type ReplyWaiters = WaiterRegistry<Snowflake, ReplyOutcome>;

/// Callers waiting for a workflow execution to stop (finished or parked); they are woken
/// with its record.
pub(crate) type ExecutionWaiters = WaiterRegistry<String, ExecutionRecord>;

/// Callers of a workflow's `execute`, by the request id of their `execute` request, woken by
/// the final answer another runner pushes when the execution stops there (see
/// `workflow/result_push.rs`). Each of them waits in [`ExecutionWaiters`] too, which counts
/// them.
pub(crate) type PushedResultWaiters = WaiterRegistry<Snowflake, ReplyWithExit>;

type Senders<V> = Vec<(u64, oneshot::Sender<V>)>;

pub(crate) struct WaiterRegistry<K: Eq + Hash, V> {
    waiters: DashMap<K, Senders<V>>,
    next_token: AtomicU64,
    /// Registered waiters (`cruster_callers_waiting`), when this registry is counted.
    gauge: Option<IntGauge>,
}

/// A registration; removes itself from the map when dropped.
pub(crate) struct Waiter<K: Eq + Hash + Clone, V> {
    owner: Arc<WaiterRegistry<K, V>>,
    key: K,
    token: u64,
    pub(crate) rx: oneshot::Receiver<V>,
}

impl<K: Eq + Hash + Clone, V> Drop for Waiter<K, V> {
    fn drop(&mut self) {
        if let Some(mut entry) = self.owner.waiters.get_mut(&self.key) {
            let before = entry.len();
            entry.retain(|(token, _)| *token != self.token);
            let removed = before - entry.len();
            let empty = entry.is_empty();
            drop(entry);
            if let Some(gauge) = &self.owner.gauge {
                gauge.sub(removed as i64);
            }
            if empty {
                self.owner
                    .waiters
                    .remove_if(&self.key, |_, list| list.is_empty());
            }
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> WaiterRegistry<K, V> {
    /// An empty registry counting its waiters in `gauge` (if any).
    pub(crate) fn new(gauge: Option<IntGauge>) -> Self {
        WaiterRegistry {
            waiters: DashMap::new(),
            next_token: AtomicU64::new(0),
            gauge,
        }
    }

    /// Registers a waiter for `key`'s outcome.
    pub(crate) fn wait(self: &Arc<Self>, key: K) -> Waiter<K, V> {
        let (tx, rx) = oneshot::channel();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.waiters
            .entry(key.clone())
            .or_default()
            .push((token, tx));
        if let Some(gauge) = &self.gauge {
            gauge.inc();
        }
        Waiter {
            owner: self.clone(),
            key,
            token,
            rx,
        }
    }

    /// Wakes every waiter of `key` with `outcome`.
    pub(crate) fn complete(&self, key: &K, outcome: &V) {
        if let Some((_, list)) = self.waiters.remove(key) {
            if let Some(gauge) = &self.gauge {
                gauge.sub(list.len() as i64);
            }
            for (_, tx) in list {
                let _ = tx.send(outcome.clone());
            }
        }
    }

    /// The keys somebody waits for now (a snapshot, for the fallback check).
    pub(crate) fn keys(&self) -> Vec<K> {
        self.waiters
            .iter()
            .map(|entry| entry.key().clone())
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiters.len()
    }
}

impl ReplyWaiters {
    /// Wakes every waiter of the reply's request with it.
    pub(crate) fn reply_stored(&self, reply: &ReplyWithExit) {
        self.complete(&reply.request_id, &ReplyOutcome::Reply(reply.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cruster_types::ExitResult;

    fn registry() -> Arc<ReplyWaiters> {
        Arc::new(ReplyWaiters::new(Some(
            IntGauge::new("waiting", "waiting").unwrap(),
        )))
    }

    #[tokio::test]
    async fn complete_wakes_waiters_and_dropped_waiters_clean_up() {
        let waiters = registry();
        let mut a = waiters.wait(Snowflake(1));
        let b = waiters.wait(Snowflake(1));
        drop(b);
        let c = waiters.wait(Snowflake(2));
        drop(c);
        assert_eq!(waiters.len(), 1);
        assert_eq!(waiters.gauge.as_ref().unwrap().get(), 1);
        assert_eq!(waiters.keys(), vec![Snowflake(1)]);
        let reply = ReplyWithExit {
            request_id: Snowflake(1),
            exit: ExitResult::Success(bytes::Bytes::new()),
        };
        waiters.reply_stored(&reply);
        assert_eq!((&mut a.rx).await.unwrap(), ReplyOutcome::Reply(reply));
        assert_eq!(waiters.len(), 0);
        drop(a);
        assert_eq!(
            waiters.gauge.as_ref().unwrap().get(),
            0,
            "a woken waiter is counted once"
        );
    }

    #[tokio::test]
    async fn dead_letters_wake_every_waiter_of_their_request() {
        let waiters = registry();
        let mut first = waiters.wait(Snowflake(7));
        let mut second = waiters.wait(Snowflake(7));
        let other = waiters.wait(Snowflake(8));
        waiters.complete(&Snowflake(7), &ReplyOutcome::DeadLettered { attempts: 3 });
        for rx in [&mut first.rx, &mut second.rx] {
            assert_eq!(
                rx.await.unwrap(),
                ReplyOutcome::DeadLettered { attempts: 3 }
            );
        }
        assert_eq!(waiters.keys(), vec![Snowflake(8)]);
        assert_eq!(waiters.gauge.as_ref().unwrap().get(), 1);
        drop(other);
        assert_eq!(waiters.gauge.as_ref().unwrap().get(), 0);
    }
}
