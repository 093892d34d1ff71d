//! Every way an agent can run lands in the right pipeline with the right outcome.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::{install, mocked, ms};
use perfmon::{MockClock, Monitor, Outcome, TrackAgentExt};
use tracing::instrument::WithSubscriber;

#[test]
fn a_panicking_agent_is_panicked_and_the_pipeline_too() {
    let (monitor, _clock, _g) = mocked();
    let result = std::panic::catch_unwind(|| {
        let _pipeline = monitor.start_pipeline("boom");
        let _agent = perfmon::agent("fragile");
        panic!("agent blew up");
    });
    assert!(result.is_err());
    let report = monitor.pipeline("boom").expect("the pipeline was recorded");
    assert_eq!(report.outcome, Outcome::Panicked);
    assert_eq!(report.agents[0].outcome, Outcome::Panicked);
    assert_eq!(monitor.agent_stats("fragile").map(|s| s.failures), Some(1));
}

#[test]
fn explicit_succeed_and_outside_any_pipeline() {
    let (monitor, clock, _g) = mocked();
    let agent = perfmon::agent("loner");
    clock.advance(ms(3));
    agent.succeed();
    let stats = monitor
        .agent_stats("loner")
        .expect("runs outside pipelines still count");
    assert_eq!((stats.runs, stats.failures, stats.total), (1, 0, ms(3)));
    assert_eq!(monitor.overview().pipelines_total, 0);
    assert_eq!(monitor.overview().agent_runs_total, 1);
}

#[tracing::instrument(fields(perfmon.agent = "instrumented"))]
fn instrumented_ok() {}

#[tracing::instrument(err, fields(perfmon.agent = "instrumented_err"))]
fn instrumented_err() -> Result<(), String> {
    Err("bad input".into())
}

