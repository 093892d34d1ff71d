//! OpenTelemetry export (feature `otel`): every finished pipeline becomes
//! one trace, built from its report on an exporter thread, with the
//! attributes of the OpenTelemetry GenAI semantic conventions and the
//! OpenInference span kinds that Phoenix and Langfuse read.
//!
//! The feature also gives perfmon's live spans the same names and GenAI
//! attributes from creation, for programs that export with
//! `tracing-opentelemetry` instead (README, "OpenTelemetry"); use one route
//! or the other.
//!
//! Top of the crate's dependency order, beside `ws`: it reads the event
//! stream like any exporter and reaches into nothing below.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let monitor = perfmon::init();
//! let otel = perfmon::otel::OtelExporter::otlp_http("http://127.0.0.1:6006/v1/traces", "my-agents")?;
//! let _handle = monitor.add_exporter(otel)?;
//! # Ok(()) }
//! ```
//!
//! | perfmon | span name | `gen_ai.operation.name` | `openinference.span.kind` |
//! | --- | --- | --- | --- |
//! | pipeline | `invoke_workflow {id}` | `invoke_workflow` | `CHAIN` |
//! | agent run | `invoke_agent {name}` | `invoke_agent` | `AGENT` |
//! | tool run | `execute_tool {name}` | `execute_tool` | `TOOL` |
//!
//! Each span has its run's exact start and end (the report's times), its
//! parent (the run it ran inside, else the pipeline), `gen_ai.agent.name` or
//! `gen_ai.tool.name`, and perfmon's own figures (`perfmon.self_time_ms`,
//! `perfmon.busy_ms`, `perfmon.outcome`, `perfmon.bottleneck`,
//! `perfmon.critical`). Usage: `gen_ai.usage.input_tokens`,
//! `gen_ai.usage.output_tokens`, `gen_ai.request.model`, `perfmon.cost_usd`,
//! and OpenInference's `llm.token_count.prompt` / `.completion` / `.total`.
//! A run that did not succeed has status `Error` with its error text and
//! `error.type` = its outcome (`failed`, `panicked`, `cancelled`); its kept
//! output lines are span events named `output`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};

use crate::events::{Event, EventKind};
use crate::exporter::Exporter;
use crate::outcome::Outcome;
use crate::record::{AgentRun, PipelineReport, RunKind};
use crate::usage::Usage;

/// Why an OTLP exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// `opentelemetry-otlp` refused the configuration (most often the
    /// endpoint: give a full URL such as `http://127.0.0.1:4318/v1/traces`).
    #[error("could not build the OTLP exporter for {endpoint}: {source}; check the endpoint URL")]
    Build {
        /// The endpoint given.
        endpoint: String,
        /// What `opentelemetry-otlp` said.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The gRPC exporter's runtime thread could not start (the process is
    /// out of threads or memory).
    #[error("could not start the OTLP gRPC exporter's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// An [`Exporter`] that sends each finished pipeline to OpenTelemetry as
/// one trace. Add it with [`Monitor::add_exporter`](crate::Monitor::add_exporter);
/// it runs on its own thread and never slows the program it watches (a
/// slow backend loses only this exporter's events, counted). Dropping it
/// (removing it, or dropping the last `Monitor`) flushes and shuts down its
/// tracer provider.
#[derive(Debug)]
pub struct OtelExporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    stats: OtelStats,
    /// The gRPC exporter's runtime (dropped after the provider's shutdown).
    runtime: Option<tokio::runtime::Runtime>,
}

/// The resource every span carries: the service, and the Phoenix project.
fn resource(service_name: &str) -> Resource {
    Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attribute(KeyValue::new(
            "openinference.project.name",
            service_name.to_owned(),
        ))
        .build()
}

