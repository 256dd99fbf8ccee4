//! [`Snowflake`] ids: unique, roughly time-ordered 64-bit ids.
//!
//! Layout (most significant first): 1 zero bit, 42 bits of milliseconds since
//! [`SNOWFLAKE_EPOCH_MS`], 10 bits of [`MachineId`], 12 bits of sequence.
//!
//! The generator keeps `(millisecond, sequence)` in one atomic word. Ids from one generator
//! are strictly increasing: when the clock steps back, or more than 4096 ids are taken in
//! one millisecond, it keeps counting from its last id (borrowing the next millisecond)
//! instead of repeating one. [`SnowflakeGenerator::next_async`] instead waits for the clock
//! to catch up when it would have to borrow.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ids::MachineId;

/// The snowflake epoch: 2025-01-01T00:00:00Z in Unix milliseconds.
pub const SNOWFLAKE_EPOCH_MS: u64 = 1_735_689_600_000;

const SEQUENCE_BITS: u32 = 12;
const MACHINE_BITS: u32 = 10;
const TIMESTAMP_BITS: u32 = 42;
const SEQUENCE_MASK: u64 = (1 << SEQUENCE_BITS) - 1;
const MACHINE_MASK: u64 = (1 << MACHINE_BITS) - 1;
const TIMESTAMP_MASK: u64 = (1 << TIMESTAMP_BITS) - 1;

/// A 64-bit id: timestamp, machine and sequence. Ordered by creation time.
///
/// ```
/// use cruster_types::{MachineId, SnowflakeGenerator};
/// let generator = SnowflakeGenerator::new(MachineId::new(3).unwrap());
/// let a = generator.next();
/// let b = generator.next();
/// assert!(b > a);
/// assert_eq!(a.machine_id().get(), 3);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Snowflake(pub i64);

impl Snowflake {
    /// Builds an id from its parts (the timestamp is in ms since the snowflake epoch).
    pub fn from_parts(timestamp_ms: u64, machine: MachineId, sequence: u16) -> Self {
        let raw = ((timestamp_ms & TIMESTAMP_MASK) << (MACHINE_BITS + SEQUENCE_BITS))
            | ((u64::from(machine.get()) & MACHINE_MASK) << SEQUENCE_BITS)
            | (u64::from(sequence) & SEQUENCE_MASK);
        Snowflake(raw as i64)
    }

    /// Milliseconds since the snowflake epoch.
    pub fn timestamp_ms(self) -> u64 {
        ((self.0 as u64) >> (MACHINE_BITS + SEQUENCE_BITS)) & TIMESTAMP_MASK
    }

    /// Unix time in milliseconds at which the id was made.
    pub fn unix_ms(self) -> u64 {
        self.timestamp_ms() + SNOWFLAKE_EPOCH_MS
    }

    /// The machine that made the id.
    pub fn machine_id(self) -> MachineId {
        MachineId::wrapping(((self.0 as u64) >> SEQUENCE_BITS) & MACHINE_MASK)
    }

    /// The sequence number within the millisecond.
    pub fn sequence(self) -> u16 {
        ((self.0 as u64) & SEQUENCE_MASK) as u16
    }
}

impl fmt::Display for Snowflake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Snowflake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Snowflake({})", self.0)
    }
}

/// Where the generator reads the time from (replaceable in tests).
type Clock = fn() -> u64;

fn system_clock_ms() -> u64 {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    unix_ms.saturating_sub(SNOWFLAKE_EPOCH_MS)
}

/// Makes [`Snowflake`] ids for one machine. Lock-free; share it by reference or `Arc`.
pub struct SnowflakeGenerator {
    machine: AtomicU64,
    /// `(ms << 12) | sequence` of the last id handed out.
    last: AtomicU64,
    clock: Clock,
}

impl fmt::Debug for SnowflakeGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnowflakeGenerator")
            .field("machine", &self.machine.load(Ordering::Relaxed))
            .finish()
    }
}

impl SnowflakeGenerator {
    /// A generator for `machine` reading the system clock.
    pub fn new(machine: MachineId) -> Self {
        Self::with_clock(machine, system_clock_ms)
    }

    /// A generator with a custom clock returning milliseconds since [`SNOWFLAKE_EPOCH_MS`].
    pub fn with_clock(machine: MachineId, clock: fn() -> u64) -> Self {
        SnowflakeGenerator {
            machine: AtomicU64::new(u64::from(machine.get())),
            last: AtomicU64::new(0),
            clock,
        }
    }

    /// Changes the machine id (after the runner registered and was given one).
    pub fn set_machine_id(&self, machine: MachineId) {
        self.machine
            .store(u64::from(machine.get()), Ordering::Relaxed);
    }

