//! [`Instance`]: one live entity — its mailbox, the task that serves it, and how its
//! handlers end.
//!
//! A live instance holds no task while it is idle: the first request pushed into an idle
//! mailbox starts a task, which serves the mailbox and ends as soon as the mailbox is empty
//! and nothing runs (its handler stays with the instance, queued memory is given back). No
//! timer is kept per instance: a million entities touched at once leave no million timers
//! firing together, which would starve the runner's lock renewal. So an idle entity costs
//! its instance and nothing else, and a million idle entities fit in memory until idle
//! eviction takes them. An instance stopped with no task is passivated by
//! [`InstanceRuntime::passivate_stopped`], which its manager runs for a whole batch of such
//! instances from one task.
//!
//! The task runs up to `concurrency` handlers at once (inline when the limit is 1, so the
//! default costs no allocation per message). A handler ends in one of four ways:
//!
//! * it returns: the reply is stored first when the request is persisted, then sent;
//! * its caller goes away (plain, interruptible requests) or somebody interrupts it by
//!   request id: the answer is `Interrupted`;
//! * the runtime aborts it because its shard is leaving this runner (the drain deadline
//!   passed, or the runner can no longer prove it holds the shard): **nothing is stored**,
//!   the persisted request stays unprocessed and its new owner runs it again; the caller
//!   keeps waiting for that answer. An aborted plain request answers `Interrupted`.
//! * it panics or hits a storage error (persisted): the attempt is counted and the request
//!   redelivered; nothing is answered.
//!
//! Uninterruptible handlers are aborted only when the shard is lost (fencing), never by a
//! drain deadline: the runner keeps the shard's lock until they finish. Never holds a lock
//! across an await.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use cruster_sharding::{Entity, EntityContext, EntityHandler, IncomingRequest, STREAM_WINDOW};
use cruster_types::{
    ClusterError, EntityAddress, EnvelopeRequest, ExitResult, Reply, ReplyChunk, ReplyWithExit,
    Snowflake,
};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use parking_lot::Mutex;
use prometheus::IntGauge;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::entity::mailbox::{MailboxItem, ReplySink};
use crate::entity::pending_count::PendingCount;
use crate::runtime_core::RuntimeCore;

/// What the tasks of one entity type's instances share.
pub(crate) struct InstanceRuntime {
    pub(crate) core: Arc<RuntimeCore>,
    pub(crate) entity: Arc<dyn Entity>,
    /// Requests handled at once per instance (0 = unbounded).
    pub(crate) concurrency: usize,
    pub(crate) active_gauge: IntGauge,
    pub(crate) epoch: Instant,
    /// Requests queued or running in this type's instances.
    pub(crate) pending_count: PendingCount,
}

/// How an instance's task ended.
pub(crate) enum RunEnd {
    /// Stopped after serving (or refusing) its messages.
    Stopped,
    /// The mailbox emptied: the task ended, the instance stays live.
    Idle,
    /// The entity failed to start; the instance must be forgotten.
    FailedToStart,
}

/// The queue of one instance and whether a task serves it.
#[derive(Default)]
struct Mailbox {
    queue: VecDeque<MailboxItem>,
    /// A task serves the queue: it takes what is pushed (woken by `Instance::wake`).
    serving: bool,
    /// The instance stopped taking requests.
    closed: bool,
}

/// Why a request was not queued.
pub(crate) enum PushRefused {
    /// The mailbox holds its capacity.
    Full(MailboxItem),
    /// The instance is stopping.
    Closed(MailboxItem),
}

/// What a push asks of the caller.
pub(crate) enum Pushed {
    /// A task serves the mailbox already.
    Queued,
    /// No task served the mailbox: the caller starts one.
    StartTask,
}

