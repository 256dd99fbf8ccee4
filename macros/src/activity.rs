//! The activity model shared by `#[workflow_impl]` and `#[activity_group_impl]`: parse
//! `#[activity(...)]` methods into [`ActivityDef`]s (collecting every error), and generate
//! the two halves of an activity:
//!
//! * the *body*, the user's method, moved onto an activity-scope type whose `tx` field is
//!   the activity's transaction and which dereferences to the workflow (or group) struct;
//! * the *journaled call*, a method with the same signature on the execution scope, which
//!   goes through `WorkflowContext::activity` (replay from the journal, or run the body in a
//!   transaction, with retries, and commit its result with the journal entry).

use proc_macro2::{Group, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, FnArg, Ident, ImplItemFn, Lit, Meta, Path, ReturnType, Token, Type, Visibility,
};

use crate::errors::Errors;
use crate::rpc::result_ok_type;

/// The options `#[activity(...)]` accepts.
pub(crate) const ACTIVITY_OPTIONS: &[&str] =
    &["retries", "backoff", "backoff_base_ms", "on_cancel"];

/// How a failed activity is retried (`backoff = "..."`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BackoffDef {
    Exponential,
    Constant,
}

/// The parsed `#[activity(...)]` options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ActivityOptionsDef {
    /// Retries after the first attempt.
    pub(crate) retries: u32,
    pub(crate) backoff: BackoffDef,
    /// The backoff's base delay; the runtime default (100 ms) when absent.
    pub(crate) backoff_base_ms: Option<u64>,
    /// `on_cancel = "interrupt"`: stop at once when the execution is cancelled (the
    /// default, `"finish"`, runs to the end).
    pub(crate) interrupt_on_cancel: bool,
}

impl Default for ActivityOptionsDef {
    fn default() -> Self {
        ActivityOptionsDef {
            retries: 0,
            backoff: BackoffDef::Exponential,
            backoff_base_ms: None,
            interrupt_on_cancel: false,
        }
    }
}

/// One argument of an activity.
#[derive(Debug)]
pub(crate) struct ActivityArg {
    pub(crate) ty: Type,
}

/// One `#[activity]` method.
pub(crate) struct ActivityDef {
    /// The method name.
    pub(crate) method: Ident,
    /// The journal name (`'static`): the method name, prefixed by the group for group
    /// activities.
    pub(crate) journal_name: String,
    pub(crate) options: ActivityOptionsDef,
    pub(crate) args: Vec<ActivityArg>,
    /// `T` of `Result<T, ClusterError>`.
    pub(crate) response: Type,
    pub(crate) vis: Visibility,
    pub(crate) docs: Vec<Attribute>,
    /// The user's method (attributes other than `#[activity]` kept), made `async fn(&self)`
    /// if it was not, so its body still type-checks while the error is reported.
    pub(crate) body: ImplItemFn,
}

/// Whether an attribute is `#[activity]` / `#[cruster::activity]`.
pub(crate) fn is_marker(attr: &Attribute, name: &str) -> bool {
    let path = attr.path();
    let rooted =
        path.segments.len() == 1 || path.segments.first().is_some_and(|s| s.ident == "cruster");
    rooted && path.segments.last().is_some_and(|s| s.ident == name)
}

