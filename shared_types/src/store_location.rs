//! [`StoreLocation`]: which database a storage port writes to, so the runtime can fold the
//! writes of two ports into one commit when they share it.

/// An opaque identity of the database connection pool behind a storage port.
///
/// Two ports that report equal locations write through the same pool, so one transaction
/// (one commit) can carry writes of both: the runtime then stores a finished workflow's
/// record together with its reply. A port that cannot share transactions with another
/// (memory, or a backend without that ability) reports `None`, and the runtime writes to
/// each port on its own.
///
/// ```
/// use cruster_types::StoreLocation;
///
/// let a = StoreLocation::new(7);
/// assert_eq!(a, StoreLocation::new(7));
/// assert_ne!(a, StoreLocation::new(8));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreLocation(u64);

impl StoreLocation {
    /// A location from a backend-chosen identity (for example the address of a pool's
    /// shared state, stable while the pool lives).
    pub const fn new(identity: u64) -> Self {
        StoreLocation(identity)
    }
}
