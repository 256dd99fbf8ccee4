//! Fuzzing the server's decoding: arbitrary bytes and mutated valid frames are written
//! as raw gRPC messages onto a `Session` stream of a real server on loopback.
//!
//! For every input the server must answer as the protocol says (a frame that does not
//! decode gets `MalformedMessage`, never silence), never panic, and keep serving: the
//! same session answers a probe request afterwards, or, when the input was not even
//! protobuf, the session ends with a `MalformedMessage` about itself and a new session
//! (and a `GrpcRunners` client) still gets answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use cruster_transport::conformance::EchoInbound;
use cruster_transport::Runners;
use cruster_transport_grpc::proto::{
    client_frame, server_frame, ClientFrame, MetadataEntry, PingRequest, ServerFrame,
};
use cruster_transport_grpc::GrpcRunners;
use cruster_types::{
    wire, ClusterError, EntityAddress, EntityId, EntityType, EnvelopeRequest, RunnerAddress,
    ShardId, Snowflake, WireError,
};
use futures::StreamExt;
use proptest::prelude::*;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;
use tonic_prost::ProstCodec;

/// Writes each item as the raw bytes of one gRPC message; reads `ServerFrame`s.
#[derive(Clone, Copy, Default)]
struct RawFrames;

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct FrameDecoder(<ProstCodec<PingRequest, ServerFrame> as Codec>::Decoder);

impl Decoder for FrameDecoder {
    type Item = ServerFrame;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ServerFrame>, Status> {
        self.0.decode(src)
    }
}

impl Codec for RawFrames {
    type Encode = Bytes;
    type Decode = ServerFrame;
    type Encoder = RawEncoder;
    type Decoder = FrameDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> FrameDecoder {
        FrameDecoder(ProstCodec::<PingRequest, ServerFrame>::default().decoder())
    }
}

const PROBE_PAYLOAD: &[u8] = b"probe";

fn entity() -> EntityAddress {
    EntityAddress {
        shard_id: ShardId::new("fuzz", 1),
        entity_type: EntityType::new("Echo"),
        entity_id: EntityId::new("e"),
    }
}

fn valid_envelope(id: i64) -> EnvelopeRequest {
    EnvelopeRequest::new(
        Snowflake(id),
        entity(),
        "echo",
        Bytes::from_static(PROBE_PAYLOAD),
    )
}

/// A valid frame of each kind, to be mutated.
fn valid_frames() -> Vec<ClientFrame> {
    let envelope = wire::encode_envelope(&valid_envelope(7)).unwrap();
    let ack = cruster_types::AckChunk {
        request_id: Snowflake(7),
        address: entity(),
        sequence: 3,
    };
    let interrupt = cruster_types::Interrupt {
        request_id: Snowflake(7),
        address: entity(),
    };
    let stored_reply = cruster_types::ReplyWithExit {
        request_id: Snowflake(7),
        exit: cruster_types::ExitResult::Success(Bytes::from_static(b"stored")),
    };
    let trace = vec![MetadataEntry {
        key: "traceparent".into(),
        value: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    }];
    vec![
        ClientFrame {
            call_id: 11,
            body: Some(client_frame::Body::Send(envelope.clone())),
            metadata: trace.clone(),
        },
        ClientFrame {
            call_id: 12,
            body: Some(client_frame::Body::Notify(envelope)),
            metadata: trace,
        },
        ClientFrame {
            call_id: 13,
            body: Some(client_frame::Body::AckChunk(wire::encode(&ack).unwrap())),
            metadata: Vec::new(),
        },
        ClientFrame {
            call_id: 14,
            body: Some(client_frame::Body::Interrupt(
                wire::encode(&interrupt).unwrap(),
            )),
            metadata: Vec::new(),
        },
        ClientFrame {
            call_id: 15,
            body: Some(client_frame::Body::StoredReply(
                wire::encode(&stored_reply).unwrap(),
            )),
            metadata: Vec::new(),
        },
    ]
}

/// How the server must answer an input, worked out from the input alone.
#[derive(Debug)]
enum Expected {
    /// Not protobuf: a `MalformedMessage` about the session, then the session ends.
    SessionMalformed,
    /// A frame for `call_id` that must be answered `MalformedMessage`.
    Malformed { call_id: u64 },
    /// A frame that decodes: answered normally (or, for a cancel, not at all).
    Valid { call_id: u64 },
}