#[test]
fn spans_from_tracing_instrument_count_and_err_fails_them() {
    let (monitor, _clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("inst");
    instrumented_ok();
    let _ = instrumented_err();
    let report = pipeline.finish();
    assert_eq!(report.agents.len(), 2);
    assert_eq!(report.agents[0].agent, "instrumented");
    assert_eq!(report.agents[0].outcome, Outcome::Succeeded);
    assert_eq!(report.agents[1].agent, "instrumented_err");
    assert_eq!(
        report.agents[1].outcome,
        Outcome::Failed {
            error: "bad input".into()
        }
    );
}

#[test]
fn recording_perfmon_error_on_any_span_fails_it() {
    let (monitor, _clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("rec");
    let span = tracing::info_span!(
        "work",
        perfmon.agent = "manual",
        perfmon.error = tracing::field::Empty
    );
    span.record("perfmon.error", "disk full");
    drop(span);
    let report = pipeline.finish();
    assert_eq!(
        report.agents[0].outcome,
        Outcome::Failed {
            error: "disk full".into()
        }
    );
}

#[test]
fn follows_from_attaches_a_detached_agent_to_a_pipeline() {
    let (monitor, _clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("caused");
    let detached = tracing::info_span!(parent: None, "job", perfmon.agent = "background");
    detached.follows_from(pipeline.span());
    drop(detached);
    let report = pipeline.finish();
    assert_eq!(report.agents.len(), 1);
    assert_eq!(report.agents[0].agent, "background");
}

/// A future that takes `work` of (mock) clock time on each of two polls.
struct TwoPolls {
    clock: MockClock,
    work: Duration,
    polls: u32,
}

impl Future for TwoPolls {
    type Output = u32;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        self.clock.advance(self.work);
        self.polls += 1;
        if self.polls == 2 {
            Poll::Ready(7)
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// A future's busy time is the time it was polled, apart from its wall
/// time. `track_agent`'s futures time their own polls (no lookup of their
/// span per poll) and hand the total to the layer when dropped: the first
/// such future in the process teaches perfmon its callsite (the layer times
/// it), every later one times itself; all give the same busy time.
#[test]
fn futures_report_busy_time_apart_from_wall_time() {
    let (monitor, clock, _g) = mocked();
    for round in 0..3 {
        let pipeline = monitor.start_pipeline(format!("round_{round}"));
        let mut fut = Box::pin(
            TwoPolls {
                clock: clock.clone(),
                work: ms(5),
                polls: 0,
            }
            .track_agent("poller"),
        );
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        clock.advance(ms(20)); // waiting, not busy
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(7));
        clock.advance(ms(1)); // done, not yet dropped: not busy
        drop(fut);
        let report = pipeline.finish();
        let run = &report.agents[0];
        assert_eq!(run.duration, ms(31), "round {round}");
        assert_eq!(run.busy, Some(ms(10)), "round {round}");
        assert_eq!(run.outcome, Outcome::Succeeded);
    }
}

#[perfmon::track_agent]
async fn polled_twice(clock: MockClock) -> u32 {
    TwoPolls {
        clock,
        work: ms(5),
        polls: 0,
    }
    .await
}

/// An `async fn` under `#[track_agent]` times its own polls too (its
/// callsite is registered as self-timing by its first span, which the
/// layer times): every round gives the same busy time.
#[test]
fn a_tracked_async_fn_reports_busy_time_apart_from_wall_time() {
    let (monitor, clock, _g) = mocked();
    for round in 0..3 {
        let pipeline = monitor.start_pipeline(format!("round_{round}"));
        let mut fut = Box::pin(polled_twice(clock.clone()));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        clock.advance(ms(20)); // waiting, not busy
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(7));
        clock.advance(ms(1)); // after the end: the body's future is gone
        drop(fut);
        let report = pipeline.finish();
        let run = &report.agents[0];
        assert_eq!(run.agent, "polled_twice");
        // The span is made at the first poll and closes as the body ends.
        assert_eq!(run.duration, ms(30), "round {round}");
        assert_eq!(run.busy, Some(ms(10)), "round {round}");
        assert_eq!(run.outcome, Outcome::Succeeded);
    }
}

/// A future that makes a child span on its one poll and leaves it in
/// `child`: the child keeps the future's span open after the future is
/// dropped.
struct LeavesAChild {
    clock: MockClock,
    child: Arc<std::sync::Mutex<Option<tracing::Span>>>,
}

impl Future for LeavesAChild {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        self.clock.advance(ms(4));
        if let Ok(mut child) = self.child.lock() {
            *child = Some(tracing::info_span!("callback"));
        }
        Poll::Ready(())
    }
}

/// The run ends when its span closes, which a child span can delay past
/// the future's drop: the busy time reaches the layer all the same.
#[test]
fn a_tracked_futures_busy_time_arrives_when_a_child_keeps_its_span_open() {
    let (monitor, clock, _g) = mocked();
    for round in 0..2 {
        let pipeline = monitor.start_pipeline(format!("round_{round}"));
        let child = Arc::new(std::sync::Mutex::new(None));
        let mut fut = Box::pin(
            LeavesAChild {
                clock: clock.clone(),
                child: Arc::clone(&child),
            }
            .track_agent("with-callback"),
        );
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        drop(fut);
        clock.advance(ms(6)); // the span is still open: wall time, not busy
        drop(child.lock().unwrap().take());
        let report = pipeline.finish();
        let run = &report.agents[0];
        assert_eq!(run.duration, ms(10), "round {round}");
        assert_eq!(run.busy, Some(ms(4)), "round {round}");
    }
}

#[tokio::test]
async fn async_agents_ok_err_and_cancelled() {
    let (monitor, _clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("tasks");
    let v = async { 1 }.track_agent("ok").await;
    assert_eq!(v, 1);
    let r: Result<u8, String> = async { Err("timeout".to_string()) }
        .track_agent_result("err")
        .await;
    assert!(r.is_err());
    let never = std::future::pending::<()>().track_agent("slow");
    assert!(
        tokio::time::timeout(Duration::from_millis(5), never)
            .await
            .is_err()
    );
    let report = pipeline.finish();
    let outcomes: Vec<_> = report
        .agents
        .iter()
        .map(|r| (r.agent.as_str(), r.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("ok", Outcome::Succeeded),
            (
                "err",
                Outcome::Failed {
                    error: "timeout".into()
                }
            ),
            ("slow", Outcome::Cancelled),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_tasks_on_other_threads_belong_to_the_pipeline() {
    let monitor = Monitor::builder().metrics(false).build();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::layer::SubscriberExt::with(
        tracing_subscriber::registry(),
        monitor.layer(),
    ));
    let run = {
        let monitor = monitor.clone();
        async move {
            let pipeline = monitor.start_pipeline("spawned");
            // Tracked futures capture the current span when created: spawn them anywhere.
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    let fut = async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        i
                    };
                    tokio::spawn(fut.track_agent("worker").with_current_subscriber())
                })
                .collect();
            let panicking = tokio::spawn(
                async { panic!("worker panicked") }
                    .track_agent("doomed")
                    .with_current_subscriber(),
            );
            // A pipeline guard must not be held across .await: take the span and re-enter.
            let span = pipeline.span().clone();
            let mut sum = 0;
            for h in handles {
                sum += h.await.expect("worker ran");
            }
            assert!(panicking.await.is_err());
            let _ = span;
            sum
        }
    };
    // The guard is !Send, so the pipeline body runs on one thread (block_in_place keeps it simple).
    let sum = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(run.with_subscriber(dispatch.clone()))
    });
    assert_eq!(sum, 6);
    let report = monitor.pipeline("spawned").expect("recorded");
    let workers = report.agents.iter().filter(|r| r.agent == "worker").count();
    assert_eq!(workers, 4);
    let doomed = report
        .agents
        .iter()
        .find(|r| r.agent == "doomed")
        .expect("the panicking task counts");
    assert_eq!(doomed.outcome, Outcome::Panicked);
    assert!(report.agents.iter().all(|r| r.busy.is_some()));
}

