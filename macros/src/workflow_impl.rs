//! `#[workflow_impl(key = |req: &R| …, hash = bool, activity_groups(A, B))]` on a workflow's
//! impl block.
//!
//! The block holds `async fn execute(&self, request: R) -> Result<T, ClusterError>` and
//! `#[activity]` methods. They are moved onto two generated scope types (inside an
//! anonymous `const`, so nothing leaks into the user's module):
//!
//! * the **execution scope** (`self` inside `execute`): dereferences to the workflow struct,
//!   and has one journaled method per activity (and, through the group traits, per group
//!   activity), plus `sleep`, `patched`, `deprecate_patch`, `client` and
//!   `workflow_context`;
//! * the **activity scope** (`self` inside an activity): dereferences to the workflow
//!   struct and has a `tx: ActivityTx` field.
//!
//! Other methods stay in the user's impl block, reachable from both scopes through `Deref`.
//! The workflow struct implements `WorkflowDefinition`; a hidden body type holding the struct
//! and its groups implements `WorkflowBody`; `register(self, sharding, groups…)` registers it.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, FnArg, Ident, ImplItemFn, ItemImpl, Lit, Meta, Path, ReturnType, Token, Type};

use crate::activity::{self, path_text, replace_self_type, ActivityDef};
use crate::entity_impl::group_param;
use crate::errors::Errors;
use crate::rpc::{self, result_ok_type};

/// The options `#[workflow_impl(...)]` accepts.
const WORKFLOW_IMPL_OPTIONS: &[&str] = &["key", "hash", "activity_groups"];

/// The parsed `#[workflow_impl(...)]` arguments.
#[derive(Default)]
pub(crate) struct WorkflowImplArgs {
    /// `key = |req: &R| …`: the execution id's source.
    pub(crate) key: Option<Expr>,
    /// `hash = bool` (default `true`).
    pub(crate) hash: Option<bool>,
    /// Composed activity groups, in declaration order (= `register`'s argument order).
    pub(crate) activity_groups: Vec<Path>,
}

/// Parses the arguments of `#[workflow_impl(...)]`.
pub(crate) fn parse_workflow_impl_args(args: TokenStream, errors: &mut Errors) -> WorkflowImplArgs {
    let mut parsed = WorkflowImplArgs::default();
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args) {
        Ok(metas) => metas,
        Err(err) => {
            errors.push(err);
            return parsed;
        }
    };
    let mut seen: Vec<String> = Vec::new();
    let mut hash_span = None;
    for meta in metas {
        let key = path_text(meta.path());
        if key == "hash" {
            hash_span = Some(meta.path().span());
        }
        if !WORKFLOW_IMPL_OPTIONS.contains(&key.as_str()) {
            errors.at(
                meta.path(),
                format!(
                    "unknown #[workflow_impl] option `{key}`; expected one of: {}",
                    WORKFLOW_IMPL_OPTIONS.join(", ")
                ),
            );
            continue;
        }
        if seen.contains(&key) {
            errors.at(meta.path(), format!("`{key}` is given more than once"));
            continue;
        }
        seen.push(key.clone());
        match (key.as_str(), &meta) {
            ("key", Meta::NameValue(nv)) => parsed.key = Some(nv.value.clone()),
            ("hash", Meta::NameValue(nv)) => match &nv.value {
                Expr::Lit(expr) => match &expr.lit {
                    Lit::Bool(b) => parsed.hash = Some(b.value),
                    other => errors.at(other, "`hash` takes `true` or `false`"),
                },
                other => errors.at(other, "`hash` takes `true` or `false`"),
            },
            ("activity_groups", Meta::List(list)) => {
                match list.parse_args_with(Punctuated::<Path, Token![,]>::parse_terminated) {
                    Ok(groups) => parsed.activity_groups.extend(groups),
                    Err(err) => errors.push(err),
                }
            }
            ("activity_groups", other) => {
                errors.at(other, "expected `activity_groups(GroupA, GroupB, ...)`")
            }
            (_, other) => errors.at(other, format!("expected `{key} = ...`")),
        }
    }
    if let (Some(span), None) = (hash_span, &parsed.key) {
        errors.at_span(
            span,
            "`hash` only applies with `key = |req| ...`; without a key the execution id is a \
             hash of the serialized request",
        );
    }
    for (i, group) in parsed.activity_groups.iter().enumerate() {
        if parsed.activity_groups[..i].contains(group) {
            errors.at(group, "this activity group is composed twice");
        }
    }
    parsed
}

