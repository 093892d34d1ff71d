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
    Tool,
    Pipeline,
}

impl Kind {
    pub(crate) fn attr_name(self) -> &'static str {
        match self {
            Kind::Agent => "track_agent",
            Kind::Tool => "track_tool",
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

/// Refuses an argument given twice; every keyword goes through it.
fn once(seen: &mut Vec<&'static str>, span: Span, what: &'static str) -> syn::Result<()> {
    if seen.contains(&what) {
        return Err(duplicate(span, what));
    }
    seen.push(what);
    Ok(())
}

impl Args {
    pub(crate) fn parse(kind: Kind, input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        let mut seen = Vec::new();
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if kind != Kind::Pipeline && lookahead.peek(kw::name) {
                once(&mut seen, input.parse::<kw::name>()?.span, "name")?;
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
                once(&mut seen, input.parse::<kw::id>()?.span, "id")?;
                input.parse::<Token![=]>()?;
                args.id = Some(input.parse()?);
            } else if lookahead.peek(kw::fields) {
                once(&mut seen, input.parse::<kw::fields>()?.span, "fields")?;
                let content;
                syn::parenthesized!(content in input);
                args.fields = Punctuated::<FieldSpec, Token![,]>::parse_terminated(&content)?
                    .into_iter()
                    .collect();
            } else if lookahead.peek(kw::skip_all) {
                let span = input.parse::<kw::skip_all>()?.span;
                once(&mut seen, span, "skip_all")?;
                args.skip_all = Some(span);
            } else if lookahead.peek(kw::skip) {
                let token = input.parse::<kw::skip>()?;
                once(&mut seen, token.span, "skip")?;
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
                let span = input.parse::<kw::args>()?.span;
                once(&mut seen, span, "args")?;
                args.args = Some(span);
            } else if lookahead.peek(kw::err) {
                let span = input.parse::<kw::err>()?.span;
                once(&mut seen, span, "err")?;
                args.err = Some(span);
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
