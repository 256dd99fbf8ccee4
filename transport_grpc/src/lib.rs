//! The gRPC transport between cruster runners: [`GrpcRunners`] (the pooled client side of
//! the `Runners` port), [`GrpcRunnerServer`] (the server side, calling the runtime's
//! `RunnerInbound`) and [`GrpcRunnerHealth`] (health checks by ping).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # let sharding = std::sync::Arc::new(cruster_transport::conformance::EchoInbound::new());
//! use std::sync::Arc;
//! use cruster_transport::Runners;
//! use cruster_transport_grpc::{GrpcRunnerHealth, GrpcRunnerServer, GrpcRunners};
//!
//! // The client side, given to the runtime as its `Arc<dyn Runners>`.
//! let grpc_runners = Arc::new(GrpcRunners::new());
//! let health = GrpcRunnerHealth::new(grpc_runners.clone());
//! let runners: Arc<dyn Runners> = grpc_runners;
//!
//! // The server side: `sharding` is the runtime's `Arc<ShardingImpl>`.
//! tonic::transport::Server::builder()
//!     .add_service(GrpcRunnerServer::new(sharding.clone()).into_service())
//!     .serve("0.0.0.0:9000".parse()?)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # The protocol
//!
//! `proto/runner.proto` defines it; envelopes, replies, acknowledgements, interrupts and
//! errors travel as MessagePack bytes (the encoding of [`cruster_types::wire`]) inside
//! protobuf frames, and errors keep their [`cruster_types::WireError`] variant across
//! runners. The code is generated at build time by a pure-Rust protobuf parser: building
//! needs no `protoc`.
//!
//! Requests are multiplexed: a client keeps one HTTP/2 connection per peer and one
//! long-lived bidirectional `Session` stream on it. Each request is a frame tagged with a
//! call id; the server runs it and answers frames tagged with the same id, which the
//! client routes back to the waiting caller. Many requests share the stream without
//! waiting for each other, and no HTTP/2 stream is opened per request. A caller that drops
//! its reply stream sends a cancel frame, and the server drops the request's reply stream,
//! as the in-process transport does.
//!
//! # Failures
//!
//! * Connections are made lazily, on the first message to a peer, within
//!   [`GrpcRunnersBuilder::connect_timeout`]. After a failed attempt, messages to that peer
//!   fail at once with `RunnerUnavailable` until a backoff (doubling from
//!   [`GrpcRunnersBuilder::reconnect_backoff`] up to
//!   [`GrpcRunnersBuilder::max_reconnect_backoff`]) has passed; the next message then
//!   tries again. [`cruster_transport::Runners::forget`] drops the peer's connection.
//! * `send` answers `Err` only when the request certainly did not run: the peer could not
//!   be reached, or it refused the request before running it (with the receiver's error,
//!   for example `ShardNotOwned`). Once a request may have reached the peer, failures
//!   (the peer dying, the connection breaking, the deadline passing) end the reply stream
//!   instead, so a caller never retries a request whose outcome is unknown by mistake.
//! * Every wait has a deadline: [`GrpcRunnersBuilder::request_timeout`] bounds the wait
//!   for each answer (the first reply, each next chunk, a notify's acceptance), and a
//!   peer dying ends its requests in flight with `RunnerUnavailable` naming it.
//! * Bad input never takes a server down: a frame that does not decode is answered with
//!   `MalformedMessage` and the session goes on; a message over the size limit
//!   ([`GrpcRunnersBuilder::max_message_size`], [`GrpcRunnerServer::max_message_size`],
//!   4 MiB by default) is refused with an error naming the limit.
//!
//! # TLS
//!
//! With the `tls` feature, [`GrpcRunnersBuilder::tls`] makes the client connect over TLS
//! (with a client certificate if the config has an identity); the server side is
//! configured on `tonic::transport::Server::builder().tls_config(..)` as usual.
#![deny(missing_docs)]

mod client;
mod config;
mod frame;
mod health;
mod server;
mod session;

/// The protobuf messages and the tonic client and server of `proto/runner.proto`.
///
/// Exposed for tools and tests that speak the protocol directly; applications use
/// [`GrpcRunners`] and [`GrpcRunnerServer`].
#[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]
pub mod proto {
    tonic::include_proto!("cruster.runner.v1");
}

pub use client::GrpcRunners;
pub use config::{GrpcRunnersBuilder, DEFAULT_MAX_MESSAGE_SIZE};
pub use health::GrpcRunnerHealth;
pub use server::{GrpcRunnerServer, GrpcRunnerService, IntoRunnerInbound, ServerCloser};

/// Re-exports of tonic's TLS configuration types (feature `tls`).
#[cfg(feature = "tls")]
pub mod tls {
    pub use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
}
