//! `#[rpc_group]` / `#[rpc_group_impl]`: reusable bundles of RPCs composed into entities.
//!
//! Composition is trait-based, because the macro on an entity's impl cannot see a group's
//! methods:
//!
//! * the group implements the hidden `RpcGroup` trait (its tags and a dispatch function),
//!   which the composing entity's handler calls for tags it does not know itself;
//! * the group defines a client trait (`AuditableClient` for `Auditable`) with one method
//!   per public RPC, implemented for every client type that composes the group (the entity
//!   macro marks its clients with `ComposesRpcGroup<Auditable>`).
//!
//! The client trait must have the group struct's visibility, which only `#[rpc_group]`
//! sees; so `#[rpc_group]` defines a small forwarding `macro_rules!` that `#[rpc_group_impl]`
//! calls to give the trait that visibility. Hence the impl must come after the struct in
//! the same module (the usual layout).

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Ident, Item, ItemImpl};

use crate::errors::Errors;
use crate::rpc::{self, Access, BlockKind, ImplModel};

/// The name of the visibility-forwarding macro of a group.
fn vis_macro(group: &Ident) -> Ident {
    format_ident!("__cruster_rpc_group_{}", group)
}

/// Expands `#[rpc_group]` on a struct.
pub(crate) fn expand_rpc_group(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    if !args.is_empty() {
        errors.at(&args, "#[rpc_group] takes no options");
    }
    let item = match syn::parse2::<Item>(input.clone()) {
        Ok(item) => item,
        Err(err) => return err.to_compile_error(),
    };
    let (ident, vis, generics) = match &item {
        Item::Struct(s) => (&s.ident, &s.vis, &s.generics),
        Item::Enum(e) => (&e.ident, &e.vis, &e.generics),
        other => {
            errors.at(
                other,
                "#[rpc_group] goes on a struct holding the group's state",
            );
            return rpc::fallback(input, &errors);
        }
    };
    if !generics.params.is_empty() {
        errors.at(generics, "an RPC group cannot be generic");
    }
    if !errors.is_empty() {
        return rpc::fallback(item, &errors);
    }
    let macro_name = vis_macro(ident);
    quote! {
        #item

        #[doc(hidden)]
        #[allow(unused_macros)]
        macro_rules! #macro_name {
            (#[doc = $doc:expr] $($item:tt)*) => { #[doc = $doc] #vis $($item)* };
        }
    }
}

/// Expands `#[rpc_group_impl]` on the group's impl block.
pub(crate) fn expand_rpc_group_impl(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    if !args.is_empty() {
        errors.at(&args, "#[rpc_group_impl] takes no options");
    }
    let item: ItemImpl = match syn::parse2(input) {
        Ok(item) => item,
        Err(err) => return err.to_compile_error(),
    };
    let model = match rpc::parse_impl(item, BlockKind::RpcGroup, &mut errors) {
        Ok(model) => model,
        Err(item) => return rpc::fallback(item, &errors),
    };
    let generated = generate(&model);
    let item = &model.item;
    let compile_errors = errors.to_compile_errors();
    quote! {
        #item
        #generated
        #compile_errors
    }
}

fn generate(model: &ImplModel) -> TokenStream {
    let self_path = &model.self_path;
    let self_ident = model.self_ident();
    let trait_name = format_ident!("{}Client", self_ident);
    let macro_path = model.sibling_path(vis_macro);
    let request = rpc::ident("request");
    let target = quote!(group);
    let dispatched: Vec<&rpc::RpcDef> = model.rpcs.iter().filter(|r| r.is_dispatched()).collect();
    let arms = dispatched
        .iter()
        .map(|r| rpc::dispatch_arm(r, &target, &request));
    let tags = dispatched.iter().map(|r| r.tag.as_str());

    let public: Vec<&rpc::RpcDef> = model
        .rpcs
        .iter()
        .filter(|r| r.access == Access::Public)
        .collect();
    let lifetime: syn::Lifetime = syn::parse_quote!('a);
    // Provided methods: the blanket impl below then has nothing to restate, so the serde
    // bounds (and any error about them) appear once, on the trait.
    let methods = public.iter().map(|r| {
        let docs = rpc::client_docs(r, self_ident);
        let signature = trait_method_signature(r, &lifetime);
        let call = rpc::client_call(
            r,
            quote!(::cruster::__private::HasEntityClient::entity_client(self)),
        );
        quote!(#docs #signature { async move { #call } })
    });
    let trait_doc = format!(
        "The public RPCs of the [`{self_ident}`] group, on the client of every entity that \
         composes it (`#[entity_impl(rpc_groups({self_ident}))]`). Bring this trait into scope \
         to call them."
    );
    let helpers = rpc::context_helpers(model);

    quote! {
        #helpers

        const _: () = {
            async fn dispatch(
                group: &#self_path,
                #request: &::cruster::__private::sharding::IncomingRequest,
            ) -> ::core::option::Option<
                ::core::result::Result<
                    ::cruster::__private::Bytes,
                    ::cruster::__private::types::ClusterError,
                >,
            > {
                ::core::option::Option::Some(match #request.tag() {
                    #(#arms)*
                    _ => return ::core::option::Option::None,
                })
            }

            #[::cruster::__private::async_trait]
            impl ::cruster::__private::RpcGroup for #self_path {
                fn tags() -> &'static [&'static str] {
                    &[#(#tags),*]
                }

                async fn dispatch(
                    &self,
                    #request: &::cruster::__private::sharding::IncomingRequest,
                ) -> ::core::option::Option<
                    ::core::result::Result<
                        ::cruster::__private::Bytes,
                        ::cruster::__private::types::ClusterError,
                    >,
                > {
                    dispatch(self, #request).await
                }
            }
        };

        #macro_path! {
            #[doc = #trait_doc]
            trait #trait_name: ::cruster::__private::HasEntityClient + ::core::marker::Sync {
                #(#methods)*
            }
        }

        impl<C> #trait_name for C
        where
            C: ::cruster::__private::ComposesRpcGroup<#self_path> + ::core::marker::Sync,
        {
        }
    }
}

/// `fn name<'a>(&'a self, entity_id: &'a EntityId, args: &'a T...) -> impl Future<...> + Send + 'a`.
fn trait_method_signature(rpc: &rpc::RpcDef, lifetime: &syn::Lifetime) -> TokenStream {
    let method = &rpc.method;
    let params = rpc::client_params(rpc, Some(lifetime));
    let response = &rpc.response;
    let bounds = rpc::client_serde_bounds(rpc);
    quote! {
        fn #method<#lifetime>(
            &#lifetime self,
            entity_id: &#lifetime ::cruster::__private::types::EntityId
            #params
        ) -> impl ::core::future::Future<
            Output = ::core::result::Result<#response, ::cruster::__private::types::ClusterError>,
        > + ::core::marker::Send + #lifetime
        #bounds
    }
}
