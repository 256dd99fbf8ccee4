//! The recent shard moves of one runner: a small ring, newest last.
//!
//! Owns nothing but the ring; the membership loop records every acquisition, release and
//! fence, the admin API reads it. Bounded, so a flapping cluster cannot grow it; the lock
//! is held for a push or a copy, never across an await.

use std::collections::VecDeque;

use chrono::Utc;
use cruster_types::ShardId;
use parking_lot::Mutex;

use crate::inspection::{ShardMove, ShardMoveDirection};

/// How many moves the ring keeps.
pub(crate) const SHARD_MOVES_KEPT: usize = 256;

#[derive(Default)]
pub(crate) struct ShardMoves {
    ring: Mutex<VecDeque<ShardMove>>,
}

impl ShardMoves {
    /// Records that `shards` moved now, dropping the oldest moves past the bound.
    pub(crate) fn record(&self, direction: ShardMoveDirection, shards: &[ShardId]) {
        let at = Utc::now();
        let mut ring = self.ring.lock();
        for shard_id in shards {
            if ring.len() == SHARD_MOVES_KEPT {
                ring.pop_front();
            }
            ring.push_back(ShardMove {
                shard_id: shard_id.clone(),
                direction,
                at,
            });
        }
    }

    /// The kept moves, oldest first.
    pub(crate) fn recent(&self) -> Vec<ShardMove> {
        self.ring.lock().iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_moves_up_to_the_bound() {
        let moves = ShardMoves::default();
        let shards: Vec<ShardId> = (0..300).map(|i| ShardId::new("g", i)).collect();
        moves.record(ShardMoveDirection::Acquired, &shards[..200]);
        moves.record(ShardMoveDirection::Released, &shards[200..]);
        let recent = moves.recent();
        assert_eq!(recent.len(), SHARD_MOVES_KEPT);
        assert_eq!(
            recent[0].shard_id,
            ShardId::new("g", 44),
            "the oldest 44 dropped"
        );
        let last = recent.last().map(|m| (m.shard_id.clone(), m.direction));
        assert_eq!(
            last,
            Some((ShardId::new("g", 299), ShardMoveDirection::Released))
        );
    }
}
