//! OpenTelemetry export, golden: the spans the SDK's in-memory exporter
//! receives for a pipeline with agents on spawned tasks and blocking
//! threads, a tool, usage, and every failing outcome.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::trace::{SpanId, Status};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use perfmon::otel::OtelExporter;
use perfmon::{Monitor, TrackAgentExt};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_is_one_trace_of_workflow_agent_and_tool_spans() {
    let memory = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(memory.clone())
        .build();
    let monitor = Monitor::builder().metrics(false).build();
    let handle = monitor
        .add_exporter(OtelExporter::with_provider(provider))
        .unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
    // Global: spawned tasks and blocking threads run on other threads.
    // (This binary has this one test.)
    tracing::dispatcher::set_global_default(dispatch).unwrap();

    let (_, report) = monitor
        .track_pipeline("otel_1", async {
            {
                let _planner = perfmon::agent("planner");
                perfmon::usage!(
                    model = "gpt-4.1",
                    input_tokens = 1200,
                    output_tokens = 300,
                    cost_usd = 0.0048
                );
            }
            // On another task, and on a blocking thread, with the span carried.
            tokio::spawn(async { perfmon::agent("geometry").succeed() }.in_current_span())
                .await
                .unwrap();
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                span.in_scope(|| {
                    let _physics = perfmon::agent("physics");
                    std::thread::sleep(Duration::from_millis(5));
                })
            })
            .await
            .unwrap();
            {
                let codegen = perfmon::agent("codegen");
                let compile = perfmon::tool("compile");
                perfmon::output!(stream = "stderr", "error[E0308]: mismatched types");
                compile.fail("exit status 1");
                codegen.fail("did not compile");
            }
            let crashed = std::panic::catch_unwind(|| {
                let _a = perfmon::agent("crashy");
                panic!("boom");
            });
            assert!(crashed.is_err());
            drop(std::future::pending::<()>().track_agent("abandoned"));
        })
        .await;
    assert_eq!(report.agents.len(), 7);
    handle.flush(Duration::from_secs(10)).unwrap();

    let spans = memory.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 8, "the workflow and its 7 runs");
    let trace = spans[0].span_context.trace_id();
    assert!(
        spans.iter().all(|s| s.span_context.trace_id() == trace),
        "one trace"
    );
    let by_name: HashMap<&str, &SpanData> = spans.iter().map(|s| (&*s.name, s)).collect();
    let root = by_name["invoke_workflow otel_1"];
    assert_eq!(root.parent_span_id, SpanId::INVALID);
    let id = |name: &str| by_name[name].span_context.span_id();
    for (name, parent) in [
        ("invoke_agent planner", root.span_context.span_id()),
        ("invoke_agent geometry", root.span_context.span_id()),
        ("invoke_agent physics", root.span_context.span_id()),
        ("invoke_agent codegen", root.span_context.span_id()),
        ("execute_tool compile", id("invoke_agent codegen")),
    ] {
        assert_eq!(by_name[name].parent_span_id, parent, "{name}'s parent");
    }
    for (name, operation, kind, key) in [
        ("invoke_workflow otel_1", "invoke_workflow", "CHAIN", None),
        (
            "invoke_agent planner",
            "invoke_agent",
            "AGENT",
            Some(("gen_ai.agent.name", "planner")),
        ),
        (
            "execute_tool compile",
            "execute_tool",
            "TOOL",
            Some(("gen_ai.tool.name", "compile")),
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
        if let Some((key, value)) = key {
            assert_eq!(attr(span, key).as_deref(), Some(value), "{name}");
        }
    }
    let planner = by_name["invoke_agent planner"];
    assert_eq!(
        attr(planner, "gen_ai.usage.input_tokens").as_deref(),
        Some("1200")
    );
    assert_eq!(
        attr(planner, "gen_ai.usage.output_tokens").as_deref(),
        Some("300")
    );
    assert_eq!(
        attr(planner, "gen_ai.request.model").as_deref(),
        Some("gpt-4.1")
    );
    assert_eq!(
        attr(planner, "llm.token_count.total").as_deref(),
        Some("1500")
    );
    assert_eq!(
        attr(root, "gen_ai.usage.input_tokens").as_deref(),
        Some("1200")
    );
    // Exact times: the span's duration is the report's.
    let physics = by_name["invoke_agent physics"];
    let run = report.agents.iter().find(|r| r.agent == "physics").unwrap();
    assert_eq!(
        physics.end_time.duration_since(physics.start_time).unwrap(),
        run.duration
    );
    // Outcomes: failed, panicked and cancelled are errors with their type.
    for (name, error_type, text) in [
        ("execute_tool compile", "failed", "exit status 1"),
        ("invoke_agent codegen", "failed", "did not compile"),
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
    assert_eq!(by_name["invoke_agent planner"].status, Status::Ok);
    let output = &by_name["execute_tool compile"].events;
    assert_eq!(output.len(), 1);
    assert_eq!(output[0].name, "output");
}

/// A backend that is not there: the failures are counted (and warned about
/// once), the program goes on, nothing is exported.
#[test]
fn an_unreachable_backend_is_counted_never_a_stall() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exporter =
        OtelExporter::otlp_http(&format!("http://127.0.0.1:{port}/v1/traces"), "nobody").unwrap();
    let stats = exporter.stats();
    let monitor = Monitor::builder().metrics(false).build();
    let handle = monitor.add_exporter(exporter).unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
    tracing::dispatcher::with_default(&dispatch, || {
        let pipeline = monitor.start_pipeline("lost");
        perfmon::agent("planner").succeed();
        pipeline.finish();
    });
    handle.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(stats.spans_exported(), 0);
    assert_eq!(stats.spans_failed(), 2, "the workflow and its run");
    assert_eq!(stats.failed_exports(), 1);
}
