//! Feature `otel`, the live spans: with `tracing-opentelemetry` in the
//! subscriber stack (the common setup), perfmon's own spans are exported
//! with the GenAI attributes from creation, parent links intact across
//! `tokio::spawn` and `spawn_blocking`, and an error status on failed,
//! panicked and cancelled runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::trace::{SpanId, Status, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use perfmon::{Monitor, TrackAgentExt};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// The attribute's last value (a field recorded again appends a new value,
/// which backends read as the current one).
fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .rev()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[perfmon::track_agent]
fn reviewer() -> Result<(), String> {
    Err("too long".into())
}

#[perfmon::track_tool(name = "web-search")]
async fn search() -> u32 {
    7
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_opentelemetry_exports_perfmon_spans_with_the_genai_attributes() {
    let memory = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(memory.clone())
        .build();
    let monitor = Monitor::builder().metrics(false).build();
    let subscriber = tracing_subscriber::registry()
        .with(monitor.layer())
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // Global: spawned tasks and blocking threads run on other threads.
    // (This binary has this one test.)
    tracing::subscriber::set_global_default(subscriber).unwrap();

    monitor
        .track_pipeline("live_1", async {
            tokio::spawn(
                async {
                    let _planner = perfmon::agent("planner");
                    perfmon::usage!(model = "gpt-4.1", input_tokens = 1000, output_tokens = 100);
                    perfmon::usage!(input_tokens = 200, output_tokens = 20);
                }
                .in_current_span(),
            )
            .await
            .unwrap();
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                span.in_scope(|| {
                    let _physics = perfmon::agent("physics");
                    perfmon::tool("solver").fail("diverged");
                })
            })
            .await
            .unwrap();
            async { search().await }.track_agent("researcher").await;
            let _ = reviewer();
            let crashed = std::panic::catch_unwind(|| {
                let _a = perfmon::agent("crashy");
                panic!("boom");
            });
            assert!(crashed.is_err());
            drop(std::future::pending::<()>().track_agent("abandoned"));
        })
        .await;
    provider.force_flush().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let spans = memory.get_finished_spans().unwrap();
    let by_name: HashMap<&str, &SpanData> = spans.iter().map(|s| (&*s.name, s)).collect();
    let root = by_name.get("invoke_workflow live_1").unwrap_or_else(|| {
        panic!(
            "the pipeline's span, named by otel.name: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    });
    assert_eq!(root.parent_span_id, SpanId::INVALID);
    let trace = root.span_context.trace_id();
    let id = |name: &str| by_name[name].span_context.span_id();
    for (name, parent) in [
        ("invoke_agent planner", "invoke_workflow live_1"),
        ("invoke_agent physics", "invoke_workflow live_1"),
        ("execute_tool solver", "invoke_agent physics"),
        ("invoke_agent researcher", "invoke_workflow live_1"),
        ("execute_tool web-search", "invoke_agent researcher"),
        ("invoke_agent reviewer", "invoke_workflow live_1"),
    ] {
        let span = by_name[name];
        assert_eq!(
            span.parent_span_id,
            id(parent),
            "{name}'s parent is {parent}"
        );
        assert_eq!(
            span.span_context.trace_id(),
            trace,
            "{name} in the pipeline's trace"
        );
    }
    for (name, operation, kind, key, value) in [
        (
            "invoke_workflow live_1",
            "invoke_workflow",
            "CHAIN",
            "perfmon.pipeline",
            "live_1",
        ),
        (
            "invoke_agent planner",
            "invoke_agent",
            "AGENT",
            "gen_ai.agent.name",
            "planner",
        ),
        (
            "execute_tool solver",
            "execute_tool",
            "TOOL",
            "gen_ai.tool.name",
            "solver",
        ),
        (
            "execute_tool web-search",
            "execute_tool",
            "TOOL",
            "gen_ai.tool.name",
            "web-search",
        ),
    ] {
        let span = by_name[name];
        assert_eq!(
            attr(span, "gen_ai.operation.name").as_deref(),
            Some(operation),
            "{name}"
        );
        assert_eq!(
            attr(span, "openinference.span.kind").as_deref(),
            Some(kind),
            "{name}"
        );
        assert_eq!(attr(span, key).as_deref(), Some(value), "{name}");
    }
    // Usage: the run's totals (two `usage!` calls), and its model.
    let planner = by_name["invoke_agent planner"];
    assert_eq!(
        attr(planner, "gen_ai.usage.input_tokens").as_deref(),
        Some("1200")
    );
    assert_eq!(
        attr(planner, "gen_ai.usage.output_tokens").as_deref(),
        Some("120")
    );
    assert_eq!(
        attr(planner, "gen_ai.request.model").as_deref(),
        Some("gpt-4.1")
    );
    for (name, error_type, text) in [
        ("execute_tool solver", "failed", "diverged"),
        ("invoke_agent reviewer", "failed", "too long"),
        ("invoke_agent crashy", "panicked", "panicked"),
        ("invoke_agent abandoned", "cancelled", "cancelled"),
    ] {
        let span = by_name[name];
        assert_eq!(
            attr(span, "error.type").as_deref(),
            Some(error_type),
            "{name}"
        );
        assert_eq!(span.status, Status::error(text.to_owned()), "{name}");
    }
    assert_ne!(
        by_name["invoke_agent planner"].status,
        Status::error(""),
        "a run that succeeded is not an error"
    );
}
