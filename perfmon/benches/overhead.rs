//! Per-call overhead of a tracked agent run, against a bare `tracing` span
//! with only `Registry`, measured in the same run.
//!
//! ```text
//! cargo bench -p perfmon --bench overhead
//! ```
//!
//! Every case does the same thing a synchronous agent does: open a span,
//! enter it, exit it, close it. See BENCHMARKS.md for the figures.
#![allow(missing_docs, clippy::expect_used)] // a bench: a panic is the right failure report

use std::hint::black_box;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use perfmon::{Monitor, TrackAgentExt};
use tracing::field::Empty;
use tracing_subscriber::prelude::*;

/// What `perfmon::agent` does, minus perfmon: the baseline span.
fn bare_span() {
    let span = tracing::info_span!(
        target: "perfmon",
        "agent",
        perfmon.agent = "geometry",
        perfmon.sync = Empty,
        perfmon.outcome = Empty,
        perfmon.error = Empty,
    );
    let entered = black_box(span.entered());
    drop(entered);
}

fn tracked() {
    let guard = black_box(perfmon::agent("geometry"));
    drop(guard);
}

#[inline(never)]
fn plain_call(a: u64, b: u64) -> u64 {
    a.wrapping_mul(b) ^ 0x5bd1
}

#[perfmon::track_agent]
#[inline(never)]
fn tracked_call(a: u64, b: u64) -> u64 {
    a.wrapping_mul(b) ^ 0x5bd1
}

/// `#[track_agent]` with no subscriber, next to the same function untracked.
/// Runs first: before any dispatcher exists in the process.
fn macro_no_subscriber(c: &mut Criterion) {
    let mut group = c.benchmark_group("macro_no_subscriber");
    group.bench_function("plain_fn (baseline)", |b| {
        b.iter(|| plain_call(black_box(3), black_box(5)))
    });
    group.bench_function("track_agent_fn", |b| {
        b.iter(|| tracked_call(black_box(3), black_box(5)))
    });
    group.finish();
}

fn sync_agent(c: &mut Criterion) {
    // A real recorder, so that the metrics handles do work: Prometheus's.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    metrics::set_global_recorder(recorder).expect("first recorder");

    let mut group = c.benchmark_group("sync_agent");

    group.bench_function("no_subscriber/perfmon_agent", |b| b.iter(tracked));
    group.bench_function("no_subscriber/bare_span", |b| b.iter(bare_span));

    let registry = tracing::Dispatch::new(tracing_subscriber::registry());
    tracing::dispatcher::with_default(&registry, || {
        group.bench_function("registry_only/bare_span (baseline)", |b| b.iter(bare_span));
    });

    let quiet = Monitor::builder().metrics(false).build();
    let without_metrics =
        tracing::Dispatch::new(tracing_subscriber::registry().with(quiet.layer()));
    tracing::dispatcher::with_default(&without_metrics, || {
        group.bench_function("perfmon_layer/perfmon_agent", |b| b.iter(tracked));
    });

    let monitor = Monitor::new();
    let with_layer = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
    tracing::dispatcher::with_default(&with_layer, || {
        group.bench_function("perfmon_layer+metrics/perfmon_agent", |b| b.iter(tracked));
    });
    tracing::dispatcher::with_default(&with_layer, || {
        let pipeline = monitor.start_pipeline("bench");
        group.bench_function("perfmon_layer+metrics/perfmon_agent_in_pipeline", |b| {
            b.iter(tracked)
        });
        drop(pipeline);
    });
    let listening = monitor.subscribe();
    tracing::dispatcher::with_default(&with_layer, || {
        group.bench_function("perfmon_layer+metrics+subscriber/perfmon_agent", |b| {
            b.iter(tracked)
        });
    });
    drop(listening);

    // A layer in the stack that does not know perfmon: what non-agent spans pay.
    tracing::dispatcher::with_default(&with_layer, || {
        group.bench_function("perfmon_layer/unrelated_span", |b| {
            b.iter(|| drop(black_box(tracing::info_span!("unrelated", x = 1).entered())))
        });
    });

    // Peers, on the same workload.
    let timing = tracing_timing::Builder::default()
        .layer(|| tracing_timing::Histogram::new_with_max(1_000_000_000, 2).expect("valid bounds"));
    let with_timing = tracing::Dispatch::new(tracing_subscriber::registry().with(timing));
    tracing::dispatcher::with_default(&with_timing, || {
        group.bench_function("peer/tracing_timing_layer/bare_span", |b| b.iter(bare_span));
    });

    puffin::set_scopes_on(true);
    group.bench_function("peer/puffin_profile_scope", |b| {
        let mut n = 0u32;
        b.iter(|| {
            {
                puffin::profile_scope!("geometry");
            }
            n += 1;
            if n.is_multiple_of(10_000) {
                // Bound puffin's per-frame buffer, as a real frame loop would.
                puffin::GlobalProfiler::lock().new_frame();
            }
        })
    });
    puffin::set_scopes_on(false);
    tracing::dispatcher::with_default(&registry, || {
        group.bench_function("registry_only/bare_span (baseline, again)", |b| {
            b.iter(bare_span)
        });
    });
    group.finish();
}

