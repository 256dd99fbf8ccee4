//! [`EtcdRunnerStorage`]: construction, settings, and the state one instance keeps locally
//! (the leases it granted for its runners, the TTLs etcd granted).
//!
//! Holds no lock across an await: the local state sits behind a short `parking_lot` mutex.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cruster_types::{ClusterError, RunnerAddress};
use etcd_client::{Client, ConnectOptions, GetOptions};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::calls::Calls;
use crate::keys::KeySpace;

/// How long one etcd call may take before it fails with `ClusterError::Timeout`, unless
/// [`EtcdRunnerStorage::with_operation_timeout`] says otherwise.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// etcd [`RunnerStorage`](cruster_runner_storage::RunnerStorage) and storage-based
/// [`RunnerHealth`](cruster_runner_storage::RunnerHealth) (alive = the runner key exists).
///
/// Cheap to clone: clones share the client and the local lease bookkeeping. See the crate
/// docs for the key layout and how TTLs map onto leases.
///
/// ```no_run
/// # async fn start() -> Result<(), cruster_types::ClusterError> {
/// use cruster_storage_etcd::EtcdRunnerStorage;
///
/// // A client you built yourself...
/// let client = etcd_client::Client::connect(["http://127.0.0.1:2379"], None)
///     .await
///     .map_err(|e| cruster_types::ClusterError::persistence("connecting to etcd", e))?;
/// let storage = EtcdRunnerStorage::new(client, "/my-cluster/", 30);
/// // ...or one connected and checked for you, with a clear error naming the endpoints.
/// let storage = EtcdRunnerStorage::connect(["http://127.0.0.1:2379"], "/my-cluster/", 30)
///     .await?
///     .with_operation_timeout(std::time::Duration::from_secs(2));
/// # let _ = storage;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EtcdRunnerStorage {
    pub(crate) calls: Calls,
    pub(crate) keys: Arc<KeySpace>,
    /// The lease TTL asked for at construction, in seconds (at least 1).
    pub(crate) lease_ttl_secs: i64,
    pub(crate) local: Arc<Mutex<LocalState>>,
    /// `true` while tests hold every membership watch off etcd (see `pause_watches`).
    pub(crate) watch_paused: Arc<watch::Sender<bool>>,
}

/// What this instance knows about the leases it granted.
#[derive(Debug, Default)]
pub(crate) struct LocalState {
    /// The registrations made through this instance, by runner.
    pub(crate) registrations: HashMap<RunnerAddress, Registration>,
    /// TTL asked for (seconds) → TTL etcd granted (seconds), from the last grant.
    pub(crate) granted_secs: HashMap<i64, i64>,
}

/// A runner registered through this instance.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Registration {
    pub(crate) lease: i64,
    /// The TTL asked for, in seconds (what lock requests are matched against).
    pub(crate) asked_secs: i64,
}

impl fmt::Debug for EtcdRunnerStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRunnerStorage")
            .field("prefix", &self.keys.prefix())
            .field("lease_ttl_secs", &self.lease_ttl_secs)
            .field("operation_timeout", &self.calls.timeout())
            .finish_non_exhaustive()
    }
}

impl EtcdRunnerStorage {
    /// A storage on `client`, keeping its keys under `prefix` (a `/` is added when it does
    /// not end with one), with leases of `lease_ttl_secs` seconds (at least 1; a longer TTL
    /// asked by the port wins). Connects nothing: the first call reaches etcd.
    pub fn new(client: Client, prefix: impl Into<String>, lease_ttl_secs: u64) -> Self {
        EtcdRunnerStorage {
            calls: Calls::new(client, DEFAULT_OPERATION_TIMEOUT, None),
            keys: Arc::new(KeySpace::new(prefix.into())),
            lease_ttl_secs: i64::try_from(lease_ttl_secs).unwrap_or(i64::MAX).max(1),
            local: Arc::new(Mutex::new(LocalState::default())),
            watch_paused: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Connects to `endpoints` (for example `["http://127.0.0.1:2379"]`) and checks that
    /// etcd answers there, then builds the storage as [`EtcdRunnerStorage::new`] does.
    ///
    /// # Errors
    /// `InvalidConfig` when no endpoint is given or one is not a valid URL;
    /// `PersistenceError` naming the endpoints when etcd does not answer within
    /// [`DEFAULT_OPERATION_TIMEOUT`].
    pub async fn connect<E>(
        endpoints: impl IntoIterator<Item = E>,
        prefix: impl Into<String>,
        lease_ttl_secs: u64,
    ) -> Result<Self, ClusterError>
    where
        E: AsRef<str>,
    {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.as_ref().trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ClusterError::InvalidConfig {
                field: "etcd endpoints".into(),
                reason: "no endpoint given: pass at least one, such as http://127.0.0.1:2379"
                    .into(),
            });
        }
        let named = endpoints.join(", ");
        let options = ConnectOptions::new()
            .with_connect_timeout(DEFAULT_OPERATION_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), DEFAULT_OPERATION_TIMEOUT)
            .with_keep_alive_while_idle(true);
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(|err| ClusterError::InvalidConfig {
                field: "etcd endpoints".into(),
                reason: format!("cannot use etcd endpoints [{named}]: {err}"),
            })?;
        let mut storage = EtcdRunnerStorage::new(client, prefix, lease_ttl_secs);
        storage.calls = Calls::new(
            storage.calls.client(),
            DEFAULT_OPERATION_TIMEOUT,
            Some(named.clone()),
        );
        let probe_key = storage.keys.prefix().to_string();
        let probe = storage
            .calls
            .run("check that etcd answers", |mut client| async move {
                client
                    .get(probe_key, Some(GetOptions::new().with_count_only()))
                    .await
            })
            .await;
        match probe {
            Ok(_) => Ok(storage),
            Err(err) => Err(ClusterError::PersistenceError {
                reason: format!(
                    "etcd does not answer at [{named}]: check that it runs there and is \
                     reachable (tests: run `.ci/services.sh`, which starts one on 127.0.0.1:2379)"
                ),
                source: Some(Box::new(err)),
            }),
        }
    }

    /// Sets how long one etcd call may take (default [`DEFAULT_OPERATION_TIMEOUT`]); past
    /// it the call fails with `ClusterError::Timeout` instead of hanging. Watches are not
    /// bounded (they wait for events), but opening one is.
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.calls = self.calls.with_timeout(timeout);
        self
    }

    /// The key prefix everything of this storage lives under (ends with `/`).
    pub fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    /// The etcd client this storage uses (a clone, sharing its connections).
    pub fn client(&self) -> Client {
        self.calls.client()
    }

    /// Test hook: every membership watch of this storage (and its clones) drops its etcd
    /// stream at once and opens none until [`EtcdRunnerStorage::resume_watches`]; then each
    /// resumes from the last revision it applied, or lists again if that was compacted.
    #[cfg(feature = "test-hooks")]
    pub fn pause_watches(&self) {
        self.watch_paused.send_replace(true);
    }

    /// Test hook: lets the watches paused by [`EtcdRunnerStorage::pause_watches`] resume.
    #[cfg(feature = "test-hooks")]
    pub fn resume_watches(&self) {
        self.watch_paused.send_replace(false);
    }

    /// The TTL in whole seconds to ask etcd for when the port asks for `ttl`: at least the
    /// configured lease TTL, and never below one second.
    pub(crate) fn asked_secs(&self, ttl: Duration) -> i64 {
        let mut secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        if ttl.subsec_nanos() > 0 {
            secs = secs.saturating_add(1);
        }
        secs.max(self.lease_ttl_secs).max(1)
    }
}
