//! Live performance monitoring for AI-agent pipelines, built on [`tracing`].
//!
//! # Overview
//!
//! perfmon times the agents of your pipelines (a geometry agent, a physics
//! agent, a code generator, ...), attributes every run to its pipeline, keeps
//! per-agent statistics, flags the agents that took more than 30% of a
//! pipeline's time, finds the critical path through parallel runs, and
//! streams all of it as [`Event`]s and through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! # Core concepts
//!
//! - An **agent run** is a `tracing` span with a `perfmon.agent` field; a
//!   **pipeline** is a span with `perfmon.pipeline`. Agents belong to the
//!   pipeline whose span is their ancestor, across threads and tasks.
//! - [`PerfmonLayer`] (from [`Monitor::layer`]) does all the timing: wall
//!   time from span open to close, busy time (time being polled) for futures.
//!   Spans made by other code count too, e.g.
//!   `#[tracing::instrument(fields(perfmon.agent = "x"))]`.
//! - [`Monitor`] answers questions: [`overview`](Monitor::overview),
//!   [`agents`](Monitor::agents), [`pipeline`](Monitor::pipeline),
//!   [`subscribe`](Monitor::subscribe), ...
//!
//! # Usage
//!
//! Put `#[perfmon::track_agent]` on the functions your agents run, and
//! `#[perfmon::track_pipeline(id = ..)]` on the one that runs a pipeline:
//!
//! ```
//! use tracing_subscriber::prelude::*;
//!
//! # #[derive(Debug)] struct MeshError;
//! # impl std::fmt::Display for MeshError {
//! #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("no mesh") }
//! # }
//! #[perfmon::track_agent]                        // named after the function
//! fn planner(cells: u32) -> u32 { cells / 2 }
//!
//! #[perfmon::track_agent(name = "geo")]
//! fn geometry(cells: u32) -> Result<u32, MeshError> {   // Err => failed, with its Display
//!     if cells == 0 { Err(MeshError) } else { Ok(cells * 8) }
//! }
//!
//! #[perfmon::track_pipeline(id = format!("proj_{id}"))]
//! fn run(id: u32) -> Result<u32, MeshError> {
//!     geometry(planner(1200))
//! }
//!
//! let monitor = perfmon::Monitor::new();
//! # let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(monitor.layer()));
//! # #[cfg(any())]
//! tracing_subscriber::registry().with(monitor.layer()).init();
//!
//! run(7).unwrap();
//! let report = monitor.pipeline("proj_7").unwrap();
//! assert_eq!(report.agents.len(), 2);
//! println!("{report}");                          // runs, bottlenecks, critical path
//! ```
//!
//! `async fn`s, methods, generics and `#[async_trait]` work the same; see
//! `#[track_agent]`'s docs (feature `macros`). Without the attribute, use guards:
//!
//! ```
//! # use tracing_subscriber::prelude::*;
//! let monitor = perfmon::Monitor::new();
//! # let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(monitor.layer()));
//! let pipeline = monitor.start_pipeline("proj_123");
//! {
//!     let _agent = perfmon::agent("geometry");
//!     perfmon::progress!(percent = 40.0, stage = "meshing", "cells {}", 1200);
//!     perfmon::thought!("trying a coarser mesh");
//! }
//! perfmon::agent("physics").fail("mesh did not converge");
//! let report = pipeline.finish();
//!
//! assert_eq!(report.agents.len(), 2);
//! assert_eq!(report.agents[1].outcome.error(), Some("mesh did not converge"));
//! let stats = monitor.agent_stats("geometry").unwrap();
//! assert_eq!(stats.runs, 1);
//! ```
//!
//! Futures are tracked with [`TrackAgentExt`]:
//!
//! ```
//! use perfmon::TrackAgentExt;
//! # async fn physics() -> Result<f64, std::io::Error> { Ok(1.0) }
//! # async fn demo() -> Result<(), std::io::Error> {
//! let energy = physics().track_agent_result("physics").await?;
//! # Ok(()) }
//! ```
//!
//! Every span and event perfmon makes (guards, futures, the macros,
//! `progress!`, `thought!`) is at level `INFO` with target `perfmon` or
//! `perfmon::…`: the directive [`FILTER_DIRECTIVE`] (`perfmon=info`)
//! enables them all. A global filter that disables them switches perfmon
//! off for them; perfmon then says so once through a `WARN` event (target
//! `perfmon`) and counts them in [`Overview::spans_filtered`]. Better, put
//! the filter on your log layer only (`fmt::layer().with_filter(filter)`).
//! Spans you make yourself with `#[tracing::instrument(fields(perfmon.agent = ..))]`
//! keep your module as target: enable them in your filter too.
//!
//! # Cost
//!
//! The recording path takes no lock shared by all spans, never waits, and
//! keeps memory bounded: per-agent histograms (two significant digits, values up to 6 h; at most
//! `max_agents`), at most `max_runs_per_pipeline` runs per report (the rest
//! aggregated), `recent_capacity` reports, and bounded event queues whose
//! drops are counted. See `BENCHMARKS.md` for measured overhead.
//!
//! # Feature flags
//!
//! - `macros` (default): re-exports the attribute macros from `perfmon-macros`.
//! - `process`: `MonitorBuilder::process_sampler`, CPU/RSS/threads of the process.
//! - `ws`: `ws::Sidecar`, the WebSocket sidecar (from `perfmon-ws`): live
//!   events, REST snapshots and Prometheus text on one port.
//! - `fleet`: `perfmon::fleet`, many processes on one dashboard through a
//!   Redis stream: `fleet::Publisher` in each worker, `fleet::Collector` to
//!   serve them.
//! - `cli`: the `perfmon` command (`perfmon top`, `tail`, `report`,
//!   `agents`) and `perfmon::cli`, its parts.
//!
//! # MSRV
//!
//! Rust 1.88.

