//! Replies to requests: a final [`ReplyWithExit`], or ordered [`ReplyChunk`]s of a stream.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{ClusterError, WireError};
use crate::snowflake::Snowflake;

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitResult {
    /// The handler succeeded; the MessagePack-encoded response.
    Success(Bytes),
    /// The handler (or the runtime) failed.
    Failure(WireError),
}

impl ExitResult {
    /// The failure of a [`ClusterError`].
    pub fn failure(err: &ClusterError) -> Self {
        ExitResult::Failure(err.to_wire())
    }

    /// The response bytes, or the failure rebuilt as a [`ClusterError`].
    pub fn into_result(self) -> Result<Bytes, ClusterError> {
        match self {
            ExitResult::Success(bytes) => Ok(bytes),
            ExitResult::Failure(err) => Err(err.into()),
        }
    }
}

/// The final reply to a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyWithExit {
    /// The request this answers.
    pub request_id: Snowflake,
    /// The outcome.
    pub exit: ExitResult,
}

/// One or more values of a streamed reply; `sequence` orders chunks from 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyChunk {
    /// The request this answers.
    pub request_id: Snowflake,
    /// Position of the chunk in the stream, from 0 without gaps.
    pub sequence: u32,
    /// MessagePack-encoded values.
    pub values: Vec<Bytes>,
}

/// Any reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The final reply (a stream's end).
    WithExit(ReplyWithExit),
    /// A chunk of a stream.
    Chunk(ReplyChunk),
}

impl Reply {
    /// The request this answers.
    pub fn request_id(&self) -> Snowflake {
        match self {
            Reply::WithExit(r) => r.request_id,
            Reply::Chunk(c) => c.request_id,
        }
    }
}
