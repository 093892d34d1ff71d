//! What perfmon cannot see, it says: spans a global filter disables, and
//! runs that lost their pipeline, are counted in the overview and warned
//! about once, with the fix.
#![allow(clippy::expect_used)] // test helpers: a panic is the failure report

mod common;

use std::sync::{Arc, Mutex};

use perfmon::Monitor;
use tracing::instrument::Instrument;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Keeps `WARN` events from target `perfmon`, as the user's log would show them.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: Subscriber> Layer<S> for Warnings {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() == Level::WARN && meta.target() == "perfmon" {
            let mut text = String::new();
            event.record(
                &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                    if field.name() == "message" {
                        text = format!("{value:?}");
                    }
                },
            );
            self.0.lock().expect("not poisoned").push(text);
        }
    }
}

impl Warnings {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("not poisoned"))
    }
}

#[perfmon::track_pipeline(id = "filtered")]
fn a_pipeline() {
    an_agent();
    perfmon::agent("guarded").succeed();
}

#[perfmon::track_agent]
fn an_agent() {}

/// Runs `a_pipeline` under `filter` (a global filter, as `EnvFilter` in a
/// registry or `fmt().with_env_filter(..)` is) and returns the monitor.
fn run_under(filter: &str, warnings: &Warnings, times: usize) -> Monitor {
    let monitor = Monitor::builder().metrics(false).build();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new(filter))
        .with(warnings.clone())
        .with(monitor.layer());
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..times {
            a_pipeline();
        }
    });
    monitor
}

#[test]
fn a_global_filter_that_hides_perfmon_is_counted_and_warned_about_once() {
    let warnings = Warnings::default();

    // RUST_LOG=warn: nothing perfmon makes is enabled.
    let monitor = run_under("warn", &warnings, 1);
    let o = monitor.overview();
    assert_eq!((o.pipelines_total, o.agent_runs_total), (0, 0));
    // The first one counts at once; the rest in per-thread batches of 64.
    assert!(o.spans_filtered >= 1, "{o:?}");
    let said = warnings.take();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains(perfmon::FILTER_DIRECTIVE), "{}", said[0]);
    assert!(said[0].contains("with_filter"), "{}", said[0]);

    // RUST_LOG=<your crate>=debug: the macros' spans have target `perfmon`
    // like the guards', so they are not half recorded (agents without
    // their pipeline); all are counted, and the warning is not repeated.
    let before = o.spans_filtered;
    let monitor = run_under("filters=debug", &warnings, 100);
    let o = monitor.overview();
    assert_eq!((o.pipelines_total, o.agent_runs_total), (0, 0));
    assert!(o.spans_filtered >= before + 300 - 63, "{o:?}");
    assert_eq!(warnings.take(), Vec::<String>::new());

    // The documented directive enables all of them, macros included.
    let before = o.spans_filtered;
    let monitor = run_under(&format!("warn,{}", perfmon::FILTER_DIRECTIVE), &warnings, 1);
    let o = monitor.overview();
    assert_eq!((o.pipelines_total, o.agent_runs_total), (1, 2));
    assert_eq!(o.spans_filtered, before);
    let report = monitor.pipeline("filtered").expect("recorded");
    let agents: Vec<_> = report.agents.iter().map(|r| r.agent.as_str()).collect();
    assert_eq!(agents, ["an_agent", "guarded"]);
}

#[perfmon::track_agent]
async fn worker() {
    tokio::task::yield_now().await;
}

#[test]
fn runs_that_lose_their_pipeline_are_counted_and_warned_about_once() {
    let warnings = Warnings::default();
    let monitor = Monitor::builder().metrics(false).build();
    let _g = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(warnings.clone())
            .with(monitor.layer()),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let ((), report) = runtime.block_on(monitor.track_pipeline("spawner", async {
        // Polled first in a task where no span is current: outside the pipeline.
        tokio::spawn(worker()).await.expect("joins");
        tokio::spawn(worker()).await.expect("joins");
        // Carrying the span in keeps it inside.
        tokio::spawn(worker().in_current_span())
            .await
            .expect("joins");
    }));
    assert_eq!(report.agents.len(), 1);
    let o = monitor.overview();
    assert_eq!((o.agent_runs_total, o.runs_outside_pipeline), (3, 2));
    let said = warnings.take();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("in_current_span"), "{}", said[0]);
    assert!(said[0].contains("`worker`"), "{}", said[0]);

    // With no pipeline active, a run outside one is not lost: not counted.
    perfmon::agent("idle").succeed();
    assert_eq!(monitor.overview().runs_outside_pipeline, 2);
}
