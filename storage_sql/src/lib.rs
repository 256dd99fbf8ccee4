//! PostgreSQL and SQLite implementations of cruster's `MessageStorage`, `WorkflowStorage`
//! and `WorkflowEngine`, with embedded migrations and the SQL activity transaction.
//!
//! Status: this crate is an empty placeholder in the workspace map. Its implementation
//! arrives with the SQL backends issue; until then `cruster` has no `postgres`/`sqlite`
//! backend, and enabling those features is a compile error rather than a silent no-op.
#![deny(missing_docs)]
