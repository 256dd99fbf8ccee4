//! Shared pieces of the cruster benchmarks: a minimal echo entity written against the
//! `Entity`/`EntityHandler` traits, and helpers to start a bench node.
#![allow(missing_docs)]

pub mod bench_database;
#[allow(unsafe_code)]
pub mod counting_allocator;
pub mod lock_bench;
pub mod node_cluster;
pub mod process_memory;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cruster::prelude::*;
use cruster::types::EntityType;

/// An entity that answers every request with its payload.
pub struct Echo;

struct EchoHandler;

#[async_trait]
impl Entity for Echo {
    fn entity_type(&self) -> EntityType {
        EntityType::new("Echo")
    }

    fn options(&self) -> EntityOptions {
        EntityOptions {
            mailbox_capacity: Some(1024),
            ..Default::default()
        }
    }

    async fn spawn(&self, _ctx: EntityContext) -> Result<Arc<dyn EntityHandler>, ClusterError> {
        Ok(Arc::new(EchoHandler))
    }
}

#[async_trait]
impl EntityHandler for EchoHandler {
    async fn handle(&self, request: IncomingRequest) -> Result<Bytes, ClusterError> {
        Ok(request.envelope.payload)
    }
}

/// A single runner with the echo entity registered, and a client for it.
pub async fn echo_node() -> anyhow::Result<(SingleRunner, EntityClient)> {
    let runner = SingleRunner::builder()
        .config(ShardingConfig {
            entity_max_idle_time: Duration::from_secs(600),
            ..Default::default()
        })
        .build()
        .await?;
    runner.sharding().register_entity(Arc::new(Echo)).await?;
    let client = EntityClient::new(runner.sharding().clone(), EntityType::new("Echo"));
    Ok((runner, client))
}