/// One live entity.
pub(crate) struct Instance {
    pub(crate) address: EntityAddress,
    mailbox: Mutex<Mailbox>,
    capacity: usize,
    /// Wakes the serving task when a request is queued or the instance stops.
    wake: Notify,
    /// The handler, once the first task started it.
    handler: Mutex<Option<Arc<dyn EntityHandler>>>,
    /// Stopped taking messages (eviction, a shard leaving): what is queued is refused.
    pub(crate) stopped: AtomicBool,
    /// The fence of the instance's shard: fired, it aborts every running handler (the
    /// shard is lost).
    pub(crate) fence: CancellationToken,
    /// The drain token of the instance's shard: fired, it aborts the interruptible running
    /// handlers (the drain of the shard passed its deadline).
    drain_deadline: CancellationToken,
    /// The instance has ended (stopped, passivated, its handlers done).
    ended: AtomicBool,
    /// Wakes those waiting for the end; created by the first of them (an instance nobody
    /// waits for allocates none).
    ended_signal: OnceLock<CancellationToken>,
    pub(crate) last_active_ms: AtomicU64,
    /// When its mailbox last went from empty to busy (the clock of `last_active_ms`).
    pub(crate) busy_since_ms: AtomicU64,
    pub(crate) pending: AtomicUsize,
    /// The counter of [`InstanceRuntime::pending_count`] this instance updates.
    pub(crate) pending_stripe: usize,
    /// Interrupt tokens and stream windows of running requests; allocated while some run
    /// (most requests need neither).
    handles: Mutex<Option<Box<RequestHandles>>>,
}

/// What running requests of one instance can be reached by: interrupt tokens (by request
/// id) and the flow control of streamed replies.
#[derive(Default)]
struct RequestHandles {
    interrupts: HashMap<Snowflake, CancellationToken>,
    streams: HashMap<Snowflake, StreamWindow>,
}

impl RequestHandles {
    fn is_empty(&self) -> bool {
        self.interrupts.is_empty() && self.streams.is_empty()
    }
}

/// Flow control of one streamed reply: chunks sent ahead of acknowledgements.
pub(crate) struct StreamWindow {
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) acked: Option<u32>,
}

/// How a handler ended.
enum Ending {
    Returned(Result<Bytes, ClusterError>),
    Panicked(String),
    Interrupted,
    Aborted,
}

impl Instance {
    pub(crate) fn new(
        address: EntityAddress,
        capacity: usize,
        now_ms: u64,
        fence: CancellationToken,
        drain_deadline: CancellationToken,
        pending_stripe: usize,
    ) -> Self {
        Instance {
            address,
            mailbox: Mutex::new(Mailbox::default()),
            capacity,
            wake: Notify::new(),
            handler: Mutex::new(None),
            stopped: AtomicBool::new(false),
            fence,
            drain_deadline,
            ended: AtomicBool::new(false),
            ended_signal: OnceLock::new(),
            last_active_ms: AtomicU64::new(now_ms),
            busy_since_ms: AtomicU64::new(now_ms),
            pending: AtomicUsize::new(0),
            pending_stripe,
            handles: Mutex::new(None),
        }
    }

    /// Records that the instance has ended and wakes those waiting for it.
    pub(crate) fn mark_ended(&self) {
        self.ended.store(true, Ordering::SeqCst);
        if let Some(signal) = self.ended_signal.get() {
            signal.cancel();
        }
    }

    /// Resolves once the instance has ended.
    pub(crate) async fn ended(&self) {
        // The signal is in place before `ended` is read: an end recorded after this read
        // finds the signal and fires it.
        let signal = self.ended_signal.get_or_init(CancellationToken::new);
        if self.ended.load(Ordering::SeqCst) {
            return;
        }
        signal.cancelled().await;
    }

    /// Takes the interrupt token of a running request, if it has one.
    pub(crate) fn take_interrupt(&self, request_id: Snowflake) -> Option<CancellationToken> {
        let mut handles = self.handles.lock();
        let token = handles.as_mut()?.interrupts.remove(&request_id);
        if handles.as_ref().is_some_and(|h| h.is_empty()) {
            *handles = None;
        }
        token
    }

    fn add_interrupt(&self, request_id: Snowflake, token: CancellationToken) {
        self.handles
            .lock()
            .get_or_insert_with(Default::default)
            .interrupts
            .insert(request_id, token);
    }

    fn add_stream(&self, request_id: Snowflake, window: StreamWindow) {
        self.handles
            .lock()
            .get_or_insert_with(Default::default)
            .streams
            .insert(request_id, window);
    }

    fn remove_stream(&self, request_id: Snowflake) {
        let mut handles = self.handles.lock();
        if let Some(h) = handles.as_mut() {
            h.streams.remove(&request_id);
            if h.is_empty() {
                *handles = None;
            }
        }
    }

