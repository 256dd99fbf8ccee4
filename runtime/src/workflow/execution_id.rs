//! Execution ids: from an idempotency key (hashed or raw) or from the request itself.

use cruster_types::{stable_hash64, wire, ClusterError};
use serde::Serialize;

/// The execution id of a key: `hash = true` gives a stable 16-hex-digit hash of the key,
/// `hash = false` the key as it is.
///
/// ```
/// use cruster::workflow::execution_id_from_key;
/// assert_eq!(execution_id_from_key("order-42", false), "order-42");
/// assert_eq!(execution_id_from_key("order-42", true).len(), 16);
/// assert_eq!(execution_id_from_key("x", true), execution_id_from_key("x", true));
/// ```
pub fn execution_id_from_key(key: &str, hash: bool) -> String {
    if hash {
        format!("{:016x}", stable_hash64(key))
    } else {
        key.to_string()
    }
}

/// The execution id of a request without a key: a hash of its MessagePack encoding, so the
/// same request twice is the same execution.
///
/// # Errors
/// `MalformedMessage` if the request cannot be serialized.
pub fn execution_id_from_request<T: Serialize + ?Sized>(
    request: &T,
) -> Result<String, ClusterError> {
    let bytes = wire::encode(request)?;
    // Hash the bytes as lossless hex so any byte sequence maps to a distinct string.
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    Ok(execution_id_from_key(&hex, true))
}
