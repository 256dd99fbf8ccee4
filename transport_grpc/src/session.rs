//! The client side of one multiplexed `Session` stream to a peer: the calls in flight by
//! id, the task that routes answer frames back to their callers, and the reply stream a
//! caller reads.
//!
//! Owns: the outbound frame queue (read by tonic as the request stream), the map call id
//! → caller, and the reader task (aborted when the session is dropped). When the stream
//! breaks or ends, every call in flight is answered `RunnerUnavailable` naming the peer
//! and the session refuses new calls; the peer then opens a new one.
//!
//! Never holds the call map's lock across an await. Answers are decoded on the caller's
//! task, not the reader's, so one reader serves many callers.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cruster_types::{wire, ClusterError, Reply, RunnerAddress};
use futures::{Future, Stream};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};
use tonic::transport::Channel;
use tonic::Streaming;

use crate::config::GrpcRunnersBuilder;
use crate::frame::{decode_error, SESSION_CALL};
use crate::proto::runner_client::RunnerClient;
use crate::proto::{client_frame, server_frame, Cancel, ClientFrame, ServerFrame};

/// What the reader hands a caller: an answer frame, or the loss of the session.
type Answer = Result<ServerFrame, ClusterError>;

/// One open session to a peer. Dropping it stops its reader, which closes the stream.
pub(crate) struct Session {
    shared: Arc<SessionShared>,
    reader: AbortHandle,
}

struct SessionShared {
    address: RunnerAddress,
    outbound: mpsc::UnboundedSender<ClientFrame>,
    next_call: AtomicU64,
    open: AtomicBool,
    calls: Mutex<Calls>,
}

struct Calls {
    open: bool,
    waiting: HashMap<u64, mpsc::UnboundedSender<Answer>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        self.shared
            .close("the connection to it was dropped (forgotten, or the client went away)");
    }
}

impl Session {
    /// Opens a session on `channel`: resolves once the peer accepted the stream.
    pub(crate) async fn open(
        channel: Channel,
        address: RunnerAddress,
        config: &GrpcRunnersBuilder,
    ) -> Result<Arc<Session>, tonic::Status> {
        let (outbound, mut queued) = mpsc::unbounded_channel::<ClientFrame>();
        let frames = futures::stream::poll_fn(move |cx| queued.poll_recv(cx));
        let mut client = RunnerClient::new(channel)
            .max_decoding_message_size(config.tonic_message_limit())
            .max_encoding_message_size(config.tonic_message_limit());
        let answers = client.session(frames).await?.into_inner();
        let shared = Arc::new(SessionShared {
            address,
            outbound,
            next_call: AtomicU64::new(SESSION_CALL + 1),
            open: AtomicBool::new(true),
            calls: Mutex::new(Calls {
                open: true,
                waiting: HashMap::new(),
            }),
        });
        let reader = tokio::spawn(read_answers(Arc::clone(&shared), answers)).abort_handle();
        Ok(Arc::new(Session { shared, reader }))
    }

    /// Whether the session still takes calls.
    pub(crate) fn is_open(&self) -> bool {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Sends a request frame (`body` with `metadata`) and returns the call that receives
    /// its answers.
    ///
    /// # Errors
    /// `RunnerUnavailable` when the session is closed: then the frame was not sent.
    pub(crate) fn start(
        self: &Arc<Self>,
        body: client_frame::Body,
        metadata: Vec<crate::proto::MetadataEntry>,
    ) -> Result<Call, ClusterError> {
        let shared = &self.shared;
        let call_id = shared.next_call.fetch_add(1, Ordering::Relaxed);
        let (sender, answers) = mpsc::unbounded_channel();
        {
            let mut calls = shared.calls.lock();
            if !calls.open {
                return Err(shared.unavailable("the connection to it closed"));
            }
            calls.waiting.insert(call_id, sender);
        }
        let frame = ClientFrame {
            call_id,
            body: Some(body),
            metadata,
        };
        if shared.outbound.send(frame).is_err() {
            shared.calls.lock().waiting.remove(&call_id);
            return Err(shared.unavailable("the connection to it closed"));
        }
        Ok(Call {
            session: Arc::clone(self),
            call_id,
            answers,
            finished: false,
        })
    }
}

impl SessionShared {
    fn unavailable(&self, reason: &str) -> ClusterError {
        ClusterError::RunnerUnavailable {
            address: self.address.clone(),
            reason: reason.to_owned(),
        }
    }

