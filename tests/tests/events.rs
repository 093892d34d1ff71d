//! The live event stream: order, gap-free seq, JSON shape, lagging subscribers, exporters.
#![allow(clippy::expect_used)] // test helpers: a panic is the failure report

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{install, mocked, ms};
use perfmon::{Event, EventKind, Exporter, Monitor};

fn drain(sub: &mut perfmon::Subscription, until: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut got = Vec::new();
    while let Some(event) = sub.recv_blocking_timeout(Duration::from_secs(5)) {
        let stop = until(&event);
        got.push(event);
        if stop {
            return got;
        }
    }
    panic!(
        "timed out; got {:?}",
        got.iter().map(Event::type_name).collect::<Vec<_>>()
    );
}

#[test]
fn events_arrive_in_order_with_gap_free_seq() {
    let (monitor, clock, _g) = mocked();
    let mut sub = monitor.subscribe();
    let pipeline = monitor.start_pipeline("proj_9");
    {
        let _a = perfmon::agent("geometry");
        perfmon::progress!(percent = 50.0, stage = "meshing");
        perfmon::thought!("trying a coarser mesh");
        clock.advance(ms(40));
    }
    perfmon::agent("physics").fail("diverged");
    clock.advance(ms(10));
    drop(pipeline);

    let events = drain(&mut sub, |e| e.type_name() == "pipeline_completed");
    let types: Vec<_> = events.iter().map(Event::type_name).collect();
    assert_eq!(
        types,
        [
            "pipeline_started",
            "agent_started",
            "agent_progress",
            "thought",
            "agent_completed",
            "agent_started",
            "agent_completed",
            "pipeline_completed"
        ]
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    assert!(
        events
            .iter()
            .all(|e| e.pipeline.as_deref() == Some("proj_9"))
    );
    match &events[4].kind {
        EventKind::AgentCompleted {
            agent, duration, ..
        } => {
            assert_eq!(&**agent, "geometry");
            assert_eq!(*duration, ms(40));
        }
        other => panic!("unexpected {other:?}"),
    }
    match &events[7].kind {
        EventKind::PipelineCompleted(report) => assert_eq!(report.bottlenecks[0].agent, "geometry"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(sub.missed(), 0);
    assert_eq!(monitor.overview().events_published, 8);
}

#[test]
fn events_serialize_to_the_wire_shape() {
    let (monitor, clock, _g) = mocked();
    let mut sub = monitor.subscribe();
    let pipeline = monitor.start_pipeline("wire");
    let agent = perfmon::agent("physics");
    clock.advance(ms(12));
    agent.fail("diverged");
    drop(pipeline);
    let events = drain(&mut sub, |e| e.type_name() == "pipeline_completed");

    let completed = serde_json::to_value(&events[2]).expect("serializable");
    assert_eq!(completed["type"], "agent_completed");
    assert_eq!(completed["seq"], 3);
    assert!(completed["ts"].as_f64().expect("ts is unix ms") > 1.6e12);
    assert_eq!(completed["pipeline"], "wire");
    let data = &completed["data"];
    assert_eq!(data["agent"], "physics");
    assert_eq!(data["duration_ms"], 12.0);
    assert_eq!(data["outcome"], "failed");
    assert_eq!(data["error"], "diverged");

    let report = serde_json::to_value(&events[3]).expect("serializable");
    assert_eq!(report["type"], "pipeline_completed");
    assert_eq!(report["data"]["id"], "wire");
    assert_eq!(report["data"]["duration_ms"], 12.0);
    assert_eq!(report["data"]["bottlenecks"][0]["agent"], "physics");
    assert_eq!(report["data"]["bottlenecks"][0]["share"], 1.0);
    assert_eq!(report["data"]["agents"][0]["outcome"], "failed");
    assert_eq!(report["data"]["critical_path"][0], "physics");

    let started = serde_json::to_value(&events[0]).expect("serializable");
    assert_eq!(started["type"], "pipeline_started");
    let stats = serde_json::to_value(monitor.agents()).expect("serializable");
    assert_eq!(stats[0]["p50_ms"], 12.0);
    assert_eq!(stats[0]["failure_rate"], 1.0);
    let overview = serde_json::to_value(monitor.overview()).expect("serializable");
    assert_eq!(overview["pipelines_total"], 1);
    assert!(
        overview["spans_filtered"].is_u64(),
        "process-wide, so only its presence"
    );
    assert_eq!(overview["runs_outside_pipeline"], 0);
}

#[test]
fn nested_runs_name_their_parent_live_and_carry_self_time() {
    let (monitor, clock, _g) = mocked();
    let mut sub = monitor.subscribe();
    let pipeline = monitor.start_pipeline("nest");
    {
        let _outer = perfmon::agent("physics");
        clock.advance(ms(5));
        let _inner = perfmon::agent("solver");
        clock.advance(ms(20));
    }
    drop(pipeline);
    let events = drain(&mut sub, |e| e.type_name() == "pipeline_completed");
    let json: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).expect("serializable"))
        .collect();
    let started: Vec<_> = json
        .iter()
        .filter(|e| e["type"] == "agent_started")
        .map(|e| (e["data"]["agent"].clone(), e["data"]["parent"].clone()))
        .collect();
    assert_eq!(
        started,
        [
            (serde_json::json!("physics"), serde_json::Value::Null),
            (serde_json::json!("solver"), serde_json::json!("physics"))
        ]
    );
    let completed: Vec<_> = json
        .iter()
        .filter(|e| e["type"] == "agent_completed")
        .map(|e| {
            (
                e["data"]["agent"].clone(),
                e["data"]["self_time_ms"].clone(),
            )
        })
        .collect();
    assert_eq!(
        completed,
        [
            (serde_json::json!("solver"), serde_json::json!(20.0)),
            (serde_json::json!("physics"), serde_json::json!(5.0))
        ]
    );
}

#[test]
fn a_stalled_subscriber_is_told_what_it_missed_and_others_are_unaffected() {
    let clock = perfmon::MockClock::new();
    let (monitor, _g) = install(
        Monitor::builder()
            .mock_clock(&clock)
            .subscriber_capacity(64),
    );
    let mut stalled = monitor.subscribe();
    let mut reader = monitor.subscribe();
    let total = 2_000u64;
    let mut read = 0u64;
    for chunk in 0..(total / 20) {
        for _ in 0..10 {
            drop(perfmon::agent("tick")); // 2 events each
        }
        // Keep the reader up to date; the stalled one never reads.
        while read < (chunk + 1) * 20 {
            if reader
                .recv_blocking_timeout(Duration::from_secs(5))
                .is_none()
            {
                panic!("reader starved at {read}");
            }
            read += 1;
        }
    }
    assert_eq!(reader.missed(), 0, "a reader that keeps up loses nothing");
    let mut got = 0;
    while stalled.try_recv().is_some() {
        got += 1;
    }
    assert!(
        stalled.missed() > 0,
        "the stalled subscriber is told it lagged"
    );
    assert_eq!(
        got + stalled.missed(),
        total,
        "what it got plus what it missed is everything"
    );
    assert!(got <= 64, "it kept only its window");
    assert_eq!(
        monitor.agent_stats("tick").map(|s| s.runs),
        Some(1_000),
        "recording was complete"
    );
}

#[test]
fn a_full_event_queue_drops_and_counts_instead_of_blocking() {
    let clock = perfmon::MockClock::new();
    let (monitor, _g) = install(
        Monitor::builder()
            .mock_clock(&clock)
            .event_queue_capacity(4),
    );
    let _sub = monitor.subscribe();
    for _ in 0..50_000 {
        drop(perfmon::agent("burst"));
    }
    let overview = monitor.overview();
    assert_eq!(overview.agent_runs_total, 50_000, "every run is recorded");
    assert!(
        overview.events_dropped > 0,
        "a 4-slot queue cannot take a 100,000-event burst"
    );
}

#[test]
fn no_events_are_built_when_nobody_listens() {
    let (monitor, _clock, _g) = mocked();
    drop(perfmon::agent("quiet"));
    let overview = monitor.overview();
    assert_eq!((overview.events_published, overview.events_dropped), (0, 0));
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Event>>>);

impl Exporter for Collect {
    fn export(&mut self, events: &[Event]) {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(events);
    }
}

#[test]
fn exporters_receive_every_event_on_their_own_thread() {
    let (monitor, _clock, _g) = mocked();
    let sink = Collect::default();
    let _exporter = monitor
        .add_exporter(sink.clone())
        .expect("exporter thread spawned");
    drop(monitor.start_pipeline("exported"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sink.0.lock().expect("not poisoned").len() < 2 {
        assert!(std::time::Instant::now() < deadline, "exporter got nothing");
        std::thread::sleep(Duration::from_millis(5));
    }
    let types: Vec<_> = sink
        .0
        .lock()
        .expect("not poisoned")
        .iter()
        .map(Event::type_name)
        .collect();
    assert_eq!(types, ["pipeline_started", "pipeline_completed"]);
}

#[tokio::test]
async fn recv_ends_when_the_monitor_is_gone() {
    let mut sub = {
        let (monitor, _clock, _g) = mocked();
        let sub = monitor.subscribe();
        drop(perfmon::agent("last"));
        sub
    };
    let mut types = Vec::new();
    let result = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = sub.recv().await {
            types.push(event.type_name());
        }
    })
    .await;
    assert!(result.is_ok(), "recv returned None instead of hanging");
    assert!(types.len() <= 2, "{types:?}");
}

#[test]
fn error_events_inside_agents_are_streamed() {
    let (monitor, _clock, _g) = mocked();
    let mut sub = monitor.subscribe();
    let pipeline = monitor.start_pipeline("errs");
    {
        let _a = perfmon::agent("codegen");
        tracing::error!(file = "main.rs", "compilation failed");
    }
    drop(pipeline);
    let events = drain(&mut sub, |e| e.type_name() == "pipeline_completed");
    let error = events
        .iter()
        .find(|e| e.type_name() == "error")
        .expect("an error event");
    assert_eq!(error.agent(), Some("codegen"));
    let json = serde_json::to_value(error).expect("serializable");
    assert_eq!(json["data"]["message"], "compilation failed file=main.rs");
}

#[test]
fn the_process_sampler_streams_state_updates() {
    let (monitor, _g) = install(Monitor::builder().process_sampler(Duration::from_millis(100)));
    let mut sub = monitor.subscribe();
    let _pipeline = monitor.start_pipeline("sampled");
    let events = drain(&mut sub, |e| e.type_name() == "state_update");
    let Some(EventKind::StateUpdate {
        rss_bytes,
        threads,
        pipelines_active,
        cpu_percent,
    }) = events.last().map(|e| &e.kind)
    else {
        panic!("no state_update")
    };
    assert!(
        *rss_bytes > 1024 * 1024,
        "a test process uses more than 1 MiB: {rss_bytes}"
    );
    assert!(
        *threads >= 2,
        "the test thread and the sampler at least: {threads}"
    );
    assert_eq!(*pipelines_active, 1);
    assert!(cpu_percent.is_finite() && *cpu_percent >= 0.0);
}

/// Counts the batches it exported and the flushes asked of it.
#[derive(Clone, Default)]
struct Flushing {
    events: Arc<Mutex<Vec<Event>>>,
    flushes: Arc<Mutex<u32>>,
}

impl Exporter for Flushing {
    fn export(&mut self, events: &[Event]) {
        self.events
            .lock()
            .expect("not poisoned")
            .extend_from_slice(events);
    }

    fn flush(&mut self) {
        *self.flushes.lock().expect("not poisoned") += 1;
    }
}

#[test]
fn an_exporter_can_be_flushed_and_removed() {
    let (monitor, _clock, _g) = mocked();
    let sink = Flushing::default();
    let exporter = monitor
        .add_exporter(sink.clone())
        .expect("exporter thread spawned");
    drop(monitor.start_pipeline("before"));
    // flush() returns only once everything published before it was exported.
    exporter
        .flush(Duration::from_secs(5))
        .expect("flushed in time");
    let seen = sink.events.lock().expect("not poisoned").len();
    assert_eq!(seen, 2, "pipeline_started and pipeline_completed");
    assert_eq!(*sink.flushes.lock().expect("not poisoned"), 1);

    assert!(exporter.is_running());
    exporter.remove(Duration::from_secs(5));
    assert_eq!(
        *sink.flushes.lock().expect("not poisoned"),
        2,
        "a last flush before stopping"
    );
    drop(monitor.start_pipeline("after"));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        sink.events.lock().expect("not poisoned").len(),
        2,
        "a removed exporter gets nothing more"
    );
}

