//! [`ShardFences`]: per shard, a fence token fired when this runner can no longer prove it
//! holds the shard, so that everything running for it stops at once; and a drain token
//! fired when the drain of a shard that moves away passes its deadline, so that its
//! interruptible handlers stop.
//!
//! Entity instances and their handlers watch the tokens of their shard (clones: an
//! instance allocates no token of its own). A fired token stays in place (an instance
//! activated a moment later sees it fired and stops at once) until the shard is acquired
//! again, which arms fresh ones. Never holds a lock across an await.

use cruster_types::ShardId;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub(crate) struct ShardFences {
    tokens: DashMap<ShardId, CancellationToken>,
    drains: DashMap<ShardId, CancellationToken>,
}

/// The token of `shard` in `tokens`, created unfired if there is none.
fn token_in(tokens: &DashMap<ShardId, CancellationToken>, shard: &ShardId) -> CancellationToken {
    if let Some(token) = tokens.get(shard) {
        return token.clone();
    }
    tokens.entry(shard.clone()).or_default().clone()
}

/// Replaces the token of `shard` in `tokens` by a fresh one if it was fired.
fn rearm_in(tokens: &DashMap<ShardId, CancellationToken>, shard: &ShardId) {
    let fired = tokens.get(shard).is_some_and(|token| token.is_cancelled());
    if fired {
        tokens.insert(shard.clone(), CancellationToken::new());
    }
}

impl ShardFences {
    /// The token of a shard (a clone: watching it allocates nothing).
    pub(crate) fn token(&self, shard: &ShardId) -> CancellationToken {
        token_in(&self.tokens, shard)
    }

    /// The drain token of a shard: fired when a drain of the shard passes its deadline
    /// (a clone: watching it allocates nothing).
    pub(crate) fn drain_token(&self, shard: &ShardId) -> CancellationToken {
        token_in(&self.drains, shard)
    }

    /// Fresh, unfired tokens for shards this runner has just acquired.
    pub(crate) fn arm(&self, shards: &[ShardId]) {
        for shard in shards {
            rearm_in(&self.tokens, shard);
            rearm_in(&self.drains, shard);
        }
    }

    /// Fires the drain tokens of `shards` (their drain passed its deadline): the
    /// interruptible handlers running for them stop.
    pub(crate) fn end_drains(&self, shards: &[ShardId]) {
        for shard in shards {
            self.drain_token(shard).cancel();
        }
    }

    /// Fires the tokens of `shards`: whatever runs for them stops now.
    pub(crate) fn fire(&self, shards: &[ShardId]) {
        for shard in shards {
            self.token(shard).cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fired_shard_stays_fired_until_armed_again() {
        let fences = ShardFences::default();
        let shard = ShardId::new("default", 3);
        let before = fences.token(&shard);
        fences.fire(std::slice::from_ref(&shard));
        assert!(before.is_cancelled());
        assert!(
            fences.token(&shard).is_cancelled(),
            "a late watcher sees the fence"
        );
        fences.arm(std::slice::from_ref(&shard));
        assert!(!fences.token(&shard).is_cancelled());
    }

    #[test]
    fn an_ended_drain_stays_ended_until_armed_again_and_leaves_the_fence_alone() {
        let fences = ShardFences::default();
        let shard = ShardId::new("default", 4);
        let other = ShardId::new("default", 5);
        let before = fences.drain_token(&shard);
        fences.end_drains(std::slice::from_ref(&shard));
        assert!(before.is_cancelled());
        assert!(fences.drain_token(&shard).is_cancelled());
        assert!(
            !fences.token(&shard).is_cancelled(),
            "the fence is not fired"
        );
        assert!(!fences.drain_token(&other).is_cancelled());
        fences.arm(std::slice::from_ref(&shard));
        assert!(!fences.drain_token(&shard).is_cancelled());
    }
}
