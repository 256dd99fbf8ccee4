//! The macros of cruster: entities, their RPCs, reusable RPC groups, durable workflows and
//! their activity groups. Use them through `use cruster::prelude::*;` (a crate that depends
//! on `cruster` alone compiles the generated code).
//!
//! Every macro parses its input into a model (entity options, one `RpcDef` or `ActivityDef` per method),
//! validates it and reports *every* problem at its own span, then generates code. When it
//! reports an error it still emits the annotated item, so editors keep working.
//!
//! # `#[entity]`
//!
//! On the struct that holds an entity's shared state (a pool, a config). Entities are
//! stateless: one value of the struct serves every instance of the entity type, and state
//! lives in your database.
//!
//! ```ignore
//! #[entity(
//!     name = "user",            // entity type name (default: the struct's name)
//!     shard_group = "premium",  // shard group (default: "default")
//!     max_idle_time_secs = 300, // idle time before an instance is evicted
//!     mailbox_capacity = 50,    // queued messages per instance (at least 1)
//!     concurrency = 4,          // requests handled at once per instance (0 = unbounded)
//! )]
//! #[derive(Clone)]
//! struct User {
//!     pool: Pool,
//! }
//! ```
//!
//! Every option is optional; those not given take the `ShardingConfig` defaults. An
//! unknown option is a compile error. Beside the struct, `#[entity]` defines, with the
//! struct's visibility:
//!
//! * `UserClient`: the typed client. `UserClient::new(sharding)`,
//!   `UserClient::from_entity_client(client)`, `client.entity_client()` (the untyped
//!   `EntityClient`, for `notify`, `send_at`, `send_stream`, keyed sends, …), plus one method
//!   per public RPC added by `#[entity_impl]`.
//! * `UserInternalClient`: the client for entity-to-entity calls, which also has the
//!   `#[protected]` RPCs (it dereferences to `UserClient` for the others).
//!
//! # `#[entity_impl]`
//!
//! On the entity's impl block. Methods marked `#[rpc]` become RPCs; the others stay
//! ordinary methods.
//!
//! ```ignore
//! #[entity_impl]
//! impl Counter {
//!     /// At-least-once: stored in message storage before it is delivered.
//!     #[rpc(persisted)]
//!     pub async fn increment(&self, request: IncrementRequest) -> Result<i64, ClusterError> { ... }
//!
//!     /// Best-effort, at-most-once.
//!     #[rpc]
//!     pub async fn get(&self, request: GetCounterRequest) -> Result<i64, ClusterError> { ... }
//!
//!     /// No request argument: the client method takes only the entity id.
//!     #[rpc]
//!     pub async fn reset(&self) -> Result<(), ClusterError> { ... }
//!
//!     /// Dispatchable entity-to-entity, but not on `CounterClient`.
//!     #[rpc]
//!     #[protected]
//!     pub async fn sync(&self, request: SyncRequest) -> Result<(), ClusterError> { ... }
//!
//!     /// Neither dispatchable (a request with tag "validate" gets `UnknownTag`) nor on
//!     /// any client: a helper.
//!     #[rpc]
//!     #[private]
//!     async fn validate(&self, request: IncrementRequest) -> Result<bool, ClusterError> { ... }
//! }
//!
//! let counter: CounterClient = Counter { pool }.register(sharding.clone()).await?;
//! let value = counter.increment(&EntityId::new("c-1"), &IncrementRequest { .. }).await?;
//! ```
//!
//! Rules, each checked at compile time with an error at the offending token:
//!
//! * an RPC is an `async fn` taking `&self` (not `&mut self`: an entity may handle several
//!   requests at once) and returning `Result<T, ClusterError>`;
//! * its tag on the wire is the method name;
//! * it takes zero, one or several request arguments. One argument is sent as is; several
//!   are sent as a tuple, and the client method takes each by reference
//!   (`client.transfer(&id, &from, &amount)`); none sends `()`;
//! * every request argument and the response `T` implement `Serialize` and
//!   `DeserializeOwned` (the error points at the type that does not);
//! * `#[protected]` and `#[private]` only apply to `#[rpc]` methods;
//! * the client method has the RPC method's Rust visibility, and its docs.
//!
//! `#[entity_impl]` also generates `register(self, sharding)` on the entity value, which
//! registers the entity type (with the options of `#[entity]`) and returns the typed client.
//! `sharding` is anything `IntoSharding`: `Arc<ShardingImpl>`, `Arc<dyn Sharding>`.
//!
//! ## Calling other entities
//!
//! Inside an RPC handler (of an entity or of an RPC group), two generated `pub(crate)`
//! helpers reach the cluster:
//!
//! * `self.client::<Other>()?` gives an `OtherInternalClient`, with `Other`'s public *and*
//!   protected RPCs;
//! * `self.entity_context()?` gives the `EntityContext` of the instance handling the
//!   request (its address, so its entity id, and the cluster).
//!
//! Both work while a request is being handled and return an error elsewhere (for example
//! in a task the handler spawned: take the client before spawning). They are not
//! generated when the impl block already has a method of the same name. Outside the
//! cluster, `OtherClient::new(sharding)` is the public client, and any RPC (protected
//! ones included) can be sent by tag with `EntityClient::send(&id, "tag", &request)`.
//!
//! # `#[rpc_group]` and `#[rpc_group_impl]`
//!
//! A reusable bundle of RPCs with its own state, composed into several entities:
//!
//! ```ignore
//! #[rpc_group]
//! #[derive(Clone)]
//! struct Auditable {
//!     pool: Pool,
//! }
//!
//! #[rpc_group_impl]
//! impl Auditable {
//!     #[rpc(persisted)]
//!     pub async fn log_action(&self, request: LogActionRequest) -> Result<AuditEntry, ClusterError> { ... }
//! }
//!
//! #[entity_impl(rpc_groups(Auditable))]
//! impl User { ... }
//!
//! let users = User { pool: pool.clone() }
//!     .register(sharding.clone(), Auditable { pool: pool.clone() }) // groups in declaration order
//!     .await?;
//! users.log_action(&id, &request).await?; // needs the `AuditableClient` trait in scope
//! ```
//!
//! `#[rpc_group_impl]` takes the same methods as `#[entity_impl]`. The group's public RPCs
//! become the methods of a trait named after the group (`AuditableClient`), implemented for
//! the client of every entity that composes the group. The trait is defined next to the
//! group, with the group's visibility: code in the group's module sees it already; elsewhere
//! import it (`use crate::audit::{Auditable, AuditableClient};`). The impl block must follow
//! the `#[rpc_group]` struct in the same module. Each registration holds its own group
//! value, so two entities composing one group keep separate dispatch and state; a group's
//! `#[protected]` RPCs are dispatched but reachable only by tag (`EntityClient::send`).
//! Registering fails with `InvalidConfig` if two parts of an entity dispatch the same tag.
//!
//! # `#[workflow]` and `#[workflow_impl]`
//!
//! A durable workflow: an `execute` entry point whose `#[activity]` calls are journaled, so
//! a crash (or a durable sleep) resumes the execution without running a finished activity
//! again.
//!
//! ```ignore
//! #[workflow]                      // optional: #[workflow(name = "orders")]
//! #[derive(Clone)]
//! struct OrderWorkflow { pool: Pool }
//!
//! #[workflow_impl(
//!     key = |req: &ProcessOrderRequest| req.order_id.clone(), // execution id (Display)
//!     hash = false,                                          // default: hashed
//! )]
//! impl OrderWorkflow {
//!     async fn execute(&self, request: ProcessOrderRequest) -> Result<OrderResult, ClusterError> {
//!         self.reserve(request.order_id.clone(), request.item_count).await?; // journaled
//!         self.sleep(Duration::from_secs(60)).await?;                       // durable timer
//!         let n = self.client::<CounterClient>().increment(&id, &1).await?; // journaled call
//!         Ok(OrderResult { .. })
//!     }
//!
//!     #[activity(retries = 3, backoff = "constant", backoff_base_ms = 200)]
//!     async fn reserve(&self, order_id: String, count: u32) -> Result<(), ClusterError> {
//!         self.tx.put(&format!("reservations/{order_id}"), count.to_string()).await?;
//!         Ok(())
//!     }
//! }
//!
//! let client: OrderWorkflowClient = OrderWorkflow { pool }.register(sharding.clone()).await?;
//! ```
//!
//! * Without `key`, the execution id is a hash of the serialized request. `hash = false`
//!   uses the key as it is.
//! * Inside `execute`, `self` is an execution scope that dereferences to the struct: each
//!   activity method is a journaled call, and `self.sleep(d)`, `self.patched("id")` /
//!   `self.deprecate_patch("id")` (versioning a running workflow's code),
//!   `self.client::<C>()` (a generated entity or workflow client whose calls are journaled)
//!   and `self.workflow_context()` are available (unless the block defines methods of those
//!   names).
//! * Inside an activity, `self` dereferences to the struct too, and `self.tx` is the
//!   `ActivityTx` committed atomically with the activity's journal entry.
//! * `Self` in these methods still means the workflow struct. Other methods of the block
//!   stay ordinary methods, reachable from both.
//! * An activity's journal name is its method name; activities, calls to other entities
//!   (by entity type and RPC), sleeps and patch markers are matched to the journal by
//!   position, so the body must take its steps in a deterministic order (a replay that
//!   differs is a `ClusterError::NonDeterminism`; guard a change with `self.patched`).
//! * Activity options: `retries = N` (retried N times after the first attempt),
//!   `backoff = "exponential"` (default; `base * 2^(n-1)`, capped at 60 s) or `"constant"`,
//!   `backoff_base_ms = N` (default 100), `on_cancel = "finish"` (default: an activity
//!   running when its execution is cancelled runs to its end) or `"interrupt"` (it is
//!   stopped at once and its `self.tx` writes rolled back). Only the final result
//!   (success, or the last error) is journaled, with the attempt count.
//! * Activity arguments are owned values (`Send + 'static`; also `Clone` with retries,
//!   since each attempt gets its own copy); results implement `Serialize` and
//!   `Deserialize`. The errors point at the offending type.
//! * `#[workflow]` defines `OrderWorkflowClient` (an alias of
//!   `cruster::workflow::WorkflowClient<OrderWorkflow>`) with the struct's visibility:
//!   `execute`, `start`, `poll`, `join`, `with_key`, `with_key_raw`.
//!
//! # `#[activity_group]` and `#[activity_group_impl]`
//!
//! A reusable bundle of activities with its own state, composed into several workflows:
//!
//! ```ignore
//! #[activity_group]
//! #[derive(Clone)]
//! struct Inventory { pool: Pool }
//!
//! #[activity_group_impl]
//! impl Inventory {
//!     #[activity]
//!     async fn reserve(&self, order_id: String, count: u32) -> Result<String, ClusterError> { ... }
//! }
//!
//! #[workflow_impl(key = |r: &Req| r.id.clone(), activity_groups(Inventory, Payments))]
//! impl OrderWorkflow { /* execute calls self.reserve(...) */ }
//!
//! let client = OrderWorkflow.register(sharding, Inventory { pool }, Payments).await?;
//! ```
//!
//! Group activities are journaled as `Group.method` (`Inventory.reserve`). The group's
//! journaled calls are the methods of a trait named after it (`InventoryActivities`) with
//! the group's visibility; a composing workflow imports it itself (from the group's path),
//! so the impl block must follow the `#[activity_group]` struct in the same module.
//!
//! # `#[rpc]`, `#[protected]`, `#[private]`
//!
//! Method markers read by `#[entity_impl]` and `#[rpc_group_impl]`. On their own, outside
//! such a block, they are a compile error. `#[workflow]` and `#[activity]` are reserved for
//! the workflow macros and rejected in entity and RPC-group blocks.