impl OtelExporter {
    /// OTLP over HTTP with protobuf to `endpoint` (the full URL, e.g.
    /// `http://127.0.0.1:4318/v1/traces`; Phoenix: `http://HOST:6006/v1/traces`),
    /// in batches from a thread of the SDK's own. `service_name` is the
    /// resource's `service.name` and Phoenix's project
    /// (`openinference.project.name`).
    ///
    /// # Errors
    ///
    /// [`OtelError::Build`] if `opentelemetry-otlp` refuses the endpoint.
    pub fn otlp_http(endpoint: &str, service_name: &str) -> Result<Self, OtelError> {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
            .map_err(|source| OtelError::Build {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        Ok(Self::counted(exporter, endpoint, service_name))
    }

    /// A batch provider over `exporter`, whose results are counted in the
    /// exporter's [`OtelStats`].
    fn counted(exporter: impl SpanExporter + 'static, endpoint: &str, service: &str) -> Self {
        let stats = OtelStats::default();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Counted {
                inner: exporter,
                stats: stats.clone(),
                endpoint: endpoint.to_owned(),
            })
            .with_resource(resource(service))
            .build();
        let mut this = Self::with_provider(provider);
        this.stats = stats;
        this
    }

    /// What this exporter has sent and failed to send so far (for
    /// `otlp_http` and `otlp_grpc`; a provider of your own counts nothing
    /// here). Take it before handing the exporter to `add_exporter`.
    pub fn stats(&self) -> OtelStats {
        self.stats.clone()
    }

    /// OTLP over gRPC (tonic) to `endpoint` (e.g. `http://127.0.0.1:4317`),
    /// in batches from a thread of the SDK's own; the gRPC connection runs
    /// on a small tokio runtime of the exporter's own (one thread), so it
    /// works whether or not the program uses tokio. `service_name` as for
    /// [`otlp_http`](OtelExporter::otlp_http).
    ///
    /// # Errors
    ///
    /// [`OtelError::Build`] if `opentelemetry-otlp` refuses the endpoint,
    /// [`OtelError::Runtime`] if the runtime's thread cannot start.
    pub fn otlp_grpc(endpoint: &str, service_name: &str) -> Result<Self, OtelError> {
        use opentelemetry_otlp::WithExportConfig as _;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("perfmon-otlp-grpc")
            .enable_all()
            .build()
            .map_err(OtelError::Runtime)?;
        let exporter = {
            // tonic connects lazily, with its connection task on this runtime.
            let _enter = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|source| OtelError::Build {
                    endpoint: endpoint.to_owned(),
                    source,
                })?
        };
        let mut this = Self::counted(exporter, endpoint, service_name);
        this.runtime = Some(runtime);
        Ok(this)
    }

    /// Exports through a tracer provider you built (your own exporter,
    /// sampler or resource; the SDK's in-memory exporter in tests).
    pub fn with_provider(provider: SdkTracerProvider) -> Self {
        let tracer = provider.tracer("perfmon");
        OtelExporter {
            provider,
            tracer,
            stats: OtelStats::default(),
            runtime: None,
        }
    }

    /// The trace of one finished pipeline.
    fn trace(&self, report: &PipelineReport) {
        let start = report.started_at;
        let mut root = self
            .tracer
            .span_builder(format!("invoke_workflow {}", report.id))
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(pipeline_attributes(report))
            .start(&self.tracer);
        set_status(&mut root, &report.outcome);
        let root = Context::current_with_span(root);
        // Runs come in start order: a parent always before its children.
        let mut contexts: Vec<Context> = Vec::with_capacity(report.agents.len());
        for (i, run) in report.agents.iter().enumerate() {
            let parent = run.parent.and_then(|p| contexts.get(p)).unwrap_or(&root);
            let name = match run.kind {
                RunKind::Tool => format!("execute_tool {}", run.agent),
                _ => format!("invoke_agent {}", run.agent),
            };
            let begin = run_start(report, run);
            let mut span = self
                .tracer
                .span_builder(name)
                .with_kind(SpanKind::Internal)
                .with_start_time(begin)
                .with_attributes(run_attributes(report, i, run))
                .start_with_context(&self.tracer, parent);
            for line in &run.output {
                span.add_event_with_timestamp(
                    "output",
                    begin,
                    vec![
                        KeyValue::new("stream", line.stream.clone()),
                        KeyValue::new("line", line.line.clone()),
                        KeyValue::new("cut", line.cut),
                    ],
                );
            }
            set_status(&mut span, &run.outcome);
            let end = begin + run.duration;
            contexts.push(parent.with_span(span));
            // Ended at its exact time, after its children were started
            // from its context (ending does not stop the context's use).
            if let Some(last) = contexts.last() {
                last.span().end_with_timestamp(end);
            }
        }
        root.span().end_with_timestamp(start + report.duration);
    }
}

/// Spans an [`OtelExporter`] sent and failed to send: failures are
/// counted here and warned about once (a `WARN` event from target
/// `perfmon`), never a stall or a panic of the program. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct OtelStats(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    spans_exported: AtomicU64,
    spans_failed: AtomicU64,
    failed_exports: AtomicU64,
    warned: AtomicBool,
}

impl OtelStats {
    /// Spans the backend accepted.
    pub fn spans_exported(&self) -> u64 {
        self.0.spans_exported.load(Ordering::Relaxed)
    }

    /// Spans lost because an export failed (backend down, refused, timed out).
    pub fn spans_failed(&self) -> u64 {
        self.0.spans_failed.load(Ordering::Relaxed)
    }

    /// Export calls (batches) that failed.
    pub fn failed_exports(&self) -> u64 {
        self.0.failed_exports.load(Ordering::Relaxed)
    }
}

