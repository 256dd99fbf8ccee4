//! [`GrpcRunnerServer`]: the server side of the transport, calling the runtime's
//! `RunnerInbound` for every request that arrives.
//!
//! Each session (one per connected peer) has one task reading its request frames, and
//! one task per request in flight running the inbound call and writing its answers to
//! the session's answer queue, which tonic streams back. The session task owns its
//! request tasks: a cancel frame, or the connection breaking, aborts them (dropping the
//! inbound's reply stream tells the runtime the caller is gone).
//!
//! Never panics on input: a frame that does not decode is answered `MalformedMessage`
//! and the session goes on; a stream that stops being valid protobuf gets one
//! `MalformedMessage` about the session and ends, and other sessions never notice.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use cruster_transport::{ReplyStream, RunnerInbound};
use cruster_types::{
    wire, AckChunk, ClusterError, EnvelopeRequest, Interrupt, Reply, ReplyWithExit,
};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::config::{DEFAULT_MAX_MESSAGE_SIZE, FRAME_HEADROOM};
use crate::frame::{
    check_size, done_answer, error_answer, refused_answer, reply_answer, trace_parent, SESSION_CALL,
};
use crate::proto::runner_server::{Runner, RunnerServer};
use crate::proto::{client_frame, ClientFrame, PingReply, PingRequest, ServerFrame};

/// The tonic service [`GrpcRunnerServer::into_service`] returns, for
/// `tonic::transport::Server::builder().add_service(..)`.
pub type GrpcRunnerService = RunnerServer<RunnerHandler>;

/// Answers queued per session before request tasks wait for the peer to read.
const ANSWER_QUEUE: usize = 1024;

/// What [`GrpcRunnerServer::new`] accepts: an `Arc` of the runtime's inbound side (the
/// runtime's `ShardingImpl` implements `RunnerInbound`), or an `Arc<dyn RunnerInbound>`.
pub trait IntoRunnerInbound {
    /// The inbound side as a shared trait object.
    fn into_runner_inbound(self) -> Arc<dyn RunnerInbound>;
}

impl<T: RunnerInbound> IntoRunnerInbound for Arc<T> {
    fn into_runner_inbound(self) -> Arc<dyn RunnerInbound> {
        self
    }
}

impl IntoRunnerInbound for Arc<dyn RunnerInbound> {
    fn into_runner_inbound(self) -> Arc<dyn RunnerInbound> {
        self
    }
}

/// The server side of the gRPC transport: serves the runner protocol by calling an
/// inbound side (the runtime's `ShardingImpl`).
///
/// The tonic `Server` it is added to is the application's, and so are its HTTP/2 settings.
/// Turning on HTTP/2 keep-alive there (`http2_keepalive_interval(Some(10 s))`,
/// `http2_keepalive_timeout(Some(5 s))`) lets the server notice a peer that vanished
/// without closing its connection and drop that peer's requests in flight; a peer that
/// crashes or closes its connection is noticed at once either way.
///
/// Sessions are long-lived streams, so a graceful shutdown of the tonic server waits for
/// them: call [`ServerCloser::close`] (from [`GrpcRunnerServer::closer`]) when it starts.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// # let sharding = std::sync::Arc::new(cruster_transport::conformance::EchoInbound::new());
/// use cruster_transport_grpc::GrpcRunnerServer;
///
/// let server = GrpcRunnerServer::new(sharding.clone());
/// let closer = server.closer();
/// tonic::transport::Server::builder()
///     .add_service(server.into_service())
///     .serve_with_shutdown("0.0.0.0:9000".parse()?, async move {
///         let _ = tokio::signal::ctrl_c().await;
///         // Sessions are long-lived streams: end them, or a graceful shutdown waits forever.
///         closer.close();
///     })
///     .await?;
/// # Ok(()) }
/// ```
pub struct GrpcRunnerServer {
    inbound: Arc<dyn RunnerInbound>,
    max_message_size: usize,
    closing: CancellationToken,
}

impl fmt::Debug for GrpcRunnerServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcRunnerServer")
            .field("max_message_size", &self.max_message_size)
            .finish_non_exhaustive()
    }
}