    /// Runs `f` on the flow control of a streamed reply, if that stream runs.
    pub(crate) fn with_stream(&self, request_id: Snowflake, f: impl FnOnce(&mut StreamWindow)) {
        if let Some(window) = self
            .handles
            .lock()
            .as_mut()
            .and_then(|h| h.streams.get_mut(&request_id))
        {
            f(window);
        }
    }

    /// Queues a request. Refused when the mailbox is full or the instance is stopping.
    #[allow(clippy::result_large_err)]
    pub(crate) fn push(&self, item: MailboxItem) -> Result<Pushed, PushRefused> {
        let mut mailbox = self.mailbox.lock();
        if mailbox.closed {
            return Err(PushRefused::Closed(item));
        }
        if mailbox.queue.len() >= self.capacity {
            return Err(PushRefused::Full(item));
        }
        mailbox.queue.push_back(item);
        if mailbox.serving {
            drop(mailbox);
            self.wake.notify_one();
            Ok(Pushed::Queued)
        } else {
            mailbox.serving = true;
            Ok(Pushed::StartTask)
        }
    }

    /// How many more requests the mailbox takes now.
    pub(crate) fn room(&self) -> usize {
        self.capacity
            .saturating_sub(self.mailbox.lock().queue.len())
    }

    /// Stops taking messages; running handlers go on. Returns `true` when no task serves
    /// the instance: the caller then ends it with [`InstanceRuntime::passivate_stopped`].
    pub(crate) fn stop(&self) -> bool {
        self.stopped.store(true, Ordering::Release);
        let mut mailbox = self.mailbox.lock();
        mailbox.closed = true;
        if mailbox.serving {
            drop(mailbox);
            self.wake.notify_one();
            false
        } else {
            mailbox.serving = true;
            true
        }
    }

    fn take_next(&self) -> Option<MailboxItem> {
        self.mailbox.lock().queue.pop_front()
    }

    fn has_queued(&self) -> bool {
        !self.mailbox.lock().queue.is_empty()
    }

    /// Ends serving when nothing is queued and the instance is not stopping (the queue's
    /// memory is given back). Returns whether it ended.
    fn end_serving_if_idle(&self) -> bool {
        let mut mailbox = self.mailbox.lock();
        if !mailbox.queue.is_empty() || mailbox.closed {
            return false;
        }
        mailbox.serving = false;
        mailbox.queue = VecDeque::new();
        true
    }

    /// Closes the mailbox and takes what is queued.
    fn close_and_take_queued(&self) -> VecDeque<MailboxItem> {
        let mut mailbox = self.mailbox.lock();
        mailbox.closed = true;
        std::mem::take(&mut mailbox.queue)
    }

    /// Resolves when the runtime aborts a request of this instance: at the fence for every
    /// request, also at the drain deadline for interruptible ones.
    async fn aborted(&self, uninterruptible: bool) {
        if uninterruptible {
            self.fence.cancelled().await;
        } else {
            tokio::select! {
                _ = self.fence.cancelled() => {}
                _ = self.drain_deadline.cancelled() => {}
            }
        }
    }
}