/// Parses the options of one `#[activity]` / `#[activity(...)]` attribute.
pub(crate) fn parse_activity_options(attr: &Attribute, errors: &mut Errors) -> ActivityOptionsDef {
    let mut options = ActivityOptionsDef::default();
    let metas = match &attr.meta {
        Meta::Path(_) => return options,
        Meta::List(list) => {
            match Punctuated::<Meta, Token![,]>::parse_terminated.parse2(list.tokens.clone()) {
                Ok(metas) => metas,
                Err(err) => {
                    errors.push(err);
                    return options;
                }
            }
        }
        Meta::NameValue(nv) => {
            errors.at(
                nv,
                "expected `#[activity]` or `#[activity(retries = N, ...)]`",
            );
            return options;
        }
    };
    let mut seen: Vec<String> = Vec::new();
    for meta in metas {
        let key = meta
            .path()
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        if !ACTIVITY_OPTIONS.contains(&key.as_str()) {
            errors.at(
                meta.path(),
                format!(
                    "unknown #[activity] option `{}`; expected one of: {}",
                    path_text(meta.path()),
                    ACTIVITY_OPTIONS.join(", ")
                ),
            );
            continue;
        }
        if seen.contains(&key) {
            errors.at(meta.path(), format!("`{key}` is given more than once"));
            continue;
        }
        seen.push(key.clone());
        let Meta::NameValue(nv) = &meta else {
            errors.at(&meta, format!("expected `{key} = ...` in #[activity(...)]"));
            continue;
        };
        let lit = match &nv.value {
            Expr::Lit(expr) => &expr.lit,
            other => {
                errors.at(other, format!("`{key}` takes a literal value"));
                continue;
            }
        };
        match (key.as_str(), lit) {
            ("retries", Lit::Int(i)) => match i.base10_parse::<u32>() {
                Ok(n) => options.retries = n,
                Err(err) => errors.at(i, format!("`retries`: {err}")),
            },
            ("backoff_base_ms", Lit::Int(i)) => match i.base10_parse::<u64>() {
                Ok(n) => options.backoff_base_ms = Some(n),
                Err(err) => errors.at(i, format!("`backoff_base_ms`: {err}")),
            },
            ("backoff", Lit::Str(s)) => match s.value().as_str() {
                "exponential" => options.backoff = BackoffDef::Exponential,
                "constant" => options.backoff = BackoffDef::Constant,
                other => errors.at(
                    s,
                    format!("unknown backoff `{other}`; expected \"exponential\" or \"constant\""),
                ),
            },
            ("on_cancel", Lit::Str(s)) => match s.value().as_str() {
                "finish" => options.interrupt_on_cancel = false,
                "interrupt" => options.interrupt_on_cancel = true,
                other => errors.at(
                    s,
                    format!("unknown on_cancel `{other}`; expected \"finish\" or \"interrupt\""),
                ),
            },
            ("on_cancel", other) => errors.at(
                other,
                "`on_cancel` takes a string: \"finish\" or \"interrupt\"",
            ),
            ("backoff", other) => errors.at(
                other,
                "`backoff` takes a string: \"exponential\" or \"constant\"",
            ),
            (_, other) => errors.at(other, format!("`{key}` takes an integer, e.g. `{key} = 3`")),
        }
    }
    options
}

