//! Attribute macros for [perfmon](https://docs.rs/perfmon): `#[track_agent]` and
//! `#[track_pipeline]`. Use them through `perfmon` (feature `macros`, on by
//! default): `#[perfmon::track_agent]`.
//!
//! # Overview
//!
//! `#[track_agent]` times every call of a function as an agent run, exactly
//! as `perfmon::agent` (sync) or `TrackAgentExt::track_agent` (async) would,
//! without changing how the function is called or what it returns.
//! `#[track_pipeline(id = ..)]` runs each call as a pipeline.
//!
//! # What they expand to
//!
//! A synchronous function
//!
//! ```text
//! #[perfmon::track_agent(name = "geo")]
//! fn geometry(cells: u32) -> Result<Mesh, MeshError> { mesh(cells) }
//! ```
//!
//! becomes, roughly,
//!
//! ```text
//! fn geometry(cells: u32) -> Result<Mesh, MeshError> {
//!     let __perfmon_span = {
//!         // Hands the layer the agent's entry while the span is made, so
//!         // that it need not read the span's fields to learn the name.
//!         static __PERFMON_SITE: HintSite = HintSite::new();
//!         let __perfmon_offer = ::perfmon::__private::NameOffer::new(&__PERFMON_SITE, "geo", RunKind::Agent);
//!         let __perfmon_span = ::perfmon::__private::tracing::span!(
//!             target: "perfmon", Level::INFO, "geometry",
//!             perfmon.agent = "geo", perfmon.outcome = Empty, perfmon.error = Empty, perfmon.sync = Empty,
//!         );
//!         __perfmon_offer.made(__perfmon_span)
//!     };
//!     let __perfmon_scope = ::perfmon::__private::SyncScope::enter(__perfmon_span, false);
//!     let __perfmon_output: Result<Mesh, MeshError> = (move || { mesh(cells) })();
//!     __perfmon_scope.finish(&__perfmon_output, ::perfmon::__private::err_text); // Err => failed
//!     __perfmon_output
//! }
//! ```
//!
//! (a function that does not return a `Result` needs no closure: the body runs
//! after the scope is entered, and the scope's drop records `succeeded`, or
//! `panicked` while unwinding). An `async fn`
//!
//! ```text
//! #[perfmon::track_agent]
//! async fn physics(x: u32) -> f64 { solve(x).await }
//! ```
//!
//! becomes
//!
//! ```text
//! async fn physics(x: u32) -> f64 {
//!     if false { let __perfmon_fake_return: f64 = loop {}; return __perfmon_fake_return; }
//!     // As above, without perfmon.sync, at a `HintSite::timed()`: the
//!     // future times its own polls, the layer leaves its busy time to it.
//!     let __perfmon_span = { /* ... */ };
//!     ::perfmon::__private::track_future(
//!         __perfmon_span,
//!         async move { let __perfmon_output: f64 = { solve(x).await }; __perfmon_output },
//!         ::perfmon::__private::no_err,
//!         false,
//!     )
//!     .await
//! }
//! ```
//!
//! The `if false` line keeps the declared return type in force, so a type
//! error in the body is reported at the user's code, not in the expansion
//! (the trick `#[tracing::instrument]` uses). Under `#[async_trait]`, the
//! boxed `async move` block is wrapped instead, and the span is made when the
//! method is called.
//!
//! All generated paths are absolute (`::perfmon::__private::...`): the user's
//! crate needs no `tracing` dependency and no imports.
//!
//! # Target, and when the span is made
//!
//! The spans have target `perfmon` (the span's module path is still yours),
//! so one filter directive, `perfmon=info`, enables every span perfmon
//! makes, whatever module the function is in.
//!
//! The span of an `async fn` is made when the future is first polled, as
//! with `#[tracing::instrument]`: the signature stays `async fn`, so the
//! attribute cannot run code at the call. Its parent is the span current
//! at that first poll. `tokio::spawn(physics(x))` polls it in a new task
//! where no span is current, so the run lands outside its pipeline (perfmon
//! counts such runs in `Overview::runs_outside_pipeline` and warns once);
//! `tokio::spawn(physics(x).in_current_span())` keeps it inside.
//! `perfmon::TrackAgentExt::track_agent` on a future makes the span at the
//! call instead, so `tokio::spawn(work().track_agent("physics"))` needs nothing more.

use proc_macro::TokenStream;
use syn::parse::Parser;

mod attr;
mod expand;

use attr::{Args, Kind};