impl InstanceRuntime {
    /// Milliseconds since this entity type was registered (the clock of idle times).
    pub(crate) fn now_ms(&self) -> u64 {
        let now = self.core.config.clock.instant();
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The handler of the instance, started by its first task.
    async fn handler_of(
        &self,
        instance: &Instance,
    ) -> Result<Arc<dyn EntityHandler>, ClusterError> {
        if let Some(handler) = instance.handler.lock().clone() {
            return Ok(handler);
        }
        let ctx = EntityContext {
            address: instance.address.clone(),
            runner_address: self.core.config.runner_address.clone(),
            sharding: self.core.sharding()?,
        };
        let handler = self.entity.spawn(ctx).await?;
        *instance.handler.lock() = Some(handler.clone());
        Ok(handler)
    }

    /// A task of the instance: starts the handler if it is not yet, serves the mailbox
    /// until it is empty with nothing running (then ends, the instance staying live) or the
    /// instance stops (then refuses what is queued, waits for running handlers,
    /// passivates).
    pub(crate) async fn run(self: Arc<Self>, instance: Arc<Instance>) -> RunEnd {
        let never_started = instance.handler.lock().is_none();
        let runner_gone = never_started && self.core.sharding().is_err();
        if runner_gone || (never_started && instance.stopped.load(Ordering::Acquire)) {
            // Stopped before it ever ran (or the runner is going away): nothing to
            // passivate; what is queued is refused, not failed.
            for item in instance.close_and_take_queued() {
                self.refuse(&instance, item);
            }
            self.active_gauge.dec();
            return RunEnd::Stopped;
        }
        let handler = match self.handler_of(&instance).await {
            Ok(handler) => handler,
            Err(err) => {
                tracing::warn!(%err, "entity failed to start; failing its queued messages");
                for item in instance.close_and_take_queued() {
                    instance.pending.fetch_sub(1, Ordering::AcqRel);
                    self.pending_count.remove(instance.pending_stripe);
                    self.finish_failed(
                        item,
                        ClusterError::handler(format!(
                            "entity {} failed to start: {err}",
                            instance.address
                        )),
                    )
                    .await;
                }
                self.active_gauge.dec();
                return RunEnd::FailedToStart;
            }
        };
        let limit = if self.concurrency == 0 {
            usize::MAX
        } else {
            self.concurrency
        };
        let mut running = FuturesUnordered::new();
        loop {
            if instance.stopped.load(Ordering::Acquire) {
                break;
            }
            if limit == 1 {
                // One at a time (the default): run each request inline, no per-message
                // allocation.
                if let Some(item) = instance.take_next() {
                    self.process(&instance, &handler, item).await;
                    continue;
                }
            } else {
                while running.len() < limit {
                    match instance.take_next() {
                        Some(item) => running.push(self.process(&instance, &handler, item)),
                        None => break,
                    }
                }
            }
            // Registered before looking again, so no wake-up is missed.
            let woken = instance.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if instance.stopped.load(Ordering::Acquire)
                || (running.len() < limit && instance.has_queued())
            {
                continue;
            }
            if running.is_empty() {
                // Nothing queued, nothing running: the task ends (no timer keeps it). One
                // yield first lets a caller answered on this worker queue its next request
                // to the same task, which is cheaper than starting another.
                tokio::task::yield_now().await;
                if instance.has_queued() || instance.stopped.load(Ordering::Acquire) {
                    continue;
                }
                if instance.end_serving_if_idle() {
                    return RunEnd::Idle;
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = &mut woken => {}
                Some(()) = running.next() => {}
            }
        }
        // Stopping: refuse what is queued (a plain caller retries with the new owner; a
        // persisted request stays unprocessed in storage), let running handlers end.
        for item in instance.close_and_take_queued() {
            self.refuse(&instance, item);
        }
        while running.next().await.is_some() {}
        if !instance.fence.is_cancelled() {
            handler.on_passivate().await;
        }
        self.active_gauge.dec();
        RunEnd::Stopped
    }

    /// Ends an instance that was stopped while no task served it (the caller of
    /// [`Instance::stop`] got `true`): refuses what is queued, passivates its handler if it
    /// ever started one (unless its shard is lost), and marks it ended. Costs no task of
    /// its own.
    pub(crate) async fn passivate_stopped(&self, instance: &Instance) {
        for item in instance.close_and_take_queued() {
            self.refuse(instance, item);
        }
        let handler = instance.handler.lock().clone();
        if let Some(handler) = handler {
            if !instance.fence.is_cancelled() {
                // Instances are passivated in batches: one that panics must not keep the
                // others of its batch from ending.
                let passivated = AssertUnwindSafe(handler.on_passivate()).catch_unwind();
                if let Err(panic) = passivated.await {
                    tracing::error!(
                        entity = %instance.address,
                        panic = %panic_message(&panic),
                        "entity on_passivate panicked"
                    );
                }
            }
        }
        self.active_gauge.dec();
        instance.mark_ended();
    }

    /// Refuses a queued message of a stopping instance without running it.
    fn refuse(&self, instance: &Instance, item: MailboxItem) {
        instance.pending.fetch_sub(1, Ordering::AcqRel);
        self.pending_count.remove(instance.pending_stripe);
        if item.envelope.persisted {
            self.core.in_flight.abandon(item.envelope.request_id);
        }
        let shard_id = item.envelope.address.shard_id.clone();
        item.fail(ClusterError::ShardNotOwned { shard_id });
    }

    async fn finish_failed(&self, item: MailboxItem, err: ClusterError) {
        if item.envelope.persisted {
            self.core
                .record_failure(item.envelope.request_id, &err.to_string())
                .await;
        }
        item.fail(err);
    }

    async fn process(
        &self,
        instance: &Instance,
        handler: &Arc<dyn EntityHandler>,
        item: MailboxItem,
    ) {
        let span = tracing::debug_span!(
            "cruster.handle",
            tag = %item.envelope.tag,
            request_id = %item.envelope.request_id,
            persisted = item.envelope.persisted,
            remote_parent = crate::trace_context::parent_of(&item.envelope),
        );
        async {
            if item.envelope.streaming {
                self.process_stream(instance, handler.clone(), item).await;
            } else {
                self.process_request(instance, handler.as_ref(), item).await;
            }
        }
        .instrument(span)
        .await;
        instance
            .last_active_ms
            .store(self.now_ms(), Ordering::Relaxed);
        instance.pending.fetch_sub(1, Ordering::AcqRel);
        self.pending_count.remove(instance.pending_stripe);
    }

    /// A token to interrupt a persisted, interruptible request by its id.
    fn interrupt_token(
        &self,
        instance: &Instance,
        envelope: &EnvelopeRequest,
    ) -> Option<CancellationToken> {
        if envelope.uninterruptible || !envelope.persisted {
            return None;
        }
        let token = CancellationToken::new();
        instance.add_interrupt(envelope.request_id, token.clone());
        Some(token)
    }

    async fn process_request(
        &self,
        instance: &Instance,
        handler: &dyn EntityHandler,
        item: MailboxItem,
    ) {
        let MailboxItem { envelope, mut sink } = item;
        let request_id = envelope.request_id;
        let persisted = envelope.persisted;
        let interruptible_by_caller = !persisted && !envelope.uninterruptible;
        let aborted = instance.aborted(envelope.uninterruptible);
        let interrupt = self.interrupt_token(instance, &envelope);
        // No token (and no allocation) for requests nobody can interrupt by id.
        let interrupted = async {
            match &interrupt {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let handled = AssertUnwindSafe(handler.handle(IncomingRequest { envelope })).catch_unwind();
        let ending = tokio::select! {
            result = handled => match result {
                Ok(result) => Ending::Returned(result),
                Err(panic) => Ending::Panicked(panic_message(&panic)),
            },
            _ = aborted => Ending::Aborted,
            _ = caller_gone(&mut sink), if interruptible_by_caller => Ending::Interrupted,
            _ = interrupted => Ending::Interrupted,
        };
        if interrupt.is_some() {
            instance.take_interrupt(request_id);
        }
        // A workflow execution this request finished, stored with its reply below (taken
        // whatever the ending, so nothing stays staged).
        let finished = self.core.finished_executions.take(request_id);
        let exit = match ending {
            Ending::Returned(Ok(bytes)) => ExitResult::Success(bytes),
            Ending::Returned(Err(err @ ClusterError::PersistenceError { .. })) if persisted => {
                // A storage failure is not the handler's answer: count a failed delivery
                // and let the storage poll retry it (dead-lettered at the limit). The
                // caller keeps waiting for the stored reply.
                tracing::warn!(%err, %request_id, "persisted handler hit a storage error; will retry");
                self.core.record_failure(request_id, &err.to_string()).await;
                return;
            }
            Ending::Returned(Err(err)) => ExitResult::failure(&err),
            Ending::Panicked(panic) => {
                let err = ClusterError::handler(format!(
                    "handler of {} panicked: {panic}",
                    instance.address
                ));
                tracing::error!(%err, "entity handler panicked");
                if persisted {
                    // A defect, not an answer: count the attempt; the poll retries it.
                    self.core.record_failure(request_id, &err.to_string()).await;
                    return;
                }
                ExitResult::failure(&err)
            }
            Ending::Interrupted => ExitResult::failure(&ClusterError::Interrupted { request_id }),
            Ending::Aborted if persisted => {
                // Not an answer: the request stays unprocessed for the shard's next owner,
                // and the caller keeps waiting for the reply that owner stores.
                tracing::debug!(%request_id, "persisted handler aborted as its shard leaves; it will run again on the new owner");
                self.core.in_flight.abandon(request_id);
                return;
            }
            Ending::Aborted => ExitResult::failure(&ClusterError::Interrupted { request_id }),
        };
        let mut reply = ReplyWithExit { request_id, exit };
        if !persisted {
            if let Some(finished) = finished {
                // A request that keeps no reply ran a workflow to its end: its record alone.
                match finished.store_record().await {
                    Ok(()) => finished.stored(),
                    Err(err) => {
                        tracing::warn!(%err, %request_id, "could not store a finished workflow execution");
                        reply.exit = ExitResult::failure(&err);
                    }
                }
            }
        } else {
            let push = !sink.has_live_caller();
            if let Err(err) = self.core.store_reply(&reply, push, finished).await {
                // The caller keeps waiting: the request is redelivered and answered then.
                tracing::warn!(%err, %request_id, "could not store a reply; the request stays unprocessed and will be retried");
                self.core.record_failure(request_id, &err.to_string()).await;
                return;
            }
        }
        sink.reply(reply);
    }

    /// Runs a streaming handler, sending chunks as the caller acknowledges them. The stream
    /// ends (never blocks) when the caller goes away or the shard leaves.
    async fn process_stream(
        &self,
        instance: &Instance,
        handler: Arc<dyn EntityHandler>,
        item: MailboxItem,
    ) {
        let MailboxItem { envelope, sink } = item;
        let request_id = envelope.request_id;
        let aborted = instance.aborted(envelope.uninterruptible);
        tokio::pin!(aborted);
        let ReplySink::Stream(tx) = sink else {
            // A streaming envelope without a stream sink (a notify): run it to the end,
            // unless its shard leaves.
            let run = async {
                if let Ok(mut stream) = handler.handle_stream(IncomingRequest { envelope }).await {
                    while stream.next().await.is_some() {}
                }
            };
            tokio::select! {
                _ = run => {}
                _ = &mut aborted => {}
            }
            return;
        };
        let permits = Arc::new(Semaphore::new(STREAM_WINDOW));
        instance.add_stream(
            request_id,
            StreamWindow {
                permits: permits.clone(),
                acked: None,
            },
        );
        let interrupted = || ExitResult::failure(&ClusterError::Interrupted { request_id });
        let exit = async {
            let started = tokio::select! {
                result = handler.handle_stream(IncomingRequest { envelope }) => result,
                _ = &mut aborted => return interrupted(),
                _ = tx.closed() => return interrupted(),
            };
            let mut stream = match started {
                Ok(stream) => stream,
                Err(err) => return ExitResult::failure(&err),
            };
            let mut sequence = 0u32;
            loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = &mut aborted => return interrupted(),
                    _ = tx.closed() => return interrupted(),
                };
                let bytes = match next {
                    None => return ExitResult::Success(Bytes::new()),
                    Some(Err(err)) => return ExitResult::failure(&err),
                    Some(Ok(bytes)) => bytes,
                };
                // Wait for the caller to acknowledge earlier chunks, but never past its
                // departure or the shard's.
                let permit = tokio::select! {
                    permit = permits.acquire() => permit,
                    _ = &mut aborted => return interrupted(),
                    _ = tx.closed() => return interrupted(),
                };
                let Ok(permit) = permit else {
                    return interrupted();
                };
                permit.forget();
                let chunk = ReplyChunk {
                    request_id,
                    sequence,
                    values: vec![bytes],
                };
                sequence += 1;
                if tx.send(Ok(Reply::Chunk(chunk))).is_err() {
                    return interrupted();
                }
            }
        }
        .await;
        instance.remove_stream(request_id);
        let _ = tx.send(Ok(Reply::WithExit(ReplyWithExit { request_id, exit })));
    }
}

async fn caller_gone(sink: &mut ReplySink) {
    match sink {
        ReplySink::Once(tx) => tx.closed().await,
        ReplySink::Stream(tx) => tx.closed().await,
        ReplySink::Nobody => std::future::pending().await,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_stays_small() {
        // Every live entity, busy or idle, holds one (plus its id and handler): a million
        // of them must fit in well under 1 GiB.
        let size = std::mem::size_of::<Instance>();
        assert!(size <= 256, "Instance grew to {size} bytes");
    }
}
