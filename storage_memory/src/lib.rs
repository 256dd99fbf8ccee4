//! In-memory backends of every cruster storage port, and an in-process transport.
//!
//! These are the default backends of `SingleRunner` and of test clusters: concurrent,
//! complete, and bounded in memory, but not durable (a process restart forgets them).
//!
//! * [`MemoryMessageStorage`] implements `MessageStorage`.
//! * [`MemoryWorkflowStorage`] implements `WorkflowStorage` (journal + key-value activity writes).
//! * [`MemoryWorkflowEngine`] implements `WorkflowEngine` (executions, timers, deferreds).
//! * [`MemoryRunnerStorage`] implements `RunnerStorage` and `RunnerHealth` (registrations
//!   and shard locks with TTLs).
//! * [`InProcessNetwork`] and [`InProcessRunners`] form a `Runners` transport between
//!   runtimes living in one process.
#![deny(missing_docs)]

mod in_process_transport;
mod message_storage;
mod runner_storage;
mod workflow_engine;
mod workflow_storage;

pub use in_process_transport::*;
pub use message_storage::*;
pub use runner_storage::*;
pub use workflow_engine::*;
pub use workflow_storage::*;