#[test]
fn a_tracked_future_dropped_on_another_thread_is_cancelled() {
    let (monitor, _clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("moved");
    let fut = std::future::pending::<()>().track_agent("wanderer");
    std::thread::spawn(move || drop(fut))
        .join()
        .expect("thread ran");
    let report = pipeline.finish();
    assert_eq!(report.agents[0].outcome, Outcome::Cancelled);
}

#[test]
fn two_active_pipelines_with_one_id_are_kept_apart() {
    let monitor = Monitor::builder().metrics(false).build();
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = ["left", "right"]
        .into_iter()
        .map(|agent| {
            let (monitor, barrier) = (monitor.clone(), barrier.clone());
            std::thread::spawn(move || {
                let dispatch =
                    tracing::Dispatch::new(tracing_subscriber::layer::SubscriberExt::with(
                        tracing_subscriber::registry(),
                        monitor.layer(),
                    ));
                tracing::dispatcher::with_default(&dispatch, || {
                    let pipeline = monitor.start_pipeline("same-id");
                    barrier.wait(); // both are active now
                    drop(perfmon::agent(agent));
                    barrier.wait();
                    pipeline.finish()
                })
            })
        })
        .collect();
    let reports: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("thread ran"))
        .collect();
    assert_ne!(reports[0].run, reports[1].run);
    for (report, agent) in reports.iter().zip(["left", "right"]) {
        assert_eq!(report.id, "same-id");
        let names: Vec<_> = report.agents.iter().map(|r| r.agent.as_str()).collect();
        assert_eq!(names, [agent]);
        assert_eq!(
            monitor.pipeline_run(report.run).map(|r| r.agents.len()),
            Some(1)
        );
    }
}

