//! The RPC model shared by `#[entity_impl]` and `#[rpc_group_impl]`: parse an impl block's
//! methods into [`RpcDef`]s, validate them (collecting every error), and generate the
//! pieces both macros need (dispatch arms, client calls, serializability checks).

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ImplItem, ImplItemFn, ItemImpl, Meta, Pat, Path,
    PathArguments, ReturnType, Token, Type, Visibility,
};

use crate::errors::Errors;

/// Who may call an RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Dispatchable and on the generated client (the default).
    Public,
    /// Dispatchable (entity-to-entity), not on the public client.
    Protected,
    /// Neither dispatchable nor on any client: a helper method.
    Private,
}

/// How a request travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// `#[rpc]`: best-effort, at most once (`EntityClient::send`).
    BestEffort,
    /// `#[rpc(persisted)]`: stored first, at least once (`EntityClient::send_persisted`).
    Persisted,
}

/// One request argument of an RPC.
#[derive(Debug)]
pub(crate) struct RpcArg {
    /// The parameter name on the generated client.
    pub(crate) name: Ident,
    /// The argument's type (the handler decodes it).
    pub(crate) ty: Type,
}

/// One `#[rpc]` method.
#[derive(Debug)]
pub(crate) struct RpcDef {
    /// The method name.
    pub(crate) method: Ident,
    /// The tag on the wire: the method name.
    pub(crate) tag: String,
    /// The method's Rust visibility (the client method gets the same).
    pub(crate) vis: Visibility,
    pub(crate) access: Access,
    pub(crate) delivery: Delivery,
    /// The request arguments after `&self`: none, one (sent as is) or several (sent as a tuple).
    pub(crate) args: Vec<RpcArg>,
    /// `R` of `Result<R, ClusterError>`.
    pub(crate) response: Type,
    /// The method's doc attributes, forwarded to the client method.
    pub(crate) docs: Vec<Attribute>,
}

impl RpcDef {
    /// Whether the runtime dispatches requests with this tag.
    pub(crate) fn is_dispatched(&self) -> bool {
        self.access != Access::Private
    }
}

/// Which macro is reading the impl block (for messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockKind {
    Entity,
    RpcGroup,
}

impl BlockKind {
    fn attribute(self) -> &'static str {
        match self {
            BlockKind::Entity => "#[entity_impl]",
            BlockKind::RpcGroup => "#[rpc_group_impl]",
        }
    }
}

/// An impl block with its RPCs taken out of it.
pub(crate) struct ImplModel {
    /// The impl block as the user wrote it, minus the cruster method attributes.
    pub(crate) item: ItemImpl,
    /// The self type.
    pub(crate) self_path: Path,
    /// The last segment of `self_path`.
    self_ident: Ident,
    /// The valid `#[rpc]` methods, in order.
    pub(crate) rpcs: Vec<RpcDef>,
    /// The names of every method in the block (generated helpers must not clash with them).
    pub(crate) method_names: Vec<String>,
}

impl ImplModel {
    /// The self type's name (`Counter` in `impl Counter`).
    pub(crate) fn self_ident(&self) -> &Ident {
        &self.self_ident
    }

    /// `self_path` with its last segment renamed by `rename`, e.g. `m::Counter` → `m::CounterClient`.
    pub(crate) fn sibling_path(&self, rename: impl Fn(&Ident) -> Ident) -> Path {
        let mut path = self.self_path.clone();
        if let Some(last) = path.segments.last_mut() {
            last.ident = rename(&last.ident);
        }
        path
    }

    /// Whether the user already has a method of this name (so a helper is not generated).
    pub(crate) fn has_method(&self, name: &str) -> bool {
        self.method_names.iter().any(|n| n == name)
    }
}

/// The method attributes cruster reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marker {
    Rpc,
    Protected,
    Private,
    /// Reserved for the workflow macros.
    Workflow,
    /// Reserved for the workflow macros.
    Activity,
}

