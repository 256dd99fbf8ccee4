//! How a message reaches its handler and its answer reaches the caller: plain routing with
//! its retries ([`router`]), persisted save → deliver → reply ([`persisted`]), the
//! redelivery poll ([`storage_poller`]), the callers waiting for replies and workflow
//! results ([`waiter_registry`]) with their batched fallback check ([`waiter_fallback`]),
//! the in-flight set, and the inbound side for requests from other runners ([`inbound`]).

pub(crate) mod in_flight;
pub(crate) mod inbound;
pub(crate) mod persisted;
pub(crate) mod reply_push;
pub(crate) mod reply_stream;
pub(crate) mod router;
pub(crate) mod storage_poller;
pub(crate) mod waiter_fallback;
pub(crate) mod waiter_registry;