    /// The machine id in use.
    pub fn machine_id(&self) -> MachineId {
        MachineId::wrapping(self.machine.load(Ordering::Relaxed))
    }

    /// Takes the next `(ms << 12 | seq)` word, returning it and the clock reading.
    fn advance(&self) -> (u64, u64) {
        let mut current = self.last.load(Ordering::Relaxed);
        loop {
            let now = (self.clock)() & TIMESTAMP_MASK;
            let last_ms = current >> SEQUENCE_BITS;
            let next = if now > last_ms {
                now << SEQUENCE_BITS
            } else {
                // Same millisecond, or the clock went back: keep counting. A sequence
                // overflow carries into the millisecond, which stays monotonic.
                current + 1
            };
            match self.last.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return (next, now),
                Err(actual) => current = actual,
            }
        }
    }

    fn compose(&self, word: u64) -> Snowflake {
        let ms = word >> SEQUENCE_BITS;
        let seq = (word & SEQUENCE_MASK) as u16;
        Snowflake::from_parts(ms, self.machine_id(), seq)
    }

    /// The next id. Never repeats and never decreases, whatever the clock does.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&self) -> Snowflake {
        let (word, _) = self.advance();
        self.compose(word)
    }

    /// The next id, waiting for the clock when this millisecond's 4096 ids are used up
    /// (or the clock went back) instead of borrowing time from the future.
    pub async fn next_async(&self) -> Snowflake {
        loop {
            let current = self.last.load(Ordering::Relaxed);
            let now = (self.clock)() & TIMESTAMP_MASK;
            let last_ms = current >> SEQUENCE_BITS;
            let seq = current & SEQUENCE_MASK;
            if now < last_ms || (now == last_ms && seq == SEQUENCE_MASK) {
                let wait = (last_ms + 1).saturating_sub(now).max(1);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                continue;
            }
            let next = if now > last_ms {
                now << SEQUENCE_BITS
            } else {
                current + 1
            };
            if self
                .last
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return self.compose(next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    static FAKE_NOW: AtomicU64 = AtomicU64::new(1_000);
    fn fake_clock() -> u64 {
        FAKE_NOW.load(Ordering::SeqCst)
    }

    #[test]
    fn parts_round_trip() {
        let id = Snowflake::from_parts(123_456, MachineId::new(1023).unwrap(), 4095);
        assert_eq!(id.timestamp_ms(), 123_456);
        assert_eq!(id.machine_id().get(), 1023);
        assert_eq!(id.sequence(), 4095);
        assert!(id.0 > 0);
    }

    #[test]
    fn stays_monotonic_when_the_clock_goes_back_and_sequence_overflows() {
        let generator = SnowflakeGenerator::with_clock(MachineId::new(1).unwrap(), fake_clock);
        let mut last = generator.next();
        FAKE_NOW.store(500, Ordering::SeqCst); // clock steps back
        for _ in 0..10_000 {
            // more than 4096 in one "millisecond"
            let id = generator.next();
            assert!(id > last, "{id:?} after {last:?}");
            last = id;
        }
        FAKE_NOW.store(1_000, Ordering::SeqCst);
    }

    #[test]
    fn four_threads_take_unique_increasing_ids() {
        let generator = Arc::new(SnowflakeGenerator::new(MachineId::new(7).unwrap()));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let generator = generator.clone();
                std::thread::spawn(move || {
                    let mut ids = Vec::with_capacity(100_000);
                    for _ in 0..100_000 {
                        ids.push(generator.next());
                    }
                    ids
                })
            })
            .collect();
        let mut all = HashSet::new();
        for handle in handles {
            let ids = handle.join().unwrap();
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "ids of one thread increase"
            );
            for id in ids {
                assert!(all.insert(id), "duplicate id {id:?}");
            }
        }
        assert_eq!(all.len(), 400_000);
    }

    #[tokio::test]
    async fn next_async_waits_instead_of_borrowing_time() {
        let generator = SnowflakeGenerator::new(MachineId::new(2).unwrap());
        let mut last = generator.next_async().await;
        for _ in 0..10_000 {
            let id = generator.next_async().await;
            assert!(id > last);
            assert!(
                id.timestamp_ms() <= system_clock_ms(),
                "never ahead of the clock"
            );
            last = id;
        }
    }

    proptest::proptest! {
        #[test]
        fn from_parts_preserves_each_field(ts in 0u64..(1 << 42), machine in 0u16..1024, seq in 0u16..4096) {
            let id = Snowflake::from_parts(ts, MachineId::new(machine).unwrap(), seq);
            proptest::prop_assert_eq!(id.timestamp_ms(), ts);
            proptest::prop_assert_eq!(id.machine_id().get(), machine);
            proptest::prop_assert_eq!(id.sequence(), seq);
        }
    }
}
