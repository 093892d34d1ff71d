//! A tight loop of agent runs, for counting instructions with callgrind: a
//! repeatable measure of per-call overhead on a noisy machine.
//!
//! ```text
//! cargo build --release --example hotloop
//! valgrind --tool=callgrind target/release/examples/hotloop MODE 200000
//!
//! valgrind --tool=callgrind target/release/examples/hotloop MODE 400000
//! ```
//!
//! The difference between the two totals, divided by 200,000, is the
//! per-run count without the program's fixed start-up cost.
//!
//! MODE: `registry` (a bare span, Registry only: the baseline),
//! `registry-nested` (the same inside an entered parent span: what the
//! Registry alone adds for a parent, the baseline of `pipeline`), `perfmon`
//! (`perfmon::agent` with the layer), `pipeline` (the same inside one
//! pipeline), `future` (a ready future tracked with `track_agent`, polled
//! once), `future-registry` (the same future `.instrument`ed, Registry only:
//! the async baseline), `future-pipeline` (`future` inside one pipeline),
//! `future-fn` (a `#[track_agent] async fn`, ready at once, polled once),
//! `unrelated` (a span that is not perfmon's, with the layer: what every
//! other span pays) and `unrelated-registry` (its baseline), `nested` (an
//! agent with one agent inside it: two runs per iteration, and the inner
//! one's time subtracted from the outer one's self time), `tool` (`perfmon::tool` inside one pipeline: compare
//! with `pipeline`), `pipelines` (finished pipelines of ten runs each),
//! `pipelines-history` (the same with a history file in the temporary
//! directory: count the host thread alone with `--separate-threads=yes`),
//! `pipelines-events` (the same with an event subscriber, as a sidecar
//! makes: every run publishes events), `pipelines-fleet` (the same
//! publishing to the Redis at `PERFMON_REDIS`, e.g. redis://127.0.0.1:6379),
//! `none` (`perfmon::agent` with no subscriber), `none-bare` (the baseline's
//! span with no subscriber: a disabled span), `perfmon-metrics` and
//! `pipeline-metrics` (`perfmon` and `pipeline` with runs exported to
//! `metrics`, into a Prometheus recorder). See BENCHMARKS.md.

use std::future::Future;
use std::hint::black_box;

use tracing::field::Empty;
use tracing_subscriber::prelude::*;

/// The baseline: the span `perfmon::agent` makes, with the same fields,
/// entered and closed, and no perfmon code.
#[inline(always)]
fn bare_span() {
    let span = tracing::info_span!(
        target: "perfmon",
        "agent",
        perfmon.agent = "geometry",
        perfmon.sync = Empty,
        perfmon.outcome = Empty,
        perfmon.error = Empty,
    );
    drop(black_box(span.entered()));
}

/// A tracked `async fn` that is ready at once.
#[perfmon::track_agent]
async fn retrieval() -> u32 {
    1
}

