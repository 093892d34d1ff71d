//! Dropping the last `Monitor` stops and joins every thread it started.
//! Its own test binary: it counts the process's threads by name.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use perfmon::{Event, Exporter, Monitor};

struct Nothing;

impl Exporter for Nothing {
    fn export(&mut self, _: &[Event]) {}
}

/// The process's threads whose name starts with `perfmon-` (Linux).
fn perfmon_threads() -> Option<Vec<String>> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut names: Vec<String> = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| n.starts_with("perfmon-"))
        .collect();
    names.sort();
    Some(names)
}

#[test]
fn dropping_the_last_monitor_joins_every_thread_it_started() {
    let Some(before) = perfmon_threads() else {
        eprintln!("skipped: no /proc/self/task on this system");
        return;
    };
    assert!(before.is_empty(), "{before:?}");
    let monitor = Monitor::builder()
        .metrics(false)
        .process_sampler(Duration::from_millis(100))
        .build();
    let sub = monitor.subscribe();
    let _exporter = monitor.add_exporter(Nothing).expect("spawned");
    let sidecar = perfmon::ws::Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&monitor)
        .expect("sidecar");
    // Linux keeps the first 15 bytes of a thread's name. A new thread names
    // itself once it first runs, so on a busy machine `spawn` can return
    // before its name shows: wait for every name, up to a deadline.
    let expected = [
        "perfmon-events",
        "perfmon-exporter",
        "perfmon-runs",
        "perfmon-sampler",
        "perfmon-sidecar",
    ]
    .map(|name| &name[..name.len().min(15)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut running = perfmon_threads().unwrap();
    while !expected.iter().all(|e| running.iter().any(|n| n == e))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
        running = perfmon_threads().unwrap();
    }
    for shown in expected {
        assert!(running.iter().any(|n| n == shown), "{shown} in {running:?}");
    }
    sidecar.shutdown();
    drop(sub);
    drop(monitor);
    // `join` returns when a thread has exited, which the kernel signals
    // before it removes the thread from /proc/self/task: give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut left = perfmon_threads().unwrap();
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        left = perfmon_threads().unwrap();
    }
    assert_eq!(left, Vec::<String>::new());
}
