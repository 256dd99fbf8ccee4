//! A loopback harness shared by the gRPC transport's tests: each runner is a real tonic
//! server on 127.0.0.1 (port 0), in a tokio runtime of its own so that stopping it drops
//! every task and socket at once, as a crash would.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cruster_transport::conformance::TransportHarness;
use cruster_transport::{RunnerInbound, Runners};
use cruster_transport_grpc::{GrpcRunnerServer, GrpcRunners};
use cruster_types::RunnerAddress;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

/// Runners served on loopback, each in its own runtime, and one shared client.
pub struct LoopbackHarness {
    servers: Mutex<HashMap<RunnerAddress, tokio::runtime::Runtime>>,
    client: Arc<dyn Runners>,
    max_message_size: Option<usize>,
}

impl LoopbackHarness {
    /// A harness whose client is `client`.
    pub fn new(client: Arc<dyn Runners>) -> Self {
        LoopbackHarness {
            servers: Mutex::new(HashMap::new()),
            client,
            max_message_size: None,
        }
    }

    /// A harness with a default `GrpcRunners` client.
    pub fn with_default_client() -> Self {
        Self::new(Arc::new(GrpcRunners::new()))
    }

    /// Servers started from now on refuse messages over `bytes`.
    pub fn server_limit(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }
}

/// Starts a server for `inbound` on 127.0.0.1 in `runtime`; returns its socket address.
pub fn serve_on(
    runtime: &tokio::runtime::Runtime,
    inbound: Arc<dyn RunnerInbound>,
    max_message_size: Option<usize>,
) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let mut server = GrpcRunnerServer::new(inbound);
    if let Some(limit) = max_message_size {
        server = server.max_message_size(limit);
    }
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        Server::builder()
            .add_service(server.into_service())
            .serve_with_incoming(incoming)
            .await
            .expect("the test server failed");
    });
    address
}

/// A runtime for one server.
pub fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("grpc-test-server")
        .enable_all()
        .build()
        .unwrap()
}

#[async_trait]
impl TransportHarness for LoopbackHarness {
    async fn serve(&self, inbound: Arc<dyn RunnerInbound>) -> RunnerAddress {
        let runtime = server_runtime();
        let socket = serve_on(&runtime, inbound, self.max_message_size);
        let address = RunnerAddress::new(socket.ip().to_string(), socket.port());
        self.servers
            .lock()
            .unwrap()
            .insert(address.clone(), runtime);
        address
    }

    fn client(&self) -> Arc<dyn Runners> {
        Arc::clone(&self.client)
    }

    /// Shuts the server's runtime down: its listener, connections and request tasks are
    /// dropped, nothing is drained.
    async fn stop(&self, address: &RunnerAddress) {
        let runtime = self.servers.lock().unwrap().remove(address);
        if let Some(runtime) = runtime {
            tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(1)))
                .await
                .unwrap();
        }
    }
}

impl Drop for LoopbackHarness {
    fn drop(&mut self) {
        for (_, runtime) in self.servers.lock().unwrap().drain() {
            runtime.shutdown_background();
        }
    }
}
