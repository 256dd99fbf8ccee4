//! Re-exports and support items used by code that the cruster macros generate. Not a
//! public API: names here may change in any release.
//!
//! Generated code names only `::cruster::__private::…` (and `std`/`core`), so a crate that
//! depends on `cruster` alone compiles it.
#![allow(missing_docs)]

use std::future::Future;

pub use async_trait::async_trait;
pub use bytes::Bytes;
pub use cruster_sharding as sharding;
pub use cruster_types as types;
pub use serde;

pub use crate::workflow;

use std::sync::Arc;

use cruster_sharding::{EntityClient, EntityContext, EntityOptions, IncomingRequest};
use cruster_types::{wire, ClusterError, EntityType};
use parking_lot::Mutex;

use crate::workflow::WorkflowContext;

/// What `#[entity]` knows about an entity struct: its type name, options and client types.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an entity",
    label = "not an entity",
    note = "add `#[entity]` to the struct `{Self}` (and `#[entity_impl]` to its impl block)"
)]
pub trait EntityDefinition: Sized + Send + Sync + 'static {
    /// The public typed client (`CounterClient`).
    type Client;
    /// The entity-to-entity client, with the protected RPCs (`CounterInternalClient`).
    type InternalClient;

    /// The entity type name (`#[entity(name = "…")]`, default: the struct's name).
    fn entity_type() -> EntityType;

    /// The options of `#[entity(...)]`.
    fn options() -> EntityOptions;

    /// Wraps an `EntityClient` of this type into the entity-to-entity client.
    fn internal_client(client: EntityClient) -> Self::InternalClient;
}

/// Implemented by `#[rpc_group_impl]`: the tags a group dispatches and its dispatcher.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an RPC group",
    label = "not an RPC group",
    note = "add `#[rpc_group]` to the struct `{Self}` and `#[rpc_group_impl]` to its impl block"
)]
#[async_trait]
pub trait RpcGroup: Send + Sync + 'static {
    /// The dispatched tags (public and protected RPCs).
    fn tags() -> &'static [&'static str]
    where
        Self: Sized;

    /// Handles `request` if its tag is one of the group's; `None` otherwise.
    async fn dispatch(&self, request: &IncomingRequest) -> Option<Result<Bytes, ClusterError>>;
}

/// A generated client type, giving access to its untyped `EntityClient`.
pub trait HasEntityClient {
    /// The untyped client.
    fn entity_client(&self) -> &EntityClient;
}

/// Marks a client of an entity that composes the RPC group `G`, so `G`'s client trait is
/// implemented for it.
pub trait ComposesRpcGroup<G>: HasEntityClient {}

/// Encodes a handler's response (or passes its error through).
pub fn encode_response<R: serde::Serialize>(
    result: Result<R, ClusterError>,
) -> Result<Bytes, ClusterError> {
    wire::encode(&result?)
}

/// Names a request type's `DeserializeOwned` requirement at that type (multi-argument RPCs).
pub fn require_deserialize<T: serde::de::DeserializeOwned>() {}

/// The error for a tag nothing dispatches (including `#[private]` methods).
pub fn unknown_tag(request: &IncomingRequest) -> ClusterError {
    ClusterError::UnknownTag {
        entity_type: request.address().entity_type.clone(),
        tag: request.tag().to_string(),
    }
}

/// Checks that no tag is dispatched by two parts (the entity itself and its RPC groups).
///
/// # Errors
/// `InvalidConfig` naming the tag and both parts.
pub fn check_unique_tags(
    entity_type: &EntityType,
    parts: &[(&str, &[&str])],
) -> Result<(), ClusterError> {
    for (index, (part, tags)) in parts.iter().enumerate() {
        for tag in *tags {
            if let Some((other, _)) = parts[..index]
                .iter()
                .find(|(_, earlier)| earlier.contains(tag))
            {
                return Err(ClusterError::InvalidConfig {
                    field: format!("{entity_type}.rpc_groups"),
                    reason: format!(
                        "RPC `{tag}` is defined by both `{other}` and `{part}`; rename one of them"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// What `#[workflow]` knows about a workflow struct: its name.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a workflow",
    label = "not a workflow",
    note = "add `#[workflow]` to the struct `{Self}` (and `#[workflow_impl]` to its impl block)"
)]
pub trait WorkflowName {
    /// The workflow's name (`#[workflow(name = "…")]`, default: the struct's name).
    const NAME: &'static str;
}

/// Implemented by `#[activity_group_impl]` for an activity group struct.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an activity group",
    label = "not an activity group",
    note = "add `#[activity_group]` to the struct `{Self}` and `#[activity_group_impl]` to its \
            impl block"
)]
pub trait ActivityGroup: Send + Sync + 'static {}

/// Checks at compile time that `G` is an activity group (the error names the group).
pub fn require_activity_group<G: ActivityGroup>() {}

/// The execution scope of a workflow that composes the activity group `G`: what the group's
/// journaled activity wrappers need.
pub trait ActivityGroupScope<G>: Send + Sync {
    /// The group value registered with the workflow.
    fn activity_group(&self) -> &Arc<G>;
    /// The running execution.
    fn workflow_context(&self) -> &WorkflowContext;
}

/// A value an activity returns, which is journaled.
#[diagnostic::on_unimplemented(
    message = "the activity result `{Self}` is journaled, so it must implement `Serialize` and \
               `Deserialize` (and be `Send`)",
    label = "not journalable"
)]
pub trait JournalValue: serde::Serialize + serde::de::DeserializeOwned + Send {}

impl<T: serde::Serialize + serde::de::DeserializeOwned + Send> JournalValue for T {}

/// Names an activity result type's journal requirements at that type.
pub fn require_journal_value<T: JournalValue>() {}

/// A workflow's request, which is persisted with its `execute` message.
#[diagnostic::on_unimplemented(
    message = "the workflow request `{Self}` is persisted, so it must implement `Serialize` and \
               `Deserialize` (and be `Send + Sync + 'static`)",
    label = "not a persistable request"
)]
pub trait WorkflowRequest:
    serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static
{
}

