//! `#[entity(...)]` on a struct: the entity's name and options, and its client types.
//!
//! The struct macro knows the struct's visibility, so it defines the client structs
//! (`CounterClient`, `CounterInternalClient`) with that visibility; `#[entity_impl]` later
//! adds one method per RPC to them.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, Item, Lit, LitInt, LitStr, Meta, Token};

use crate::errors::Errors;

/// The options an `#[entity(...)]` attribute accepts, in the order the docs list them.
pub(crate) const ENTITY_OPTIONS: &[&str] = &[
    "name",
    "shard_group",
    "max_idle_time_secs",
    "mailbox_capacity",
    "concurrency",
];

/// The parsed `#[entity(...)]` options. `None` means "the `ShardingConfig` default" (or, for
/// `name`, the struct's name).
#[derive(Debug, Default)]
pub(crate) struct EntityOptionsDef {
    pub(crate) name: Option<String>,
    pub(crate) shard_group: Option<String>,
    pub(crate) max_idle_time_secs: Option<u64>,
    pub(crate) mailbox_capacity: Option<usize>,
    pub(crate) concurrency: Option<usize>,
}

/// Parses and validates the arguments of `#[entity(...)]`.
pub(crate) fn parse_entity_options(args: TokenStream, errors: &mut Errors) -> EntityOptionsDef {
    let mut options = EntityOptionsDef::default();
    let metas = match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args) {
        Ok(metas) => metas,
        Err(err) => {
            errors.push(err);
            return options;
        }
    };
    for meta in metas {
        let Some(key) = meta.path().get_ident().map(Ident::to_string) else {
            errors.at(meta.path(), unknown_option_message(&path_text(meta.path())));
            continue;
        };
        if !ENTITY_OPTIONS.contains(&key.as_str()) {
            errors.at(meta.path(), unknown_option_message(&key));
            continue;
        }
        let Meta::NameValue(name_value) = &meta else {
            errors.at(&meta, format!("expected `{key} = ...` in #[entity(...)]"));
            continue;
        };
        let lit = match &name_value.value {
            Expr::Lit(expr) => &expr.lit,
            other => {
                errors.at(other, format!("`{key}` takes a literal value"));
                continue;
            }
        };
        let duplicate = match key.as_str() {
            "name" => set_once(&mut options.name, string_option(&key, lit, errors)),
            "shard_group" => set_once(&mut options.shard_group, string_option(&key, lit, errors)),
            "max_idle_time_secs" => set_once(
                &mut options.max_idle_time_secs,
                int_option::<u64>(&key, lit, errors),
            ),
            "mailbox_capacity" => {
                let capacity = int_option::<usize>(&key, lit, errors);
                if capacity == Some(0) {
                    errors.at(lit, "`mailbox_capacity` must be at least 1");
                }
                set_once(&mut options.mailbox_capacity, capacity)
            }
            _ => set_once(
                &mut options.concurrency,
                int_option::<usize>(&key, lit, errors),
            ),
        };
        if duplicate {
            errors.at(meta.path(), format!("`{key}` is given more than once"));
        }
    }
    options
}

fn path_text(path: &syn::Path) -> String {
    quote!(#path).to_string().replace(' ', "")
}

fn unknown_option_message(key: &str) -> String {
    format!(
        "unknown #[entity] option `{key}`; expected one of: {}",
        ENTITY_OPTIONS.join(", ")
    )
}

/// Stores `value` unless one is already there; returns whether it was a duplicate.
fn set_once<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
    match value {
        Some(_) if slot.is_some() => true,
        Some(value) => {
            *slot = Some(value);
            false
        }
        None => false,
    }
}

fn string_option(key: &str, lit: &Lit, errors: &mut Errors) -> Option<String> {
    match lit {
        Lit::Str(s) if s.value().trim().is_empty() => {
            errors.at(s, format!("`{key}` must not be empty"));
            None
        }
        Lit::Str(s) => Some(s.value()),
        other => {
            errors.at(
                other,
                format!("`{key}` takes a string, e.g. `{key} = \"...\"`"),
            );
            None
        }
    }
}

