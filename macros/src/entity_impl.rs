//! `#[entity_impl]` / `#[entity_impl(rpc_groups(A, B))]`: dispatch, client methods and
//! `register` for an entity's impl block.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Ident, ItemImpl, Meta, Path, Token};

use crate::errors::Errors;
use crate::rpc::{self, Access, BlockKind, ImplModel};

/// The parsed `#[entity_impl(...)]` arguments.
#[derive(Debug, Default)]
pub(crate) struct EntityImplArgs {
    /// The composed RPC groups, in declaration order (= `register`'s argument order).
    pub(crate) rpc_groups: Vec<Path>,
}

/// Parses `rpc_groups(A, B)` (the only option so far).
pub(crate) fn parse_entity_impl_args(args: TokenStream, errors: &mut Errors) -> EntityImplArgs {
    let mut parsed = EntityImplArgs::default();
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args) {
        Ok(metas) => metas,
        Err(err) => {
            errors.push(err);
            return parsed;
        }
    };
    let mut seen_groups = false;
    for meta in metas {
        match &meta {
            Meta::List(list) if list.path.is_ident("rpc_groups") => {
                if seen_groups {
                    errors.at(&list.path, "`rpc_groups` is given more than once");
                }
                seen_groups = true;
                match list.parse_args_with(Punctuated::<Path, Token![,]>::parse_terminated) {
                    Ok(groups) => parsed.rpc_groups.extend(groups),
                    Err(err) => errors.push(err),
                }
            }
            other => errors.at(
                other.path(),
                "unknown #[entity_impl] option; expected `rpc_groups(GroupA, GroupB, ...)`",
            ),
        }
    }
    for (i, group) in parsed.rpc_groups.iter().enumerate() {
        if parsed.rpc_groups[..i].contains(group) {
            errors.at(group, "this RPC group is composed twice");
        }
    }
    parsed
}

/// Expands `#[entity_impl(...)]`.
pub(crate) fn expand_entity_impl(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse_entity_impl_args(args, &mut errors);
    let item: ItemImpl = match syn::parse2(input) {
        Ok(item) => item,
        Err(err) => return err.to_compile_error(),
    };
    let model = match rpc::parse_impl(item, BlockKind::Entity, &mut errors) {
        Ok(model) => model,
        Err(item) => return rpc::fallback(item, &errors),
    };
    let generated = generate(&model, &args);
    let item = &model.item;
    let compile_errors = errors.to_compile_errors();
    quote! {
        #item
        #generated
        #compile_errors
    }
}

/// A snake_case parameter name for a group type (`AuditLog` → `audit_log`).
pub(crate) fn group_param(group: &Path, index: usize) -> Ident {
    let Some(last) = group.segments.last() else {
        return format_ident!("group{}", index);
    };
    let mut snake = String::new();
    for (i, ch) in last.ident.to_string().chars().enumerate() {
        if ch.is_uppercase() {
            if i > 0 {
                snake.push('_');
            }
            snake.extend(ch.to_lowercase());
        } else {
            snake.push(ch);
        }
    }
    if matches!(snake.as_str(), "sharding" | "self" | "entity") {
        snake.push_str("_group");
    }
    syn::parse_str::<Ident>(&snake).unwrap_or_else(|_| format_ident!("group{}", index))
}

