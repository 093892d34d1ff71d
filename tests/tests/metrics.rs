//! The four metrics of the contract, checked with metrics-util's DebuggingRecorder.

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use perfmon::{MockClock, Monitor};
use tracing_subscriber::layer::SubscriberExt;

fn labels(key: &CompositeKey) -> Vec<(String, String)> {
    key.key()
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect()
}

#[test]
fn agent_and_pipeline_metrics_reach_the_recorder() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let clock = MockClock::new();
        let monitor = Monitor::builder().mock_clock(&clock).build();
        let subscriber = tracing_subscriber::registry().with(monitor.layer());
        tracing::subscriber::with_default(subscriber, || {
            let pipeline = monitor.start_pipeline("m");
            for i in 0..3 {
                let agent = perfmon::agent("geometry");
                clock.advance(std::time::Duration::from_millis(250));
                if i == 2 {
                    agent.fail("no");
                }
            }
            pipeline.finish();
        });
    });

    let snapshot = snapshotter.snapshot().into_vec();
    let find = |kind: MetricKind, name: &str, want: &[(&str, &str)]| {
        snapshot
            .iter()
            .find(|(key, _, _, _)| {
                key.kind() == kind
                    && key.key().name() == name
                    && want
                        .iter()
                        .all(|(k, v)| labels(key).contains(&((*k).to_owned(), (*v).to_owned())))
            })
            .map(|(_, _, _, value)| value)
            .unwrap_or_else(|| panic!("{name} {want:?} missing"))
    };
    let ok = [("agent", "geometry"), ("outcome", "succeeded")];
    let failed = [("agent", "geometry"), ("outcome", "failed")];
    assert_eq!(
        find(MetricKind::Counter, "perfmon_agent_runs_total", &ok),
        &DebugValue::Counter(2)
    );
    assert_eq!(
        find(MetricKind::Counter, "perfmon_agent_runs_total", &failed),
        &DebugValue::Counter(1)
    );
    match find(MetricKind::Histogram, "perfmon_agent_duration_seconds", &ok) {
        DebugValue::Histogram(values) => {
            assert_eq!(
                values.iter().map(|v| v.into_inner()).collect::<Vec<_>>(),
                [0.25, 0.25]
            );
        }
        other => panic!("not a histogram: {other:?}"),
    }
    match find(
        MetricKind::Histogram,
        "perfmon_pipeline_duration_seconds",
        &[("outcome", "succeeded")],
    ) {
        DebugValue::Histogram(values) => assert_eq!(values.len(), 1),
        other => panic!("not a histogram: {other:?}"),
    }
    assert_eq!(
        find(MetricKind::Gauge, "perfmon_pipelines_active", &[]),
        &DebugValue::Gauge(0.0.into())
    );
}