fn expected(input: &[u8]) -> Expected {
    let Ok(frame) = ClientFrame::decode(input) else {
        return Expected::SessionMalformed;
    };
    let call_id = frame.call_id;
    let decodes = match &frame.body {
        None => false,
        Some(client_frame::Body::Cancel(_)) => true,
        Some(_) if call_id == 0 => false,
        Some(client_frame::Body::Send(b) | client_frame::Body::Notify(b)) => {
            wire::decode_envelope(b).is_ok()
        }
        Some(client_frame::Body::AckChunk(b)) => wire::decode::<cruster_types::AckChunk>(b).is_ok(),
        Some(client_frame::Body::Interrupt(b)) => {
            wire::decode::<cruster_types::Interrupt>(b).is_ok()
        }
        Some(client_frame::Body::StoredReply(b)) => {
            wire::decode::<cruster_types::ReplyWithExit>(b).is_ok()
        }
    };
    if decodes {
        Expected::Valid { call_id }
    } else {
        Expected::Malformed { call_id }
    }
}

fn is_malformed(frame: &ServerFrame) -> bool {
    let bytes = match &frame.body {
        Some(server_frame::Body::Error(b) | server_frame::Body::Refused(b)) => b,
        _ => return false,
    };
    matches!(
        wire::decode::<WireError>(bytes),
        Ok(WireError::MalformedMessage { .. })
    )
}

/// A probe frame whose call id differs from `avoid`.
fn probe(avoid: u64) -> (u64, Bytes) {
    let call_id = if avoid == 1_000_001 {
        1_000_002
    } else {
        1_000_001
    };
    let frame = ClientFrame {
        call_id,
        body: Some(client_frame::Body::Send(
            wire::encode_envelope(&valid_envelope(99)).unwrap(),
        )),
        metadata: Vec::new(),
    };
    (call_id, frame.encode_to_vec().into())
}

struct Target {
    channel: Channel,
    address: RunnerAddress,
    client: GrpcRunners,
    _server: tokio::runtime::Runtime,
}

fn target(client_runtime: &tokio::runtime::Runtime) -> Target {
    let server = support::server_runtime();
    let socket = support::serve_on(&server, Arc::new(EchoInbound::new()), None);
    let channel = client_runtime.block_on(async {
        Endpoint::from_shared(format!("http://{socket}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    });
    Target {
        channel,
        address: RunnerAddress::new("127.0.0.1", socket.port()),
        client: GrpcRunners::new(),
        _server: server,
    }
}

/// Opens a session, writes `inputs` (keeping the request side open), and collects the
/// answers until `until` answered last, or the session ended.
async fn exchange(
    channel: &Channel,
    inputs: Vec<Bytes>,
    until: u64,
) -> (HashMap<u64, Vec<ServerFrame>>, bool) {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let requests = futures::stream::iter(inputs).chain(futures::stream::pending());
    let path = PathAndQuery::from_static("/cruster.runner.v1.Runner/Session");
    let mut answers = grpc
        .streaming(tonic::Request::new(requests), path, RawFrames)
        .await
        .expect("the server accepts a session")
        .into_inner();
    let mut by_call: HashMap<u64, Vec<ServerFrame>> = HashMap::new();
    let read = async {
        loop {
            match answers.message().await {
                Ok(Some(frame)) => {
                    let done = frame.call_id == until && frame.last;
                    by_call.entry(frame.call_id).or_default().push(frame);
                    if done {
                        return false;
                    }
                }
                Ok(None) | Err(_) => return true,
            }
        }
    };
    let ended = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the server neither answered the probe nor ended the session");
    (by_call, ended)
}

fn check_input(runtime: &tokio::runtime::Runtime, target: &Target, input: Vec<u8>) {
    let expectation = expected(&input);
    let avoid = match expectation {
        Expected::Malformed { call_id } | Expected::Valid { call_id } => call_id,
        Expected::SessionMalformed => 0,
    };
    let (probe_id, probe_frame) = probe(avoid);
    let (answers, ended) = runtime.block_on(exchange(
        &target.channel,
        vec![Bytes::from(input.clone()), probe_frame.clone()],
        probe_id,
    ));
    let summary = format!("input {input:02x?} expected {expectation:?}, answers {answers:?}");
    match expectation {
        Expected::SessionMalformed => {
            assert!(
                ended,
                "the session went on after a non-protobuf frame: {summary}"
            );
            let session_errors = answers.get(&0).map(Vec::as_slice).unwrap_or_default();
            assert!(
                session_errors.iter().any(is_malformed),
                "no MalformedMessage about the session: {summary}"
            );
            // A new session is served.
            let (answers, ended) =
                runtime.block_on(exchange(&target.channel, vec![probe_frame], probe_id));
            assert!(
                !ended && answers.contains_key(&probe_id),
                "no new session: {answers:?}"
            );
        }
        Expected::Malformed { call_id } => {
            assert!(
                !ended,
                "the session ended after a malformed frame: {summary}"
            );
            let first = answers.get(&call_id).and_then(|frames| frames.first());
            assert!(
                first.is_some_and(is_malformed),
                "the malformed frame got no MalformedMessage: {summary}"
            );
        }
        Expected::Valid { call_id } => {
            assert!(!ended, "the session ended after a valid frame: {summary}");
            let malformed = answers
                .get(&call_id)
                .is_some_and(|frames| frames.iter().any(is_malformed));
            assert!(
                !malformed,
                "a valid frame was answered MalformedMessage: {summary}"
            );
        }
    }
    let probe_answer = answers_probe_ok(&answers, probe_id);
    assert!(
        probe_answer || matches!(expectation, Expected::SessionMalformed),
        "the probe after the input was not answered: {summary}"
    );
}

fn answers_probe_ok(answers: &HashMap<u64, Vec<ServerFrame>>, probe_id: u64) -> bool {
    answers.get(&probe_id).is_some_and(|frames| {
        frames.iter().any(|frame| match &frame.body {
            Some(server_frame::Body::Reply(bytes)) => matches!(
                wire::decode_reply(bytes),
                Ok(cruster_types::Reply::WithExit(_))
            ),
            _ => false,
        })
    })
}

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// Counts every panic in this process (server tasks included), on top of the usual report.
fn count_panics() {
    HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            report(info);
        }));
    });
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// After the fuzzing, a regular client still gets answers.
fn still_serving(runtime: &tokio::runtime::Runtime, target: &Target) {
    runtime.block_on(async {
        let replies = target
            .client
            .send(&target.address, valid_envelope(5))
            .await
            .expect("send after fuzzing");
        let replies: Vec<_> = replies.collect().await;
        assert!(
            matches!(replies.as_slice(), [Ok(cruster_types::Reply::WithExit(_))]),
            "{replies:?}"
        );
    });
}