/// The checked `execute` method.
struct ExecuteDef {
    method: ImplItemFn,
    request: Type,
    response: Type,
}

/// Checks `async fn execute(&self, request: R) -> Result<T, ClusterError>`. Reports every
/// problem; `None` when no workflow can be generated from it.
fn check_execute(mut method: ImplItemFn, errors: &mut Errors) -> Option<ExecuteDef> {
    let sig = &method.sig;
    if sig.asyncness.is_none() {
        errors.at(sig.fn_token, "`execute` must be an `async fn`");
    }
    if !sig.generics.params.is_empty() {
        errors.at(&sig.generics, "`execute` cannot be generic");
    }
    match sig.inputs.first() {
        Some(FnArg::Receiver(receiver))
            if receiver.reference.is_some()
                && receiver.mutability.is_none()
                && receiver.colon_token.is_none() => {}
        Some(FnArg::Receiver(receiver)) => errors.at(
            receiver,
            "`execute` takes `&self`: one workflow value serves every execution",
        ),
        _ => errors.at(&sig.ident, "`execute` must take `&self` and the request"),
    }
    let typed: Vec<&syn::PatType> = sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            FnArg::Typed(t) => Some(t),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let request = match typed.as_slice() {
        [one] => Some((*one.ty).clone()),
        _ => {
            errors.at(
                &sig.inputs,
                "`execute` takes exactly one argument after `&self`: the request (use a struct \
                 or a tuple for several values)",
            );
            None
        }
    };
    let message = "`execute` must return `Result<T, ClusterError>` (`T` must implement \
                   Serialize and Deserialize)";
    let response = match &sig.output {
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => Some(ok.clone()),
            None => {
                errors.at(ty, message);
                None
            }
        },
        ReturnType::Default => {
            errors.at_span(sig.paren_token.span.close(), message);
            None
        }
    };
    let (request, response) = (request?, response?);
    method.sig.asyncness = Some(Default::default());
    if let Some(first @ FnArg::Receiver(_)) = method.sig.inputs.first_mut() {
        *first = syn::parse_quote!(&self);
    }
    Some(ExecuteDef {
        method,
        request,
        response,
    })
}

/// Expands `#[workflow_impl(...)]`.
pub(crate) fn expand_workflow_impl(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse_workflow_impl_args(args, &mut errors);
    let mut item: ItemImpl = match syn::parse2(input) {
        Ok(item) => item,
        Err(err) => return err.to_compile_error(),
    };
    let Some(self_path) = check_impl_block(&item, "#[workflow_impl]", &mut errors) else {
        return rpc::fallback(item, &errors);
    };
    let original = item.clone();
    let split = activity::split_impl(&mut item, "#[workflow_impl]", None, true, &mut errors);
    let execute = match split.execute {
        Some(method) => check_execute(method, &mut errors),
        None => {
            errors.at(
                &item.self_ty,
                "#[workflow_impl] needs the entry point `async fn execute(&self, request: R) -> \
                 Result<T, ClusterError>`",
            );
            None
        }
    };
    let Some(execute) = execute else {
        return rpc::fallback(strip_markers(original), &errors);
    };
    let generated = generate(
        &self_path,
        &args,
        &execute,
        &split.activities,
        &split.method_names,
    );
    let compile_errors = errors.to_compile_errors();
    quote! {
        #item
        #generated
        #compile_errors
    }
}

