//! Tools, their live output, and token usage and cost: nesting, outcomes,
//! events, bounded output with counted drops, exact totals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{install, mocked, ms};
use perfmon::{EventKind, Monitor, Outcome, RunKind, TrackAgentExt, Usage};
use proptest::prelude::*;
use tracing_subscriber::layer::SubscriberExt;

#[perfmon::track_tool]
fn compile(src: &str) -> Result<usize, String> {
    perfmon::output!(stream = "stderr", "compiling {src}");
    if src.contains("bug") {
        Err(format!("error[E0308] in {src}"))
    } else {
        Ok(src.len())
    }
}

#[perfmon::track_tool(name = "web-search")]
async fn search(q: &str) -> Vec<String> {
    vec![q.to_owned()]
}

struct Shell;

impl Shell {
    #[perfmon::track_tool(name = "sh")]
    fn run(&self, cmd: &str) -> Result<(), String> {
        perfmon::output!("$ {cmd}");
        Ok(())
    }
}

#[test]
fn a_tool_run_is_nested_in_the_agent_that_called_it_and_has_its_own_statistics() {
    let (monitor, clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("p");
    {
        let _codegen = perfmon::agent("codegen");
        clock.advance(ms(10));
        {
            let tool = perfmon::tool("cargo-test");
            clock.advance(ms(60));
            tool.fail("1 test failed");
        }
        assert!(compile("main.rs").is_ok());
        assert!(compile("bug.rs").is_err());
        Shell.run("ls").unwrap();
        clock.advance(ms(10));
    }
    let report = pipeline.finish();

    let runs: Vec<_> = report
        .agents
        .iter()
        .map(|r| (r.agent.as_str(), r.kind, r.parent))
        .collect();
    assert_eq!(
        runs,
        [
            ("codegen", RunKind::Agent, None),
            ("cargo-test", RunKind::Tool, Some(0)),
            ("compile", RunKind::Tool, Some(0)),
            ("compile", RunKind::Tool, Some(0)),
            ("sh", RunKind::Tool, Some(0)),
        ]
    );
    assert_eq!(
        report.agents[1].outcome,
        Outcome::Failed {
            error: "1 test failed".into()
        }
    );
    assert_eq!(
        report.agents[3].outcome,
        Outcome::Failed {
            error: "error[E0308] in bug.rs".into()
        }
    );
    // The tool took 60 of the agent's 80 ms: the tool is the bottleneck on
    // self time, the agent only waited on it for that part.
    assert_eq!(report.agents[0].self_time, ms(20));
    let tool = report
        .bottleneck("cargo-test")
        .expect("the tool is a bottleneck");
    assert_eq!(tool.self_time, ms(60));
    assert!(report.critical_path.contains(&"cargo-test".to_owned()));

    let stats = monitor.agent_stats("compile").unwrap();
    assert_eq!(
        (stats.kind, stats.runs, stats.failures),
        (RunKind::Tool, 2, 1)
    );
    assert_eq!(monitor.agent_stats("codegen").unwrap().kind, RunKind::Agent);

    // The JSON a client reads says which runs are tools.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["agents"][1]["kind"], "tool");
    assert_eq!(json["agents"][0]["kind"], "agent");
}

#[tokio::test(flavor = "current_thread")]
async fn futures_and_async_functions_are_tool_runs_too() {
    let (monitor, _g) = install(Monitor::builder());
    let (_, report) = monitor
        .track_pipeline("p", async {
            async {
                let hits = search("rust").await;
                let more = async { Err::<u32, _>("timeout") }
                    .track_tool_result("fetch")
                    .await;
                let _ = async { 1 }.track_tool("rank").await;
                (hits, more)
            }
            .track_agent("researcher")
            .await
        })
        .await;
    let runs: Vec<_> = report
        .agents
        .iter()
        .map(|r| (r.agent.as_str(), r.kind, r.parent, r.outcome.as_str()))
        .collect();
    assert_eq!(
        runs,
        [
            ("researcher", RunKind::Agent, None, "succeeded"),
            ("web-search", RunKind::Tool, Some(0), "succeeded"),
            ("fetch", RunKind::Tool, Some(0), "failed"),
            ("rank", RunKind::Tool, Some(0), "succeeded"),
        ]
    );
    assert!(
        report.agents[1].busy.is_some(),
        "async tools have busy time"
    );
}

#[test]
fn a_tool_that_panics_is_panicked_and_one_dropped_early_is_cancelled() {
    let (monitor, _g) = install(Monitor::builder());
    let pipeline = monitor.start_pipeline("p");
    {
        let _agent = perfmon::agent("codegen");
        let crashed = std::panic::catch_unwind(|| {
            let _tool = perfmon::tool("rustc");
            panic!("internal compiler error");
        });
        assert!(crashed.is_err());
        drop(std::future::pending::<()>().track_tool("fetch"));
    }
    let report = pipeline.finish();
    let outcomes: Vec<_> = report
        .agents
        .iter()
        .map(|r| (r.agent.as_str(), r.kind, r.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("codegen", RunKind::Agent, "succeeded"),
            ("rustc", RunKind::Tool, "panicked"),
            ("fetch", RunKind::Tool, "cancelled"),
        ]
    );
}

#[test]
fn tools_stream_started_output_and_completed_events() {
    let (monitor, _g) = install(Monitor::builder());
    let mut events = monitor.subscribe();
    let pipeline = monitor.start_pipeline("p");
    {
        let _agent = perfmon::agent("codegen");
        let _ = compile("bug.rs");
    }
    pipeline.finish();

    let mut seen = Vec::new();
    while let Some(event) = events.recv_blocking_timeout(Duration::from_secs(5)) {
        let done = matches!(event.kind, EventKind::PipelineCompleted(_));
        seen.push(serde_json::to_value(&event).unwrap());
        if done {
            break;
        }
    }
    let types: Vec<&str> = seen.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "pipeline_started",
            "agent_started",
            "tool_started",
            "tool_output",
            "tool_completed",
            "agent_completed",
            "pipeline_completed"
        ]
    );
    assert_eq!(seen[2]["data"]["agent"], "compile");
    assert_eq!(seen[2]["data"]["parent"], "codegen");
    assert_eq!(seen[3]["data"]["stream"], "stderr");
    assert_eq!(seen[3]["data"]["line"], "compiling bug.rs");
    assert_eq!(seen[3]["data"]["cut"], false);
    assert_eq!(seen[4]["data"]["outcome"], "failed");
    assert_eq!(seen[4]["data"]["error"], "error[E0308] in bug.rs");
}

