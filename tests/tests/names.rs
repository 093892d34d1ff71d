//! Where a run is filed: under which agent, in which pipeline. A guard
//! hands the layer the entry of the name it was given (the layer then skips
//! reading the span's fields), and a thread remembers the pipeline its runs
//! last opened in (the layer then skips looking the pipeline's span up):
//! these tests check that both are always the right ones, with two monitors
//! on one thread or in one subscriber, and agents and tools sharing a name,
//! and that a run whose span closes on another thread is still counted (the
//! layer skips looking up spans it holds no state for).

use perfmon::{Monitor, RunKind};
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn two_monitors_on_one_thread_each_count_only_their_own_runs() {
    let (a, b) = (Monitor::new(), Monitor::new());
    let dispatch_a = tracing::Dispatch::new(tracing_subscriber::registry().with(a.layer()));
    let dispatch_b = tracing::Dispatch::new(tracing_subscriber::registry().with(b.layer()));
    // Interleaved on one thread, so each layer meets the other's entry in
    // this thread's cache of recent agents.
    for i in 0..50 {
        tracing::dispatcher::with_default(&dispatch_a, || drop(perfmon::agent("geometry")));
        tracing::dispatcher::with_default(&dispatch_b, || {
            drop(perfmon::agent("geometry"));
            drop(perfmon::agent("geometry"));
        });
        if i % 10 == 0 {
            tracing::dispatcher::with_default(&dispatch_b, || drop(perfmon::agent("physics")));
        }
    }
    let runs = |m: &Monitor, name| m.agent_stats(name).map_or(0, |s| s.runs);
    assert_eq!(runs(&a, "geometry"), 50);
    assert_eq!(runs(&b, "geometry"), 100);
    assert_eq!(runs(&a, "physics"), 0);
    assert_eq!(runs(&b, "physics"), 5);
    assert_eq!(a.overview().agent_runs_total, 50);
    assert_eq!(b.overview().agent_runs_total, 105);
}

#[test]
fn an_agent_and_a_tool_of_one_name_keep_their_kinds() {
    let monitor = Monitor::new();
    let _g = tracing::subscriber::set_default(tracing_subscriber::registry().with(monitor.layer()));
    // Teach the guards their callsites and put the name in this thread's
    // cache of recent agents (as an agent's).
    drop(perfmon::agent("compile"));
    drop(perfmon::tool("compile"));
    let pipeline = monitor.start_pipeline("p");
    drop(perfmon::agent("compile"));
    drop(perfmon::tool("compile"));
    drop(perfmon::agent("compile"));
    let report = pipeline.finish();
    let kinds: Vec<_> = report
        .agents
        .iter()
        .map(|r| (r.agent.as_str(), r.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("compile", RunKind::Agent),
            ("compile", RunKind::Tool),
            ("compile", RunKind::Agent)
        ]
    );
    assert_eq!(monitor.agent_stats("compile").map(|s| s.runs), Some(5));
}

#[perfmon::track_agent(name = "planner")]
fn plan() -> u32 {
    compile() + 1
}

#[perfmon::track_tool(name = "compile")]
fn compile() -> u32 {
    1
}

#[perfmon::track_agent]
async fn physics() -> u32 {
    2
}

#[tokio::test]
async fn tracked_functions_and_futures_are_filed_under_their_names() {
    let monitor = Monitor::new();
    let _g = tracing::subscriber::set_default(tracing_subscriber::registry().with(monitor.layer()));
    let pipeline = monitor.start_pipeline("p");
    for _ in 0..3 {
        assert_eq!(plan(), 2);
        assert_eq!(physics().await, 2);
        drop(perfmon::agent("compile"));
    }
    let report = pipeline.finish();
    let runs: Vec<_> = report
        .agents
        .iter()
        .map(|r| (r.agent.as_str(), r.kind))
        .collect();
    let want = [
        ("planner", RunKind::Agent),
        ("compile", RunKind::Tool),
        ("physics", RunKind::Agent),
        ("compile", RunKind::Agent),
    ];
    assert_eq!(runs, [want, want, want].concat());
    assert_eq!(monitor.agent_stats("compile").map(|s| s.runs), Some(6));
    assert_eq!(monitor.agent_stats("physics").map(|s| s.runs), Some(3));
}

#[tokio::test]
async fn two_monitors_in_one_subscriber_each_file_runs_in_their_own_pipeline() {
    use perfmon::TrackAgentExt;
    let (a, b) = (Monitor::new(), Monitor::new());
    let subscriber = tracing_subscriber::registry()
        .with(a.layer())
        .with(b.layer());
    let _g = tracing::subscriber::set_default(subscriber);
    for (round, owner) in [(1, &a), (2, &b), (3, &a)] {
        let pipeline = owner.start_pipeline(format!("round_{round}"));
        for _ in 0..3 {
            drop(perfmon::agent("geometry"));
        }
        async {}.track_agent("physics").await;
        let report = pipeline.finish();
        assert_eq!(report.agents.len(), 4, "round {round}: {report:?}");
    }
    // Both monitors saw every pipeline and every run, once.
    for (name, monitor) in [("a", &a), ("b", &b)] {
        let overview = monitor.overview();
        assert_eq!(overview.pipelines_total, 3, "{name}");
        assert_eq!(overview.agent_runs_total, 12, "{name}");
        assert_eq!(overview.runs_outside_pipeline, 0, "{name}");
        for report in monitor.recent_pipelines(3) {
            assert_eq!(report.agents.len(), 4, "{name}: {report:?}");
        }
    }
}

#[test]
fn a_run_whose_span_closes_on_another_thread_is_counted_in_its_pipeline() {
    let monitor = Monitor::new();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
    let _g = tracing::dispatcher::set_default(&dispatch);
    let pipeline = monitor.start_pipeline("p");
    for round in 0..3 {
        let guard = perfmon::agent("geometry");
        // A clone of the run's span outlives the guard, on another thread:
        // the span closes there, and the run with it.
        let (span, (sent, held)) = (guard.span().clone(), std::sync::mpsc::channel());
        let (dropped, done) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let span: tracing::Span = held.recv().unwrap();
            drop(span);
            dropped.send(()).unwrap();
        });
        drop(guard);
        sent.send(span).unwrap();
        done.recv().unwrap();
        worker.join().unwrap();
        assert_eq!(
            monitor.agent_stats("geometry").map(|s| s.runs),
            Some(round + 1),
            "round {round}"
        );
    }
    let report = pipeline.finish();
    assert_eq!(report.agents.len(), 3, "{report:?}");
    assert!(report.unfinished.is_empty(), "{report:?}");
}