impl<T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static> WorkflowRequest
    for T
{
}

/// Names a workflow request type's requirements at that type.
pub fn require_workflow_request<T: WorkflowRequest>() {}

/// An argument of an activity with retries: each attempt gets its own copy.
#[diagnostic::on_unimplemented(
    message = "the argument type `{Self}` of an activity with retries must be `Clone` (and \
               `Send`): every attempt runs with its own copy",
    label = "not `Clone`"
)]
pub trait RetriedArgument: Clone + Send + Sync + 'static {}

impl<T: Clone + Send + Sync + 'static> RetriedArgument for T {}

/// Names an activity argument's `Clone` requirement (activities with retries).
pub fn require_retried_argument<T: RetriedArgument>() {}

/// An argument of an activity without retries, moved into its only attempt.
#[diagnostic::on_unimplemented(
    message = "the argument type `{Self}` of an activity must be `Send + 'static` (owned): it is \
               moved into the activity's transaction scope",
    label = "not an owned `Send` value"
)]
pub trait ActivityArgument: Send + 'static {}

impl<T: Send + 'static> ActivityArgument for T {}

/// Names an activity argument's requirements (activities without retries).
pub fn require_activity_argument<T: ActivityArgument>() {}

/// The arguments of one activity call, handed to each attempt: moved into the only attempt
/// of an activity without retries, cloned for each attempt of one with retries.
pub struct ActivityArgs<A> {
    slot: Mutex<Option<A>>,
    retried: bool,
}

impl<A: Send> ActivityArgs<A> {
    /// Arguments for an activity without retries (no `Clone` needed).
    pub fn once(args: A) -> Self {
        ActivityArgs {
            slot: Mutex::new(Some(args)),
            retried: false,
        }
    }

    /// Arguments moved into the first attempt.
    ///
    /// # Errors
    /// `Handler` if the arguments were already taken (an activity without retries ran twice,
    /// which the runtime never does).
    pub fn take(&self) -> Result<A, ClusterError> {
        self.slot.lock().take().ok_or_else(|| {
            ClusterError::handler("an activity without retries was started a second time")
        })
    }
}

impl<A: Clone + Send> ActivityArgs<A> {
    /// Arguments for an activity with retries.
    pub fn retried(args: A) -> Self {
        ActivityArgs {
            slot: Mutex::new(Some(args)),
            retried: true,
        }
    }

    /// A copy of the arguments for one attempt.
    ///
    /// # Errors
    /// As [`ActivityArgs::take`].
    pub fn copy(&self) -> Result<A, ClusterError> {
        if !self.retried {
            return self.take();
        }
        self.slot.lock().clone().ok_or_else(|| {
            ClusterError::handler("the arguments of an activity with retries are gone")
        })
    }
}

/// The execution id of a workflow key (`key = |req| …` of `#[workflow_impl]`).
pub fn execution_id_of_key<K: std::fmt::Display + ?Sized>(key: &K, hash: bool) -> String {
    crate::workflow::execution_id_from_key(&key.to_string(), hash)
}

tokio::task_local! {
    static ENTITY_CONTEXT: EntityContext;
}

/// Runs a handler with its entity context available to `current_entity_context`.
pub async fn with_entity_context<F: Future>(context: EntityContext, handler: F) -> F::Output {
    ENTITY_CONTEXT.scope(context, handler).await
}

/// The context of the entity instance whose request is being handled.
///
/// # Errors
/// `Handler` when called outside an RPC handler.
pub fn current_entity_context() -> Result<EntityContext, ClusterError> {
    ENTITY_CONTEXT.try_with(EntityContext::clone).map_err(|_| {
        ClusterError::handler(
            "no entity context here: `self.entity_context()` and `self.client::<E>()` work \
             only while an RPC handler runs (not in a task it spawned; take the client before \
             spawning)",
        )
    })
}

/// The entity-to-entity client of `E`, on the cluster of the entity being handled.
///
/// # Errors
/// As [`current_entity_context`].
pub fn internal_client<E: EntityDefinition>() -> Result<E::InternalClient, ClusterError> {
    let context = current_entity_context()?;
    Ok(E::internal_client(EntityClient::new(
        context.sharding,
        E::entity_type(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_defined_twice_is_a_config_error() {
        let entity_type = EntityType::new("User");
        assert!(check_unique_tags(&entity_type, &[("User", &["a"]), ("Audit", &["b"])]).is_ok());
        let err = check_unique_tags(&entity_type, &[("User", &["a"]), ("Audit", &["b", "a"])])
            .unwrap_err();
        assert!(
            matches!(&err, ClusterError::InvalidConfig { reason, .. } if reason.contains("`User` and `Audit`")),
            "{err}"
        );
    }

    #[test]
    fn outside_a_handler_there_is_no_entity_context() {
        assert!(matches!(
            current_entity_context(),
            Err(ClusterError::Handler { .. })
        ));
    }
}
