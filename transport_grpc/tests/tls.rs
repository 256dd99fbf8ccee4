//! The transport over mutual TLS (feature `tls`): a client with a certificate signed by
//! the test CA reaches a server that requires one; a client without one is refused as
//! `RunnerUnavailable`.
//!
//! The certificates in `tests/tls/` are throwaway test fixtures (a CA valid for 100 years,
//! a server certificate for `localhost` and 127.0.0.1, a client certificate); the CA's key
//! was discarded after signing.
#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use cruster_transport::conformance::EchoInbound;
use cruster_transport::Runners;
use cruster_transport_grpc::tls::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use cruster_transport_grpc::{GrpcRunnerServer, GrpcRunners};
use cruster_types::{
    ClusterError, EntityAddress, EntityId, EntityType, EnvelopeRequest, ExitResult, Reply,
    ReplyWithExit, RunnerAddress, ShardId, Snowflake,
};
use futures::StreamExt;

const CA: &str = include_str!("tls/ca.pem");
const SERVER_CERT: &str = include_str!("tls/server.pem");
const SERVER_KEY: &str = include_str!("tls/server.key");
const CLIENT_CERT: &str = include_str!("tls/client.pem");
const CLIENT_KEY: &str = include_str!("tls/client.key");

fn envelope(id: i64) -> EnvelopeRequest {
    let address = EntityAddress {
        shard_id: ShardId::new("tls", 1),
        entity_type: EntityType::new("Echo"),
        entity_id: EntityId::new("e"),
    };
    EnvelopeRequest::new(Snowflake(id), address, "echo", Bytes::from("over tls"))
}

async fn serve_with_client_auth() -> RunnerAddress {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(SERVER_CERT, SERVER_KEY))
        .client_ca_root(Certificate::from_pem(CA));
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(GrpcRunnerServer::new(Arc::new(EchoInbound::new())).into_service());
    tokio::spawn(server.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    RunnerAddress::new("127.0.0.1", port)
}

fn client_tls() -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(CA))
        .domain_name("localhost")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_certificate_sends_over_mutual_tls() {
    let address = serve_with_client_auth().await;
    let client = GrpcRunners::builder()
        .tls(client_tls().identity(Identity::from_pem(CLIENT_CERT, CLIENT_KEY)))
        .build();
    client.ping(&address).await.unwrap();
    let replies: Vec<_> = client
        .send(&address, envelope(1))
        .await
        .unwrap()
        .collect()
        .await;
    assert!(
        matches!(
            replies.as_slice(),
            [Ok(Reply::WithExit(ReplyWithExit { exit: ExitResult::Success(b), .. }))] if b == "over tls"
        ),
        "{replies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused_as_unavailable() {
    let address = serve_with_client_auth().await;
    let client = GrpcRunners::builder().tls(client_tls()).build();
    let err = client
        .send(&address, envelope(2))
        .await
        .err()
        .expect("sent without a client certificate");
    assert!(
        matches!(&err, ClusterError::RunnerUnavailable { address: named, .. } if *named == address),
        "{err:?}"
    );
}