fn int_option<T>(key: &str, lit: &Lit, errors: &mut Errors) -> Option<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match lit {
        Lit::Int(i) => match i.base10_parse::<T>() {
            Ok(value) => Some(value),
            Err(err) => {
                errors.at(i, format!("`{key}`: {err}"));
                None
            }
        },
        other => {
            errors.at(
                other,
                format!("`{key}` takes an integer, e.g. `{key} = 10`"),
            );
            None
        }
    }
}

/// Expands `#[entity(...)]`.
pub(crate) fn expand_entity(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let options = parse_entity_options(args, &mut errors);
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
                "#[entity] goes on a struct (or enum) holding the entity's shared state",
            );
            let compile_errors = errors.to_compile_errors();
            return quote!(#input #compile_errors);
        }
    };
    if !generics.params.is_empty() {
        errors.at(
            generics,
            "an entity cannot be generic: its type is registered once under one name",
        );
    }
    if !errors.is_empty() {
        let compile_errors = errors.to_compile_errors();
        return quote!(#item #compile_errors);
    }

    let name = options.name.clone().unwrap_or_else(|| ident.to_string());
    let name_lit = LitStr::new(&name, ident.span());
    let options_expr = options_expr(&options);
    let client = format_ident!("{}Client", ident);
    let internal_client = format_ident!("{}InternalClient", ident);
    let client_doc = format!(
        "Typed client of the [`{ident}`] entity (entity type `{name}`), generated by `#[entity]`.\n\n\
         It has one method per public RPC of the entity (and of its RPC groups); \
         [`{client}::entity_client`] gives the underlying `EntityClient` for `notify`, \
         `send_at`, streaming and so on. Cheap to clone."
    );
    let internal_doc = format!(
        "Client of the [`{ident}`] entity for entity-to-entity calls: the methods of \
         [`{client}`] plus the entity's `#[protected]` RPCs.\n\n\
         Obtained inside an RPC handler with `self.client::<{ident}>()`."
    );
    quote! {
        #item

        #[doc = #client_doc]
        #[derive(Clone, Debug)]
        #vis struct #client {
            client: ::cruster::__private::sharding::EntityClient,
        }

        #[allow(dead_code)]
        impl #client {
            /// A client of this entity type on `sharding`.
            pub fn new(sharding: impl ::cruster::__private::sharding::IntoSharding) -> Self {
                Self::from_entity_client(::cruster::__private::sharding::EntityClient::new(
                    ::cruster::__private::sharding::IntoSharding::into_sharding(sharding),
                    <#ident as ::cruster::__private::EntityDefinition>::entity_type(),
                ))
            }

            /// Wraps an `EntityClient`, which must be for this entity type.
            pub fn from_entity_client(client: ::cruster::__private::sharding::EntityClient) -> Self {
                Self { client }
            }

            /// The underlying untyped client: `notify`, `notify_persisted`, `send_at`,
            /// `send_stream`, keyed sends and so on.
            pub fn entity_client(&self) -> &::cruster::__private::sharding::EntityClient {
                &self.client
            }
        }

        impl ::cruster::__private::workflow::ClientFromSharding for #client {
            fn client_entity_type() -> ::cruster::__private::types::EntityType {
                <#ident as ::cruster::__private::EntityDefinition>::entity_type()
            }

            fn from_entity_client(client: ::cruster::__private::sharding::EntityClient) -> Self {
                Self { client }
            }
        }

        impl ::cruster::__private::workflow::ClientFromSharding for #internal_client {
            fn client_entity_type() -> ::cruster::__private::types::EntityType {
                <#ident as ::cruster::__private::EntityDefinition>::entity_type()
            }

            fn from_entity_client(client: ::cruster::__private::sharding::EntityClient) -> Self {
                Self { public: #client { client } }
            }
        }

        impl ::cruster::__private::HasEntityClient for #client {
            fn entity_client(&self) -> &::cruster::__private::sharding::EntityClient {
                &self.client
            }
        }

        #[doc = #internal_doc]
        #[derive(Clone, Debug)]
        #vis struct #internal_client {
            public: #client,
        }

        impl ::core::ops::Deref for #internal_client {
            type Target = #client;

            fn deref(&self) -> &#client {
                &self.public
            }
        }

        impl ::cruster::__private::HasEntityClient for #internal_client {
            fn entity_client(&self) -> &::cruster::__private::sharding::EntityClient {
                &self.public.client
            }
        }

        impl ::cruster::__private::EntityDefinition for #ident {
            type Client = #client;
            type InternalClient = #internal_client;

            fn entity_type() -> ::cruster::__private::types::EntityType {
                ::cruster::__private::types::EntityType::new(#name_lit)
            }

            fn options() -> ::cruster::__private::sharding::EntityOptions {
                #options_expr
            }

            fn internal_client(
                client: ::cruster::__private::sharding::EntityClient,
            ) -> #internal_client {
                #internal_client { public: #client::from_entity_client(client) }
            }
        }
    }
}

