//! [`ShardFences`]: one cancellation token per shard, fired when this runner can no longer
//! prove it holds the shard, so that everything running for it stops at once.
//!
//! Entity instances and their handlers watch the token of their shard. A fired token stays
//! in place (an instance activated a moment later sees it fired and stops at once) until
//! the shard is acquired again, which arms a fresh one. Never holds a lock across an await.

use cruster_types::ShardId;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub(crate) struct ShardFences {
    tokens: DashMap<ShardId, CancellationToken>,
}

impl ShardFences {
    /// The token of a shard (a clone: watching it allocates nothing).
    pub(crate) fn token(&self, shard: &ShardId) -> CancellationToken {
        if let Some(token) = self.tokens.get(shard) {
            return token.clone();
        }
        self.tokens.entry(shard.clone()).or_default().clone()
    }

    /// A fresh, unfired token for shards this runner has just acquired.
    pub(crate) fn arm(&self, shards: &[ShardId]) {
        for shard in shards {
            let fired = self
                .tokens
                .get(shard)
                .is_some_and(|token| token.is_cancelled());
            if fired {
                self.tokens.insert(shard.clone(), CancellationToken::new());
            }
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
}
