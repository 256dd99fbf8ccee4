//! The singleton supervisor: runs each registered singleton while this runner holds its
//! shard, restarts it with backoff when it fails, and stops it (gracefully if it opted in)
//! before the shard is released.
//!
//! Owns the registered singletons and their running tasks. Never holds a lock across an
//! await: the state lock is taken only to start or take a task handle.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cruster_sharding::{SingletonContext, SingletonFn};
use cruster_types::{shard_for_entity, ClusterError, ShardId};
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::runtime_core::RuntimeCore;

struct Registered {
    name: Arc<str>,
    shard: ShardId,
    run: SingletonFn,
    running: Mutex<Option<Running>>,
    /// It returned `Ok(())` while this runner held its shard: its work is done here, so it
    /// is not started again until the shard has left this runner and come back.
    done: AtomicBool,
}

struct Running {
    stop: CancellationToken,
    graceful: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

pub(crate) struct SingletonSupervisor {
    core: Arc<RuntimeCore>,
    singletons: Mutex<Vec<Arc<Registered>>>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl SingletonSupervisor {
    pub(crate) fn new(core: Arc<RuntimeCore>) -> Self {
        SingletonSupervisor {
            core,
            singletons: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn register(
        &self,
        name: &str,
        group: &str,
        run: SingletonFn,
    ) -> Result<ShardId, ClusterError> {
        let mut list = self.singletons.lock();
        if list.iter().any(|s| &*s.name == name) {
            return Err(ClusterError::InvalidConfig {
                field: "singleton name".into(),
                reason: format!("a singleton named `{name}` is already registered on this runner"),
            });
        }
        let shard = ShardId::new(
            group,
            shard_for_entity(name, self.core.shard_table.shards_per_group()),
        );
        list.push(Arc::new(Registered {
            name: Arc::from(name),
            shard: shard.clone(),
            run,
            running: Mutex::new(None),
            done: AtomicBool::new(false),
        }));
        Ok(shard)
    }

    /// Starts the singletons whose shard this runner holds and that are not running.
    pub(crate) fn sync(&self) {
        if self.core.stopping.is_cancelled() {
            return;
        }
        let list = self.singletons.lock().clone();
        for singleton in list {
            if self.core.shard_table.is_held(&singleton.shard)
                && !singleton.done.load(Ordering::Acquire)
            {
                let mut running = singleton.running.lock();
                let alive = running.as_ref().is_some_and(|r| !r.handle.is_finished());
                if !alive {
                    *running = Some(self.start(singleton.clone()));
                }
            }
        }
    }

    fn start(&self, singleton: Arc<Registered>) -> Running {
        let stop = CancellationToken::new();
        let graceful = Arc::new(AtomicBool::new(false));
        let core = self.core.clone();
        let span = tracing::info_span!("cruster.singleton", name = %singleton.name);
        let (stop_task, graceful_task) = (stop.clone(), graceful.clone());
        let killed = core.killed.clone();
        let handle = tokio::spawn(
            async move {
                tokio::select! {
                    biased;
                    _ = killed.cancelled() => {}
                    _ = run_with_restarts(core, singleton, stop_task, graceful_task) => {}
                }
            }
            .instrument(span),
        );
        Running {
            stop,
            graceful,
            handle,
        }
    }

    /// Stops the singletons of `shards` (all, if `None`) and waits for them: those that
    /// opted in to graceful shutdown get up to `shutdown_timeout`, unless `force` (the
    /// shard is lost), which cancels every one at once.
    pub(crate) async fn stop(&self, shards: Option<&[ShardId]>, force: bool) {
        let list = self.singletons.lock().clone();
        let mut stopping = Vec::new();
        for singleton in list {
            if shards.is_none_or(|s| s.contains(&singleton.shard)) {
                singleton.done.store(false, Ordering::Release);
                if let Some(running) = singleton.running.lock().take() {
                    stopping.push((singleton.name.clone(), running));
                }
            }
        }
        let deadline = self.core.config.shutdown_timeout;
        let waits = stopping.into_iter().map(|(name, running)| async move {
            running.stop.cancel();
            if running.graceful.load(Ordering::Acquire) && !force {
                let abort = running.handle.abort_handle();
                if tokio::time::timeout(deadline, running.handle).await.is_err() {
                    tracing::warn!(singleton = %name, "singleton did not stop within the shutdown deadline; cancelling it");
                    abort.abort();
                }
            } else {
                running.handle.abort();
                let _ = running.handle.await;
            }
        });
        futures::future::join_all(waits).await;
    }

    /// Names of the singletons running here.
    pub(crate) fn running_names(&self) -> Vec<String> {
        self.singletons
            .lock()
            .iter()
            .filter(|s| {
                s.running
                    .lock()
                    .as_ref()
                    .is_some_and(|r| !r.handle.is_finished())
            })
            .map(|s| s.name.to_string())
            .collect()
    }
}

async fn run_with_restarts(
    core: Arc<RuntimeCore>,
    singleton: Arc<Registered>,
    stop: CancellationToken,
    graceful: Arc<AtomicBool>,
) {
    let mut failures: u32 = 0;
    loop {
        let sharding = match core.sharding() {
            Ok(s) => s,
            Err(_) => return,
        };
        let ctx = SingletonContext::new(
            singleton.name.clone(),
            stop.clone(),
            graceful.clone(),
            sharding,
        );
        let run = AssertUnwindSafe((singleton.run)(ctx)).catch_unwind();
        // Force-cancellation (for singletons that never opted in) is the supervisor
        // aborting this task; graceful ones see `stop` through their context.
        let outcome = run.await;
        if stop.is_cancelled() {
            return;
        }
        let reason = match outcome {
            Ok(Ok(())) => {
                tracing::info!(
                    "singleton finished; it is not restarted while this runner holds its shard"
                );
                singleton.done.store(true, Ordering::Release);
                return;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => "panicked".to_string(),
        };
        failures = failures.saturating_add(1);
        core.metrics
            .singleton_restarts
            .with_label_values(&[&*singleton.name])
            .inc();
        let backoff = core
            .config
            .singleton_crash_backoff_base
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
            .min(MAX_BACKOFF);
        tracing::warn!(
            reason,
            ?backoff,
            failures,
            "singleton failed; restarting after backoff"
        );
        tokio::select! {
            _ = core.config.clock.sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
    }
}