/// Times every call of the function as a perfmon agent run.
///
/// ```text
/// #[perfmon::track_agent]                       // the agent is named after the function
/// fn planner(project: &Project) -> Plan { .. }
///
/// #[perfmon::track_agent(name = "geo")]         // or named explicitly
/// async fn geometry(mesh: &Mesh) -> Result<Grid, MeshError> { .. }  // Err => failed, with its Display
///
/// #[perfmon::track_agent(fields(cells = mesh.len()), skip(mesh))]
/// fn refine(mesh: &Mesh, level: u8) { .. }      // records cells and level, not mesh
/// ```
///
/// Arguments:
///
/// | argument | meaning |
/// | --- | --- |
/// | `name = "lit"` | the agent's name (default: the function's name) |
/// | `fields(a = expr, b = %expr, c = ?expr, d)` | extra span fields, as in `#[tracing::instrument]` (`%` Display, `?` Debug, bare = empty) |
/// | `args` | record every argument with `Debug` (default: none: agents take big inputs) |
/// | `skip(a, b)` | record every argument but these (implies `args`) |
/// | `skip_all` | record no argument (the default; accepted for `#[instrument]` habits) |
/// | `err` | treat the output as a `Result` even when its type is an alias not named `Result` |
///
/// Outcomes: `Err(e)` (for a return type named `Result`) is `failed` with
/// `e`'s `Display` text; a panic is `panicked`; an async call whose future is
/// dropped early is `cancelled`.
///
/// Like `#[tracing::instrument]`, an `async fn`'s span is created when its
/// future is first polled. To keep a spawned call in the current pipeline,
/// spawn it with `.in_current_span()` (`tracing::Instrument`) or use
/// `perfmon::TrackAgentExt::track_agent`, which captures the span at the call.
#[proc_macro_attribute]
pub fn track_agent(args: TokenStream, item: TokenStream) -> TokenStream {
    attribute(Kind::Agent, args, item)
}

/// Times every call of the function as a tool run: like
/// [`macro@track_agent`] in every way (sync, async, methods; the same
/// arguments and outcomes), but the run's kind is `tool`. A tool run is
/// nested in the agent run that called it (`AgentRun::parent`), appears in
/// the pipeline report's runs with `kind: "tool"`, has its own statistics,
/// and streams `tool_started` / `tool_completed` events.
///
/// ```text
/// #[perfmon::track_tool]                         // named after the function
/// fn compile(src: &Path) -> Result<Binary, CompileError> { .. }
///
/// #[perfmon::track_tool(name = "web-search")]
/// async fn search(q: &str) -> Vec<Hit> { .. }
/// ```
#[proc_macro_attribute]
pub fn track_tool(args: TokenStream, item: TokenStream) -> TokenStream {
    attribute(Kind::Tool, args, item)
}

/// Runs every call of the function as a perfmon pipeline whose id is the
/// expression given (it may use the arguments).
///
/// ```text
/// #[perfmon::track_pipeline(id = project.id.clone())]
/// async fn run(project: &Project) -> Result<Report, RunError> { .. }  // Err => the pipeline failed
/// ```
///
/// The report is filed as for `PipelineGuard` (see `Monitor::pipeline`,
/// `Monitor::recent_pipelines` and the `pipeline_completed` event). Takes
/// `fields`, `args`, `skip`, `skip_all` and `err` as [`macro@track_agent`] does.
#[proc_macro_attribute]
pub fn track_pipeline(args: TokenStream, item: TokenStream) -> TokenStream {
    attribute(Kind::Pipeline, args, item)
}

fn attribute(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    let item2 = proc_macro2::TokenStream::from(item.clone());
    let args = match (|input: syn::parse::ParseStream<'_>| Args::parse(kind, input)).parse(args) {
        Ok(args) => args,
        // Emit the error and the item unchanged, so no cascade of
        // follow-on errors reaches the user.
        Err(err) => return with_item(err, item2),
    };
    let function: syn::ItemFn = match syn::parse(item) {
        Ok(function) => function,
        Err(_) => {
            let err = syn::Error::new_spanned(
                &item2,
                format!(
                    "#[{}] goes on a function with a body (sync or async, free or a method); \
                     for a block of code, use `let _agent = perfmon::agent(\"name\");`",
                    kind.attr_name()
                ),
            );
            return with_item(err, item2);
        }
    };
    if let Err(err) = expand::validate(kind, &args, &function) {
        return with_item(err, item2);
    }
    expand::expand(kind, &args, function).into()
}

fn with_item(err: syn::Error, item: proc_macro2::TokenStream) -> TokenStream {
    let mut out = err.to_compile_error();
    out.extend(item);
    out.into()
}