use proc_macro::TokenStream;
use quote::quote;

mod activity;
mod activity_group;
mod entity;
mod entity_impl;
mod errors;
mod rpc;
mod rpc_group;
mod workflow;
mod workflow_impl;

/// Declares an entity on its state struct; see the [crate docs](crate#entity).
///
/// Options: `name = "…"`, `shard_group = "…"`, `max_idle_time_secs = N`,
/// `mailbox_capacity = N`, `concurrency = N`. Defines `<Name>Client` and
/// `<Name>InternalClient` beside the struct.
#[proc_macro_attribute]
pub fn entity(args: TokenStream, input: TokenStream) -> TokenStream {
    entity::expand_entity(args.into(), input.into()).into()
}

/// Turns an entity's `#[rpc]` methods into dispatch, typed client methods and `register`;
/// see the [crate docs](crate#entity_impl).
///
/// `#[entity_impl(rpc_groups(A, B))]` composes RPC groups; `register` then takes their
/// values after `sharding`, in that order.
#[proc_macro_attribute]
pub fn entity_impl(args: TokenStream, input: TokenStream) -> TokenStream {
    entity_impl::expand_entity_impl(args.into(), input.into()).into()
}

/// Declares a reusable RPC group on its state struct; see the
/// [crate docs](crate#rpc_group-and-rpc_group_impl).
#[proc_macro_attribute]
pub fn rpc_group(args: TokenStream, input: TokenStream) -> TokenStream {
    rpc_group::expand_rpc_group(args.into(), input.into()).into()
}

