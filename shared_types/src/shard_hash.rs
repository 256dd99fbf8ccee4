//! Stable hashing: which shard an entity id belongs to, and rendezvous weights.
//!
//! # Algorithm (stable across versions and platforms)
//!
//! [`stable_hash64`] is 64-bit FNV-1a over the UTF-8 bytes of the input, followed by the
//! SplitMix64 finaliser (to spread FNV's weak low bits). [`shard_for_entity`] is
//! `stable_hash64(entity_id) % shards_per_group`. Changing either would move every entity,
//! so both are pinned by tests with literal expected values.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The stable 64-bit hash of a string (FNV-1a, then SplitMix64).
///
/// ```
/// assert_eq!(cruster_types::stable_hash64("a"), cruster_types::stable_hash64("a"));
/// ```
pub fn stable_hash64(value: &str) -> u64 {
    splitmix64(fnv1a(FNV_OFFSET, value.as_bytes()))
}

/// The shard (`0..shards_per_group`) that an entity id belongs to.
///
/// A `shards_per_group` of 0 is treated as 1 (everything in shard 0).
///
/// ```
/// use cruster_types::shard_for_entity;
/// let shard = shard_for_entity("counter-1", 300);
/// assert!(shard < 300);
/// assert_eq!(shard, shard_for_entity("counter-1", 300));
/// ```
pub fn shard_for_entity(entity_id: &str, shards_per_group: u32) -> u32 {
    let shards = u64::from(shards_per_group.max(1));
    (stable_hash64(entity_id) % shards) as u32
}

/// Rendezvous (highest-random-weight) weight of `runner` for `shard`: the shard goes to the
/// live runner with the highest weight, so every runner computes the same owner from the same
/// membership, and a membership change moves only the shards of the runner that came or went.
///
/// ```
/// use cruster_types::rendezvous_weight;
/// let w = rendezvous_weight("default:1", "10.0.0.1:9000");
/// assert_eq!(w, rendezvous_weight("default:1", "10.0.0.1:9000"));
/// ```
pub fn rendezvous_weight(shard_key: &str, runner_key: &str) -> u64 {
    let hash = fnv1a(FNV_OFFSET, shard_key.as_bytes());
    let hash = fnv1a(hash, &[0xff]);
    splitmix64(fnv1a(hash, runner_key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_values_are_pinned() {
        // These literals pin the algorithm: if they change, every entity moves shard.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash64(""), splitmix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(shard_for_entity("counter-1", 300), PINNED_COUNTER_1);
    }

    const PINNED_COUNTER_1: u32 = 193;

    #[test]
    fn zero_shards_means_one() {
        assert_eq!(shard_for_entity("x", 0), 0);
    }

    #[test]
    fn ids_spread_evenly_over_shards() {
        let shards = 300u32;
        let mut counts = vec![0u32; shards as usize];
        for i in 0..300_000 {
            counts[shard_for_entity(&format!("entity-{i}"), shards) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 800 && *max < 1200, "min {min} max {max}");
    }

    proptest::proptest! {
        #[test]
        fn shard_is_always_in_range(id in ".*", shards in 1u32..10_000) {
            proptest::prop_assert!(shard_for_entity(&id, shards) < shards);
        }
    }
}
