//! Parsing the attribute's arguments.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitStr, Token};

mod kw {
    syn::custom_keyword!(name);
    syn::custom_keyword!(fields);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(skip_all);
    syn::custom_keyword!(args);
    syn::custom_keyword!(err);
    syn::custom_keyword!(id);
}

/// Which attribute is being parsed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Agent,
    Pipeline,
}

impl Kind {
    pub(crate) fn attr_name(self) -> &'static str {
        match self {
            Kind::Agent => "track_agent",
            Kind::Pipeline => "track_pipeline",
        }
    }
}

/// One `fields(...)` entry: `a.b = %expr`, `a = ?expr`, `a = expr` or `a`.
pub(crate) struct FieldSpec {
    pub(crate) name: Punctuated<Ident, Token![.]>,
    pub(crate) value: Option<(Option<Sigil>, Expr)>,
}

#[derive(Clone, Copy)]
pub(crate) enum Sigil {
    Display,
    Debug,
}

impl Parse for FieldSpec {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let name = Punctuated::parse_separated_nonempty_with(input, Ident::parse_any)?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            let sigil = if input.peek(Token![%]) {
                input.parse::<Token![%]>()?;
                Some(Sigil::Display)
            } else if input.peek(Token![?]) {
                input.parse::<Token![?]>()?;
                Some(Sigil::Debug)
            } else {
                None
            };
            Some((sigil, input.parse()?))
        } else {
            None
        };
        Ok(FieldSpec { name, value })
    }
}

/// The parsed arguments of `#[track_agent(...)]` / `#[track_pipeline(...)]`.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) name: Option<LitStr>,
    pub(crate) id: Option<Expr>,
    pub(crate) fields: Vec<FieldSpec>,
    pub(crate) skip: Vec<Ident>,
    pub(crate) skip_all: Option<Span>,
    pub(crate) args: Option<Span>,
    pub(crate) err: Option<Span>,
}

fn duplicate(span: Span, what: &str) -> syn::Error {
    syn::Error::new(span, format!("duplicate `{what}` argument: give it once"))
}

/// Sets a flag argument, refusing a second one.
fn flag(slot: &mut Option<Span>, span: Span, what: &str) -> syn::Result<()> {
    if slot.is_some() {
        return Err(duplicate(span, what));
    }
    *slot = Some(span);
    Ok(())
}

impl Args {
    pub(crate) fn parse(kind: Kind, input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        let mut seen_fields = false;
        let mut seen_skip = false;
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if kind == Kind::Agent && lookahead.peek(kw::name) {
                let token = input.parse::<kw::name>()?;
                if args.name.is_some() {
                    return Err(duplicate(token.span, "name"));
                }
                input.parse::<Token![=]>()?;
                let value: Expr = input.parse()?;
                match value {
                    Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(lit),
                        ..
                    }) => args.name = Some(lit),
                    other => {
                        return Err(syn::Error::new_spanned(
                            other,
                            "`name` takes a string literal, e.g. `name = \"geometry\"`",
                        ));
                    }
                }
            } else if kind == Kind::Pipeline && lookahead.peek(kw::id) {
                let token = input.parse::<kw::id>()?;
                if args.id.is_some() {
                    return Err(duplicate(token.span, "id"));
                }
                input.parse::<Token![=]>()?;
                args.id = Some(input.parse()?);
            } else if lookahead.peek(kw::fields) {
                let token = input.parse::<kw::fields>()?;
                if seen_fields {
                    return Err(duplicate(token.span, "fields"));
                }
                seen_fields = true;
                let content;
                syn::parenthesized!(content in input);
                args.fields = Punctuated::<FieldSpec, Token![,]>::parse_terminated(&content)?
                    .into_iter()
                    .collect();
            } else if lookahead.peek(kw::skip_all) {
                flag(
                    &mut args.skip_all,
                    input.parse::<kw::skip_all>()?.span,
                    "skip_all",
                )?;
            } else if lookahead.peek(kw::skip) {
                let token = input.parse::<kw::skip>()?;
                if seen_skip {
                    return Err(duplicate(token.span, "skip"));
                }
                seen_skip = true;
                let content;
                syn::parenthesized!(content in input);
                args.skip = Punctuated::<Ident, Token![,]>::parse_terminated_with(
                    &content,
                    Ident::parse_any,
                )?
                .into_iter()
                .collect();
                if args.skip.is_empty() {
                    return Err(syn::Error::new(
                        token.span,
                        "`skip()` needs parameter names, e.g. `skip(input)`",
                    ));
                }
            } else if lookahead.peek(kw::args) {
                flag(&mut args.args, input.parse::<kw::args>()?.span, "args")?;
            } else if lookahead.peek(kw::err) {
                flag(&mut args.err, input.parse::<kw::err>()?.span, "err")?;
            } else {
                return Err(lookahead.error());
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        if let (Some(skip_all), true) =
            (args.skip_all, args.args.is_some() || !args.skip.is_empty())
        {
            return Err(syn::Error::new(
                skip_all,
                "`skip_all` records no argument, which conflicts with `args`/`skip(..)`: keep one",
            ));
        }
        if kind == Kind::Pipeline && args.id.is_none() {
            return Err(syn::Error::new(
                Span::call_site(),
                "#[track_pipeline] needs the pipeline's id: write `#[track_pipeline(id = <expression>)]`, \
                 e.g. `#[track_pipeline(id = project.id.clone())]`",
            ));
        }
        Ok(args)
    }

    /// Whether arguments are recorded: `args`, or a `skip(..)` list (record the rest).
    pub(crate) fn records_args(&self) -> bool {
        self.args.is_some() || !self.skip.is_empty()
    }
}
