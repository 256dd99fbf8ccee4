//! Translation between cruster's types and the protobuf frames of `proto/runner.proto`:
//! answer frames, errors as MessagePack `WireError`s, size checks, per-request metadata.
//!
//! Nothing here panics on bad bytes: every decode failure is a `MalformedMessage`.

use bytes::Bytes;
use cruster_types::{wire, ClusterError, TraceContext, WireError};

use crate::proto::{server_frame, Done, MetadataEntry, ServerFrame};

/// The call id of answers about the session itself rather than one call.
pub(crate) const SESSION_CALL: u64 = 0;

/// The error for a message of `size` bytes over `limit`, naming both and the option.
pub(crate) fn too_large(what: &str, size: usize, limit: usize, option: &str) -> ClusterError {
    ClusterError::MalformedMessage {
        reason: format!(
            "{what} is {size} bytes, over the gRPC transport's limit of {limit} bytes \
             (raise `{option}` on both runners, or send less)"
        ),
        source: None,
    }
}

/// `Err(too_large)` when `bytes` is over `limit`.
pub(crate) fn check_size(
    what: &str,
    bytes: &[u8],
    limit: usize,
    option: &str,
) -> Result<(), ClusterError> {
    if bytes.len() > limit {
        Err(too_large(what, bytes.len(), limit, option))
    } else {
        Ok(())
    }
}

/// An error as MessagePack bytes. Encoding plain data cannot fail in practice; if it did,
/// the peer still gets an error it can read.
pub(crate) fn encode_error(err: &ClusterError) -> Bytes {
    wire::encode(&err.to_wire()).unwrap_or_else(|_| {
        let fallback = WireError::Handler {
            message: err.to_string(),
        };
        wire::encode(&fallback).unwrap_or_default()
    })
}

/// An error read from a frame, or `MalformedMessage` if the bytes are not one.
pub(crate) fn decode_error(bytes: &[u8]) -> ClusterError {
    match wire::decode::<WireError>(bytes) {
        Ok(err) => err.into(),
        Err(err) => err,
    }
}

/// The last frame of a call: `err` as an `error` answer.
pub(crate) fn error_answer(call_id: u64, err: &ClusterError) -> ServerFrame {
    ServerFrame {
        call_id,
        last: true,
        body: Some(server_frame::Body::Error(encode_error(err))),
    }
}

/// The last frame of a `send` the receiver did not run: `err` as a `refused` answer.
pub(crate) fn refused_answer(call_id: u64, err: &ClusterError) -> ServerFrame {
    ServerFrame {
        call_id,
        last: true,
        body: Some(server_frame::Body::Refused(encode_error(err))),
    }
}

/// The last frame of a call that finished without a reply.
pub(crate) fn done_answer(call_id: u64) -> ServerFrame {
    ServerFrame {
        call_id,
        last: true,
        body: Some(server_frame::Body::Done(Done {})),
    }
}

/// A reply (already encoded) of a call; `last` for the final reply.
pub(crate) fn reply_answer(call_id: u64, reply: Bytes, last: bool) -> ServerFrame {
    ServerFrame {
        call_id,
        last,
        body: Some(server_frame::Body::Reply(reply)),
    }
}

/// The trace context of an envelope as per-request metadata.
pub(crate) fn metadata_of(trace: &TraceContext) -> Vec<MetadataEntry> {
    trace
        .0
        .iter()
        .map(|(key, value)| MetadataEntry {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

/// The trace parent named in per-request metadata, for the receiving span.
pub(crate) fn trace_parent(metadata: &[MetadataEntry]) -> Option<&str> {
    metadata
        .iter()
        .find(|entry| entry.key.contains("parent"))
        .map(|entry| entry.value.as_str())
}

#[cfg(test)]
mod tests {
    use cruster_types::ShardId;

    use super::*;

    #[test]
    fn errors_round_trip_with_their_variant() {
        let err = ClusterError::ShardNotOwned {
            shard_id: ShardId::new("default", 4),
        };
        let back = decode_error(&encode_error(&err));
        assert!(
            matches!(back, ClusterError::ShardNotOwned { ref shard_id } if shard_id.id == 4),
            "{back:?}"
        );
    }

    #[test]
    fn garbage_is_a_malformed_error() {
        let back = decode_error(b"\xc1 not msgpack");
        assert!(
            matches!(back, ClusterError::MalformedMessage { .. }),
            "{back:?}"
        );
    }

    #[test]
    fn the_size_error_names_the_limit() {
        let err = check_size("the envelope", &[0; 11], 10, "max_message_size").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("11 bytes") && text.contains("limit of 10 bytes"),
            "{text}"
        );
        assert!(check_size("the envelope", &[0; 10], 10, "max_message_size").is_ok());
    }
}