/// Mutations of a valid frame: overwrite bytes, truncate, insert garbage.
fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    let frames: Vec<Vec<u8>> = valid_frames().iter().map(Message::encode_to_vec).collect();
    (
        proptest::sample::select(frames),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        proptest::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(mut frame, edits, cut)| {
            for (at, byte) in edits {
                let at = at.index(frame.len());
                frame[at] = byte;
            }
            if let Some(cut) = cut {
                frame.truncate(cut.index(frame.len() + 1));
            }
            frame
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_break_the_server(inputs in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..256), 1..4)) {
        count_panics();
        let runtime = client_runtime();
        let target = target(&runtime);
        for input in inputs {
            check_input(&runtime, &target, input);
        }
        still_serving(&runtime, &target);
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn mutated_frames_get_malformed_answers_and_the_server_goes_on(
        inputs in proptest::collection::vec(mutated_frame(), 1..8)) {
        count_panics();
        let runtime = client_runtime();
        let target = target(&runtime);
        for input in inputs {
            check_input(&runtime, &target, input);
        }
        still_serving(&runtime, &target);
        prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn a_frame_whose_envelope_does_not_decode_is_refused_as_malformed() {
    let runtime = client_runtime();
    let target = target(&runtime);
    let frame = ClientFrame {
        call_id: 5,
        body: Some(client_frame::Body::Send(Bytes::from_static(b"\xc1garbage"))),
        metadata: Vec::new(),
    };
    let (answers, ended) = runtime.block_on(exchange(
        &target.channel,
        vec![frame.encode_to_vec().into()],
        5,
    ));
    assert!(!ended);
    let answer = &answers[&5][0];
    assert!(
        matches!(answer.body, Some(server_frame::Body::Refused(_))),
        "{answer:?}"
    );
    assert!(is_malformed(answer), "{answer:?}");
    let err: ClusterError = match &answer.body {
        Some(server_frame::Body::Refused(bytes)) => {
            wire::decode::<WireError>(bytes).unwrap().into()
        }
        _ => unreachable!(),
    };
    assert!(err.to_string().contains("malformed"), "{err}");
    still_serving(&runtime, &target);
}