#![cfg_attr(docsrs, feature(doc_cfg))]

// Dependency order, bottom to top (no two modules import each other; see
// README's Architecture section):
//   outcome, fields, sync, coverage, unseen, usage → record → output, analysis, stats,
//   pipeline, metrics, events
//   → recorder → layer, guard, sampler → monitor, clock, exporter → builder → ws, otel
//   → fleet (publisher on the event stream; collector on top of ws)
//   → cli (a client of any sidecar: REST and perfmon-ws's client)
mod agent_table;
mod alert_state;
#[cfg(feature = "alerts")]
#[cfg_attr(docsrs, doc(cfg(feature = "alerts")))]
pub mod alerts;
mod analysis;
mod builder;
mod busy;
#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub mod cli;
mod clock;
mod coverage;
mod events;
mod exporter;
mod fields;
#[cfg(feature = "fleet")]
#[cfg_attr(docsrs, doc(cfg(feature = "fleet")))]
pub mod fleet;
mod guard;
#[cfg(feature = "history")]
pub mod history;
mod layer;
pub mod metrics;
mod monitor;
#[cfg(feature = "otel")]
#[cfg_attr(docsrs, doc(cfg(feature = "otel")))]
pub mod otel;
mod outcome;
mod output;
mod pending;
mod pipeline;
mod record;
mod recorder;
#[cfg(feature = "process")]
mod sampler;
mod site;
mod span_macros;
mod stats;
mod sync;
mod unseen;
mod usage;
#[cfg(feature = "ws")]
#[cfg_attr(docsrs, doc(cfg(feature = "ws")))]
pub mod ws;

pub use alert_state::{Alert, AlertState};
#[cfg(feature = "alerts")]
#[cfg_attr(docsrs, doc(cfg(feature = "alerts")))]
pub use alerts::{AlertRule, WebhookStats};
pub use builder::{
    DEFAULT_BOTTLENECK_THRESHOLD, DEFAULT_MAX_OUTPUT_LINE_BYTES, DEFAULT_MAX_OUTPUT_LINES,
    MonitorBuilder,
};
pub use clock::MockClock;
pub use events::{Event, EventKind, Subscription};
pub use exporter::{EXPORT_BATCH_MAX, Exporter, ExporterError, ExporterHandle};
pub use fields::{
    AGENT_FIELD, ERROR_FIELD, OUTCOME_FIELD, OUTPUT_TARGET, PIPELINE_FIELD, PROGRESS_TARGET,
    SYNC_FIELD, THOUGHT_TARGET, TOOL_FIELD, USAGE_TARGET,
};
pub use guard::{
    AgentGuard, PipelineGuard, ToolGuard, TrackAgentExt, TrackedAgent, TrackedPipeline, agent, tool,
};
#[cfg(feature = "history")]
#[cfg_attr(docsrs, doc(cfg(feature = "history")))]
pub use history::{
    AgentHistory, Bucket, Comparison, History, HistoryBuilder, HistoryError, HistoryStats, Period,
    PipelinePage, PipelineQuery, REGRESSION_MIN_RUNS, StoredAlert, StoredPipeline, TrendPoint,
};
pub use layer::PerfmonLayer;
pub use monitor::Monitor;
pub use outcome::{Outcome, UnknownOutcome};
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use perfmon_macros::{track_agent, track_pipeline, track_tool};
pub use record::{
    AgentRun, AggregatedRuns, Bottleneck, BottleneckBasis, OutputLine, PipelineReport,
    PipelineSnapshot, Progress, RunKind,
};
pub use stats::{AgentStats, OutcomeCounts, Overview, ProcessSample};
pub use unseen::FILTER_DIRECTIVE;
pub use usage::Usage;

