//! Workspace-level tests of cruster. The library holds what the test binaries and the
//! child processes they spawn share; the scenarios are under `tests/`.
#![deny(missing_docs)]

/// The line a child runner prints when its blocking activity has written through
/// `self.tx` and not yet committed: the parent kills it on reading this.
pub const WRITTEN_NOT_COMMITTED: &str = "WRITTEN-NOT-COMMITTED";

/// The line a child runner prints when its workflow completed.
pub const WORKFLOW_DONE: &str = "WORKFLOW-DONE";

pub mod client_driver;
pub mod dial_via;
pub mod node_app;