impl GrpcRunnerServer {
    /// A server calling `inbound` (for example the runtime's `Arc<ShardingImpl>`).
    pub fn new(inbound: impl IntoRunnerInbound) -> Self {
        GrpcRunnerServer {
            inbound: inbound.into_runner_inbound(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            closing: CancellationToken::new(),
        }
    }

    /// The largest encoded envelope accepted, and the largest reply sent (default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`], 4 MiB). A request over it is refused, and a reply
    /// over it replaced by an error, both `MalformedMessage` naming the limit.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// A handle that ends the server's sessions, for a graceful shutdown.
    pub fn closer(&self) -> ServerCloser {
        ServerCloser {
            closing: self.closing.clone(),
        }
    }

    /// The tonic service, for `tonic::transport::Server::builder().add_service(..)`.
    pub fn into_service(self) -> GrpcRunnerService {
        // Requests a little over the limit still arrive whole, so they can be refused
        // with an error naming the limit instead of breaking the session.
        let decode_limit = self
            .max_message_size
            .saturating_mul(2)
            .saturating_add(FRAME_HEADROOM);
        let encode_limit = self.max_message_size.saturating_add(FRAME_HEADROOM);
        RunnerServer::new(RunnerHandler {
            shared: Arc::new(ServerShared {
                inbound: self.inbound,
                max_message_size: self.max_message_size,
                closing: self.closing,
            }),
        })
        .max_decoding_message_size(decode_limit)
        .max_encoding_message_size(encode_limit)
    }
}

/// Ends a server's sessions (see [`GrpcRunnerServer::closer`]).
#[derive(Clone, Debug)]
pub struct ServerCloser {
    closing: CancellationToken,
}

impl ServerCloser {
    /// Stops reading new requests on every session, now and for sessions opened later;
    /// each session ends once its requests in flight have answered. Clients then see the
    /// runner as unavailable, and a graceful `tonic` shutdown can complete.
    pub fn close(&self) {
        self.closing.cancel();
    }
}

/// The implementation of the generated `Runner` service (see [`GrpcRunnerService`]).
pub struct RunnerHandler {
    shared: Arc<ServerShared>,
}

impl fmt::Debug for RunnerHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerHandler").finish_non_exhaustive()
    }
}

struct ServerShared {
    inbound: Arc<dyn RunnerInbound>,
    max_message_size: usize,
    closing: CancellationToken,
}

#[async_trait]
impl Runner for RunnerHandler {
    type SessionStream = AnswerStream;

    async fn session(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (answers, queued) = mpsc::channel(ANSWER_QUEUE);
        let session = ServerSession {
            shared: Arc::clone(&self.shared),
            answers,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        };
        tokio::spawn(session.serve(request.into_inner()));
        Ok(Response::new(AnswerStream { queued }))
    }

    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        Ok(Response::new(PingReply {
            payload: request.into_inner().payload,
        }))
    }
}

/// The answers of a session, as tonic streams them back.
pub struct AnswerStream {
    queued: mpsc::Receiver<ServerFrame>,
}

impl fmt::Debug for AnswerStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerStream").finish_non_exhaustive()
    }
}

impl Stream for AnswerStream {
    type Item = Result<ServerFrame, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.queued.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

type InFlight = Arc<Mutex<HashMap<u64, AbortHandle>>>;

/// One peer's session: reads its frames and starts a task per request.
struct ServerSession {
    shared: Arc<ServerShared>,
    answers: mpsc::Sender<ServerFrame>,
    in_flight: InFlight,
}

impl ServerSession {
    async fn serve(self, mut frames: Streaming<ClientFrame>) {
        let closing = self.shared.closing.clone();
        loop {
            let next = tokio::select! {
                biased;
                () = closing.cancelled() => break,
                next = frames.message() => next,
            };
            match next {
                Ok(Some(frame)) => self.handle(frame).await,
                // The peer sends nothing more: its requests in flight still answer.
                Ok(None) => break,
                Err(status) if is_bad_input(&status) => {
                    let err = ClusterError::MalformedMessage {
                        reason: format!(
                            "a frame of this session is not a valid runner-protocol frame \
                             ({}); the session ends",
                            status.message()
                        ),
                        source: None,
                    };
                    let _ = self.answers.send(error_answer(SESSION_CALL, &err)).await;
                    break;
                }
                Err(_) => {
                    // The connection broke: nobody reads the answers of the requests in
                    // flight any more.
                    for (_, task) in self.in_flight.lock().drain() {
                        task.abort();
                    }
                    break;
                }
            }
        }
        // Dropping `self.answers` here ends the answer stream once the request tasks,
        // which hold the other senders, have answered.
    }

