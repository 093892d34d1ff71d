//! One frame of `perfmon top` (ratatui `TestBackend`, 200×50) with 1,000
//! agents, 100 active pipelines and 200 recent ones; and applying 10,000
//! events (what a second brings at 10,000 events/s). See BENCHMARKS.md.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use perfmon::cli::{Model, Theme, render};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::json;

fn report(i: usize) -> serde_json::Value {
    json!({
        "id": format!("proj_{i}"), "run": i, "started_at_ms": 1.7e12, "duration_ms": 1800.0,
        "outcome": "succeeded", "finished": true, "self_time_ms": 1800.0,
        "agents": [
            {"agent": "planner", "kind": "agent", "pipeline": format!("proj_{i}"), "started_at_ms": 1.7e12,
             "duration_ms": 200.0, "self_time_ms": 200.0, "busy_ms": null, "outcome": "succeeded",
             "offset_ms": 0.0, "parent": null, "usage": {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0},
             "model": null, "output": [], "output_dropped": 0},
            {"agent": "physics", "kind": "agent", "pipeline": format!("proj_{i}"), "started_at_ms": 1.7e12,
             "duration_ms": 1300.0, "self_time_ms": 1300.0, "busy_ms": null, "outcome": "succeeded",
             "offset_ms": 200.0, "parent": null, "usage": {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0},
             "model": null, "output": [], "output_dropped": 0}
        ],
        "bottlenecks": [{"agent": "physics", "duration_ms": 1300.0, "share": 0.72, "self_time_ms": 1300.0, "self_share": 0.72, "basis": "self_time"}],
        "critical_path": ["planner", "physics"], "critical_runs": [0, 1], "aggregated": [], "unfinished": [],
        "usage": {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}, "output": [], "output_dropped": 0
    })
}

fn model() -> Model {
    let mut m = Model::new("http://127.0.0.1:9464");
    let agents: Vec<_> = (0..1_000)
        .map(|i| json!({"agent": format!("agent_{i:04}"), "runs": i, "failures": i % 7, "failure_rate": (i % 7) as f64 / 100.0,
            "p50_ms": i as f64, "p90_ms": i as f64 * 1.5, "p99_ms": i as f64 * 2.0, "max_ms": i as f64 * 3.0,
            "usage": {"input_tokens": i, "output_tokens": i, "cost_usd": 0.001}}))
        .collect();
    m.set_stats(
        json!({"pipelines_total": 300, "pipelines_active": 100, "pipelines_failed": 3}),
        json!(agents),
    );
    let recent: Vec<_> = (0..200).map(report).collect();
    let active: Vec<_> = (0..100)
        .map(|i| json!({"id": format!("live_{i}"), "run": i, "started_at_ms": 1.7e12, "elapsed_ms": 10.0,
            "running_agents": ["physics", "geometry"], "finished_runs": 1,
            "last_progress": {"agent": "physics", "percent": 40.0, "stage": "meshing", "message": null}}))
        .collect();
    m.set_pipelines(&json!(active), &json!(recent));
    m
}

fn bench(c: &mut Criterion) {
    let m = model();
    let mut terminal = Terminal::new(TestBackend::new(200, 50)).unwrap();
    c.bench_function("top/frame_200x50_1000_agents", |b| {
        b.iter(|| {
            terminal.draw(|f| render(f, &m, Theme::new(true))).unwrap();
        });
    });
    // As the server sends them: text, decoded by the view itself.
    let events: Vec<String> = (0..10_000u64)
        .map(|i| json!({"type": "agent_completed", "seq": i, "ts": 1.7e12, "pipeline": format!("live_{}", i % 100),
            "data": {"agent": "physics", "duration_ms": 12.0, "outcome": "succeeded"}}).to_string())
        .collect();
    c.bench_function("top/apply_10000_events", |b| {
        b.iter_batched(
            model,
            |mut m| {
                for e in &events {
                    m.apply_json(e);
                }
                m
            },
            criterion::BatchSize::LargeInput,
        );
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
