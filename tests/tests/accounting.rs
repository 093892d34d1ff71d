//! Exact timings, statistics, bottlenecks and critical paths, on a mock clock.

mod common;

use common::{assert_close, mocked, ms};
use perfmon::{Monitor, Outcome};

#[test]
fn durations_offsets_and_outcomes_are_exact() {
    let (monitor, clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("proj_1");
    clock.advance(ms(5));
    {
        let _a = perfmon::agent("geometry");
        clock.advance(ms(10));
    }
    let physics = perfmon::agent("physics");
    clock.advance(ms(30));
    physics.fail("mesh did not converge");
    clock.advance(ms(5));
    let report = pipeline.finish();

    assert_eq!(report.id, "proj_1");
    assert!(report.finished);
    assert_eq!(report.outcome, Outcome::Succeeded);
    assert_eq!(report.duration, ms(50));
    assert_eq!(report.agents.len(), 2);
    let (geo, phy) = (&report.agents[0], &report.agents[1]);
    assert_eq!(
        (geo.agent.as_str(), geo.duration, geo.offset),
        ("geometry", ms(10), ms(5))
    );
    assert_eq!(geo.outcome, Outcome::Succeeded);
    assert_eq!(geo.busy, None, "sync guards report no busy time");
    assert_eq!(
        (phy.agent.as_str(), phy.duration, phy.offset),
        ("physics", ms(30), ms(15))
    );
    assert_eq!(
        phy.outcome,
        Outcome::Failed {
            error: "mesh did not converge".into()
        }
    );
    assert_eq!(phy.pipeline, "proj_1");

    let stats = monitor.agent_stats("physics").expect("physics ran");
    assert_eq!((stats.runs, stats.failures), (1, 1));
    assert_eq!(stats.failure_rate, 1.0);
    assert_eq!(
        (stats.min, stats.max, stats.mean, stats.total),
        (ms(30), ms(30), ms(30), ms(30))
    );

    let overview = monitor.overview();
    assert_eq!(overview.pipelines_total, 1);
    assert_eq!(overview.pipelines_active, 0);
    assert_eq!(overview.pipelines_failed, 0);
    assert_eq!(overview.agent_runs_total, 2);
    assert_eq!(overview.agent_failures_total, 1);
    assert_eq!(overview.avg_pipeline_duration, ms(50));
}

#[test]
fn statistics_and_percentiles() {
    let (monitor, clock, _g) = mocked();
    // 1 ms, 2 ms, ..., 100 ms; every 10th fails.
    for i in 1..=100u64 {
        let agent = perfmon::agent("solver");
        clock.advance(ms(i));
        if i % 10 == 0 {
            agent.fail("diverged");
        }
    }
    let s = monitor.agent_stats("solver").expect("solver ran");
    assert_eq!(s.runs, 100);
    assert_eq!(s.failures, 10);
    assert!((s.failure_rate - 0.10).abs() < 1e-12);
    assert_eq!(s.min, ms(1));
    assert_eq!(s.max, ms(100));
    assert_eq!(s.total, ms(5050));
    assert_eq!(s.mean, std::time::Duration::from_micros(50_500));
    // The histogram keeps two significant digits: within 1%.
    assert_close(s.p50, ms(50), 1.0);
    assert_close(s.p90, ms(90), 1.0);
    assert_close(s.p99, ms(99), 1.0);
    assert!(s.p99 <= s.max);
}

#[test]
fn an_agent_at_half_the_pipeline_is_the_one_bottleneck() {
    let (monitor, clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("p");
    {
        let _a = perfmon::agent("big");
        clock.advance(ms(50));
    }
    {
        let _a = perfmon::agent("small");
        clock.advance(ms(29));
    }
    clock.advance(ms(21)); // time in no agent
    let report = pipeline.finish();
    assert_eq!(report.duration, ms(100));
    assert_eq!(report.bottlenecks.len(), 1, "{:?}", report.bottlenecks);
    let b = &report.bottlenecks[0];
    assert_eq!(b.agent, "big");
    assert_eq!(b.duration, ms(50));
    assert!((b.share - 0.5).abs() < 1e-9);
    assert!(
        report.bottleneck("small").is_none(),
        "29% is under the 30% threshold"
    );
}

#[test]
fn the_threshold_is_configurable() {
    let clock = perfmon::MockClock::new();
    let (monitor, _g) = common::install(
        Monitor::builder()
            .mock_clock(&clock)
            .bottleneck_threshold(0.25),
    );
    let pipeline = monitor.start_pipeline("p");
    for (name, t) in [("a", 50), ("b", 29), ("c", 21)] {
        let _a = perfmon::agent(name);
        clock.advance(ms(t));
    }
    let report = pipeline.finish();
    let flagged: Vec<_> = report
        .bottlenecks
        .iter()
        .map(|b| b.agent.as_str())
        .collect();
    assert_eq!(flagged, ["a", "b"], "largest share first");
    assert_eq!(monitor.bottleneck_threshold(), 0.25);
}

#[test]
fn repeated_runs_of_one_agent_are_summed() {
    let (monitor, clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("p");
    for _ in 0..4 {
        let _a = perfmon::agent("retry");
        clock.advance(ms(10));
    }
    clock.advance(ms(60));
    let report = pipeline.finish();
    let b = report
        .bottleneck("retry")
        .expect("4 x 10 ms of 100 ms is 40%");
    assert_eq!(b.duration, ms(40));
}

#[test]
fn critical_path_through_parallel_agents() {
    let (monitor, clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("fan");
    let parent = pipeline.span().clone();
    let open = |name: &str| tracing::info_span!(parent: &parent, "agent", perfmon.agent = name);

    let plan = open("plan");
    clock.advance(ms(10));
    drop(plan);
    let (fast, slow) = (open("fast"), open("slow"));
    clock.advance(ms(5));
    drop(fast);
    clock.advance(ms(45));
    drop(slow);
    let merge = open("merge");
    clock.advance(ms(10));
    drop(merge);
    let report = pipeline.finish();

    assert_eq!(report.critical_path, ["plan", "slow", "merge"]);
    assert_eq!(report.critical_runs.len(), 3);
    assert_eq!(report.duration, ms(70));
    let slow = report.bottleneck("slow").expect("50 of 70 ms");
    assert!((slow.share - 50.0 / 70.0).abs() < 1e-9);
    assert!(report.bottleneck("fast").is_none());
}

#[test]
fn nested_agents_keep_their_parent_and_expand_the_critical_path() {
    let (monitor, clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("nested");
    {
        let _orchestrator = perfmon::agent("orchestrator");
        {
            let _g = perfmon::agent("geometry");
            clock.advance(ms(20));
        }
        {
            let _p = perfmon::agent("physics");
            clock.advance(ms(60));
        }
    }
    let report = pipeline.finish();
    let names: Vec<_> = report.agents.iter().map(|r| r.agent.as_str()).collect();
    assert_eq!(
        names,
        ["orchestrator", "geometry", "physics"],
        "start order"
    );
    assert_eq!(report.agents[0].parent, None);
    assert_eq!(report.agents[1].parent, Some(0));
    assert_eq!(report.agents[2].parent, Some(0));
    assert_eq!(
        report.critical_path,
        ["orchestrator", "geometry", "physics"]
    );
    assert_eq!(report.agents[0].duration, ms(80));
}

#[test]
fn fleet_views_rank_agents() {
    let (monitor, clock, _g) = mocked();
    for _ in 0..3 {
        let p = monitor.start_pipeline("p");
        for (name, t) in [("slow", 80), ("fast", 10), ("mid", 10)] {
            let _a = perfmon::agent(name);
            clock.advance(ms(t));
        }
        drop(p);
    }
    let slowest: Vec<_> = monitor
        .slowest_agents(2)
        .into_iter()
        .map(|s| s.agent)
        .collect();
    assert_eq!(slowest, ["slow", "fast"], "ties broken by name");
    let fleet = monitor.fleet_bottlenecks();
    assert_eq!(fleet.len(), 1);
    assert_eq!(fleet[0].agent, "slow");
    assert!((fleet[0].share - 0.8).abs() < 1e-9);
    assert_eq!(monitor.recent_pipelines(10).len(), 3);
}

#[test]
fn reports_are_kept_in_a_bounded_ring_newest_first() {
    let clock = perfmon::MockClock::new();
    let (monitor, _g) = common::install(Monitor::builder().mock_clock(&clock).recent_capacity(3));
    for i in 0..5 {
        drop(monitor.start_pipeline(format!("p{i}")));
    }
    let ids: Vec<_> = monitor
        .recent_pipelines(10)
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["p4", "p3", "p2"]);
    assert!(monitor.pipeline("p0").is_none(), "fell out of the ring");
    assert_eq!(monitor.pipeline("p3").map(|r| r.id).as_deref(), Some("p3"));
}

#[test]
fn active_pipelines_show_running_agents_and_progress() {
    let (monitor, clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("live");
    let _agent = perfmon::agent("mesher");
    perfmon::progress!(percent = 40.0, stage = "meshing", "cells {}", 1200);
    clock.advance(ms(7));
    let active = monitor.active_pipelines();
    assert_eq!(active.len(), 1);
    let snap = &active[0];
    assert_eq!(snap.id, "live");
    assert_eq!(snap.elapsed, ms(7));
    assert_eq!(snap.running_agents, ["mesher"]);
    let progress = snap.last_progress.as_ref().expect("progress was reported");
    assert_eq!(progress.percent, Some(40.0));
    assert_eq!(progress.stage.as_deref(), Some("meshing"));
    assert_eq!(progress.message.as_deref(), Some("cells 1200"));
    let so_far = monitor
        .pipeline("live")
        .expect("active pipelines are found by id");
    assert!(!so_far.finished);
    assert_eq!(so_far.unfinished, ["mesher"]);
    assert_eq!(pipeline.run(), Some(so_far.run));
    drop(_agent);
    drop(pipeline);
    assert!(monitor.active_pipelines().is_empty());
}

#[test]
fn a_failed_pipeline_counts_as_failed() {
    let (monitor, _clock, _g) = mocked();
    let report = monitor.start_pipeline("bad").fail("quota exceeded");
    assert_eq!(
        report.outcome,
        Outcome::Failed {
            error: "quota exceeded".into()
        }
    );
    assert_eq!(monitor.overview().pipelines_failed, 1);
    assert_eq!(
        monitor.pipeline("bad").map(|r| r.outcome),
        Some(Outcome::Failed {
            error: "quota exceeded".into()
        })
    );
}

#[test]
fn report_renders_readably() {
    let (monitor, clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("shown");
    {
        let _a = perfmon::agent("geometry");
        clock.advance(ms(40));
    }
    clock.advance(ms(10));
    let text = pipeline.finish().to_string();
    assert!(text.contains("pipeline shown"), "{text}");
    assert!(text.contains("BOTTLENECK geometry"), "{text}");
    assert!(text.contains("80%"), "{text}");
    assert!(text.contains("critical path: geometry"), "{text}");
}
