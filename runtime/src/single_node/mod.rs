//! One node on its own: [`single_runner::SingleRunner`] and, on SQL storage, the exclusive
//! lease that keeps a second node off the same database.

#[cfg(all(feature = "memory", any(feature = "postgres", feature = "sqlite")))]
pub(crate) mod lease;
pub mod single_runner;
