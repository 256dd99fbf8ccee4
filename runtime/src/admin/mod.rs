//! The operator surface (feature `admin`): an HTTP API, Prometheus metrics, health checks and
//! a web console, served by any runner.
//!
//! [`router`] gives an [`axum::Router`] the application mounts in its own server;
//! [`serve`] binds an address and serves it on a task of its own. Everything is JSON except
//! `/metrics` (Prometheus text) and the console (`/`).
//!
//! | method and path | answers |
//! |---|---|
//! | `GET /metrics` | the runner's `ClusterMetrics`, Prometheus text format |
//! | `GET /health/ready` | 200 once the runner holds every shard the assignment gives it and message storage answers, else 503 |
//! | `GET /health/live` | 503 when requests wait in this runner's mailboxes and none finished for `stall_timeout`, else 200 |
//! | `GET /api/cluster` | runners (address, age, weight, health), the shard table per group, recent shard moves |
//! | `GET /api/entities` | live instances and mailbox depth per entity type, the busiest entities |
//! | `GET /api/messages` | pending / retrying / dead-lettered counts per shard and entity type |
//! | `GET /api/dead-letters` | dead letters with their last error (`?limit=`, default 100) |
//! | `POST /api/dead-letters/{id}/retry`, `POST /api/dead-letters/retry` | take one or all dead letters back |
//! | `POST /api/dead-letters/{id}/purge`, `POST /api/dead-letters/purge` | delete one or all dead letters |
//! | `GET /api/workflows` | executions counted by type and status, and listed (`?workflow=`, `?status=`, `?limit=`) |
//! | `GET /api/workflows/{id}` | one execution with its journal |
//! | `GET /` | the web console |
//!
//! Actions (`POST`) are refused with 403 unless [`AdminOptions::allow_actions`] is set; each
//! is idempotent and validates its input (a malformed id is a 400, an unknown one a 404, both
//! with a JSON `error` message). With [`AdminOptions::bearer_token`], every `/api`,
//! `/metrics` and `/health` request needs `Authorization: Bearer <token>` (the console's
//! static files are public and ask for the token).
//!
//! ```no_run
//! # async fn run() -> Result<(), cruster::ClusterError> {
//! use cruster::admin::{self, AdminOptions};
//! use cruster::single_runner::SingleRunner;
//!
//! let runner = SingleRunner::builder().build().await?;
//! let options = AdminOptions::default().allow_actions(true);
//! let server = admin::serve("127.0.0.1:9090".parse().unwrap(), runner.sharding().clone(), options).await?;
//! println!("console at http://{}/", server.local_addr());
//! # Ok(()) }
//! ```

mod api_error;
mod auth;
mod cluster;
mod console;
mod dead_letters;
mod entities;
mod health;
mod json;
mod metrics_text;
mod options;
mod query;
mod router;
mod server;
mod workflows;

pub use options::AdminOptions;
pub use router::router;
pub use server::{serve, AdminServer};