/// The OTLP exporter, with its results counted.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    stats: OtelStats,
    endpoint: String,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let counts = &self.stats.0;
        match &result {
            Ok(()) => {
                counts.spans_exported.fetch_add(spans, Ordering::Relaxed);
            }
            Err(error) => {
                counts.spans_failed.fetch_add(spans, Ordering::Relaxed);
                counts.failed_exports.fetch_add(1, Ordering::Relaxed);
                if !counts.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        target: "perfmon",
                        "OpenTelemetry export to {} failed ({error}); its {spans} spans were \
                         dropped and the program goes on. Check the endpoint and that the \
                         backend is up. OtelExporter::stats() counts every failure; this \
                         warning is printed once.",
                        self.endpoint
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// When a run started: its pipeline's start plus its offset.
fn run_start(report: &PipelineReport, run: &AgentRun) -> SystemTime {
    report.started_at + run.offset
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pipeline_attributes(report: &PipelineReport) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("gen_ai.operation.name", "invoke_workflow"),
        KeyValue::new("openinference.span.kind", "CHAIN"),
        KeyValue::new("perfmon.pipeline", report.id.clone()),
        KeyValue::new("perfmon.run", report.run as i64),
        KeyValue::new("perfmon.outcome", report.outcome.as_str()),
        KeyValue::new("perfmon.runs", report.total_runs() as i64),
        KeyValue::new("perfmon.critical_path", report.nested_critical_path()),
    ];
    if let Some(b) = report.bottlenecks.first() {
        attributes.push(KeyValue::new("perfmon.bottleneck", b.agent.clone()));
    }
    if !report.unfinished.is_empty() {
        attributes.push(KeyValue::new(
            "perfmon.unfinished",
            report.unfinished.join(", "),
        ));
    }
    usage_attributes(&mut attributes, &report.usage, None);
    attributes
}

fn run_attributes(report: &PipelineReport, index: usize, run: &AgentRun) -> Vec<KeyValue> {
    let (operation, name_key, kind) = match run.kind {
        RunKind::Tool => ("execute_tool", "gen_ai.tool.name", "TOOL"),
        _ => ("invoke_agent", "gen_ai.agent.name", "AGENT"),
    };
    let mut attributes = vec![
        KeyValue::new("gen_ai.operation.name", operation),
        KeyValue::new(name_key, run.agent.clone()),
        KeyValue::new("openinference.span.kind", kind),
        KeyValue::new("perfmon.pipeline", report.id.clone()),
        KeyValue::new("perfmon.outcome", run.outcome.as_str()),
        KeyValue::new("perfmon.self_time_ms", ms(run.self_time)),
        KeyValue::new(
            "perfmon.bottleneck",
            report.bottleneck(&run.agent).is_some(),
        ),
        KeyValue::new("perfmon.critical", report.critical_runs.contains(&index)),
    ];
    if let Some(busy) = run.busy {
        attributes.push(KeyValue::new("perfmon.busy_ms", ms(busy)));
    }
    if run.output_dropped > 0 {
        attributes.push(KeyValue::new(
            "perfmon.output_dropped",
            run.output_dropped as i64,
        ));
    }
    usage_attributes(&mut attributes, &run.usage, run.model.as_deref());
    attributes
}

/// Token and cost attributes, for spans that reported usage.
fn usage_attributes(attributes: &mut Vec<KeyValue>, usage: &Usage, model: Option<&str>) {
    if let Some(model) = model {
        attributes.push(KeyValue::new("gen_ai.request.model", model.to_owned()));
        attributes.push(KeyValue::new("llm.model_name", model.to_owned()));
    }
    if usage.is_zero() {
        return;
    }
    let (input, output) = (usage.input_tokens as i64, usage.output_tokens as i64);
    attributes.extend([
        KeyValue::new("gen_ai.usage.input_tokens", input),
        KeyValue::new("gen_ai.usage.output_tokens", output),
        KeyValue::new("llm.token_count.prompt", input),
        KeyValue::new("llm.token_count.completion", output),
        KeyValue::new("llm.token_count.total", input + output),
        KeyValue::new("perfmon.cost_usd", usage.cost_usd),
    ]);
}

/// `Error` with the error text and `error.type` for a run that did not
/// succeed; `Ok` otherwise.
fn set_status(span: &mut impl opentelemetry::trace::Span, outcome: &Outcome) {
    if outcome.is_failure() {
        span.set_attribute(KeyValue::new("error.type", outcome.as_str()));
        let text = outcome.error().unwrap_or(outcome.as_str()).to_owned();
        span.set_status(Status::error(text));
    } else {
        span.set_status(Status::Ok);
    }
}

impl Exporter for OtelExporter {
    fn export(&mut self, events: &[Event]) {
        for event in events {
            if let EventKind::PipelineCompleted(report) = &event.kind {
                self.trace(report);
            }
        }
    }

    fn flush(&mut self) {
        // A failed flush (the backend is down) is the SDK's to count and
        // log; the host program goes on.
        let _ = self.provider.force_flush();
    }
}

impl Drop for OtelExporter {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
        if let Some(runtime) = self.runtime.take() {
            // Not from inside another runtime's task: the exporter thread is
            // perfmon's own.
            runtime.shutdown_background();
        }
    }
}