/// A path as written, without spaces.
pub(crate) fn path_text(path: &Path) -> String {
    quote!(#path).to_string().replace(' ', "")
}

/// Reads an `#[activity]` method (the attribute already found and removed). Reports every
/// problem; returns `None` only when no journaled call can be generated (no usable
/// `Result<T, ClusterError>`).
pub(crate) fn parse_activity_method(
    mut method: ImplItemFn,
    options: ActivityOptionsDef,
    journal_name: String,
    errors: &mut Errors,
) -> Option<ActivityDef> {
    let name = method.sig.ident.unraw().to_string();
    let sig = &method.sig;
    if sig.asyncness.is_none() {
        errors.at(
            sig.fn_token,
            format!("activity `{name}` must be an `async fn`"),
        );
    }
    if !sig.generics.params.is_empty() {
        errors.at(
            &sig.generics,
            format!("activity `{name}` cannot be generic: its result is journaled by name"),
        );
    }
    match sig.inputs.first() {
        Some(FnArg::Receiver(receiver)) => {
            if receiver.reference.is_some() && receiver.mutability.is_some() {
                errors.at(
                    receiver,
                    format!(
                        "activity `{name}` takes `&mut self`, but activities take `&self`: the \
                         workflow struct is shared by every execution; write state through \
                         `self.tx`"
                    ),
                );
            } else if receiver.reference.is_none() || receiver.colon_token.is_some() {
                errors.at(
                    receiver,
                    format!("activity `{name}` must take `&self` as its receiver"),
                );
            }
        }
        _ => errors.at(
            &sig.ident,
            format!("activity `{name}` must take `&self` (it is called as `self.{name}(...)`)"),
        ),
    }
    let mut args = Vec::new();
    for input in &sig.inputs {
        let FnArg::Typed(pat_type) = input else {
            continue;
        };
        match &*pat_type.ty {
            Type::Reference(reference) => errors.at(
                reference,
                format!(
                    "activity `{name}` takes a reference; activity arguments are moved into the \
                     activity (and copied for each retry), so take an owned value"
                ),
            ),
            Type::ImplTrait(it) => errors.at(
                it,
                format!("activity `{name}` cannot take `impl Trait` arguments"),
            ),
            _ => {}
        }
        args.push(ActivityArg {
            ty: (*pat_type.ty).clone(),
        });
    }
    let response = match &sig.output {
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => Some(ok.clone()),
            None => {
                errors.at(ty, return_message(&name));
                None
            }
        },
        ReturnType::Default => {
            errors.at_span(sig.paren_token.span.close(), return_message(&name));
            None
        }
    };
    let response = response?;
    // Normalise what was reported, so the body still type-checks on the activity scope.
    method.sig.asyncness = Some(Default::default());
    if let Some(first @ FnArg::Receiver(_)) = method.sig.inputs.first_mut() {
        *first = syn::parse_quote!(&self);
    }
    let docs = method
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect();
    Some(ActivityDef {
        method: method.sig.ident.clone(),
        journal_name,
        options,
        args,
        response,
        vis: method.vis.clone(),
        docs,
        body: method,
    })
}

fn return_message(name: &str) -> String {
    format!(
        "activity `{name}` must return `Result<T, ClusterError>` (its result or error is \
         journaled; `T` must implement Serialize and Deserialize)"
    )
}

/// Replaces the `Self` type in moved method tokens by the struct's path: the method runs on a
/// scope type, but `Self` should still mean the struct the user wrote the impl for.
pub(crate) fn replace_self_type(tokens: TokenStream, with: &Path) -> TokenStream {
    tokens
        .into_iter()
        .flat_map(|tree| -> TokenStream {
            match tree {
                TokenTree::Ident(ident) if ident == "Self" => {
                    let span = ident.span();
                    let mut path = with.clone();
                    if let Some(last) = path.segments.last_mut() {
                        last.ident.set_span(span);
                    }
                    path.into_token_stream()
                }
                TokenTree::Group(group) => {
                    let mut replaced =
                        Group::new(group.delimiter(), replace_self_type(group.stream(), with));
                    replaced.set_span(group.span());
                    TokenTree::Group(replaced).into_token_stream()
                }
                other => other.into_token_stream(),
            }
        })
        .collect()
}

/// The method on the activity scope: the user's body, `Self` meaning the user's struct.
pub(crate) fn activity_body(activity: &ActivityDef, self_path: &Path) -> TokenStream {
    replace_self_type(activity.body.to_token_stream(), self_path)
}