/// Errors from perfmon's setup calls. Recording itself never fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`try_init`] found a global tracing subscriber already installed.
    #[error(
        "a global tracing subscriber is already installed; add `monitor.layer()` to your own \
         subscriber instead of calling perfmon::init()"
    )]
    SubscriberAlreadySet(#[source] tracing_subscriber::util::TryInitError),
    /// An exporter's thread could not be spawned.
    #[error("could not spawn the exporter's thread ({0}); the process is out of threads or memory")]
    Thread(#[source] std::io::Error),
}

/// Installs a global subscriber made of a `Registry` and a new monitor's
/// layer, and returns the monitor.
///
/// # Errors
///
/// [`Error::SubscriberAlreadySet`] if a global subscriber exists.
pub fn try_init() -> Result<Monitor, Error> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let monitor = Monitor::new();
    tracing_subscriber::registry()
        .with(monitor.layer())
        .try_init()
        .map_err(Error::SubscriberAlreadySet)?;
    Ok(monitor)
}

/// Like [`try_init`], for programs that set up tracing in one place.
///
/// # Panics
///
/// If a global tracing subscriber is already installed (the message says
/// what to do instead).
pub fn init() -> Monitor {
    match try_init() {
        Ok(monitor) => monitor,
        Err(err) => panic!("perfmon::init: {err}"),
    }
}

/// Reports progress from inside an agent: `perfmon::progress!(percent = 40.0,
/// stage = "meshing", "cells {}", n)`. Every part is optional; `percent` is
/// 0–100. Outside any agent it does nothing.
///
/// It is a `tracing` event (target `perfmon::progress`, level `INFO`), so
/// other layers see it too.
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => {
        $crate::__private::tracing::event!(
            target: "perfmon::progress",
            $crate::__private::tracing::Level::INFO,
            $($arg)*
        )
    };
}

/// Records a thought of the current agent: `perfmon::thought!("trying {}", x)`.
///
/// A `tracing` event with target `perfmon::thought`, level `INFO`.
#[macro_export]
macro_rules! thought {
    ($($arg:tt)*) => {
        $crate::__private::tracing::event!(
            target: "perfmon::thought",
            $crate::__private::tracing::Level::INFO,
            $($arg)*
        )
    };
}

/// Writes one line of live output of the current tool (or agent) run:
/// `perfmon::output!(stream = "stdout", "{}", line)`. `stream` is optional
/// (`"out"` if not given).
///
/// The line streams as a `tool_output` event (low priority: a slow client
/// loses these before anything else), and the run keeps its last lines in
/// its report (`AgentRun::output`, see
/// [`MonitorBuilder::max_output_lines`]); a line longer than
/// [`MonitorBuilder::max_output_line_bytes`] is cut and marked. Every cut or
/// dropped line is counted ([`Overview`]). Outside any run it does nothing.
///
/// A `tracing` event with target `perfmon::output`, level `INFO`: keep it
/// out of your log with a filter on your log layer (README, "Keeping
/// `progress!`, `thought!`, `output!` and `usage!` out of your log").
#[macro_export]
macro_rules! output {
    ($($arg:tt)*) => {
        $crate::__private::tracing::event!(
            target: "perfmon::output",
            $crate::__private::tracing::Level::INFO,
            $($arg)*
        )
    };
}

/// Adds token usage and cost to the current run:
/// `perfmon::usage!(model = "gpt-4.1", input_tokens = 1200, output_tokens = 310, cost_usd = 0.0061)`.
/// Every field is optional; several calls in one run add up.
///
/// The run's [`AgentRun::usage`], its agent's [`AgentStats::usage`], its
/// pipeline's [`PipelineReport::usage`] and [`Overview::usage`] all sum it
/// exactly (costs to the nano-dollar), and `perfmon_tokens_total` /
/// `perfmon_cost_usd` count it through `metrics`. Inside a pipeline but
/// outside any run it counts for the pipeline; outside both, in the
/// overview only.
///
/// A `tracing` event with target `perfmon::usage`, level `INFO`. With
/// feature `otel`, the run's totals so far are also recorded on its span as
/// `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens` and
/// `gen_ai.request.model`, for `tracing-opentelemetry` to export.
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => {{
        $crate::__private::tracing::event!(
            target: "perfmon::usage",
            $crate::__private::tracing::Level::INFO,
            $($arg)*
        );
        // Feature `otel`: the run's totals onto its span, for
        // `tracing-opentelemetry`. Without it, nothing.
        $crate::__private::usage_reported();
    }};
}

#[doc(hidden)]
pub mod __private;