    /// Refuses new calls and answers every call in flight with `RunnerUnavailable`.
    fn close(&self, reason: &str) {
        let waiting = {
            let mut calls = self.calls.lock();
            calls.open = false;
            self.open.store(false, Ordering::Release);
            std::mem::take(&mut calls.waiting)
        };
        for (_, caller) in waiting {
            let _ = caller.send(Err(self.unavailable(reason)));
        }
    }

    /// Hands an answer frame to its caller; forgets the call after its last frame.
    fn route(&self, frame: ServerFrame) {
        if frame.call_id == SESSION_CALL {
            // The peer could not read one of our frames and ends the session; the
            // end of the stream follows and fails the calls in flight.
            let what = match &frame.body {
                Some(server_frame::Body::Error(bytes)) => decode_error(bytes).to_string(),
                _ => "an unexpected session answer".to_owned(),
            };
            tracing::warn!(peer = %self.address, "gRPC session error from the peer: {what}");
            return;
        }
        let caller = {
            let mut calls = self.calls.lock();
            if frame.last {
                calls.waiting.remove(&frame.call_id)
            } else {
                calls.waiting.get(&frame.call_id).cloned()
            }
        };
        // No caller: it gave up (timeout, dropped stream) and a cancel is on its way.
        if let Some(caller) = caller {
            let _ = caller.send(Ok(frame));
        }
    }

    /// Forgets a call whose caller gave up, and tells the peer to drop it.
    fn cancel(&self, call_id: u64) {
        let was_waiting = self.calls.lock().waiting.remove(&call_id).is_some();
        if was_waiting {
            let _ = self.outbound.send(ClientFrame {
                call_id,
                body: Some(client_frame::Body::Cancel(Cancel {})),
                metadata: Vec::new(),
            });
        }
    }
}

/// Routes answer frames until the stream ends, then fails what is still in flight.
async fn read_answers(shared: Arc<SessionShared>, mut answers: Streaming<ServerFrame>) {
    let reason = loop {
        match answers.message().await {
            Ok(Some(frame)) => shared.route(frame),
            Ok(None) => break "it ended the connection (shutting down?)".to_owned(),
            Err(status) => {
                break format!(
                    "the connection to it failed ({:?}: {})",
                    status.code(),
                    status.message()
                )
            }
        }
    };
    shared.close(&reason);
}

/// One request in flight: receives its answers. Dropping it before the last answer
/// cancels the request on the peer.
pub(crate) struct Call {
    session: Arc<Session>,
    call_id: u64,
    answers: mpsc::UnboundedReceiver<Answer>,
    finished: bool,
}

impl Call {
    fn address(&self) -> &RunnerAddress {
        &self.session.shared.address
    }