/// A span that is not perfmon's, entered and closed: what every other
/// span of the program pays for perfmon's layer.
#[inline(always)]
fn plain_span() {
    let span = tracing::info_span!("work", step = 1);
    drop(black_box(span.entered()));
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "perfmon".into());
    let runs: u32 = match std::env::args().nth(2).map(|n| n.parse()) {
        None => 200_000,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("the run count must be a whole number");
            std::process::exit(2);
        }
    };
    // `pipelines-history`: the same as `pipelines`, with a history file.
    let db = std::env::temp_dir().join(format!("perfmon-hotloop-{}.db", std::process::id()));
    // `perfmon-metrics` / `pipeline-metrics`: runs exported to `metrics`,
    // into a Prometheus recorder (what `Monitor::new()` does by default).
    let metrics = mode.ends_with("-metrics");
    if metrics {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        if metrics::set_global_recorder(recorder).is_err() {
            eprintln!("a metrics recorder was already installed");
            std::process::exit(1);
        }
    }
    let mut builder = perfmon::Monitor::builder().metrics(metrics);
    if mode == "pipelines-history" {
        match perfmon::History::open(&db) {
            Ok(history) => builder = builder.history(history),
            Err(err) => {
                eprintln!("{err}");
                std::process::exit(1);
            }
        }
    }
    let monitor = builder.build();
    // `pipelines-events` / `pipelines-fleet`: runs publish events.
    let _subscription = (mode == "pipelines-events").then(|| monitor.subscribe());
    let _publisher = if mode == "pipelines-fleet" {
        let url =
            std::env::var("PERFMON_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        match perfmon::fleet::Publisher::builder(url)
            .source("hotloop")
            .start(&monitor)
        {
            Ok(publisher) => Some(publisher),
            Err(err) => {
                eprintln!("{err}");
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    // Only built in the modes that use it: creating any dispatcher changes
    // how disabled callsites are checked, which would skew `none`.
    let with_layer =
        || tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
    match mode.as_str() {
        "registry" => {
            let registry = tracing::Dispatch::new(tracing_subscriber::registry());
            tracing::dispatcher::with_default(&registry, || {
                for _ in 0..runs {
                    bare_span();
                }
            });
        }
        "registry-nested" => {
            let registry = tracing::Dispatch::new(tracing_subscriber::registry());
            tracing::dispatcher::with_default(&registry, || {
                let parent = tracing::info_span!(target: "perfmon", "pipeline").entered();
                for _ in 0..runs {
                    bare_span();
                }
                drop(parent);
            });
        }
        "perfmon" | "perfmon-metrics" => tracing::dispatcher::with_default(&with_layer(), || {
            for _ in 0..runs {
                drop(black_box(perfmon::agent("geometry")));
            }
        }),
        "pipeline" | "pipeline-metrics" => tracing::dispatcher::with_default(&with_layer(), || {
            let pipeline = monitor.start_pipeline("loop");
            for _ in 0..runs {
                drop(black_box(perfmon::agent("geometry")));
            }
            drop(pipeline);
        }),
        "tool" => tracing::dispatcher::with_default(&with_layer(), || {
            let pipeline = monitor.start_pipeline("loop");
            for _ in 0..runs {
                drop(black_box(perfmon::tool("compile")));
            }
            drop(pipeline);
        }),
        "pipelines" | "pipelines-history" | "pipelines-events" | "pipelines-fleet" => {
            tracing::dispatcher::with_default(&with_layer(), || {
                // Pipelines of ten runs, each finished: what the history stores.
                for _ in 0..runs / 10 {
                    let pipeline = monitor.start_pipeline("loop");
                    for _ in 0..10 {
                        drop(black_box(perfmon::agent("geometry")));
                    }
                    drop(pipeline);
                }
            })
        }
        "nested" => tracing::dispatcher::with_default(&with_layer(), || {
            for _ in 0..runs {
                let outer = perfmon::agent("planner");
                drop(black_box(perfmon::agent("retrieval")));
                drop(black_box(outer));
            }
        }),
        "future" => tracing::dispatcher::with_default(&with_layer(), || {
            use perfmon::TrackAgentExt;
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            for _ in 0..runs {
                let mut fut = std::pin::pin!(std::future::ready(1).track_agent("retrieval"));
                let _ = black_box(fut.as_mut().poll(&mut cx));
            }
        }),
        "future-fn" => tracing::dispatcher::with_default(&with_layer(), || {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            for _ in 0..runs {
                let mut fut = std::pin::pin!(retrieval());
                let _ = black_box(fut.as_mut().poll(&mut cx));
            }
        }),
        "future-pipeline" => tracing::dispatcher::with_default(&with_layer(), || {
            use perfmon::TrackAgentExt;
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let pipeline = monitor.start_pipeline("loop");
            for _ in 0..runs {
                let mut fut = std::pin::pin!(std::future::ready(1).track_agent("retrieval"));
                let _ = black_box(fut.as_mut().poll(&mut cx));
            }
            drop(pipeline);
        }),
        "unrelated" => tracing::dispatcher::with_default(&with_layer(), || {
            for _ in 0..runs {
                plain_span();
            }
        }),
        "unrelated-registry" => {
            let registry = tracing::Dispatch::new(tracing_subscriber::registry());
            tracing::dispatcher::with_default(&registry, || {
                for _ in 0..runs {
                    plain_span();
                }
            });
        }
        "future-registry" => {
            let registry = tracing::Dispatch::new(tracing_subscriber::registry());
            tracing::dispatcher::with_default(&registry, || {
                use tracing::Instrument;
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                for _ in 0..runs {
                    let span = tracing::info_span!(target: "perfmon", "agent", perfmon.agent = "retrieval");
                    let mut fut = std::pin::pin!(std::future::ready(1).instrument(span));
                    let _ = black_box(fut.as_mut().poll(&mut cx));
                }
            });
        }
        "none" => {
            for _ in 0..runs {
                drop(black_box(perfmon::agent("geometry")));
            }
        }
        "none-bare" => {
            for _ in 0..runs {
                bare_span();
            }
        }
        other => {
            eprintln!(
                "unknown mode {other:?}: registry | registry-nested | perfmon | pipeline | pipelines | pipelines-history | tool | nested | future | future-fn | future-pipeline | future-registry | unrelated | unrelated-registry | none | none-bare"
            );
            std::process::exit(2);
        }
    }
    println!(
        "{mode}: {} agent runs recorded",
        monitor.overview().agent_runs_total
    );
    if let Some(history) = monitor.history() {
        let _ = monitor.flush();
        println!("{} pipelines stored", history.stats().pipelines_written);
    }
    drop(monitor);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}