fn generate(model: &ImplModel, args: &EntityImplArgs) -> TokenStream {
    let self_path = &model.self_path;
    let self_ident = model.self_ident();
    let client = model.sibling_path(|i| format_ident!("{}Client", i));
    let internal_client = model.sibling_path(|i| format_ident!("{}InternalClient", i));
    let request = rpc::ident("request");
    let groups = &args.rpc_groups;
    let group_fields: Vec<Ident> = (0..groups.len())
        .map(|i| format_ident!("group{}", i))
        .collect();
    let group_params: Vec<Ident> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| group_param(g, i))
        .collect();

    // Dispatch: the entity's own RPCs first, then each group in order.
    let entity_target = quote!(self.entity);
    let arms = model
        .rpcs
        .iter()
        .filter(|r| r.is_dispatched())
        .map(|r| rpc::dispatch_arm(r, &entity_target, &request));
    let own_tags: Vec<&str> = model
        .rpcs
        .iter()
        .filter(|r| r.is_dispatched())
        .map(|r| r.tag.as_str())
        .collect();
    let self_name = self_ident.to_string();
    let group_names: Vec<String> = groups
        .iter()
        .map(|g| quote!(#g).to_string().replace(' ', ""))
        .collect();

    // Client methods.
    let public_methods = model
        .rpcs
        .iter()
        .filter(|r| r.access == Access::Public)
        .map(|r| client_method(r, self_ident, quote!(self.client)));
    let protected_methods = model
        .rpcs
        .iter()
        .filter(|r| r.access == Access::Protected)
        .map(|r| client_method(r, self_ident, quote!(self.public.client)));

    let register_doc = if groups.is_empty() {
        format!(
            "Registers the [`{self_ident}`] entity type on `sharding` (this value serves every \
             instance) and returns its typed client."
        )
    } else {
        format!(
            "Registers the [`{self_ident}`] entity type on `sharding` with its RPC groups \
             (in the order of `rpc_groups(...)`) and returns its typed client."
        )
    };
    let helpers = rpc::context_helpers(model);

    quote! {
        #[allow(dead_code)]
        impl #client {
            #(#public_methods)*
        }

        #[allow(dead_code)]
        impl #internal_client {
            #(#protected_methods)*
        }

        #(impl ::cruster::__private::ComposesRpcGroup<#groups> for #client {}
          impl ::cruster::__private::ComposesRpcGroup<#groups> for #internal_client {})*

        #helpers

        const _: () = {
            struct __CrusterShared {
                entity: #self_path,
                #(#group_fields: #groups,)*
            }

            struct __CrusterEntity(::std::sync::Arc<__CrusterShared>);

            struct __CrusterHandler {
                shared: ::std::sync::Arc<__CrusterShared>,
                context: ::cruster::__private::sharding::EntityContext,
            }

            impl __CrusterShared {
                async fn dispatch(
                    &self,
                    #request: &::cruster::__private::sharding::IncomingRequest,
                ) -> ::core::result::Result<
                    ::cruster::__private::Bytes,
                    ::cruster::__private::types::ClusterError,
                > {
                    match #request.tag() {
                        #(#arms)*
                        _ => {
                            #(if let ::core::option::Option::Some(reply) =
                                ::cruster::__private::RpcGroup::dispatch(&self.#group_fields, #request).await
                            {
                                return reply;
                            })*
                            ::core::result::Result::Err(::cruster::__private::unknown_tag(#request))
                        }
                    }
                }
            }

            #[::cruster::__private::async_trait]
            impl ::cruster::__private::sharding::Entity for __CrusterEntity {
                fn entity_type(&self) -> ::cruster::__private::types::EntityType {
                    <#self_path as ::cruster::__private::EntityDefinition>::entity_type()
                }

                fn options(&self) -> ::cruster::__private::sharding::EntityOptions {
                    <#self_path as ::cruster::__private::EntityDefinition>::options()
                }

                async fn spawn(
                    &self,
                    context: ::cruster::__private::sharding::EntityContext,
                ) -> ::core::result::Result<
                    ::std::sync::Arc<dyn ::cruster::__private::sharding::EntityHandler>,
                    ::cruster::__private::types::ClusterError,
                > {
                    ::core::result::Result::Ok(::std::sync::Arc::new(__CrusterHandler {
                        shared: ::std::sync::Arc::clone(&self.0),
                        context,
                    }))
                }
            }

            #[::cruster::__private::async_trait]
            impl ::cruster::__private::sharding::EntityHandler for __CrusterHandler {
                async fn handle(
                    &self,
                    #request: ::cruster::__private::sharding::IncomingRequest,
                ) -> ::core::result::Result<
                    ::cruster::__private::Bytes,
                    ::cruster::__private::types::ClusterError,
                > {
                    ::cruster::__private::with_entity_context(
                        self.context.clone(),
                        self.shared.dispatch(&#request),
                    )
                    .await
                }
            }

            impl #self_path {
                #[doc = #register_doc]
                ///
                /// # Errors
                /// `InvalidConfig` if the entity type is already registered, its options are
                /// invalid, or two of its RPC groups dispatch the same tag.
                pub async fn register(
                    self,
                    sharding: impl ::cruster::__private::sharding::IntoSharding,
                    #(#group_params: #groups,)*
                ) -> ::core::result::Result<#client, ::cruster::__private::types::ClusterError> {
                    let sharding = ::cruster::__private::sharding::IntoSharding::into_sharding(sharding);
                    ::cruster::__private::check_unique_tags(
                        &<#self_path as ::cruster::__private::EntityDefinition>::entity_type(),
                        &[
                            (#self_name, &[#(#own_tags),*]),
                            #((#group_names, <#groups as ::cruster::__private::RpcGroup>::tags()),)*
                        ],
                    )?;
                    let shared = __CrusterShared {
                        entity: self,
                        #(#group_fields: #group_params,)*
                    };
                    ::cruster::__private::sharding::Sharding::register_entity(
                        &*sharding,
                        ::std::sync::Arc::new(__CrusterEntity(::std::sync::Arc::new(shared))),
                    )
                    .await?;
                    ::core::result::Result::Ok(#client::new(sharding))
                }
            }
        };
    }
}

/// One inherent client method: `vis async fn name(&self, entity_id, args...) -> Result<R, _>`.
fn client_method(rpc: &rpc::RpcDef, owner: &Ident, client: TokenStream) -> TokenStream {
    let docs = rpc::client_docs(rpc, owner);
    let vis = &rpc.vis;
    let method = &rpc.method;
    let params = rpc::client_params(rpc, None);
    let response = &rpc.response;
    let call = rpc::client_call(rpc, quote!(#client));
    let bounds = rpc::client_serde_bounds(rpc);
    quote! {
        #docs
        #vis async fn #method(
            &self,
            entity_id: &::cruster::__private::types::EntityId
            #params
        ) -> ::core::result::Result<#response, ::cruster::__private::types::ClusterError>
        #bounds
        {
            #call
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_groups_are_read_in_declaration_order() {
        let mut errors = Errors::default();
        let args =
            parse_entity_impl_args(quote!(rpc_groups(Auditable, audit::Tagged)), &mut errors);
        assert!(errors.is_empty());
        let names: Vec<String> = args
            .rpc_groups
            .iter()
            .map(|p| quote!(#p).to_string().replace(' ', ""))
            .collect();
        assert_eq!(names, ["Auditable", "audit::Tagged"]);
    }

    #[test]
    fn unknown_options_and_repeated_groups_are_errors() {
        let mut errors = Errors::default();
        parse_entity_impl_args(quote!(groups(A), rpc_groups(B, B)), &mut errors);
        let messages = errors.messages();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("unknown #[entity_impl] option"));
        assert!(messages[1].contains("composed twice"));
    }

    #[test]
    fn group_parameters_are_snake_case() {
        let path: Path = syn::parse_quote!(audit::AuditLog);
        assert_eq!(group_param(&path, 0).to_string(), "audit_log");
        let path: Path = syn::parse_quote!(Sharding);
        assert_eq!(group_param(&path, 1).to_string(), "sharding_group");
    }
}