    /// Polls for the next answer; `None` once the last one was taken.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.answers.poll_recv(cx) {
            Poll::Ready(Some(answer)) => {
                if !matches!(&answer, Ok(frame) if !frame.last) {
                    self.finished = true;
                }
                Poll::Ready(Some(answer))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(Some(Err(ClusterError::RunnerUnavailable {
                    address: self.address().clone(),
                    reason: "the connection to it closed".to_owned(),
                })))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Gives up on the call: the peer is told to drop it.
    fn abandon(&mut self) {
        if !self.finished {
            self.finished = true;
            self.session.shared.cancel(self.call_id);
        }
    }

    /// Waits for the one answer of a notify, ack or interrupt.
    pub(crate) async fn accepted(
        mut self,
        timeout: Duration,
        what: &str,
    ) -> Result<(), ClusterError> {
        let answer = futures::future::poll_fn(|cx| self.poll_answer(cx));
        let answer = match tokio::time::timeout(timeout, answer).await {
            Ok(answer) => answer,
            Err(_) => {
                self.abandon();
                return Err(ClusterError::Timeout {
                    operation: format!("runner {} to accept {what}", self.address()),
                    timeout,
                });
            }
        };
        match answer {
            Some(Ok(frame)) => match frame.body {
                Some(server_frame::Body::Done(_)) => Ok(()),
                Some(server_frame::Body::Error(bytes) | server_frame::Body::Refused(bytes)) => {
                    Err(decode_error(&bytes))
                }
                Some(server_frame::Body::Reply(_)) | None => {
                    self.abandon();
                    Err(ClusterError::MalformedMessage {
                        reason: format!(
                            "runner {} answered {what} with something other than done or an error",
                            self.address()
                        ),
                        source: None,
                    })
                }
            },
            Some(Err(err)) => Err(err),
            None => Err(ClusterError::RunnerUnavailable {
                address: self.address().clone(),
                reason: "the connection to it closed".to_owned(),
            }),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// The reply stream of a `send`: decodes answer frames on the caller's task, ends after
/// the final reply, and ends with `Timeout` when an answer takes longer than the request
/// timeout.
pub(crate) struct GrpcReplyStream {
    call: Call,
    request_id: cruster_types::Snowflake,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    /// An item taken early (the first answer, read before `send` returns).
    buffered: Option<Result<Reply, ClusterError>>,
    /// Whether the first answer was a refusal.
    refused: bool,
    max_message_size: usize,
    done: bool,
}

impl GrpcReplyStream {
    pub(crate) fn new(
        call: Call,
        request_id: cruster_types::Snowflake,
        timeout: Duration,
        max_message_size: usize,
    ) -> Self {
        GrpcReplyStream {
            call,
            request_id,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            buffered: None,
            refused: false,
            max_message_size,
            done: false,
        }
    }

    /// Reads the first answer: `Err` when the peer refused the request before running it
    /// (it certainly did not run), otherwise the stream, replaying that answer first.
    pub(crate) async fn first_answer(mut self) -> Result<Self, ClusterError> {
        let first = futures::future::poll_fn(|cx| Pin::new(&mut self).poll_next(cx)).await;
        match first {
            Some(Err(err)) if self.refused => Err(err),
            first => {
                self.buffered = first;
                Ok(self)
            }
        }
    }

    fn decode_answer(&mut self, frame: ServerFrame) -> Option<Result<Reply, ClusterError>> {
        let address = self.call.address();
        match frame.body {
            Some(server_frame::Body::Reply(bytes)) => {
                if bytes.len() > self.max_message_size {
                    return Some(Err(crate::frame::too_large(
                        &format!("a reply from runner {address}"),
                        bytes.len(),
                        self.max_message_size,
                        "max_message_size",
                    )));
                }
                Some(wire::decode_reply(&bytes))
            }
            Some(server_frame::Body::Refused(bytes)) => {
                self.refused = true;
                Some(Err(decode_error(&bytes)))
            }
            Some(server_frame::Body::Error(bytes)) => Some(Err(decode_error(&bytes))),
            Some(server_frame::Body::Done(_)) => None,
            None => Some(Err(ClusterError::MalformedMessage {
                reason: format!("runner {address} sent an answer frame without a body"),
                source: None,
            })),
        }
    }
}

impl Stream for GrpcReplyStream {
    type Item = Result<Reply, ClusterError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(item) = this.buffered.take() {
            return Poll::Ready(Some(item));
        }
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.call.poll_answer(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let item = this.decode_answer(frame);
                    let ends = match &item {
                        None | Some(Err(_)) | Some(Ok(Reply::WithExit(_))) => true,
                        Some(Ok(Reply::Chunk(_))) => false,
                    };
                    if ends {
                        this.done = true;
                        // A peer that keeps answering after an end is told to stop.
                        this.call.abandon();
                    } else {
                        let next = Instant::now() + this.timeout;
                        this.deadline.as_mut().reset(next);
                    }
                    match item {
                        Some(item) => return Poll::Ready(Some(item)),
                        None => continue,
                    }
                }
                Poll::Ready(Some(Err(err))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            return match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    this.call.abandon();
                    Poll::Ready(Some(Err(ClusterError::Timeout {
                        operation: format!(
                            "a reply from runner {} to request {}",
                            this.call.address(),
                            this.request_id
                        ),
                        timeout: this.timeout,
                    })))
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}
