//! Small adapters over reply streams: one final reply as a stream, a channel as a stream,
//! a stream cut after its final reply, and reading a stream to its final reply.

use cruster_sharding::ReplyStream;
use cruster_types::{ClusterError, Reply, ReplyWithExit, RunnerAddress};
use futures::StreamExt;
use tokio::sync::mpsc;

/// A stream of one final reply.
pub(crate) fn single_reply(reply: ReplyWithExit) -> ReplyStream {
    futures::stream::once(async move { Ok(Reply::WithExit(reply)) }).boxed()
}

/// The replies a local stream handler sends through a channel.
pub(crate) fn from_channel(
    mut rx: mpsc::UnboundedReceiver<Result<Reply, ClusterError>>,
) -> ReplyStream {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Ends a reply stream after its final reply (or its first error).
pub(crate) fn until_exit(stream: ReplyStream) -> ReplyStream {
    let mut done = false;
    stream
        .take_while(move |item| {
            let keep = !done;
            if matches!(item, Ok(Reply::WithExit(_)) | Err(_)) {
                done = true;
            }
            futures::future::ready(keep)
        })
        .boxed()
}

/// Reads a reply stream to its final reply.
pub(crate) async fn final_reply(
    mut stream: ReplyStream,
    from: &RunnerAddress,
) -> Result<ReplyWithExit, ClusterError> {
    while let Some(item) = stream.next().await {
        if let Reply::WithExit(reply) = item? {
            return Ok(reply);
        }
    }
    Err(ClusterError::RunnerUnavailable {
        address: from.clone(),
        reason: "the reply stream ended without a final reply".into(),
    })
}