/// Checks the impl block itself (inherent, not generic, of a named type); returns its path.
pub(crate) fn check_impl_block(item: &ItemImpl, block: &str, errors: &mut Errors) -> Option<Path> {
    let mut usable = true;
    if let Some((_, trait_path, _)) = &item.trait_ {
        errors.at(
            trait_path,
            format!("{block} goes on an inherent impl block (`impl MyType {{ ... }}`)"),
        );
        usable = false;
    }
    if !item.generics.params.is_empty() {
        errors.at(
            &item.generics,
            format!("{block} does not support generic impl blocks"),
        );
        usable = false;
    }
    match &*item.self_ty {
        Type::Path(type_path) if type_path.qself.is_none() && usable => {
            Some(type_path.path.clone())
        }
        Type::Path(type_path) if type_path.qself.is_none() => None,
        other => {
            errors.at(other, format!("{block} expects the impl of a named struct"));
            None
        }
    }
}

/// The impl block with the cruster method attributes removed (for the fallback output, so
/// the markers do not report themselves again).
pub(crate) fn strip_markers(mut item: ItemImpl) -> ItemImpl {
    for impl_item in &mut item.items {
        if let syn::ImplItem::Fn(method) = impl_item {
            method
                .attrs
                .retain(|attr| !activity::is_marker(attr, "activity"));
        }
    }
    item
}

/// `path` with its last segment renamed.
pub(crate) fn sibling(path: &Path, rename: impl Fn(&Ident) -> Ident) -> Path {
    let mut path = path.clone();
    if let Some(last) = path.segments.last_mut() {
        last.ident = rename(&last.ident);
    }
    path
}

