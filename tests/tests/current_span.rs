//! Which pipeline a run opens in when it opens in the current span. The
//! layer keeps its own record of the spans entered on each thread (so it
//! need not ask the registry); these tests check that it agrees with the
//! registry when spans exit out of order, are entered twice, nest deeper
//! than the record follows, or belong to two subscribers on one thread.

use perfmon::{Monitor, PipelineReport};
use tracing::Span;
use tracing_subscriber::layer::SubscriberExt;

/// A pipeline span with no parent, not entered (it ends when it closes).
fn pipeline(id: &str) -> Span {
    tracing::info_span!(target: "perfmon", parent: None, "pipeline", perfmon.pipeline = id)
}

/// The agents of each recent pipeline, by pipeline id.
fn agents_by_pipeline(monitor: &Monitor) -> Vec<(String, Vec<String>)> {
    let mut all: Vec<_> = monitor
        .recent_pipelines(10)
        .into_iter()
        .map(|r: PipelineReport| (r.id, r.agents.into_iter().map(|a| a.agent).collect()))
        .collect();
    all.sort();
    all
}

#[test]
fn a_span_that_exits_out_of_order_or_is_entered_twice_leaves_the_registrys_current_span() {
    let monitor = Monitor::new();
    let _g = tracing::subscriber::set_default(tracing_subscriber::registry().with(monitor.layer()));
    let (one, two) = (pipeline("one"), pipeline("two"));
    // Teach the guard's callsite and this thread's caches first.
    {
        let _in_one = one.enter();
        drop(perfmon::agent("warmup"));
    }
    // Out of order: `one` exits first, `two` stays the current span.
    let in_one = one.enter();
    let in_two = two.enter();
    drop(in_one);
    drop(perfmon::agent("after_out_of_order_exit"));
    drop(in_two);
    // Entered again while entered: the registry skips the duplicate, so
    // the current span is `one`, entered after `two`'s first enter.
    let in_two = two.enter();
    let in_one = one.enter();
    let in_two_again = two.enter();
    drop(perfmon::agent("under_a_duplicate"));
    drop(in_two_again);
    drop(perfmon::agent("after_the_duplicate"));
    drop(in_one);
    drop(perfmon::agent("back_in_two"));
    drop(in_two);
    drop((one, two));
    assert_eq!(
        agents_by_pipeline(&monitor),
        [
            (
                "one".to_string(),
                vec![
                    "warmup".to_string(),
                    "under_a_duplicate".to_string(),
                    "after_the_duplicate".to_string()
                ]
            ),
            (
                "two".to_string(),
                vec![
                    "after_out_of_order_exit".to_string(),
                    "back_in_two".to_string()
                ]
            ),
        ]
    );
    assert_eq!(monitor.overview().runs_outside_pipeline, 0);
}

#[test]
fn runs_nested_deeper_than_the_record_follows_find_their_pipeline() {
    let monitor = Monitor::new();
    let _g = tracing::subscriber::set_default(tracing_subscriber::registry().with(monitor.layer()));
    let guard = monitor.start_pipeline("deep");
    // 40 spans that are not perfmon's, each entered inside the last, and
    // then another pipeline, entered at the bottom.
    let spans: Vec<Span> = (0..40).map(|i| tracing::info_span!("step", i)).collect();
    let entered: Vec<_> = spans.iter().map(Span::enter).collect();
    let inner = pipeline("inner");
    let in_inner = inner.enter();
    drop(perfmon::agent("innermost"));
    drop(in_inner);
    drop(inner);
    drop(perfmon::agent("below_the_steps"));
    // They exit in the order they entered: all out of order.
    drop(entered);
    drop(perfmon::agent("outermost"));
    let report = guard.finish();
    let agents: Vec<_> = report.agents.iter().map(|a| a.agent.as_str()).collect();
    assert_eq!(agents, ["below_the_steps", "outermost"]);
    let inner: Vec<_> = monitor
        .recent_pipelines(2)
        .into_iter()
        .filter(|r| r.id == "inner")
        .flat_map(|r| r.agents.into_iter().map(|a| a.agent))
        .collect();
    assert_eq!(inner, ["innermost"]);
    assert_eq!(monitor.overview().runs_outside_pipeline, 0);
}

#[test]
fn two_subscribers_on_one_thread_each_see_their_own_current_span() {
    let (a, b) = (Monitor::new(), Monitor::new());
    let dispatch_a = tracing::Dispatch::new(tracing_subscriber::registry().with(a.layer()));
    let dispatch_b = tracing::Dispatch::new(tracing_subscriber::registry().with(b.layer()));
    tracing::dispatcher::with_default(&dispatch_a, || {
        let span_a = pipeline("a");
        let in_a = span_a.enter();
        drop(perfmon::agent("first"));
        // `b`'s subscriber has no span entered here. It has a pipeline
        // open, not entered, whose span id is the one `a`'s entered
        // pipeline has in `a`'s registry: `b`'s run is in no pipeline.
        tracing::dispatcher::with_default(&dispatch_b, || {
            let span_b = pipeline("b");
            assert_eq!(span_b.id(), span_a.id(), "the test needs equal ids");
            drop(perfmon::agent("elsewhere"));
            drop(span_b);
        });
        drop(perfmon::agent("second"));
        drop(in_a);
        drop(span_a);
    });
    assert_eq!(
        agents_by_pipeline(&a),
        [(
            "a".to_string(),
            vec!["first".to_string(), "second".to_string()]
        )]
    );
    assert_eq!(agents_by_pipeline(&b), [("b".to_string(), vec![])]);
    assert_eq!(b.agent_stats("elsewhere").map(|s| s.runs), Some(1));
    assert_eq!(b.overview().runs_outside_pipeline, 1);
}

#[tokio::test]
async fn with_a_filter_of_its_own_the_layer_files_runs_past_the_spans_it_hides() {
    use perfmon::TrackAgentExt;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;
    let monitor = Monitor::new();
    // The set-up perfmon's filter warning suggests: perfmon's layer sees
    // perfmon's spans only; the program's own spans are hidden from it.
    let layer = monitor
        .layer()
        .with_filter(Targets::new().with_target("perfmon", tracing::Level::TRACE));
    let _g = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(layer)
            .with(EveryOtherSpan),
    );
    let pipeline = monitor.start_pipeline("p");
    let step = tracing::info_span!(target: "app", "step");
    assert!(
        step.id().is_some(),
        "the program's span exists, for the other layer"
    );
    for _ in 0..2 {
        // Opened inside the hidden span: the current span, an explicit
        // parent, and a future made there.
        step.in_scope(|| drop(perfmon::agent("contextual")));
        drop(
            tracing::info_span!(target: "perfmon", parent: &step, "agent", perfmon.agent = "explicit"),
        );
        let future = step.in_scope(|| async {}.track_agent("future"));
        future.await;
    }
    let report = pipeline.finish();
    let agents: Vec<_> = report.agents.iter().map(|a| a.agent.as_str()).collect();
    assert_eq!(
        agents,
        [
            "contextual",
            "explicit",
            "future",
            "contextual",
            "explicit",
            "future"
        ]
    );
    assert_eq!(monitor.overview().runs_outside_pipeline, 0);
}

/// A layer that enables every span: the program's own layer (a log, a
/// tracer), for which its spans exist.
struct EveryOtherSpan;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EveryOtherSpan {}