/// Turns an RPC group's `#[rpc]` methods into dispatch and the `<Group>Client` trait; see
/// the [crate docs](crate#rpc_group-and-rpc_group_impl).
#[proc_macro_attribute]
pub fn rpc_group_impl(args: TokenStream, input: TokenStream) -> TokenStream {
    rpc_group::expand_rpc_group_impl(args.into(), input.into()).into()
}

/// Marks an RPC method: `#[rpc]` (best-effort, at most once) or `#[rpc(persisted)]`
/// (stored first, at least once). Read by `#[entity_impl]` / `#[rpc_group_impl]`.
#[proc_macro_attribute]
pub fn rpc(_args: TokenStream, input: TokenStream) -> TokenStream {
    misplaced_marker("rpc", input)
}

/// Makes an `#[rpc]` method dispatchable entity-to-entity but keeps it off the public client.
#[proc_macro_attribute]
pub fn protected(_args: TokenStream, input: TokenStream) -> TokenStream {
    misplaced_marker("protected", input)
}

/// Makes an `#[rpc]` method a helper: not dispatchable, on no client.
#[proc_macro_attribute]
pub fn private(_args: TokenStream, input: TokenStream) -> TokenStream {
    misplaced_marker("private", input)
}

/// Declares a durable workflow on its struct; see the [crate docs](crate#workflow-and-workflow_impl).
///
/// Option: `name = "…"` (default: the struct's name). Defines `<Name>Client` (an alias of
/// `cruster::workflow::WorkflowClient<Name>`) beside the struct, with its visibility.
#[proc_macro_attribute]
pub fn workflow(args: TokenStream, input: TokenStream) -> TokenStream {
    workflow::expand_workflow(args.into(), input.into()).into()
}

