//! Bounded etcd calls: every request runs under the operation timeout and its failure is
//! turned into a `ClusterError` that says which etcd operation failed and where.
//!
//! Never retries: retry policy lives in the runtime.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cruster_types::ClusterError;
use etcd_client::Client;

/// The etcd client plus the timeout and endpoint names used for every call.
#[derive(Clone)]
pub(crate) struct Calls {
    client: Client,
    timeout: Duration,
    /// The endpoints, when known (named in errors).
    endpoints: Option<Arc<str>>,
}

impl Calls {
    pub(crate) fn new(client: Client, timeout: Duration, endpoints: Option<String>) -> Self {
        Calls {
            client,
            timeout,
            endpoints: endpoints.map(Arc::from),
        }
    }

    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    fn at(&self) -> String {
        match &self.endpoints {
            Some(endpoints) => format!(" at [{endpoints}]"),
            None => String::new(),
        }
    }

    /// Runs `call` on a clone of the client under the timeout; etcd's own error is kept
    /// apart so the caller can look at it. `operation` completes "etcd could not …".
    pub(crate) async fn run_raw<T, F, Fut>(
        &self,
        operation: &str,
        call: F,
    ) -> Result<Result<T, etcd_client::Error>, ClusterError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        tokio::time::timeout(self.timeout, call(self.client.clone()))
            .await
            .map_err(|_| ClusterError::Timeout {
                operation: format!("etcd to {operation}{}", self.at()),
                timeout: self.timeout,
            })
    }

    /// [`Calls::run_raw`] with etcd's error turned into a `PersistenceError`.
    pub(crate) async fn run<T, F, Fut>(&self, operation: &str, call: F) -> Result<T, ClusterError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.run_raw(operation, call)
            .await?
            .map_err(|err| self.failed(operation, err))
    }

    /// The `PersistenceError` for an etcd error.
    pub(crate) fn failed(&self, operation: &str, err: etcd_client::Error) -> ClusterError {
        ClusterError::PersistenceError {
            reason: format!("etcd could not {operation}{}: {err}", self.at()),
            source: Some(Box::new(err)),
        }
    }
}

/// Whether etcd refused a request because a lease it names does not exist (any more).
pub(crate) fn is_lease_not_found(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        _ => false,
    }
}