#[test]
fn an_agent_that_outlives_its_pipeline_counts_in_stats_only() {
    let (monitor, _clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("short");
    let late = tracing::info_span!(parent: pipeline.span(), "late", perfmon.agent = "straggler");
    let report = pipeline.finish();
    assert_eq!(report.unfinished, ["straggler"]);
    let printed = report.to_string();
    assert!(
        printed.contains("STILL RUNNING when it ended (not timed above): straggler"),
        "the printed report shows what was still running:\n{printed}"
    );
    drop(late);
    assert_eq!(monitor.agent_stats("straggler").map(|s| s.runs), Some(1));
    assert!(
        monitor.pipeline("short").expect("kept").agents.is_empty(),
        "finished reports do not change"
    );
}

#[test]
fn a_million_runs_keep_the_report_bounded() {
    let clock = MockClock::new();
    let (monitor, _g) = install(
        Monitor::builder()
            .mock_clock(&clock)
            .max_runs_per_pipeline(1_000),
    );
    let pipeline = monitor.start_pipeline("huge");
    for i in 0..1_000_000u32 {
        let _a = perfmon::agent(if i % 2 == 0 { "even" } else { "odd" });
        clock.advance(Duration::from_nanos(100));
    }
    let report = pipeline.finish();
    assert_eq!(report.agents.len(), 1_000, "stored runs are capped");
    assert_eq!(
        report.total_runs(),
        1_000_000,
        "the rest are aggregated, not lost"
    );
    let aggregated: u64 = report.aggregated.iter().map(|a| a.runs).sum();
    assert_eq!(aggregated, 999_000);
    assert_eq!(report.duration, Duration::from_millis(100));
    assert!((report.bottleneck("even").expect("half the time").share - 0.5).abs() < 1e-9);
    assert_eq!(monitor.agent_stats("odd").map(|s| s.runs), Some(500_000));
}

#[test]
fn agent_names_beyond_the_cap_share_one_entry() {
    let clock = MockClock::new();
    let (monitor, _g) = install(Monitor::builder().mock_clock(&clock).max_agents(3));
    for i in 0..10 {
        drop(perfmon::agent(&format!("agent-{i}")));
    }
    assert_eq!(monitor.agents().len(), 4, "three names and \"(other)\"");
    let other = monitor.agent_stats("(other)").expect("overflow entry");
    assert_eq!(other.runs, 7, "ten names, three tracked");
    assert_eq!(monitor.overview().agents_overflowed, 7);
}

#[test]
fn without_a_layer_guards_record_nothing_and_still_report_time() {
    // A subscriber without perfmon's layer, rather than none at all: a
    // callsite first registered while no dispatcher is alive is cached as
    // `never`, and tracing-core can miss the rebuild that another test's
    // `set_default` does at the same moment, which disables that callsite
    // for every test in this binary.
    let _g = tracing::subscriber::set_default(tracing_subscriber::registry());
    let monitor = Monitor::new();
    let pipeline = monitor.start_pipeline("unrecorded");
    drop(perfmon::agent("nobody-listens"));
    let report = pipeline.finish();
    assert_eq!(report.id, "unrecorded");
    assert!(report.agents.is_empty());
    assert_eq!(monitor.overview().agent_runs_total, 0);
}

#[test]
#[should_panic(expected = "bottleneck_threshold must be in (0, 1]")]
fn threshold_above_one_is_refused() {
    let _ = Monitor::builder().bottleneck_threshold(1.5);
}

#[test]
#[should_panic(expected = "bottleneck_threshold must be in (0, 1]")]
fn threshold_of_zero_is_refused() {
    let _ = Monitor::builder().bottleneck_threshold(0.0);
}

#[test]
#[should_panic(expected = "recent_capacity must be at least 1")]
fn zero_capacity_is_refused() {
    let _ = Monitor::builder().recent_capacity(0);
}

#[test]
#[should_panic(expected = "max_runs_per_pipeline must be at least 1")]
fn zero_runs_per_pipeline_is_refused() {
    let _ = Monitor::builder().max_runs_per_pipeline(0);
}

#[test]
fn an_unknown_outcome_value_fails_the_run_and_says_why() {
    let (monitor, _clock, _g) = mocked();
    let mut events = monitor.subscribe();
    let pipeline = monitor.start_pipeline("typo");
    {
        let span = tracing::info_span!(
            "step",
            perfmon.agent = "typist",
            perfmon.outcome = tracing::field::Empty
        );
        let _entered = span.enter();
        span.record("perfmon.outcome", "sucess");
    }
    let report = pipeline.finish();
    let error = report.agents[0]
        .outcome
        .error()
        .expect("failed, not succeeded");
    assert!(
        error.contains("unknown perfmon.outcome value \"sucess\""),
        "{error}"
    );
    let mut said = None;
    while let Some(event) = events.recv_blocking_timeout(std::time::Duration::from_secs(5)) {
        if let perfmon::EventKind::Error { message, agent } = &event.kind {
            said = Some((agent.as_deref().map(str::to_owned), message.clone()));
            break;
        }
    }
    let (agent, message) = said.expect("an error event");
    assert_eq!(agent.as_deref(), Some("typist"));
    assert!(
        message.contains("\"succeeded\""),
        "says what to record: {message}"
    );
}

/// Emits an `ERROR` event when dropped: work a future does while cancelled.
struct ShoutOnDrop;

impl Drop for ShoutOnDrop {
    fn drop(&mut self) {
        tracing::error!("rolling back the half-written mesh");
    }
}

#[test]
fn what_a_cancelled_future_does_while_dropped_belongs_to_its_agent() {
    use perfmon::TrackAgentExt;
    let (monitor, _clock, _g) = mocked();
    let mut events = monitor.subscribe();
    let pipeline = monitor.start_pipeline("cancel");
    let mut fut = Box::pin(
        async {
            let _guard = ShoutOnDrop;
            std::future::pending::<()>().await;
        }
        .track_agent("mesher"),
    );
    let waker = std::task::Waker::noop();
    assert!(
        fut.as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
            .is_pending()
    );
    drop(fut);
    let report = pipeline.finish();
    assert_eq!(report.agents[0].outcome, perfmon::Outcome::Cancelled);
    let mut error_agent = None;
    while let Some(event) = events.recv_blocking_timeout(std::time::Duration::from_secs(5)) {
        if event.type_name() == "error" {
            error_agent = Some(event.agent().map(str::to_owned));
            break;
        }
    }
    assert_eq!(
        error_agent.expect("the drop's error event was recorded"),
        Some("mesher".to_owned()),
        "attributed to the cancelled agent"
    );
}

#[tracing::instrument(fields(perfmon.agent = "declared", perfmon.error = tracing::field::Empty))]
fn records_a_declared_error() {
    tracing::Span::current().record("perfmon.error", "quota exceeded");
}

#[tracing::instrument(fields(perfmon.agent = "undeclared"))]
fn records_an_undeclared_error() {
    // tracing drops values for fields the span did not declare.
    tracing::Span::current().record("perfmon.error", "quota exceeded");
}

#[test]
fn record_perfmon_error_needs_the_field_declared() {
    let (monitor, _clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("declared");
    records_a_declared_error();
    records_an_undeclared_error();
    let report = pipeline.finish();
    assert_eq!(
        report.agents[0].outcome,
        Outcome::Failed {
            error: "quota exceeded".into()
        }
    );
    assert_eq!(report.agents[1].outcome, Outcome::Succeeded);
}

#[tracing::instrument(fields(perfmon.agent = "retrier"))]
fn recovers_after_an_error() -> u32 {
    let e = std::io::Error::other("timeout");
    tracing::error!(error = %e, "recovered, retrying");
    tracing::error!(error = %e, attempt = 2);
    7
}

#[tracing::instrument(fields(perfmon.agent = "bare_error"))]
fn logs_an_error_like_instrument_err() {
    tracing::error!(error = %std::io::Error::other("disk full"));
}

#[test]
fn an_error_event_fails_a_run_only_in_the_shape_instrument_err_emits() {
    let (monitor, _clock, _g) = mocked();
    let mut events = monitor.subscribe();
    let pipeline = monitor.start_pipeline("errors");
    assert_eq!(recovers_after_an_error(), 7);
    logs_an_error_like_instrument_err();
    let report = pipeline.finish();
    assert_eq!(report.agents[0].outcome, Outcome::Succeeded);
    assert_eq!(
        report.agents[1].outcome,
        Outcome::Failed {
            error: "disk full".into()
        }
    );
    // The recovered errors are still reported live, as `error` events.
    let mut errors = Vec::new();
    while let Some(event) = events.recv_blocking_timeout(Duration::from_secs(5)) {
        match event.kind {
            perfmon::EventKind::Error { message, .. } => errors.push(message),
            perfmon::EventKind::PipelineCompleted(_) => break,
            _ => {}
        }
    }
    assert_eq!(
        errors,
        [
            "recovered, retrying error=timeout",
            "error=timeout attempt=2",
            "error=disk full"
        ]
    );
}

#[test]
fn agent_stats_count_each_outcome_apart() {
    let (monitor, _clock, _g) = mocked();
    let _pipeline = monitor.start_pipeline("mixed");
    perfmon::agent("mixed").succeed();
    perfmon::agent("mixed").fail("no");
    let _ = std::panic::catch_unwind(|| {
        let _a = perfmon::agent("mixed");
        panic!("mixed blew up");
    });
    let mut cancelled = Box::pin(std::future::pending::<()>().track_agent("mixed"));
    let waker = Waker::noop();
    assert!(
        cancelled
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_pending()
    );
    drop(cancelled);
    let stats = monitor.agent_stats("mixed").expect("ran");
    let o = stats.outcomes;
    assert_eq!(
        (
            o.succeeded,
            o.failed,
            o.panicked,
            o.cancelled,
            stats.failures
        ),
        (1, 1, 1, 1, 3)
    );
}