/// The `EntityOptions` value of the parsed options.
fn options_expr(options: &EntityOptionsDef) -> TokenStream {
    let shard_group = match &options.shard_group {
        Some(group) => quote!(::core::option::Option::Some(::std::string::String::from(#group))),
        None => quote!(::core::option::Option::None),
    };
    let max_idle_time = match options.max_idle_time_secs {
        Some(secs) => {
            let secs = LitInt::new(&format!("{secs}u64"), proc_macro2::Span::call_site());
            quote!(::core::option::Option::Some(::core::time::Duration::from_secs(#secs)))
        }
        None => quote!(::core::option::Option::None),
    };
    let usize_option = |value: Option<usize>| match value {
        Some(n) => {
            let n = LitInt::new(&format!("{n}usize"), proc_macro2::Span::call_site());
            quote!(::core::option::Option::Some(#n))
        }
        None => quote!(::core::option::Option::None),
    };
    let mailbox_capacity = usize_option(options.mailbox_capacity);
    let concurrency = usize_option(options.concurrency);
    quote! {
        ::cruster::__private::sharding::EntityOptions {
            shard_group: #shard_group,
            max_idle_time: #max_idle_time,
            mailbox_capacity: #mailbox_capacity,
            concurrency: #concurrency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: TokenStream) -> (EntityOptionsDef, Vec<String>) {
        let mut errors = Errors::default();
        let options = parse_entity_options(args, &mut errors);
        (options, errors.messages())
    }

    #[test]
    fn every_option_is_parsed() {
        let (options, errors) = parse(quote!(
            name = "user",
            shard_group = "premium",
            max_idle_time_secs = 300,
            mailbox_capacity = 50,
            concurrency = 4,
        ));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(options.name.as_deref(), Some("user"));
        assert_eq!(options.shard_group.as_deref(), Some("premium"));
        assert_eq!(options.max_idle_time_secs, Some(300));
        assert_eq!(options.mailbox_capacity, Some(50));
        assert_eq!(options.concurrency, Some(4));
    }

    #[test]
    fn no_options_means_all_defaults() {
        let (options, errors) = parse(TokenStream::new());
        assert!(errors.is_empty());
        assert!(options.name.is_none() && options.mailbox_capacity.is_none());
    }

    #[test]
    fn every_bad_option_is_reported_not_just_the_first() {
        let (_, errors) = parse(quote!(
            nmae = "x",
            mailbox_capacity = 0,
            concurrency = "four",
            name = "a",
            name = "b"
        ));
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[0].contains("unknown #[entity] option `nmae`"));
        assert!(errors[1].contains("at least 1"));
        assert!(errors[2].contains("takes an integer"));
        assert!(errors[3].contains("more than once"));
    }
}