/// The `ActivityOptions` value of an activity.
fn options_expr(options: &ActivityOptionsDef) -> TokenStream {
    let retries = options.retries;
    let backoff = match options.backoff {
        BackoffDef::Exponential => quote!(::cruster::__private::workflow::Backoff::Exponential),
        BackoffDef::Constant => quote!(::cruster::__private::workflow::Backoff::Constant),
    };
    let base = match options.backoff_base_ms {
        Some(ms) => quote!(::core::time::Duration::from_millis(#ms)),
        None => quote!(
            <::cruster::__private::workflow::ActivityOptions as ::core::default::Default>::default(
            )
            .base_delay
        ),
    };
    let value =
        quote!(::cruster::__private::workflow::ActivityOptions::new(#retries, #backoff, #base));
    if options.interrupt_on_cancel {
        quote!(#value.with_on_cancel(::cruster::__private::workflow::OnCancel::Interrupt))
    } else {
        value
    }
}

/// The parts of a journaled call: its parameter list (after `&self`) and the expression that
/// runs it. `context` is a `WorkflowContext` expression; `make_scope` builds the activity
/// scope from `__cruster_tx` (an `ActivityTx`) and may use the locals `prelude` binds.
pub(crate) struct JournaledCall {
    pub(crate) params: TokenStream,
    pub(crate) response: TokenStream,
    /// Statements to run before the call (bind arguments).
    pub(crate) bind_args: TokenStream,
    /// The journaled call (a future), to `.await`.
    pub(crate) call: TokenStream,
}

/// Builds a journaled call of `activity`.
pub(crate) fn journaled_call(
    activity: &ActivityDef,
    context: TokenStream,
    make_scope: TokenStream,
) -> JournaledCall {
    let vars: Vec<Ident> = (0..activity.args.len())
        .map(|i| format_ident!("arg{}", i))
        .collect();
    let tys: Vec<&Type> = activity.args.iter().map(|a| &a.ty).collect();
    let response = &activity.response;
    let method = &activity.method;
    let name = &activity.journal_name;
    let options = options_expr(&activity.options);
    let retried = activity.options.retries > 0;
    // Name each requirement at the type that must meet it, so an error points there.
    let checks = tys.iter().map(|ty| {
        if retried {
            quote_spanned!(ty.span()=> ::cruster::__private::require_retried_argument::<#ty>();)
        } else {
            quote_spanned!(ty.span()=> ::cruster::__private::require_activity_argument::<#ty>();)
        }
    });
    let response_check = quote_spanned!(response.span()=> ::cruster::__private::require_journal_value::<#response>(););
    let (make_args, get_args) = if retried {
        (quote!(retried), quote!(copy))
    } else {
        (quote!(once), quote!(take))
    };
    let bind_args = quote! {
        #(#checks)*
        #response_check
        let __cruster_args = ::cruster::__private::ActivityArgs::#make_args((#(#vars,)*));
    };
    let call = quote! {
        ::cruster::__private::workflow::WorkflowContext::activity(
            &#context,
            #name,
            #options,
            move |__cruster_tx: ::cruster::__private::workflow::ActivityTx| {
                let __cruster_scope = #make_scope;
                let __cruster_attempt_args = __cruster_args.#get_args();
                async move {
                    let (#(#vars,)*) = __cruster_attempt_args?;
                    __cruster_scope.#method(#(#vars),*).await
                }
            },
        )
    };
    JournaledCall {
        params: quote!(#(, #vars: #tys)*),
        response: quote!(::core::result::Result<#response, ::cruster::__private::types::ClusterError>),
        bind_args,
        call,
    }
}

/// The methods of a `#[workflow_impl]` or `#[activity_group_impl]` block, sorted out.
pub(crate) struct SplitImpl {
    /// The `execute` method (workflows only), as written (attributes checked).
    pub(crate) execute: Option<ImplItemFn>,
    /// The valid activities, in order.
    pub(crate) activities: Vec<ActivityDef>,
    /// The names of every method in the block (generated helpers must not clash).
    pub(crate) method_names: Vec<String>,
}

/// Takes `execute` (when `take_execute`) and the `#[activity]` methods out of `item`,
/// leaving its other items (helpers) in place. `block` names the macro in messages;
/// `journal_prefix` prefixes activity journal names (`Inventory.reserve`).
pub(crate) fn split_impl(
    item: &mut syn::ItemImpl,
    block: &str,
    journal_prefix: Option<&str>,
    take_execute: bool,
    errors: &mut Errors,
) -> SplitImpl {
    let mut split = SplitImpl {
        execute: None,
        activities: Vec::new(),
        method_names: Vec::new(),
    };
    let mut kept = Vec::new();
    for impl_item in std::mem::take(&mut item.items) {
        let syn::ImplItem::Fn(mut method) = impl_item else {
            kept.push(impl_item);
            continue;
        };
        let name = method.sig.ident.unraw().to_string();
        split.method_names.push(name.clone());
        let mut activity_options = None;
        let mut attrs = Vec::new();
        for attr in std::mem::take(&mut method.attrs) {
            if is_marker(&attr, "activity") {
                if activity_options.is_some() {
                    errors.at(&attr, "#[activity] is given more than once");
                } else {
                    activity_options = Some((parse_activity_options(&attr, errors), attr));
                }
            } else if ["rpc", "protected", "private", "workflow"]
                .iter()
                .any(|m| is_marker(&attr, m))
            {
                errors.at(
                    &attr,
                    format!(
                        "{} holds `execute` and #[activity] methods; #[rpc], #[protected] and \
                         #[private] belong in #[entity_impl] blocks",
                        block
                    ),
                );
            } else {
                attrs.push(attr);
            }
        }
        method.attrs = attrs;
        if take_execute && name == "execute" {
            if let Some((_, attr)) = activity_options {
                errors.at(
                    attr,
                    "`execute` is the workflow's entry point, not an activity; remove #[activity]",
                );
            }
            split.execute = Some(method);
            continue;
        }
        match activity_options {
            Some((options, _)) => {
                let journal_name = match journal_prefix {
                    Some(prefix) => format!("{prefix}.{name}"),
                    None => name,
                };
                if let Some(def) = parse_activity_method(method, options, journal_name, errors) {
                    split.activities.push(def);
                }
            }
            None => kept.push(syn::ImplItem::Fn(method)),
        }
    }
    item.items = kept;
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(attr: Attribute) -> (ActivityOptionsDef, Vec<String>) {
        let mut errors = Errors::default();
        let options = parse_activity_options(&attr, &mut errors);
        (options, errors.messages())
    }

    #[test]
    fn activity_options_are_read() {
        let (plain, errors) = options(syn::parse_quote!(#[activity]));
        assert!(errors.is_empty());
        assert_eq!(plain, ActivityOptionsDef::default());
        let (opts, errors) = options(syn::parse_quote!(
            #[activity(retries = 5, backoff = "constant", backoff_base_ms = 20, on_cancel = "interrupt")]
        ));
        assert!(errors.is_empty(), "{errors:?}");
        assert!(opts.interrupt_on_cancel);
        assert_eq!(opts.retries, 5);
        assert_eq!(opts.backoff, BackoffDef::Constant);
        assert_eq!(opts.backoff_base_ms, Some(20));
    }

    #[test]
    fn every_bad_activity_option_is_reported() {
        let (_, errors) = options(syn::parse_quote!(
            #[activity(retry = 3, backoff = "linear", retries = "three", retries = 2, on_cancel = "stop")]
        ));
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(errors[4].contains("unknown on_cancel `stop`"));
        assert!(errors[0].contains("unknown #[activity] option `retry`"));
        assert!(errors[1].contains("unknown backoff `linear`"));
        assert!(errors[2].contains("takes an integer"));
        assert!(errors[3].contains("more than once"));
    }

    #[test]
    fn self_type_is_replaced_inside_groups() {
        let path: Path = syn::parse_quote!(OrderWorkflow);
        let out = replace_self_type(quote!(Self::helper(&[Self::X]); self.a), &path);
        assert_eq!(
            out.to_string(),
            quote!(OrderWorkflow::helper(&[OrderWorkflow::X]); self.a).to_string()
        );
    }

    #[test]
    fn activity_signatures_are_checked() {
        let mut errors = Errors::default();
        let method: ImplItemFn = syn::parse_quote! {
            fn step(&mut self, name: &str) -> Result<(), ClusterError> { Ok(()) }
        };
        let def = parse_activity_method(
            method,
            ActivityOptionsDef::default(),
            "step".into(),
            &mut errors,
        );
        let messages = errors.messages();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].contains("must be an `async fn`"));
        assert!(messages[1].contains("`&mut self`"));
        assert!(messages[2].contains("takes a reference"));
        let def = def.expect("a Result return still generates");
        assert!(def.body.sig.asyncness.is_some());
    }
}
