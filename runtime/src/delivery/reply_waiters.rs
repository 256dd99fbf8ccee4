//! Local waiters for the final replies of persisted requests.
//!
//! Owns the map `request id → waiters`. When this runner stores a final reply it wakes the
//! local waiters at once; waiters on other runners read the reply from message storage.
//! Never holds a lock across an await; a dropped waiter removes itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cruster_types::{ReplyWithExit, Snowflake};
use dashmap::DashMap;
use tokio::sync::oneshot;

#[derive(Default)]
pub(crate) struct ReplyWaiters {
    waiters: DashMap<Snowflake, Vec<(u64, oneshot::Sender<ReplyWithExit>)>>,
    next_token: AtomicU64,
}

/// A registration; removes itself from the map when dropped.
pub(crate) struct Waiter {
    owner: Arc<ReplyWaiters>,
    request_id: Snowflake,
    token: u64,
    pub(crate) rx: oneshot::Receiver<ReplyWithExit>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(mut entry) = self.owner.waiters.get_mut(&self.request_id) {
            entry.retain(|(token, _)| *token != self.token);
            let empty = entry.is_empty();
            drop(entry);
            if empty {
                self.owner
                    .waiters
                    .remove_if(&self.request_id, |_, list| list.is_empty());
            }
        }
    }
}

impl ReplyWaiters {
    /// Registers a waiter for a request's final reply.
    pub(crate) fn wait(self: &Arc<Self>, request_id: Snowflake) -> Waiter {
        let (tx, rx) = oneshot::channel();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.waiters
            .entry(request_id)
            .or_default()
            .push((token, tx));
        Waiter {
            owner: self.clone(),
            request_id,
            token,
            rx,
        }
    }

    /// Wakes every waiter of the reply's request.
    pub(crate) fn complete(&self, reply: &ReplyWithExit) {
        if let Some((_, list)) = self.waiters.remove(&reply.request_id) {
            for (_, tx) in list {
                let _ = tx.send(reply.clone());
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cruster_types::ExitResult;

    #[tokio::test]
    async fn complete_wakes_waiters_and_dropped_waiters_clean_up() {
        let waiters = Arc::new(ReplyWaiters::default());
        let mut a = waiters.wait(Snowflake(1));
        let b = waiters.wait(Snowflake(1));
        drop(b);
        let c = waiters.wait(Snowflake(2));
        drop(c);
        assert_eq!(waiters.len(), 1);
        let reply = ReplyWithExit {
            request_id: Snowflake(1),
            exit: ExitResult::Success(bytes::Bytes::new()),
        };
        waiters.complete(&reply);
        assert_eq!((&mut a.rx).await.unwrap(), reply);
        assert_eq!(waiters.len(), 0);
    }
}