    async fn answer(&self, frame: ServerFrame) {
        let _ = self.answers.send(frame).await;
    }

    async fn handle(&self, frame: ClientFrame) {
        let call_id = frame.call_id;
        let limit = self.shared.max_message_size;
        let Some(body) = frame.body else {
            let err = malformed(format!("the frame of call {call_id} has no body"));
            return self.answer(error_answer(call_id, &err)).await;
        };
        if call_id == SESSION_CALL && !matches!(body, client_frame::Body::Cancel(_)) {
            let err = malformed(format!(
                "call id {SESSION_CALL} is reserved for the session"
            ));
            return self.answer(error_answer(call_id, &err)).await;
        }
        match body {
            client_frame::Body::Send(bytes) => {
                let envelope =
                    check_size("the request envelope", &bytes, limit, "max_message_size")
                        .and_then(|()| wire::decode_envelope(&bytes));
                match envelope {
                    Ok(envelope) => {
                        let parent = trace_parent(&frame.metadata).unwrap_or_default();
                        let span = tracing::debug_span!(
                            "cruster.grpc.send",
                            call_id,
                            request_id = %envelope.request_id,
                            trace_parent = parent,
                        );
                        let inbound = Arc::clone(&self.shared.inbound);
                        let task = send_request(self.task_context(call_id), inbound, envelope);
                        self.spawn(call_id, task, span).await;
                    }
                    Err(err) => self.answer(refused_answer(call_id, &err)).await,
                }
            }
            client_frame::Body::Notify(bytes) => {
                let envelope =
                    check_size("the notified envelope", &bytes, limit, "max_message_size")
                        .and_then(|()| wire::decode_envelope(&bytes));
                match envelope {
                    Ok(envelope) => {
                        let parent = trace_parent(&frame.metadata).unwrap_or_default();
                        let span = tracing::debug_span!(
                            "cruster.grpc.notify",
                            call_id,
                            request_id = %envelope.request_id,
                            trace_parent = parent,
                        );
                        let inbound = Arc::clone(&self.shared.inbound);
                        let accepted = async move { inbound.handle_notify(envelope).await };
                        self.spawn(call_id, accept(self.task_context(call_id), accepted), span)
                            .await;
                    }
                    Err(err) => self.answer(error_answer(call_id, &err)).await,
                }
            }
            client_frame::Body::AckChunk(bytes) => match wire::decode::<AckChunk>(&bytes) {
                Ok(ack) => {
                    let inbound = Arc::clone(&self.shared.inbound);
                    let accepted = async move { inbound.handle_ack(ack).await };
                    let span = tracing::trace_span!("cruster.grpc.ack_chunk", call_id);
                    self.spawn(call_id, accept(self.task_context(call_id), accepted), span)
                        .await;
                }
                Err(err) => self.answer(error_answer(call_id, &err)).await,
            },
            client_frame::Body::Interrupt(bytes) => match wire::decode::<Interrupt>(&bytes) {
                Ok(interrupt) => {
                    let inbound = Arc::clone(&self.shared.inbound);
                    let accepted = async move { inbound.handle_interrupt(interrupt).await };
                    let span = tracing::trace_span!("cruster.grpc.interrupt", call_id);
                    self.spawn(call_id, accept(self.task_context(call_id), accepted), span)
                        .await;
                }
                Err(err) => self.answer(error_answer(call_id, &err)).await,
            },
            client_frame::Body::StoredReply(bytes) => {
                let reply = check_size("the pushed reply", &bytes, limit, "max_message_size")
                    .and_then(|()| wire::decode::<ReplyWithExit>(&bytes));
                match reply {
                    Ok(reply) => {
                        let span = tracing::trace_span!(
                            "cruster.grpc.stored_reply",
                            call_id,
                            request_id = %reply.request_id,
                        );
                        let inbound = Arc::clone(&self.shared.inbound);
                        let accepted = async move { inbound.handle_stored_reply(reply).await };
                        self.spawn(call_id, accept(self.task_context(call_id), accepted), span)
                            .await;
                    }
                    Err(err) => self.answer(error_answer(call_id, &err)).await,
                }
            }
            client_frame::Body::Cancel(_) => {
                if let Some(task) = self.in_flight.lock().remove(&call_id) {
                    task.abort();
                }
            }
        }
    }

