//! One small application and its admin API, shared by the admin API, CLI and browser tests.
//!
//! * `Switch`: an entity whose persisted `work` panics while the switch is broken (so dead
//!   letters can be made and then retried successfully) and whose `block` waits for a gate
//!   (so delivery can be stalled on purpose).
//! * `Shipment`: a two-activity workflow.
//! * [`Node`]: a `SingleRunner` (memory or PostgreSQL) or a `MemoryCluster` with both
//!   registered and the admin API served on a free port, with a blocking client in a
//!   `spawn_blocking` so tests stay async.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cruster::admin::{self, AdminOptions, AdminServer};
use cruster::prelude::*;
use cruster::sharding_impl::ShardingImpl;
use cruster::testing::MemoryCluster;
use cruster_cli::http_client::HttpClient;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;

/// What the `Switch` entities share.
pub struct SwitchState {
    pub broken: AtomicBool,
    pub gate: Semaphore,
}

impl Default for SwitchState {
    fn default() -> Self {
        SwitchState {
            broken: AtomicBool::new(false),
            gate: Semaphore::new(0),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct Work {
    pub label: String,
}

#[entity(max_idle_time_secs = 300)]
#[derive(Clone)]
pub struct Switch {
    pub state: Arc<SwitchState>,
}

#[entity_impl]
impl Switch {
    #[rpc(persisted)]
    pub async fn work(&self, req: Work) -> Result<String, ClusterError> {
        // A panic (not an error reply) is a failed attempt: retried, then dead-lettered.
        assert!(
            !self.state.broken.load(Ordering::SeqCst),
            "switch is broken while doing {}",
            req.label
        );
        Ok(format!("done {}", req.label))
    }

    #[rpc]
    pub async fn block(&self) -> Result<(), ClusterError> {
        let permit = self
            .state
            .gate
            .acquire()
            .await
            .map_err(|e| ClusterError::handler(e.to_string()))?;
        permit.forget();
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Clone)]
pub struct ShipRequest {
    pub order_id: String,
}

#[workflow]
#[derive(Clone)]
pub struct Shipment;

#[workflow_impl(key = |req: &ShipRequest| req.order_id.clone(), hash = false)]
impl Shipment {
    async fn execute(&self, request: ShipRequest) -> Result<String, ClusterError> {
        let parcel = self.pack(request.order_id.clone()).await?;
        self.send_parcel(parcel.clone()).await?;
        Ok(format!("shipped {parcel}"))
    }

    #[activity]
    async fn pack(&self, order_id: String) -> Result<String, ClusterError> {
        Ok(format!("parcel-{order_id}"))
    }

    #[activity]
    async fn send_parcel(&self, parcel: String) -> Result<(), ClusterError> {
        let _ = parcel;
        Ok(())
    }
}

/// Dead letters after two attempts, quickly.
pub fn fast_config() -> ShardingConfig {
    ShardingConfig {
        storage_poll_interval: Duration::from_millis(20),
        storage_message_max_retries: 2,
        storage_retry_backoff_base: Duration::from_millis(10),
        storage_retry_backoff_max: Duration::from_millis(20),
        ..Default::default()
    }
}

enum Runners {
    Single(SingleRunner),
    Cluster(Box<MemoryCluster>),
}

/// A running application with its admin API.
pub struct Node {
    runners: Runners,
    pub sharding: Arc<ShardingImpl>,
    pub switch: Arc<SwitchState>,
    pub switches: SwitchClient,
    pub shipments: cruster::workflow::WorkflowClient<Shipment>,
    pub server: AdminServer,
    pub client: HttpClient,
}

impl Node {
    /// A memory `SingleRunner`.
    pub async fn single(options: AdminOptions) -> Node {
        let runner = SingleRunner::builder()
            .config(fast_config())
            .build()
            .await
            .unwrap();
        Self::around(Runners::Single(runner), options).await
    }

    /// A `SingleRunner` on PostgreSQL (the pool's schema is the test's own).
    pub async fn postgres(pool: cruster::sqlx::PgPool, options: AdminOptions) -> Node {
        let runner = SingleRunner::builder()
            .config(fast_config())
            .postgres(pool)
            .build()
            .await
            .unwrap();
        Self::around(Runners::Single(runner), options).await
    }

    /// A `MemoryCluster` of `n` runners; the admin API is runner 0's.
    pub async fn cluster(n: usize, options: AdminOptions) -> Node {
        let state = Arc::new(SwitchState::default());
        let setup_state = state.clone();
        let cluster = MemoryCluster::builder()
            .runners(n)
            .config(fast_config())
            .setup(move |sharding| {
                let state = setup_state.clone();
                async move {
                    Switch { state }.register(sharding.clone()).await?;
                    Shipment.register(sharding).await?;
                    Ok(())
                }
            })
            .build()
            .await
            .unwrap();
        cluster
            .wait_until_balanced(Duration::from_secs(20))
            .await
            .unwrap();
        let sharding = cluster.runner(0);
        let switches = SwitchClient::new(sharding.clone());
        let shipments = cruster::workflow::WorkflowClient::<Shipment>::new(sharding.clone());
        Self::serve(
            Runners::Cluster(Box::new(cluster)),
            sharding,
            state,
            switches,
            shipments,
            options,
        )
        .await
    }

    async fn around(runners: Runners, options: AdminOptions) -> Node {
        let Runners::Single(runner) = &runners else {
            unreachable!("around takes a single runner")
        };
        let sharding = runner.sharding().clone();
        let state = Arc::new(SwitchState::default());
        let switches = Switch {
            state: state.clone(),
        }
        .register(sharding.clone())
        .await
        .unwrap();
        let shipments = Shipment.register(sharding.clone()).await.unwrap();
        Self::serve(runners, sharding, state, switches, shipments, options).await
    }

    async fn serve(
        runners: Runners,
        sharding: Arc<ShardingImpl>,
        switch: Arc<SwitchState>,
        switches: SwitchClient,
        shipments: cruster::workflow::WorkflowClient<Shipment>,
        options: AdminOptions,
    ) -> Node {
        let server = admin::serve("127.0.0.1:0".parse().unwrap(), sharding.clone(), options)
            .await
            .unwrap();
        let client = HttpClient::new(&format!("http://{}", server.local_addr()))
            .unwrap()
            .with_timeout(Duration::from_secs(10));
        Node {
            runners,
            sharding,
            switch,
            switches,
            shipments,
            server,
            client,
        }
    }

    /// The admin API's base address.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }

    /// Sends `method path` (with `token` if given) and returns status and JSON body.
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        let client = self.client.clone().with_bearer(token.map(str::to_owned));
        let (method, path) = (method.to_owned(), path.to_owned());
        let response = tokio::task::spawn_blocking(move || client.request(&method, &path, None))
            .await
            .unwrap()
            .unwrap_or_else(|err| panic!("admin API request failed: {err}"));
        (response.status, response.body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        self.call("POST", path, None).await
    }

    /// Makes one dead letter (the switch broken while `label` is sent) and returns its id.
    pub async fn dead_letter(&self, label: &str) -> String {
        self.switch.broken.store(true, Ordering::SeqCst);
        let err = tokio::time::timeout(
            Duration::from_secs(20),
            self.switches.work(
                &EntityId::new(format!("switch-{label}")),
                &Work {
                    label: label.into(),
                },
            ),
        )
        .await
        .expect("dead-lettering must end the wait")
        .unwrap_err();
        assert!(err.to_string().contains("dead-lettered"), "{err}");
        let (status, letters) = self.get("/api/dead-letters").await;
        assert_eq!(status, 200, "{letters}");
        letters["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["entity_id"] == format!("switch-{label}"))
            .map(|d| d["request_id"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no dead letter for {label} in {letters}"))
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
        match self.runners {
            Runners::Single(runner) => runner.shutdown().await.unwrap(),
            Runners::Cluster(cluster) => cluster.shutdown().await.unwrap(),
        }
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes; whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
