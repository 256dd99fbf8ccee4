//! etcd implementation of cruster's `RunnerStorage`: runners registered under leases,
//! shard locks as leased keys, membership watches.
//!
//! Status: an empty placeholder in the workspace map; the implementation arrives with the
//! etcd runner-storage issue.
#![deny(missing_docs)]