    fn task_context(&self, call_id: u64) -> TaskContext {
        TaskContext {
            call_id,
            answers: self.answers.clone(),
            in_flight: Arc::clone(&self.in_flight),
            max_message_size: self.shared.max_message_size,
        }
    }

    /// Runs a request's task, registered under its call id so a cancel can abort it.
    async fn spawn(
        &self,
        call_id: u64,
        task: impl std::future::Future<Output = ()> + Send + 'static,
        span: tracing::Span,
    ) {
        let duplicate = {
            let mut in_flight = self.in_flight.lock();
            match in_flight.entry(call_id) {
                Entry::Occupied(_) => true,
                Entry::Vacant(slot) => {
                    // Registered under the lock, so the task cannot deregister before this.
                    let handle = tokio::spawn(task.instrument(span));
                    slot.insert(handle.abort_handle());
                    false
                }
            }
        };
        if duplicate {
            let err = malformed(format!(
                "call id {call_id} is already in flight on this session"
            ));
            self.answer(error_answer(call_id, &err)).await;
        }
    }
}

/// What a request task needs: where to answer, and the registry to leave when done.
struct TaskContext {
    call_id: u64,
    answers: mpsc::Sender<ServerFrame>,
    in_flight: InFlight,
    max_message_size: usize,
}

impl TaskContext {
    async fn answer(&self, frame: ServerFrame) -> bool {
        self.answers.send(frame).await.is_ok()
    }

    fn finish(self) {
        self.in_flight.lock().remove(&self.call_id);
    }
}

/// Runs a send: refused if the inbound refuses it, otherwise its replies up to the final
/// one.
async fn send_request(
    context: TaskContext,
    inbound: Arc<dyn RunnerInbound>,
    envelope: EnvelopeRequest,
) {
    match inbound.handle_send(envelope).await {
        Ok(replies) => forward_replies(&context, replies).await,
        Err(err) => {
            context.answer(refused_answer(context.call_id, &err)).await;
        }
    }
    context.finish();
}

/// Runs a notify, ack or interrupt: `done` when accepted, the error otherwise.
async fn accept(
    context: TaskContext,
    accepted: impl std::future::Future<Output = Result<(), ClusterError>>,
) {
    let frame = match accepted.await {
        Ok(()) => done_answer(context.call_id),
        Err(err) => error_answer(context.call_id, &err),
    };
    context.answer(frame).await;
    context.finish();
}

fn malformed(reason: String) -> ClusterError {
    ClusterError::MalformedMessage {
        reason,
        source: None,
    }
}

/// Whether a stream error is the peer's bytes being wrong rather than the connection
/// breaking. tonic reports a protobuf decode failure as `Internal` and an oversized message
/// as `OutOfRange`, both without a source; a broken connection carries its HTTP/2 or I/O
/// error as the source, whatever its code.
fn is_bad_input(status: &Status) -> bool {
    use std::error::Error as _;
    status.source().is_none()
        && matches!(
            status.code(),
            Code::Internal | Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        )
}

/// Forwards the replies of an inbound reply stream as answer frames.
async fn forward_replies(context: &TaskContext, mut replies: ReplyStream) {
    let call_id = context.call_id;
    loop {
        let frame = match replies.next().await {
            Some(Ok(reply)) => {
                let last = matches!(reply, Reply::WithExit(_));
                match wire::encode_reply(&reply).and_then(|bytes| {
                    check_size(
                        "a reply",
                        &bytes,
                        context.max_message_size,
                        "max_message_size",
                    )
                    .map(|()| bytes)
                }) {
                    Ok(bytes) => reply_answer(call_id, bytes, last),
                    Err(err) => error_answer(call_id, &err),
                }
            }
            Some(Err(err)) => error_answer(call_id, &err),
            None => done_answer(call_id),
        };
        let last = frame.last;
        if !context.answer(frame).await || last {
            return;
        }
    }
}