#[test]
fn output_is_cut_bounded_per_run_and_every_cut_or_dropped_line_is_counted() {
    let (monitor, _g) = install(
        Monitor::builder()
            .max_output_lines(3)
            .max_output_line_bytes(8),
    );
    let pipeline = monitor.start_pipeline("p");
    {
        let _tool = perfmon::tool("cargo-build");
        for i in 0..5 {
            perfmon::output!(stream = "stdout", "line {i}");
        }
        perfmon::output!("a line far longer than eight bytes");
    }
    perfmon::output!("outside any run: nothing");
    let report = pipeline.finish();

    let run = &report.agents[0];
    let kept: Vec<_> = run
        .output
        .iter()
        .map(|l| (l.stream.as_str(), l.line.as_str(), l.cut))
        .collect();
    assert_eq!(
        kept,
        [
            ("stdout", "line 3", false),
            ("stdout", "line 4", false),
            ("out", "a line f", true),
        ]
    );
    assert_eq!(run.output_dropped, 3);
    let overview = monitor.overview();
    assert_eq!(
        (
            overview.output_lines,
            overview.output_lines_cut,
            overview.output_lines_dropped
        ),
        (6, 1, 3)
    );
}

#[test]
fn usage_adds_up_in_the_run_its_agent_its_pipeline_and_the_overview() {
    let (monitor, _g) = install(Monitor::builder());
    perfmon::usage!(input_tokens = 1, cost_usd = 0.5); // outside everything
    let pipeline = monitor.start_pipeline("p");
    perfmon::usage!(output_tokens = 2); // in the pipeline, outside any run
    for _ in 0..2 {
        let _planner = perfmon::agent("planner");
        perfmon::usage!(
            model = "gpt-4.1",
            input_tokens = 1200,
            output_tokens = 310,
            cost_usd = 0.0061
        );
        perfmon::usage!(input_tokens = 100, cost_usd = 0.0004);
        {
            let _tool = perfmon::tool("embed");
            perfmon::usage!(model = "embed-3", input_tokens = 50, cost_usd = 0.0001);
        }
    }
    let report = pipeline.finish();

    let planner = &report.agents[0];
    assert_eq!(planner.usage, Usage::new(1300, 310, 0.0065));
    assert_eq!(planner.model.as_deref(), Some("gpt-4.1"));
    assert_eq!(report.agents[1].usage, Usage::new(50, 0, 0.0001));
    assert_eq!(
        report.usage,
        Usage::new(2 * 1350, 2 + 2 * 310, 2.0 * 0.0066),
        "both planners, both embeds, and the pipeline's own"
    );
    assert_eq!(
        monitor.agent_stats("planner").unwrap().usage,
        Usage::new(2600, 620, 0.013)
    );
    assert_eq!(
        monitor.agent_stats("embed").unwrap().usage,
        Usage::new(100, 0, 0.0002)
    );
    assert_eq!(
        monitor.overview().usage,
        Usage::new(1 + 2700, 622, 0.5 + 0.0132)
    );
    let json = serde_json::to_value(planner).unwrap();
    assert_eq!(json["usage"]["input_tokens"], 1300);
    assert_eq!(json["model"], "gpt-4.1");
}

