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

/// Runs are counted in batches off the closing thread (each thread buffers
/// the runs it closed); `finish()` and every read count them first. Here
/// the threads that ran them are still alive, their buffers unflushed,
/// while other threads keep running agents into the same pipeline as it
/// finishes.
#[test]
fn every_run_closed_before_finish_is_in_the_report_while_others_race_it() {
    const THREADS: usize = 6;
    const RUNS: usize = 40; // fewer than a buffer holds before it asks for a flush
    const RACERS: usize = 2;
    let monitor = Monitor::builder().metrics(false).build();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
    let closed = std::sync::Barrier::new(THREADS + 1);
    let finished = std::sync::Barrier::new(THREADS + 1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let raced = std::sync::atomic::AtomicU64::new(0);
    let (report, stats) = tracing::dispatcher::with_default(&dispatch, || {
        let pipeline = monitor.start_pipeline("race");
        let span = pipeline.span().clone();
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                let (span, dispatch) = (span.clone(), dispatch.clone());
                let (closed, finished) = (&closed, &finished);
                scope.spawn(move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        span.in_scope(|| {
                            for _ in 0..RUNS {
                                let _agent = perfmon::agent("before");
                            }
                        });
                    });
                    closed.wait();
                    finished.wait(); // alive, its runs maybe still buffered
                });
            }
            for _ in 0..RACERS {
                let (span, dispatch, stop, raced) = (span.clone(), dispatch.clone(), &stop, &raced);
                scope.spawn(move || {
                    tracing::dispatcher::with_default(&dispatch, || {
                        span.in_scope(|| {
                            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                let _agent = perfmon::agent("racer");
                                raced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        });
                    });
                });
            }
            closed.wait();
            let report = pipeline.finish();
            let stats = monitor.agent_stats("before").expect("ran");
            finished.wait();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            (report, stats)
        })
    });
    let before = report.agents.iter().filter(|r| r.agent == "before").count();
    assert_eq!(before, THREADS * RUNS, "every run closed before finish()");
    assert_eq!(
        stats.runs,
        (THREADS * RUNS) as u64,
        "a read counts them all"
    );
    assert_eq!(stats.running, 0);
    // The racers' runs: each counted once in the statistics, whether it
    // closed before the report was made or after.
    let racer = monitor.agent_stats("racer").expect("raced");
    assert_eq!(racer.runs, raced.load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(racer.running, 0);
    let in_report = report.agents.iter().filter(|r| r.agent == "racer").count() as u64;
    assert!(in_report <= racer.runs);
}

/// A thread that exits with runs in its buffer leaves them counted, and
/// runs that close after its buffer is gone (in another thread-local's
/// destructor) are counted too.
#[test]
fn runs_of_a_thread_that_exited_are_counted() {
    struct CloseAtExit(Option<perfmon::AgentGuard>);
    impl Drop for CloseAtExit {
        fn drop(&mut self) {
            drop(self.0.take());
        }
    }
    thread_local! {
        static LATE: std::cell::RefCell<Option<CloseAtExit>> = const { std::cell::RefCell::new(None) };
    }
    let monitor = Monitor::builder().metrics(false).build();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
    let pipeline = tracing::dispatcher::with_default(&dispatch, || monitor.start_pipeline("exit"));
    let span = pipeline.span().clone();
    let d = dispatch.clone();
    std::thread::spawn(move || {
        let _default = tracing::dispatcher::set_default(&d);
        span.in_scope(|| {
            for _ in 0..10 {
                let _agent = perfmon::agent("exiting");
            }
        });
        // One run still open when the thread's locals are destroyed.
        let late = perfmon::agent("late");
        LATE.with(|l| *l.borrow_mut() = Some(CloseAtExit(Some(late))));
    })
    .join()
    .unwrap();
    let report = pipeline.finish();
    assert_eq!(
        report
            .agents
            .iter()
            .filter(|r| r.agent == "exiting")
            .count(),
        10
    );
    assert_eq!(monitor.agent_stats("exiting").expect("ran").runs, 10);
    let late = monitor.agent_stats("late").expect("ran");
    assert_eq!((late.runs, late.running), (1, 0));
}