fn marker_of(attr: &Attribute) -> Option<Marker> {
    let path = attr.path();
    let rooted_in_cruster =
        path.segments.len() == 1 || path.segments.first().is_some_and(|s| s.ident == "cruster");
    if !rooted_in_cruster {
        return None;
    }
    match path.segments.last()?.ident.to_string().as_str() {
        "rpc" => Some(Marker::Rpc),
        "protected" => Some(Marker::Protected),
        "private" => Some(Marker::Private),
        "workflow" => Some(Marker::Workflow),
        "activity" => Some(Marker::Activity),
        _ => None,
    }
}

/// Reads an impl block. Returns `None` (with errors) when the block itself is unusable;
/// otherwise the model of its valid RPCs, with the errors of the invalid ones recorded.
pub(crate) fn parse_impl(
    mut item: ItemImpl,
    kind: BlockKind,
    errors: &mut Errors,
) -> Result<ImplModel, Box<ItemImpl>> {
    let mut usable = true;
    if let Some((_, trait_path, _)) = &item.trait_ {
        errors.at(
            trait_path,
            format!(
                "{} goes on an inherent impl block (`impl MyType {{ ... }}`), not on a trait impl",
                kind.attribute()
            ),
        );
        usable = false;
    }
    if !item.generics.params.is_empty() {
        errors.at(
            &item.generics,
            format!("{} does not support generic impl blocks", kind.attribute()),
        );
        usable = false;
    }
    let self_path = match &*item.self_ty {
        Type::Path(type_path) if type_path.qself.is_none() => type_path
            .path
            .segments
            .last()
            .map(|last| (type_path.path.clone(), last.ident.clone())),
        other => {
            errors.at(
                other,
                format!("{} expects the impl of a named struct", kind.attribute()),
            );
            None
        }
    };

    let mut rpcs = Vec::new();
    let mut method_names = Vec::new();
    for impl_item in &mut item.items {
        match impl_item {
            ImplItem::Fn(method) => {
                method_names.push(method.sig.ident.unraw().to_string());
                if let Some(rpc) = parse_method(method, kind, errors) {
                    rpcs.push(rpc);
                }
            }
            ImplItem::Const(c) => reject_markers(&mut c.attrs, errors),
            ImplItem::Type(t) => reject_markers(&mut t.attrs, errors),
            _ => {}
        }
    }
    match self_path {
        Some((self_path, self_ident)) if usable => Ok(ImplModel {
            item,
            self_path,
            self_ident,
            rpcs,
            method_names,
        }),
        _ => Err(Box::new(item)),
    }
}

/// Strips cruster attributes from a non-method item, reporting them.
fn reject_markers(attrs: &mut Vec<Attribute>, errors: &mut Errors) {
    attrs.retain(|attr| match marker_of(attr) {
        Some(_) => {
            errors.at(attr, "this attribute only applies to methods");
            false
        }
        None => true,
    });
}

