//! The `cruster` command: what a runner's admin API reports, for people (tables) and
//! scripts (`--json`).
//!
//! ```text
//! cruster --admin http://127.0.0.1:9090 status
//! cruster shards
//! cruster entities
//! cruster dead-letters                 # list
//! cruster dead-letters retry <ID>      # or --all
//! cruster dead-letters purge <ID>      # or --all
//! cruster workflows [--workflow W] [--status S]
//! cruster workflows show <ID>
//! ```
//!
//! The address comes from `--admin` or `CRUSTER_ADMIN` (default `http://127.0.0.1:9090`),
//! the bearer token from `--token` or `CRUSTER_ADMIN_TOKEN`.
#![deny(missing_docs)]

pub mod commands;
pub mod http_client;
pub mod table;

pub use commands::{run, Cli, CliError};
