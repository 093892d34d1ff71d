//! Many threads recording at once give exact totals.

use std::time::Duration;

use perfmon::Monitor;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn eight_threads_into_one_pipeline_give_exact_totals() {
    const THREADS: u64 = 8;
    const RUNS: u64 = 5_000;
    let monitor = Monitor::builder()
        .metrics(false)
        .max_runs_per_pipeline(10_000)
        .build();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
    let _sub = monitor.subscribe();
    let report = tracing::dispatcher::with_default(&dispatch, || {
        let pipeline = monitor.start_pipeline("parallel");
        let span = pipeline.span().clone();
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (span, dispatch) = (span.clone(), dispatch.clone());
                scope.spawn(move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        span.in_scope(|| {
                            for i in 0..RUNS {
                                let agent = perfmon::agent(if t % 2 == 0 { "even" } else { "odd" });
                                if i % 100 == 0 {
                                    agent.fail("sampled failure");
                                }
                            }
                        })
                    })
                });
            }
        });
        pipeline.finish()
    });
    let total = THREADS * RUNS;
    assert_eq!(report.total_runs(), total);
    assert_eq!(report.agents.len(), 10_000);
    let overview = monitor.overview();
    assert_eq!(overview.agent_runs_total, total);
    assert_eq!(overview.agent_failures_total, total / 100);
    let even = monitor.agent_stats("even").expect("ran");
    let odd = monitor.agent_stats("odd").expect("ran");
    assert_eq!(even.runs + odd.runs, total);
    assert_eq!(even.runs, total / 2);
    assert_eq!(even.failures + odd.failures, total / 100);
    assert_eq!(even.running + odd.running, 0);
    // The stream saw them too, minus what it counted as dropped.
    std::thread::sleep(Duration::from_millis(50));
    let overview = monitor.overview();
    assert_eq!(
        overview.events_published + overview.events_dropped,
        2 * total + 2
    );
}
