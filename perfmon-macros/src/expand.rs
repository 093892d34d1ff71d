//! Code generation.

use proc_macro2::{TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    Block, Expr, FnArg, GenericArgument, ItemFn, Pat, PathArguments, ReturnType, Stmt, Type,
    TypeParamBound,
};

use crate::attr::{Args, Kind, Sigil};

/// Checks what only the function can tell: `const`, and `skip` names.
pub(crate) fn validate(kind: Kind, args: &Args, item: &ItemFn) -> syn::Result<()> {
    if let Some(constness) = &item.sig.constness {
        return Err(syn::Error::new_spanned(
            constness,
            format!(
                "#[{}] cannot go on a `const fn`: timing needs a clock at run time; remove `const`, \
                 or track the caller instead",
                kind.attr_name()
            ),
        ));
    }
    let params: Vec<String> = item
        .sig
        .inputs
        .iter()
        .filter_map(|arg| match arg {
            FnArg::Receiver(_) => Some("self".to_owned()),
            FnArg::Typed(pat) => match &*pat.pat {
                Pat::Ident(p) => Some(p.ident.to_string()),
                _ => None,
            },
        })
        .collect();
    for skipped in &args.skip {
        if !params.iter().any(|p| skipped == p) {
            let known = if params.is_empty() {
                "it has none".to_owned()
            } else {
                params.join(", ")
            };
            return Err(syn::Error::new_spanned(
                skipped,
                format!(
                    "`skip({skipped})`: `{}` has no parameter named `{skipped}` (parameters: {known})",
                    item.sig.ident
                ),
            ));
        }
    }
    Ok(())
}

/// `true` if the tokens contain `impl` (an `impl Trait` type cannot be
/// written in a `let` annotation).
fn mentions_impl(tokens: TokenStream) -> bool {
    tokens.into_iter().any(|t| match t {
        TokenTree::Ident(i) => i == "impl",
        TokenTree::Group(g) => mentions_impl(g.stream()),
        _ => false,
    })
}

fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Result"),
        Type::Paren(p) => is_result(&p.elem),
        Type::Group(g) => is_result(&g.elem),
        _ => false,
    }
}

/// The `Output = T` of a `Pin<Box<dyn Future<Output = T> + ..>>` return type.
fn future_output(ty: &Type) -> Option<&Type> {
    fn in_args(args: &PathArguments) -> Option<&Type> {
        let PathArguments::AngleBracketed(args) = args else {
            return None;
        };
        args.args.iter().find_map(|arg| match arg {
            GenericArgument::AssocType(a) if a.ident == "Output" => Some(&a.ty),
            GenericArgument::Type(t) => future_output(t),
            _ => None,
        })
    }
    fn in_bounds<'a>(bounds: impl IntoIterator<Item = &'a TypeParamBound>) -> Option<&'a Type> {
        bounds.into_iter().find_map(|b| match b {
            TypeParamBound::Trait(t) => t.path.segments.iter().find_map(|s| in_args(&s.arguments)),
            _ => None,
        })
    }
    match ty {
        Type::Path(p) => p.path.segments.iter().find_map(|s| in_args(&s.arguments)),
        Type::TraitObject(t) => in_bounds(&t.bounds),
        Type::ImplTrait(t) => in_bounds(&t.bounds),
        Type::Paren(p) => future_output(&p.elem),
        Type::Group(g) => future_output(&g.elem),
        _ => None,
    }
}

/// The body `async_trait` leaves behind: `Box::pin(async move { .. })` as the
/// function's last expression. Returns the async block.
fn async_trait_body(block: &mut Block) -> Option<&mut Expr> {
    let Some(Stmt::Expr(Expr::Call(call), None)) = block.stmts.last_mut() else {
        return None;
    };
    let Expr::Path(path) = &*call.func else {
        return None;
    };
    let segments: Vec<String> = path
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    let is_box_pin = segments.ends_with(&["Box".to_owned(), "pin".to_owned()]);
    if !is_box_pin || call.args.len() != 1 {
        return None;
    }
    match call.args.first_mut() {
        Some(arg @ Expr::Async(_)) => Some(arg),
        _ => None,
    }
}