/// Reads one method: strips cruster attributes and returns its RPC model if it is a valid RPC.
fn parse_method(method: &mut ImplItemFn, kind: BlockKind, errors: &mut Errors) -> Option<RpcDef> {
    let mut rpc: Option<(Attribute, Delivery)> = None;
    let mut access: Option<(Attribute, Access)> = None;
    let mut kept = Vec::with_capacity(method.attrs.len());
    let name = method.sig.ident.unraw().to_string();

    for attr in std::mem::take(&mut method.attrs) {
        let Some(marker) = marker_of(&attr) else {
            kept.push(attr);
            continue;
        };
        match marker {
            Marker::Rpc => {
                if rpc.is_some() {
                    errors.at(&attr, "duplicate #[rpc] attribute");
                    continue;
                }
                let delivery = parse_rpc_args(&attr, errors);
                rpc = Some((attr, delivery));
            }
            Marker::Protected | Marker::Private => {
                let level = if marker == Marker::Protected {
                    Access::Protected
                } else {
                    Access::Private
                };
                if !matches!(attr.meta, Meta::Path(_)) {
                    errors.at(
                        &attr,
                        format!("#[{}] takes no arguments", access_name(level)),
                    );
                }
                if let Some((_, previous)) = &access {
                    errors.at(
                        &attr,
                        format!(
                            "`{name}` is already #[{}]; an RPC has one visibility",
                            access_name(*previous)
                        ),
                    );
                    continue;
                }
                access = Some((attr, level));
            }
            Marker::Workflow => errors.at(
                &attr,
                format!(
                    "#[workflow] goes on a struct (with #[workflow_impl] on its impl), not on a \
                     method in {}",
                    kind.attribute()
                ),
            ),
            Marker::Activity => errors.at(
                &attr,
                format!(
                    "#[activity] methods belong in a #[workflow_impl] or #[activity_group_impl] \
                     block, not in {}; use #[rpc] here",
                    kind.attribute()
                ),
            ),
        }
    }
    method.attrs = kept;

    let Some((_, delivery)) = rpc else {
        if let Some((attr, level)) = access {
            let level = access_name(level);
            errors.at(
                attr,
                format!(
                    "#[{level}] only applies to #[rpc] methods, and `{name}` is a plain method \
                     (never dispatched, never on the client); add #[rpc] above it or remove \
                     #[{level}]"
                ),
            );
        }
        return None;
    };
    let access = access.map_or(Access::Public, |(_, level)| level);
    let signature = check_signature(method, errors)?;
    Some(RpcDef {
        method: method.sig.ident.clone(),
        tag: name,
        vis: method.vis.clone(),
        access,
        delivery,
        args: signature.args,
        response: signature.response,
        docs: method
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .cloned()
            .collect(),
    })
}

fn access_name(access: Access) -> &'static str {
    match access {
        Access::Public => "public",
        Access::Protected => "protected",
        Access::Private => "private",
    }
}

/// `#[rpc]` or `#[rpc(persisted)]`.
fn parse_rpc_args(attr: &Attribute, errors: &mut Errors) -> Delivery {
    match &attr.meta {
        Meta::Path(_) => Delivery::BestEffort,
        Meta::List(list) => {
            let mut delivery = Delivery::BestEffort;
            let parsed = list
                .parse_args_with(syn::punctuated::Punctuated::<Ident, Token![,]>::parse_terminated);
            match parsed {
                Ok(options) => {
                    for option in options {
                        if option == "persisted" {
                            delivery = Delivery::Persisted;
                        } else {
                            errors.at(
                                &option,
                                format!(
                                    "unknown #[rpc] option `{option}`; expected `persisted` \
                                     (#[rpc(persisted)]) or nothing (#[rpc])"
                                ),
                            );
                        }
                    }
                }
                Err(err) => errors.push(err),
            }
            delivery
        }
        Meta::NameValue(nv) => {
            errors.at(nv, "expected #[rpc] or #[rpc(persisted)]");
            Delivery::BestEffort
        }
    }
}

struct Signature {
    args: Vec<RpcArg>,
    response: Type,
}

