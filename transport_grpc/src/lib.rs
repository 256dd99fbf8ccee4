//! gRPC implementation of cruster's `Runners` transport: pooled clients (`GrpcRunners`),
//! the server side (`GrpcRunnerServer`) and health checks (`GrpcRunnerHealth`).
//!
//! Status: an empty placeholder in the workspace map; the implementation arrives with the
//! gRPC transport issue.
#![deny(missing_docs)]
