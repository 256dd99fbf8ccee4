//! MessagePack helpers. Every decode failure becomes [`ClusterError::MalformedMessage`]
//! naming what was being decoded; nothing here panics on bad bytes.
//!
//! ```
//! use cruster_types::{wire, ClusterError};
//! let bytes = wire::encode(&("hello", 5u32)).unwrap();
//! let back: (String, u32) = wire::decode(&bytes).unwrap();
//! assert_eq!(back, ("hello".to_string(), 5));
//! let err = wire::decode::<u32>(&[0xc1]).unwrap_err();
//! assert!(matches!(err, ClusterError::MalformedMessage { .. }));
//! ```

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::envelope::EnvelopeRequest;
use crate::error::ClusterError;
use crate::reply::Reply;

/// Encodes a value as MessagePack (maps with field names, so fields can be added later).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, ClusterError> {
    rmp_serde::to_vec_named(value)
        .map(Bytes::from)
        .map_err(|e| {
            ClusterError::malformed(format!("cannot encode {}", std::any::type_name::<T>()), e)
        })
}

/// Decodes a MessagePack value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClusterError> {
    rmp_serde::from_slice(bytes).map_err(|e| {
        ClusterError::malformed(
            format!(
                "cannot decode {} from {} bytes",
                std::any::type_name::<T>(),
                bytes.len()
            ),
            e,
        )
    })
}

/// Encodes an envelope.
pub fn encode_envelope(envelope: &EnvelopeRequest) -> Result<Bytes, ClusterError> {
    encode(envelope)
}

/// Decodes an envelope.
pub fn decode_envelope(bytes: &[u8]) -> Result<EnvelopeRequest, ClusterError> {
    decode(bytes)
}

/// Encodes a reply.
pub fn encode_reply(reply: &Reply) -> Result<Bytes, ClusterError> {
    encode(reply)
}

/// Decodes a reply.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, ClusterError> {
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn sample_envelope() -> EnvelopeRequest {
        let mut env = EnvelopeRequest::new(
            Snowflake(42),
            EntityAddress {
                shard_id: ShardId::new("default", 1),
                entity_type: EntityType::new("Counter"),
                entity_id: EntityId::new("c"),
            },
            "increment",
            Bytes::from_static(b"\x01\x02"),
        );
        env.persisted = true;
        env.dedupe_key = Some("k".into());
        env.deliver_at = Some(chrono::Utc::now());
        env
    }

    #[test]
    fn garbage_never_panics_and_is_malformed() {
        let inputs: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xc1],
            vec![0xff; 64],
            b"not msgpack at all".to_vec(),
            vec![0x92, 0x01],
        ];
        for input in inputs {
            assert!(matches!(
                decode_envelope(&input),
                Err(ClusterError::MalformedMessage { .. })
            ));
            assert!(matches!(
                decode_reply(&input),
                Err(ClusterError::MalformedMessage { .. })
            ));
        }
        // a truncated real envelope
        let bytes = encode_envelope(&sample_envelope()).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode_envelope(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn replies_round_trip() {
        let replies = vec![
            Reply::WithExit(ReplyWithExit {
                request_id: Snowflake(1),
                exit: ExitResult::Success(Bytes::from_static(b"ok")),
            }),
            Reply::WithExit(ReplyWithExit {
                request_id: Snowflake(1),
                exit: ExitResult::failure(&ClusterError::ShuttingDown),
            }),
            Reply::Chunk(ReplyChunk {
                request_id: Snowflake(2),
                sequence: 3,
                values: vec![Bytes::from_static(b"a")],
            }),
        ];
        for reply in replies {
            assert_eq!(decode_reply(&encode_reply(&reply).unwrap()).unwrap(), reply);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_envelope(&bytes);
            let _ = decode_reply(&bytes);
        }

        #[test]
        fn envelopes_round_trip(id in 0i64..i64::MAX, tag in "[a-z_]{1,20}", payload in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut env = sample_envelope();
            env.request_id = Snowflake(id);
            env.tag = tag.into();
            env.payload = Bytes::from(payload);
            proptest::prop_assert_eq!(decode_envelope(&encode_envelope(&env).unwrap()).unwrap(), env);
        }
    }
}