/// Checks `async fn name(&self, args...) -> Result<R, ClusterError>`, reporting every problem.
fn check_signature(method: &ImplItemFn, errors: &mut Errors) -> Option<Signature> {
    let sig = &method.sig;
    let name = sig.ident.unraw().to_string();
    let mut valid = true;
    if sig.asyncness.is_none() {
        errors.at(
            sig.fn_token,
            format!("RPC method `{name}` must be `async fn`: handlers are awaited by the runtime"),
        );
        valid = false;
    }
    if !sig.generics.params.is_empty() {
        errors.at(
            &sig.generics,
            format!("RPC method `{name}` cannot be generic: requests decode into concrete types"),
        );
        valid = false;
    }
    if let Some(variadic) = &sig.variadic {
        errors.at(variadic, "RPC methods cannot be variadic");
        valid = false;
    }
    match sig.inputs.first() {
        Some(FnArg::Receiver(receiver)) => {
            if receiver.reference.is_some() && receiver.mutability.is_some() {
                errors.at(
                    receiver,
                    format!(
                        "RPC method `{name}` takes `&mut self`, but RPCs take `&self`: an entity \
                         may handle several requests at once, so keep state in your database \
                         (or behind a lock) instead"
                    ),
                );
                valid = false;
            } else if receiver.reference.is_none() || receiver.colon_token.is_some() {
                errors.at(
                    receiver,
                    format!("RPC method `{name}` must take `&self` as its receiver"),
                );
                valid = false;
            }
        }
        _ => {
            errors.at(
                &sig.ident,
                format!(
                    "RPC method `{name}` must take `&self`: an associated function cannot be \
                     dispatched"
                ),
            );
            valid = false;
        }
    }
    let mut args = Vec::new();
    for input in &sig.inputs {
        let FnArg::Typed(pat_type) = input else {
            continue;
        };
        let position = args.len();
        let name = match &*pat_type.pat {
            Pat::Ident(p) if p.subpat.is_none() && p.ident != "entity_id" => {
                // Keep the user's name on the client, without `mut`/`ref`, so docs read well.
                Ident::new(&p.ident.unraw().to_string(), p.ident.span())
            }
            _ => format_ident!("arg{}", position),
        };
        args.push(RpcArg {
            name,
            ty: (*pat_type.ty).clone(),
        });
    }
    let response = match &sig.output {
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => Some(ok.clone()),
            None => {
                errors.at(ty, return_type_message(&name));
                None
            }
        },
        ReturnType::Default => {
            let span = sig.paren_token.span.close();
            errors.at_span(span, return_type_message(&name));
            None
        }
    };
    match response {
        Some(response) if valid => Some(Signature { args, response }),
        _ => None,
    }
}

fn return_type_message(name: &str) -> String {
    format!(
        "RPC method `{name}` must return `Result<T, ClusterError>` (the response `T` and the \
         error both travel back to the caller)"
    )
}

/// `R` of a `Result<R, ClusterError>` (any path ending in `Result` / `ClusterError`).
pub(crate) fn result_ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(type_path) = ty else {
        return None;
    };
    let last = type_path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    let ok = types.next()?;
    let Type::Path(err) = types.next()? else {
        return None;
    };
    if types.next().is_some() || err.path.segments.last()?.ident != "ClusterError" {
        return None;
    }
    Some(ok)
}

// ---------------------------------------------------------------------------------------
// Generation pieces
// ---------------------------------------------------------------------------------------

