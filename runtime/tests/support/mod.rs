//! A hand-written test entity (the `Entity`/`EntityHandler` traits, no macros) and helpers
//! shared by the runtime's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod slow;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cruster::prelude::*;
use cruster::types::{wire, EntityType};
use futures::stream::{BoxStream, StreamExt};
use parking_lot::Mutex;

/// What the test entity saw: per entity id, the keys it processed (with repeats).
#[derive(Clone, Default)]
pub struct Journal {
    inner: Arc<Mutex<HashMap<String, Vec<String>>>>,
    passivated: Arc<Mutex<Vec<String>>>,
    spawned: Arc<Mutex<Vec<String>>>,
}

impl Journal {
    pub fn record(&self, entity: &str, key: &str) {
        self.inner
            .lock()
            .entry(entity.to_string())
            .or_default()
            .push(key.to_string());
    }

    pub fn keys(&self, entity: &str) -> Vec<String> {
        self.inner.lock().get(entity).cloned().unwrap_or_default()
    }

    pub fn all_keys(&self) -> Vec<String> {
        self.inner.lock().values().flatten().cloned().collect()
    }

    pub fn spawned(&self) -> Vec<String> {
        self.spawned.lock().clone()
    }

    pub fn passivated(&self) -> Vec<String> {
        self.passivated.lock().clone()
    }
}

/// The test entity type. Tags:
/// * `echo(String) -> String`
/// * `record(String) -> u64`: records the key, answers how many keys this entity has seen
/// * `sleep(u64 ms) -> ()`
/// * `fail(String) -> !`: fails with `ClusterError::Handler`
/// * `panic(()) -> !`
/// * `count(u32) -> stream of u32`: streams 0..n
/// * `whoami(()) -> String`: the runner address serving it
#[derive(Clone)]
pub struct TestEntity {
    pub name: &'static str,
    pub journal: Journal,
    pub options: EntityOptions,
}

impl TestEntity {
    pub fn new(name: &'static str, journal: Journal) -> Self {
        TestEntity {
            name,
            journal,
            options: EntityOptions::default(),
        }
    }
}

struct TestHandler {
    entity_id: String,
    runner: String,
    journal: Journal,
}

#[async_trait]
impl Entity for TestEntity {
    fn entity_type(&self) -> EntityType {
        EntityType::new(self.name)
    }

    fn options(&self) -> EntityOptions {
        self.options.clone()
    }

    async fn spawn(&self, ctx: EntityContext) -> Result<Arc<dyn EntityHandler>, ClusterError> {
        self.journal
            .spawned
            .lock()
            .push(ctx.address.entity_id.to_string());
        Ok(Arc::new(TestHandler {
            entity_id: ctx.address.entity_id.to_string(),
            runner: ctx.runner_address.to_string(),
            journal: self.journal.clone(),
        }))
    }
}

#[async_trait]
impl EntityHandler for TestHandler {
    async fn handle(&self, request: IncomingRequest) -> Result<Bytes, ClusterError> {
        match request.tag() {
            "echo" => wire::encode(&request.decode::<String>()?),
            "record" => {
                let key: String = request.decode()?;
                self.journal.record(&self.entity_id, &key);
                wire::encode(&(self.journal.keys(&self.entity_id).len() as u64))
            }
            "sleep" => {
                let ms: u64 = request.decode()?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                wire::encode(&())
            }
            "fail" => Err(ClusterError::handler(request.decode::<String>()?)),
            "storage-flaky" => {
                // Fails with a storage error on the first two attempts of a key.
                let key: String = request.decode()?;
                self.journal.record(&self.entity_id, &key);
                let attempts = self
                    .journal
                    .keys(&self.entity_id)
                    .iter()
                    .filter(|k| **k == key)
                    .count();
                if attempts <= 2 {
                    return Err(ClusterError::PersistenceError {
                        reason: format!("injected storage error, attempt {attempts}"),
                        source: None,
                    });
                }
                wire::encode(&(attempts as u64))
            }
            "panic" => panic!("test entity told to panic"),
            "whoami" => wire::encode(&self.runner),
            other => Err(ClusterError::UnknownTag {
                entity_type: request.address().entity_type.clone(),
                tag: other.to_string(),
            }),
        }
    }

    async fn handle_stream(
        &self,
        request: IncomingRequest,
    ) -> Result<BoxStream<'static, Result<Bytes, ClusterError>>, ClusterError> {
        match request.tag() {
            "count" => {
                let n: u32 = request.decode()?;
                Ok(futures::stream::iter((0..n).map(|i| wire::encode(&i))).boxed())
            }
            other => Err(ClusterError::UnknownTag {
                entity_type: request.address().entity_type.clone(),
                tag: other.to_string(),
            }),
        }
    }

    async fn on_passivate(&self) {
        self.journal.passivated.lock().push(self.entity_id.clone());
    }
}

/// Polls `check` until it is true or `timeout` passes; returns whether it became true.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}