fn generate(
    self_path: &Path,
    args: &WorkflowImplArgs,
    execute: &ExecuteDef,
    activities: &[ActivityDef],
    method_names: &[String],
) -> TokenStream {
    let body_ty = format_ident!("__CrusterWorkflowBody");
    let execution_ty = format_ident!("__CrusterWorkflowExecution");
    let activity_ty = format_ident!("__CrusterWorkflowActivity");
    let self_name = self_path
        .segments
        .last()
        .map(|s| s.ident.to_string())
        .unwrap_or_default();
    let groups = &args.activity_groups;
    let group_fields: Vec<Ident> = (0..groups.len())
        .map(|i| format_ident!("group{}", i))
        .collect();
    let group_params: Vec<Ident> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| group_param(g, i))
        .collect();
    let group_traits: Vec<Path> = groups
        .iter()
        .map(|g| sibling(g, |i| format_ident!("{}Activities", i)))
        .collect();
    let group_checks = groups
        .iter()
        .map(|g| quote_spanned!(g.span()=> ::cruster::__private::require_activity_group::<#g>();));

    let request = replace_self_type(execute.request.to_token_stream(), self_path);
    let response = replace_self_type(execute.response.to_token_stream(), self_path);
    let execute_method = replace_self_type(execute.method.to_token_stream(), self_path);
    let request_check = quote_spanned!(execute.request.span()=>
        ::cruster::__private::require_workflow_request::<#request>();
    );
    let response_check = quote_spanned!(execute.response.span()=>
        ::cruster::__private::require_journal_value::<#response>();
    );

    let execution_id = match &args.key {
        Some(key) => {
            let hash = args.hash.unwrap_or(true);
            quote! {
                let __cruster_key = (#key)(request);
                ::core::result::Result::Ok(::cruster::__private::execution_id_of_key(&__cruster_key, #hash))
            }
        }
        None => quote!(::cruster::__private::workflow::execution_id_from_request(
            request
        )),
    };

    // Journaled calls on the execution scope, bodies on the activity scope.
    let journaled = activities.iter().map(|activity| {
        let call = activity::journaled_call(
            activity,
            quote!(self.context),
            quote!(#activity_ty {
                body: ::std::sync::Arc::clone(&__cruster_body),
                tx: __cruster_tx,
            }),
        );
        let activity::JournaledCall {
            params,
            response,
            bind_args,
            call,
        } = call;
        let docs = &activity.docs;
        let vis = &activity.vis;
        let method = &activity.method;
        let response = replace_self_type(response, self_path);
        let params = replace_self_type(params, self_path);
        quote! {
            #(#docs)*
            #vis async fn #method(&self #params) -> #response {
                #bind_args
                let __cruster_body = ::std::sync::Arc::clone(&self.body);
                #call.await
            }
        }
    });
    let bodies = activities
        .iter()
        .map(|a| activity::activity_body(a, self_path));

    let has = |name: &str| method_names.iter().any(|n| n == name);
    let sleep = (!has("sleep")).then(|| {
        quote! {
            /// Durable sleep: the execution suspends (freeing its entity) and resumes no
            /// earlier than `duration` after this call was first reached, even across
            /// restarts.
            fn sleep(
                &self,
                duration: ::core::time::Duration,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<(), ::cruster::__private::types::ClusterError>,
            > + Send + '_ {
                self.context.sleep(duration)
            }
        }
    });
    let client = (!has("client")).then(|| {
        quote! {
            /// A client of another entity or workflow whose calls are journaled.
            fn client<C: ::cruster::__private::workflow::ClientFromSharding>(&self) -> C {
                self.context.client::<C>()
            }
        }
    });
    let patched = (!has("patched")).then(|| {
        quote! {
            /// Whether this execution takes the new path of patch `patch`: `true` for an
            /// execution that reaches this point under code that has the patch (recorded in
            /// its journal), `false` for one that started before the patch existed and
            /// replays the old path. See `WorkflowContext::patched`.
            fn patched<'a>(
                &'a self,
                patch: &'a str,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<bool, ::cruster::__private::types::ClusterError>,
            > + Send + 'a {
                self.context.patched(patch)
            }
        }
    });
    let deprecate_patch = (!has("deprecate_patch")).then(|| {
        quote! {
            /// Patch `patch`'s old path is deleted (no execution that started before it
            /// remains); executions that recorded the patch still replay. See
            /// `WorkflowContext::deprecate_patch`.
            fn deprecate_patch<'a>(
                &'a self,
                patch: &'a str,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<(), ::cruster::__private::types::ClusterError>,
            > + Send + 'a {
                self.context.deprecate_patch(patch)
            }
        }
    });
    let context_helper = (!has("workflow_context")).then(|| {
        quote! {
            /// The running execution (its id, the cluster).
            fn workflow_context(&self) -> &::cruster::__private::workflow::WorkflowContext {
                &self.context
            }
        }
    });

    let register_doc = if groups.is_empty() {
        format!(
            "Registers the [`{self_name}`] workflow on `sharding` and returns its typed client."
        )
    } else {
        format!(
            "Registers the [`{self_name}`] workflow on `sharding` with its activity groups (in \
             the order of `activity_groups(...)`) and returns its typed client."
        )
    };

    quote! {
        const _: () = {
            #(#[allow(unused_imports)] use #group_traits as _;)*

            struct #body_ty {
                workflow: #self_path,
                #(#group_fields: ::std::sync::Arc<#groups>,)*
            }

            struct #execution_ty {
                body: ::std::sync::Arc<#body_ty>,
                context: ::cruster::__private::workflow::WorkflowContext,
            }

            struct #activity_ty {
                body: ::std::sync::Arc<#body_ty>,
                /// The activity's transaction, committed with its journal entry.
                tx: ::cruster::__private::workflow::ActivityTx,
            }

            impl ::core::ops::Deref for #execution_ty {
                type Target = #self_path;

                fn deref(&self) -> &#self_path {
                    &self.body.workflow
                }
            }

            impl ::core::ops::Deref for #activity_ty {
                type Target = #self_path;

                fn deref(&self) -> &#self_path {
                    &self.body.workflow
                }
            }

            #[allow(dead_code)]
            impl #execution_ty {
                #execute_method
                #(#journaled)*
                #sleep
                #patched
                #deprecate_patch
                #client
                #context_helper
            }

            #[allow(dead_code)]
            impl #activity_ty {
                #(#bodies)*
            }

            #(impl ::cruster::__private::ActivityGroupScope<#groups> for #execution_ty {
                fn activity_group(&self) -> &::std::sync::Arc<#groups> {
                    &self.body.#group_fields
                }

                fn workflow_context(&self) -> &::cruster::__private::workflow::WorkflowContext {
                    &self.context
                }
            })*

            impl ::cruster::__private::workflow::WorkflowDefinition for #self_path {
                type Request = #request;
                type Response = #response;
                const NAME: &'static str = <#self_path as ::cruster::__private::WorkflowName>::NAME;

                fn execution_id(
                    request: &#request,
                ) -> ::core::result::Result<::std::string::String, ::cruster::__private::types::ClusterError> {
                    #execution_id
                }
            }

            impl ::cruster::__private::workflow::WorkflowBody for #body_ty {
                type Workflow = #self_path;

                fn execute(
                    self: ::std::sync::Arc<Self>,
                    context: ::cruster::__private::workflow::WorkflowContext,
                    request: #request,
                ) -> ::cruster::__private::workflow::WorkflowFuture<#response> {
                    ::std::boxed::Box::pin(async move {
                        let scope = #execution_ty { body: self, context };
                        scope.execute(request).await
                    })
                }
            }

            impl #self_path {
                #[doc = #register_doc]
                ///
                /// # Errors
                /// `Unsupported` when the runner cannot run workflows (no workflow or message
                /// storage); `InvalidConfig` if the workflow is already registered.
                pub async fn register(
                    self,
                    sharding: impl ::cruster::__private::sharding::IntoSharding,
                    #(#group_params: #groups,)*
                ) -> ::core::result::Result<
                    ::cruster::__private::workflow::WorkflowClient<#self_path>,
                    ::cruster::__private::types::ClusterError,
                > {
                    #(#group_checks)*
                    #request_check
                    #response_check
                    ::cruster::__private::workflow::register_workflow(
                        sharding,
                        #body_ty {
                            workflow: self,
                            #(#group_fields: ::std::sync::Arc::new(#group_params),)*
                        },
                    )
                    .await
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_impl_options_are_read() {
        let mut errors = Errors::default();
        let args = parse_workflow_impl_args(
            quote!(
                key = |req: &Req| req.order_id.clone(),
                hash = false,
                activity_groups(Inventory, pay::Payments)
            ),
            &mut errors,
        );
        assert!(errors.is_empty(), "{:?}", errors.messages());
        assert!(args.key.is_some());
        assert_eq!(args.hash, Some(false));
        assert_eq!(args.activity_groups.len(), 2);
    }

    #[test]
    fn bad_workflow_impl_options_are_all_reported() {
        let mut errors = Errors::default();
        parse_workflow_impl_args(
            quote!(keys = |r: &R| r.id, hash = "no", activity_groups(A, A)),
            &mut errors,
        );
        let messages = errors.messages();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(messages[0].contains("unknown #[workflow_impl] option `keys`"));
        assert!(messages[1].contains("`hash` takes `true` or `false`"));
        assert!(messages[2].contains("only applies with `key"));
        assert!(messages[3].contains("composed twice"));
    }

    #[test]
    fn execute_must_exist_be_async_and_take_self() {
        let mut errors = Errors::default();
        let method: ImplItemFn = syn::parse_quote! {
            fn execute(&mut self, request: Req) -> Result<u32, ClusterError> { Ok(1) }
        };
        let def = check_execute(method, &mut errors);
        let messages = errors.messages();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("must be an `async fn`"));
        assert!(messages[1].contains("takes `&self`"));
        assert!(def.is_some());

        let mut errors = Errors::default();
        let out = expand_workflow_impl(
            TokenStream::new(),
            quote!(impl W { #[activity] async fn step(&self) -> Result<(), ClusterError> { Ok(()) } }),
        );
        assert!(out.to_string().contains("needs the entry point"), "{out}");
        let _ = &mut errors;
    }
}