/// A `match` arm dispatching the RPC's tag to `target.method(...)`: decodes the request,
/// awaits the handler, encodes its response. The arm's value is `Result<Bytes, ClusterError>`.
pub(crate) fn dispatch_arm(rpc: &RpcDef, target: &TokenStream, request: &Ident) -> TokenStream {
    let tag = &rpc.tag;
    let method = &rpc.method;
    let vars: Vec<Ident> = (0..rpc.args.len())
        .map(|i| format_ident!("__arg{}", i))
        .collect();
    let tys: Vec<&Type> = rpc.args.iter().map(|a| &a.ty).collect();
    // Decoding each argument on its own (the tuple's fields in turn) keeps a type error at
    // that argument's type.
    let decode = match rpc.args.len() {
        0 => quote!(),
        1 => {
            let (var, ty) = (&vars[0], tys[0]);
            let decode = quote_spanned!(ty.span()=> #request.decode::<#ty>());
            quote!(let #var = #decode?;)
        }
        _ => {
            let decode = quote!(#request.decode::<(#(#tys,)*)>()?);
            let checks = tys.iter().map(|ty| {
                quote_spanned!(ty.span()=> ::cruster::__private::require_deserialize::<#ty>();)
            });
            quote!(#(#checks)* let (#(#vars,)*) = #decode;)
        }
    };
    let response = &rpc.response;
    let encode =
        quote_spanned!(response.span()=> ::cruster::__private::encode_response::<#response>);
    quote! {
        #tag => async {
            #decode
            #encode(#target.#method(#(#vars),*).await)
        }.await,
    }
}

/// The parameters after `entity_id` of the client method (`request: &T`, ...).
pub(crate) fn client_params(rpc: &RpcDef, lifetime: Option<&syn::Lifetime>) -> TokenStream {
    let params = rpc.args.iter().map(|arg| {
        let (name, ty) = (&arg.name, &arg.ty);
        quote!(#name: &#lifetime #ty)
    });
    quote!(#(, #params)*)
}

/// The call on `client` (an `&EntityClient` expression) that sends this RPC.
pub(crate) fn client_call(rpc: &RpcDef, client: TokenStream) -> TokenStream {
    let tag = &rpc.tag;
    let names: Vec<&Ident> = rpc.args.iter().map(|a| &a.name).collect();
    let payload = match names.as_slice() {
        [] => quote!(&()),
        [one] => quote!(#one),
        many => quote!(&(#(#many,)*)),
    };
    match rpc.delivery {
        Delivery::BestEffort => quote!(#client.send(entity_id, #tag, #payload).await),
        Delivery::Persisted => {
            quote!(#client.send_persisted(entity_id, #tag, #payload, false).await)
        }
    }
}

/// The doc attributes of a client method: the RPC's own docs plus its delivery.
pub(crate) fn client_docs(rpc: &RpcDef, owner: &Ident) -> TokenStream {
    let docs = &rpc.docs;
    let delivery = match rpc.delivery {
        Delivery::BestEffort => "best-effort, at most once",
        Delivery::Persisted => "persisted, at least once",
    };
    let line = format!("Calls the `{}` RPC of [`{owner}`] ({delivery}).", rpc.tag);
    if docs.is_empty() {
        quote!(#[doc = #line])
    } else {
        quote!(#(#docs)* #[doc = ""] #[doc = #line])
    }
}

/// The serde bounds a client method needs (requests `Serialize`, response
/// `DeserializeOwned`), as `where` predicates spanned at each user type.
///
/// They sit on the generated method rather than in its body, so a type that is not
/// serializable gives one error pointing at the type in the RPC's signature instead of
/// errors deep in generated code. (The dispatcher's decode and encode calls name the types
/// with their own spans for the same reason; see [`dispatch_arm`].)
pub(crate) fn client_serde_bounds(rpc: &RpcDef) -> TokenStream {
    let requests = rpc.args.iter().map(|arg| {
        let ty = &arg.ty;
        quote_spanned!(ty.span()=> #ty: ::cruster::__private::serde::Serialize,)
    });
    let response = &rpc.response;
    let response = quote_spanned!(response.span()=> #response: ::cruster::__private::serde::de::DeserializeOwned,);
    quote!(where #(#requests)* #response)
}

/// `entity_context()` and `client::<E>()` for code running inside a handler, skipping any
/// name the user already uses.
pub(crate) fn context_helpers(model: &ImplModel) -> TokenStream {
    let self_path = &model.self_path;
    let context = (!model.has_method("entity_context")).then(|| {
        quote! {
            /// The context of the entity instance handling the current request: its address
            /// (`entity_context()?.address.entity_id`) and the cluster.
            ///
            /// # Errors
            /// Outside an RPC handler (for example in a task the handler spawned).
            pub(crate) fn entity_context(
                &self,
            ) -> ::core::result::Result<
                ::cruster::__private::sharding::EntityContext,
                ::cruster::__private::types::ClusterError,
            > {
                ::cruster::__private::current_entity_context()
            }
        }
    });
    let client = (!model.has_method("client")).then(|| {
        quote! {
            /// A client for entity type `E` on this entity's cluster, including `E`'s
            /// `#[protected]` RPCs (entity-to-entity calls).
            ///
            /// # Errors
            /// Outside an RPC handler (for example in a task the handler spawned).
            pub(crate) fn client<E: ::cruster::__private::EntityDefinition>(
                &self,
            ) -> ::core::result::Result<E::InternalClient, ::cruster::__private::types::ClusterError>
            {
                ::cruster::__private::internal_client::<E>()
            }
        }
    });
    if context.is_none() && client.is_none() {
        return TokenStream::new();
    }
    quote! {
        #[allow(dead_code)]
        impl #self_path {
            #context
            #client
        }
    }
}

/// The impl block without cruster attributes, and the errors, for when generation is skipped.
pub(crate) fn fallback(item: impl ToTokens, errors: &Errors) -> TokenStream {
    let compile_errors = errors.to_compile_errors();
    quote!(#item #compile_errors)
}

/// A span-less identifier for generated code.
pub(crate) fn ident(name: &str) -> Ident {
    Ident::new(name, Span::call_site())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(tokens: TokenStream) -> (Option<ImplModel>, Vec<String>) {
        let mut errors = Errors::default();
        let item: ItemImpl = syn::parse2(tokens).expect("impl block parses");
        let model = parse_impl(item, BlockKind::Entity, &mut errors).ok();
        (model, errors.messages())
    }

    #[test]
    fn rpc_kinds_and_access_levels_are_read() {
        let (model, errors) = model(quote! {
            impl Counter {
                #[rpc(persisted)]
                pub async fn increment(&self, request: Inc) -> Result<i64, ClusterError> { unreachable!() }
                #[rpc]
                #[protected]
                pub async fn sync(&self) -> Result<(), cruster::ClusterError> { unreachable!() }
                #[rpc]
                #[private]
                async fn validate(&self, a: String, b: u32) -> Result<bool, ClusterError> { unreachable!() }
                fn helper(&self) {}
            }
        });
        assert!(errors.is_empty(), "{errors:?}");
        let model = model.expect("model");
        let summary: Vec<_> = model
            .rpcs
            .iter()
            .map(|r| (r.tag.as_str(), r.delivery, r.access, r.args.len()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("increment", Delivery::Persisted, Access::Public, 1),
                ("sync", Delivery::BestEffort, Access::Protected, 0),
                ("validate", Delivery::BestEffort, Access::Private, 2),
            ]
        );
        assert!(model.has_method("helper"));
        let stripped = model.item.to_token_stream().to_string();
        assert!(
            !stripped.contains("rpc") && !stripped.contains("protected"),
            "{stripped}"
        );
    }

    #[test]
    fn every_invalid_method_is_reported() {
        let (model, errors) = model(quote! {
            impl Counter {
                #[protected]
                fn plain(&self) {}
                #[rpc]
                pub async fn mutating(&mut self) -> Result<(), ClusterError> { unreachable!() }
                #[rpc]
                pub fn blocking(&self) -> Result<(), ClusterError> { unreachable!() }
                #[rpc]
                pub async fn anyhow(&self) -> anyhow::Result<()> { unreachable!() }
                #[rpc(durable)]
                pub async fn unknown(&self) -> Result<(), ClusterError> { unreachable!() }
                #[rpc]
                pub async fn ok(&self) -> Result<(), ClusterError> { unreachable!() }
            }
        });
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[0].contains("#[protected] only applies to #[rpc] methods"));
        assert!(errors[1].contains("`&mut self`"));
        assert!(errors[2].contains("must be `async fn`"));
        assert!(errors[3].contains("must return `Result<T, ClusterError>`"));
        assert!(errors[4].contains("unknown #[rpc] option `durable`"));
        let tags: Vec<_> = model
            .expect("model")
            .rpcs
            .iter()
            .map(|r| r.tag.clone())
            .collect();
        assert_eq!(tags, ["unknown", "ok"]);
    }

    #[test]
    fn reserved_workflow_attributes_are_rejected_in_entities() {
        let (_, errors) = model(quote! {
            impl Counter {
                #[activity]
                async fn step(&self) -> Result<(), ClusterError> { unreachable!() }
            }
        });
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("#[activity] methods belong in"));
    }

    #[test]
    fn client_parameter_names_never_clash_with_entity_id() {
        let (model, _) = model(quote! {
            impl Counter {
                #[rpc]
                async fn get(&self, entity_id: String, (a, b): (u8, u8)) -> Result<(), ClusterError> { unreachable!() }
            }
        });
        let names: Vec<_> = model.expect("model").rpcs[0]
            .args
            .iter()
            .map(|a| a.name.to_string())
            .collect();
        assert_eq!(names, ["arg0", "arg1"]);
    }
}