#[test]
fn tokens_and_cost_reach_the_metrics_recorder() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let monitor = Monitor::builder().build();
        let subscriber = tracing_subscriber::registry().with(monitor.layer());
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..2 {
                let _a = perfmon::agent("reviewer");
                perfmon::usage!(input_tokens = 10, output_tokens = 3, cost_usd = 0.25);
            }
        });
    });
    let mut found = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_owned();
        if !name.starts_with("perfmon_tokens") && !name.starts_with("perfmon_cost") {
            continue;
        }
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let value = match value {
            DebugValue::Counter(n) => n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(_) => f64::NAN,
        };
        found.push((name, labels.join(","), value));
    }
    found.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(
        found,
        [
            ("perfmon_cost_usd".into(), "agent=reviewer".into(), 0.5),
            (
                "perfmon_tokens_total".into(),
                "agent=reviewer,type=input".into(),
                20.0
            ),
            (
                "perfmon_tokens_total".into(),
                "agent=reviewer,type=output".into(),
                6.0
            ),
        ]
    );
}

/// One `usage!` call somewhere in a tree of nested runs on several threads.
#[derive(Debug, Clone)]
struct Call {
    thread: usize,
    /// How deep in the thread's chain of nested runs (0: the pipeline).
    depth: usize,
    input: u64,
    output: u64,
    /// Cost in micro-dollars.
    cost: u32,
}

fn call() -> impl Strategy<Value = Call> {
    (
        0usize..4,
        0usize..4,
        0u64..100_000,
        0u64..10_000,
        0u32..1_000_000,
    )
        .prop_map(|(thread, depth, input, output, cost)| Call {
            thread,
            depth,
            input,
            output,
            cost,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// However deep the nesting and however many threads: the pipeline's
    /// usage is the sum of its runs' (and of what was reported outside
    /// them), the agents' statistics sum to the same, and so does the
    /// overview; all exactly, costs to the nano-dollar.
    #[test]
    fn usage_totals_are_exact_across_nesting_and_threads(
        calls in proptest::collection::vec(call(), 0..40),
    ) {
        let monitor = Monitor::builder().metrics(false).build();
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
        let report = tracing::dispatcher::with_default(&dispatch, || {
            let pipeline = monitor.start_pipeline("p");
            let span = pipeline.span().clone();
            std::thread::scope(|scope| {
                for thread in 0..4 {
                    let (span, calls, dispatch) = (span.clone(), &calls, dispatch.clone());
                    scope.spawn(move || {
                        tracing::dispatcher::with_default(&dispatch, || {
                            span.in_scope(|| {
                                for c in calls.iter().filter(|c| c.thread == thread) {
                                    // A chain of `depth` runs, tools and agents alternating.
                                    let mut guards = Vec::new();
                                    for level in 0..c.depth {
                                        guards.push(if level % 2 == 0 {
                                            Ok(perfmon::agent(&format!("agent{level}")))
                                        } else {
                                            Err(perfmon::tool(&format!("tool{level}")))
                                        });
                                    }
                                    perfmon::usage!(
                                        input_tokens = c.input,
                                        output_tokens = c.output,
                                        cost_usd = f64::from(c.cost) / 1e6
                                    );
                                    while guards.pop().is_some() {}
                                }
                            });
                        });
                    });
                }
            });
            pipeline.finish()
        });
        let want = calls.iter().fold((0u64, 0u64, 0u64), |(i, o, c), call| {
            (i + call.input, o + call.output, c + u64::from(call.cost) * 1_000)
        });
        let nanos = |u: &Usage| (u.cost_usd * 1e9).round() as u64;
        let got = |u: &Usage| (u.input_tokens, u.output_tokens, nanos(u));
        prop_assert_eq!(got(&report.usage), want);
        let runs = report.agents.iter().fold((0, 0, 0), |(i, o, c), r| {
            (i + r.usage.input_tokens, o + r.usage.output_tokens, c + nanos(&r.usage))
        });
        let at_top: (u64, u64, u64) = calls.iter().filter(|c| c.depth == 0).fold((0, 0, 0), |(i, o, c), call| {
            (i + call.input, o + call.output, c + u64::from(call.cost) * 1_000)
        });
        prop_assert_eq!((runs.0 + at_top.0, runs.1 + at_top.1, runs.2 + at_top.2), want);
        let stats = monitor.agents().iter().fold((0, 0, 0), |(i, o, c), s| {
            (i + s.usage.input_tokens, o + s.usage.output_tokens, c + nanos(&s.usage))
        });
        prop_assert_eq!((stats.0 + at_top.0, stats.1 + at_top.1, stats.2 + at_top.2), want);
        prop_assert_eq!(got(&monitor.overview().usage), want);
    }
}