pub(crate) fn expand(kind: Kind, args: &Args, mut item: ItemFn) -> TokenStream {
    let ident = &item.sig.ident;
    let span_name = ident.to_string();
    let is_async = item.sig.asyncness.is_some();
    let output_ty = match &item.sig.output {
        ReturnType::Type(_, ty) => Some((**ty).clone()),
        ReturnType::Default => None,
    };
    let is_pipeline = kind == Kind::Pipeline;

    // What identifies the span to perfmon (perfmon's `__perfmon_span!`
    // declares its fields, and with feature `otel` the GenAI attributes),
    // then the user's fields.
    let empty = quote!(::perfmon::__private::tracing::field::Empty);
    let (span_kind, identity) = match kind {
        Kind::Agent | Kind::Tool => {
            let name = args
                .name
                .as_ref()
                .map_or_else(|| span_name.to_token_stream(), ToTokens::to_token_stream);
            let span_kind = if kind == Kind::Tool {
                quote!(tool)
            } else {
                quote!(agent)
            };
            (span_kind, name)
        }
        Kind::Pipeline => {
            let id = args
                .id
                .as_ref()
                .map(ToTokens::to_token_stream)
                .unwrap_or_default();
            (quote!(pipeline), quote!((#id)))
        }
    };
    let mut fields = TokenStream::new();
    if kind != Kind::Pipeline && !is_async {
        fields.extend(quote!(perfmon.sync = #empty,));
    }
    for field in &args.fields {
        let name = &field.name;
        fields.extend(match &field.value {
            None => quote!(#name = #empty,),
            Some((None, value)) => quote!(#name = #value,),
            Some((Some(Sigil::Display), value)) => {
                quote!(#name = ::perfmon::__private::tracing::field::display(&#value),)
            }
            Some((Some(Sigil::Debug), value)) => {
                quote!(#name = ::perfmon::__private::tracing::field::debug(&#value),)
            }
        });
    }
    if args.records_args() {
        for arg in &item.sig.inputs {
            let FnArg::Typed(pat) = arg else { continue };
            let Pat::Ident(p) = &*pat.pat else { continue };
            let name = &p.ident;
            if args.skip.iter().any(|s| s == name) {
                continue;
            }
            fields.extend(quote_spanned!(name.span()=> #name = ::perfmon::__private::tracing::field::debug(&#name),));
        }
    }
    let span_ident = format_ident!("__perfmon_span");
    // An agent's or tool's future (an `async fn`, or the boxed body
    // `#[async_trait]` left) times its own polls: its site says so.
    let timed = is_async || async_trait_body(&mut item.block.clone()).is_some();
    let site = if timed {
        quote!(::perfmon::__private::HintSite::timed())
    } else {
        quote!(::perfmon::__private::HintSite::new())
    };
    let make_span = match kind {
        // The name is a literal: offered to the layer, which then need not
        // visit the span's fields to learn it (`__private::NameOffer`).
        Kind::Agent | Kind::Tool => {
            let run_kind = if kind == Kind::Tool {
                quote!(::perfmon::RunKind::Tool)
            } else {
                quote!(::perfmon::RunKind::Agent)
            };
            quote! {
                let #span_ident = {
                    static __PERFMON_SITE: ::perfmon::__private::HintSite = #site;
                    let __perfmon_offer =
                        ::perfmon::__private::NameOffer::new(&__PERFMON_SITE, #identity, #run_kind);
                    let #span_ident = ::perfmon::__perfmon_span!(#span_kind, #span_name, #identity; #fields);
                    __perfmon_offer.made(#span_ident)
                };
            }
        }
        Kind::Pipeline => quote! {
            let #span_ident = ::perfmon::__perfmon_span!(#span_kind, #span_name, #identity; #fields);
        },
    };

    let error_of = |output: Option<&Type>| {
        if args.err.is_some() || output.is_some_and(is_result) {
            quote!(::perfmon::__private::err_text)
        } else {
            quote!(::perfmon::__private::no_err)
        }
    };

    let block = item.block.clone();
    let body = if is_async {
        let error_of = error_of(output_ty.as_ref());
        // Keep the user's return type in force, so type errors in the body
        // point at the user's code (the trick `#[instrument]` uses).
        let (fake_return, inner) = match &output_ty {
            Some(ty) if !mentions_impl(ty.to_token_stream()) => (
                quote_spanned! {ty.span()=>
                    #[allow(unreachable_code, clippy::empty_loop, clippy::diverging_sub_expression, clippy::let_unit_value, clippy::needless_return)]
                    if false {
                        let __perfmon_fake_return: #ty = loop {};
                        return __perfmon_fake_return;
                    }
                },
                quote!(async move { let __perfmon_output: #ty = #block; __perfmon_output }),
            ),
            _ => (quote!(), quote!(async move #block)),
        };
        quote! {{
            #fake_return
            #make_span
            ::perfmon::__private::track_future(#span_ident, #inner, #error_of, #is_pipeline).await
        }}
    } else if let Some(future) = async_trait_body(&mut item.block) {
        // `#[async_trait]` ran first: time the boxed future, not its creation.
        let error_of = error_of(output_ty.as_ref().and_then(future_output));
        let inner = future.clone();
        *future = syn::parse_quote!(::perfmon::__private::track_future(#span_ident, #inner, #error_of, #is_pipeline));
        let rewritten = &item.block;
        quote! {{
            #make_span
            #rewritten
        }}
    } else {
        let error_of_tokens = error_of(output_ty.as_ref());
        let needs_outcome = args.err.is_some() || output_ty.as_ref().is_some_and(is_result);
        if needs_outcome {
            // A closure, so that `return` and `?` in the body still yield the
            // value whose outcome we record.
            let annotation = match &output_ty {
                Some(ty) if !mentions_impl(ty.to_token_stream()) => quote!(: #ty),
                _ => quote!(),
            };
            quote! {{
                #make_span
                let __perfmon_scope = ::perfmon::__private::SyncScope::enter(#span_ident, #is_pipeline);
                #[allow(clippy::redundant_closure_call)]
                let __perfmon_output #annotation = (move || #block)();
                __perfmon_scope.finish(&__perfmon_output, #error_of_tokens);
                __perfmon_output
            }}
        } else {
            // The scope's drop records the outcome (panicked, or succeeded).
            quote! {{
                #make_span
                let __perfmon_scope = ::perfmon::__private::SyncScope::enter(#span_ident, #is_pipeline);
                #block
            }}
        }
    };

    let ItemFn {
        attrs, vis, sig, ..
    } = &item;
    quote! {
        #(#attrs)*
        #vis #sig #body
    }
}
