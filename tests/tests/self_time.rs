//! Nested agents: each run's self time, self-time bottlenecks, and nesting
//! in the printed report and the critical path.
#![allow(clippy::expect_used)] // test helpers: a panic is the failure report

mod common;

use common::{install, ms};
use perfmon::{BottleneckBasis, MockClock, Monitor, PipelineReport};

/// planner 0–100 ms holds critic 10–60 and summarizer 10–70 (in parallel);
/// then coder 100–110. Self times: planner 40 (100 minus the 60 its
/// children covered), critic 50, summarizer 60, coder 10.
fn nested_pipeline(basis: BottleneckBasis) -> (Monitor, PipelineReport) {
    let clock = MockClock::new();
    let (monitor, _g) = install(
        Monitor::builder()
            .mock_clock(&clock)
            .bottleneck_threshold(0.40)
            .bottleneck_basis(basis),
    );
    let pipeline = monitor.start_pipeline("nested");
    let planner = perfmon::agent("planner");
    clock.advance(ms(10));
    let critic = tracing::info_span!(parent: planner.span(), "critic", perfmon.agent = "critic");
    let summarizer =
        tracing::info_span!(parent: planner.span(), "summarizer", perfmon.agent = "summarizer");
    clock.advance(ms(50));
    drop(critic);
    clock.advance(ms(10));
    drop(summarizer);
    clock.advance(ms(30));
    drop(planner);
    let coder = perfmon::agent("coder");
    clock.advance(ms(10));
    drop(coder);
    let report = pipeline.finish();
    (monitor, report)
}

fn run<'a>(report: &'a PipelineReport, agent: &str) -> &'a perfmon::AgentRun {
    report
        .agents
        .iter()
        .find(|r| r.agent == agent)
        .expect("the run is in the report")
}

#[test]
fn self_time_subtracts_what_nested_runs_covered_once() {
    let (monitor, report) = nested_pipeline(BottleneckBasis::SelfTime);
    assert_eq!(run(&report, "planner").duration, ms(100));
    assert_eq!(run(&report, "planner").self_time, ms(40));
    assert_eq!(run(&report, "critic").self_time, ms(50));
    assert_eq!(run(&report, "summarizer").self_time, ms(60));
    assert_eq!(run(&report, "coder").self_time, ms(10));

    let stats = monitor.agent_stats("planner").expect("planner ran");
    assert_eq!((stats.p50, stats.self_p50), (ms(100), ms(40)));
    assert_eq!((stats.total, stats.self_total), (ms(100), ms(40)));

    let json = serde_json::to_value(&report).expect("reports serialize");
    assert_eq!(json["agents"][0]["agent"], "planner");
    assert_eq!(json["agents"][0]["self_time_ms"], 40.0);
    assert_eq!(json["agents"][0]["duration_ms"], 100.0);
}

#[test]
fn bottlenecks_are_judged_on_self_time_by_default_with_the_inclusive_share_shown() {
    let (monitor, report) = nested_pipeline(BottleneckBasis::default());
    assert_eq!(monitor.bottleneck_basis(), BottleneckBasis::SelfTime);
    let flagged: Vec<_> = report
        .bottlenecks
        .iter()
        .map(|b| b.agent.as_str())
        .collect();
    // planner's self share is 40/110 = 36%: not above 40%.
    assert_eq!(flagged, ["summarizer", "critic"]);
    let top = &report.bottlenecks[0];
    assert_eq!((top.self_time, top.duration), (ms(60), ms(60)));

    let (_, by_wall) = nested_pipeline(BottleneckBasis::Wall);
    let flagged: Vec<_> = by_wall
        .bottlenecks
        .iter()
        .map(|b| b.agent.as_str())
        .collect();
    assert_eq!(flagged, ["planner", "summarizer", "critic"]);
    let planner = by_wall.bottleneck("planner").expect("flagged on wall time");
    assert!((planner.share - 100.0 / 110.0).abs() < 1e-9);
    assert!((planner.self_share - 40.0 / 110.0).abs() < 1e-9);
}

#[test]
fn the_printed_report_and_critical_path_show_nesting() {
    let (_, report) = nested_pipeline(BottleneckBasis::SelfTime);
    assert_eq!(report.critical_path, ["planner", "summarizer", "coder"]);
    assert_eq!(
        report.nested_critical_path(),
        "planner { summarizer } -> coder"
    );
    let text = report.to_string();
    assert!(
        text.contains("critical path: planner { summarizer } -> coder"),
        "{text}"
    );
    assert!(text.contains("(self 40.0ms)"), "{text}");
    // Nested runs are indented under their parent.
    let line = |agent: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(agent))
            .unwrap_or_default()
            .to_owned()
    };
    let indent = |l: String| l.len() - l.trim_start().len();
    assert!(indent(line("critic")) > indent(line("planner")), "{text}");
    assert_eq!(indent(line("coder")), indent(line("planner")), "{text}");
    assert!(
        text.contains("BOTTLENECK summarizer took 60.0ms = 55% of the pipeline"),
        "{text}"
    );
}
