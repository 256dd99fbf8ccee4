//! `Slow`, an entity whose first attempt of a key can outlive a drain, and `Runs`, the
//! record every runner's handlers share to catch a key running on two runners at once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cruster::prelude::*;
use cruster::types::{wire, EntityType};
use parking_lot::Mutex;

/// Runs of the `Slow` entity, shared by every runner of a test: per key, how many times a
/// handler started, and which keys are running right now (to catch two runners at once).
#[derive(Clone, Default)]
pub struct Runs {
    started: Arc<Mutex<HashMap<String, usize>>>,
    running: Arc<Mutex<HashSet<String>>>,
    pub overlaps: Arc<AtomicUsize>,
}

impl Runs {
    pub fn begin(&self, key: &str) -> usize {
        if !self.running.lock().insert(key.to_string()) {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        let mut started = self.started.lock();
        let n = started.entry(key.to_string()).or_default();
        *n += 1;
        *n
    }

    pub fn end(&self, key: &str) {
        self.running.lock().remove(key);
    }

    pub fn started(&self, key: &str) -> usize {
        self.started.lock().get(key).copied().unwrap_or(0)
    }
}

/// Removes the key from `running` when the handler ends, also when it is aborted.
struct RunGuard(Runs, String);

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.0.end(&self.1);
    }
}

/// `Slow`: `work(key) -> String` sleeps `first_attempt` on the first attempt of a key and
/// answers `done-<attempt>`; later attempts answer at once.
#[derive(Clone)]
pub struct Slow {
    pub runs: Runs,
    pub first_attempt: Duration,
}

struct SlowHandler {
    runs: Runs,
    first_attempt: Duration,
}

#[async_trait]
impl Entity for Slow {
    fn entity_type(&self) -> EntityType {
        EntityType::new("Slow")
    }

    async fn spawn(&self, _ctx: EntityContext) -> Result<Arc<dyn EntityHandler>, ClusterError> {
        Ok(Arc::new(SlowHandler {
            runs: self.runs.clone(),
            first_attempt: self.first_attempt,
        }))
    }
}

#[async_trait]
impl EntityHandler for SlowHandler {
    async fn handle(&self, request: IncomingRequest) -> Result<Bytes, ClusterError> {
        let key: String = request.decode()?;
        let attempt = self.runs.begin(&key);
        let _guard = RunGuard(self.runs.clone(), key);
        if attempt == 1 {
            tokio::time::sleep(self.first_attempt).await;
        }
        wire::encode(&format!("done-{attempt}"))
    }
}
