//! What sits in an entity's mailbox: a request and where its reply goes.
//!
//! Owns the reply side of one delivery. Never blocks: replying to a caller that went away
//! is not an error.

use cruster_types::{ClusterError, EnvelopeRequest, ExitResult, Reply, ReplyWithExit};
use tokio::sync::{mpsc, oneshot};

/// How a delivery waited on by one caller ended.
pub(crate) enum Outcome {
    /// The handler ran (or the runtime answered for it).
    Reply(ReplyWithExit),
    /// The request was not run (its entity stopped, its shard moved): the envelope comes
    /// back so the caller can route it again.
    Refused(ClusterError, Box<EnvelopeRequest>),
}

/// Where the reply of a delivered request goes.
pub(crate) enum ReplySink {
    /// Nobody waits (a notify, or a persisted message picked up by the storage poll).
    Nobody,
    /// One caller waits for the final reply.
    Once(oneshot::Sender<Outcome>),
    /// A caller reads a stream of chunks and the final reply.
    Stream(mpsc::UnboundedSender<Result<Reply, ClusterError>>),
}

impl ReplySink {
    /// Whether a caller still holds the other end of this sink (it gets the reply
    /// directly, so nobody needs it pushed).
    pub(crate) fn has_live_caller(&self) -> bool {
        match self {
            ReplySink::Nobody => false,
            ReplySink::Once(tx) => !tx.is_closed(),
            ReplySink::Stream(tx) => !tx.is_closed(),
        }
    }

    /// Delivers the final reply.
    pub(crate) fn reply(self, reply: ReplyWithExit) {
        match self {
            ReplySink::Nobody => {}
            ReplySink::Once(tx) => {
                let _ = tx.send(Outcome::Reply(reply));
            }
            ReplySink::Stream(tx) => {
                let _ = tx.send(Ok(Reply::WithExit(reply)));
            }
        }
    }
}

/// One queued request.
pub(crate) struct MailboxItem {
    pub(crate) envelope: EnvelopeRequest,
    pub(crate) sink: ReplySink,
}

impl MailboxItem {
    /// Refuses the item without running it.
    pub(crate) fn fail(self, err: ClusterError) {
        match self.sink {
            ReplySink::Nobody => {}
            ReplySink::Once(tx) => {
                let _ = tx.send(Outcome::Refused(err, Box::new(self.envelope)));
            }
            ReplySink::Stream(tx) => {
                let _ = tx.send(Ok(Reply::WithExit(ReplyWithExit {
                    request_id: self.envelope.request_id,
                    exit: ExitResult::failure(&err),
                })));
            }
        }
    }
}
