//! The trace context an envelope carries from its sender to the runner that handles it.
//!
//! The sender's span and runner travel as one entry of the envelope's trace map, so the
//! receiving runner's `cruster.handle` span names where a request came from.

use cruster_types::{EnvelopeRequest, RunnerAddress};

/// Trace-context key of the sender's span (`span-id@runner-address`).
pub const TRACE_PARENT_SPAN: &str = "cruster-parent-span";

/// Records the current span and this runner in an envelope that carries no trace yet.
pub(crate) fn attach(envelope: &mut EnvelopeRequest, runner: &RunnerAddress) {
    if !envelope.trace.is_empty() {
        return;
    }
    if let Some(id) = tracing::Span::current().id() {
        envelope.trace.0.push((
            TRACE_PARENT_SPAN.to_string(),
            format!("{}@{runner}", id.into_u64()),
        ));
    }
}

/// The sender's span recorded in an envelope, or `""`.
pub(crate) fn parent_of(envelope: &EnvelopeRequest) -> &str {
    envelope
        .trace
        .0
        .iter()
        .find(|(k, _)| k == TRACE_PARENT_SPAN)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}