#[test]
fn dropping_the_last_monitor_flushes_its_exporters() {
    let sink = Flushing::default();
    {
        let (monitor, _clock, _g) = mocked();
        let _exporter = monitor
            .add_exporter(sink.clone())
            .expect("exporter thread spawned");
        let clone = monitor.clone();
        drop(monitor.start_pipeline("last"));
        drop(monitor);
        assert_eq!(
            *sink.flushes.lock().expect("not poisoned"),
            0,
            "a clone still lives"
        );
        drop(clone);
    }
    // The drop joined the exporter after it read everything and flushed.
    assert_eq!(*sink.flushes.lock().expect("not poisoned"), 1);
    assert_eq!(sink.events.lock().expect("not poisoned").len(), 2);
}

struct Panicking;

impl Exporter for Panicking {
    fn export(&mut self, _: &[Event]) {
        panic!("exporter bug");
    }
}

#[test]
fn a_panicking_exporter_is_counted_and_says_it_stopped() {
    let (monitor, _clock, _g) = mocked();
    let exporter = monitor
        .add_exporter(Panicking)
        .expect("exporter thread spawned");
    drop(monitor.start_pipeline("boom"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while exporter.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the exporter did not stop"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(monitor.overview().thread_failures, 1);
    assert_eq!(
        exporter.flush(Duration::from_secs(1)),
        Err(perfmon::ExporterError::Stopped)
    );
    // The recorder and other subscribers go on.
    let mut sub = monitor.subscribe();
    drop(monitor.start_pipeline("after"));
    assert!(sub.recv_blocking_timeout(Duration::from_secs(5)).is_some());
}