/// Turns a workflow's `execute` and `#[activity]` methods into a journaled workflow, and
/// generates `register`; see the [crate docs](crate#workflow-and-workflow_impl).
///
/// Options: `key = |req: &R| …` (the execution id; hashed unless `hash = false`),
/// `hash = bool`, `activity_groups(A, B)`.
#[proc_macro_attribute]
pub fn workflow_impl(args: TokenStream, input: TokenStream) -> TokenStream {
    workflow_impl::expand_workflow_impl(args.into(), input.into()).into()
}

/// Marks a journaled activity in a `#[workflow_impl]` or `#[activity_group_impl]` block:
/// `#[activity]`, or `#[activity(retries = N, backoff = "exponential" | "constant",
/// backoff_base_ms = N, on_cancel = "finish" | "interrupt")]`.
#[proc_macro_attribute]
pub fn activity(_args: TokenStream, input: TokenStream) -> TokenStream {
    let input = proc_macro2::TokenStream::from(input);
    let error = syn::Error::new(
        proc_macro2::Span::call_site(),
        "#[activity] only has a meaning on a method inside a #[workflow_impl] or \
         #[activity_group_impl] impl block",
    )
    .to_compile_error();
    quote!(#input #error).into()
}

/// Declares a reusable activity group on its state struct; see the
/// [crate docs](crate#activity_group-and-activity_group_impl).
#[proc_macro_attribute]
pub fn activity_group(args: TokenStream, input: TokenStream) -> TokenStream {
    workflow::expand_activity_group(args.into(), input.into()).into()
}

/// Turns an activity group's `#[activity]` methods into the `<Group>Activities` trait that
/// composing workflows call; see the [crate docs](crate#activity_group-and-activity_group_impl).
#[proc_macro_attribute]
pub fn activity_group_impl(args: TokenStream, input: TokenStream) -> TokenStream {
    activity_group::expand_activity_group_impl(args.into(), input.into()).into()
}

/// A method marker used outside an `#[entity_impl]` / `#[rpc_group_impl]` block (which would
/// have removed it): report it and keep the item.
fn misplaced_marker(name: &str, input: TokenStream) -> TokenStream {
    let input = proc_macro2::TokenStream::from(input);
    let message = format!(
        "#[{name}] only has a meaning on a method inside an #[entity_impl] or #[rpc_group_impl] \
         impl block"
    );
    let error = syn::Error::new(proc_macro2::Span::call_site(), message).to_compile_error();
    quote!(#input #error).into()
}