fn async_agent(c: &mut Criterion) {
    let mut group = c.benchmark_group("async_agent");
    let mut cx = Context::from_waker(Waker::noop());
    let mut poll_once =
        |fut: std::pin::Pin<&mut dyn std::future::Future<Output = u32>>| match fut.poll(&mut cx) {
            Poll::Ready(v) => v,
            Poll::Pending => 0,
        };
    let registry = tracing::Dispatch::new(tracing_subscriber::registry());
    tracing::dispatcher::with_default(&registry, || {
        group.bench_function("registry_only/instrumented_future (baseline)", |b| {
            b.iter(|| {
                use tracing::Instrument;
                let span =
                    tracing::info_span!(target: "perfmon", "agent", perfmon.agent = "retrieval");
                let mut fut = std::pin::pin!(async { black_box(1u32) }.instrument(span));
                black_box(poll_once(fut.as_mut()))
            })
        });
    });
    let monitor = Monitor::new();
    let with_layer = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
    tracing::dispatcher::with_default(&with_layer, || {
        group.bench_function("perfmon_layer+metrics/track_agent", |b| {
            b.iter(|| {
                let mut fut = std::pin::pin!(async { black_box(1u32) }.track_agent("retrieval"));
                black_box(poll_once(fut.as_mut()))
            })
        });
    });
    group.finish();
}

/// Tools against agents, and `output!` / `usage!` against `progress!`.
fn tools(c: &mut Criterion) {
    let mut group = c.benchmark_group("tools");
    group.bench_function("no_subscriber/progress (baseline)", |b| {
        b.iter(|| perfmon::progress!(percent = black_box(40.0), stage = "mesh"))
    });
    group.bench_function("no_subscriber/output", |b| {
        b.iter(|| perfmon::output!(stream = "stdout", "line {}", black_box(7)))
    });
    group.bench_function("no_subscriber/usage", |b| {
        b.iter(|| {
            perfmon::usage!(
                input_tokens = black_box(1200_u64),
                output_tokens = 310_u64,
                cost_usd = 0.0061
            )
        })
    });
    let monitor = Monitor::builder().metrics(false).build();
    let with_layer = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
    tracing::dispatcher::with_default(&with_layer, || {
        let pipeline = monitor.start_pipeline("bench");
        group.bench_function("perfmon_layer/agent_in_pipeline (baseline)", |b| {
            b.iter(|| drop(black_box(perfmon::agent("codegen"))))
        });
        group.bench_function("perfmon_layer/tool_in_pipeline", |b| {
            b.iter(|| drop(black_box(perfmon::tool("compile"))))
        });
        drop(pipeline);
    });
    group.finish();
}

criterion_group!(benches, macro_no_subscriber, sync_agent, async_agent, tools);
criterion_main!(benches);
