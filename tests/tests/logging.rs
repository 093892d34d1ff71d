//! perfmon beside an application's log: the README's per-layer filter keeps
//! `progress!` and `thought!` out of the `fmt` output while perfmon records them.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use perfmon::Monitor;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;

/// A `fmt` writer into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_per_layer_filter_keeps_progress_and_thoughts_out_of_the_log_only() {
    let monitor = Monitor::builder().metrics(false).build();
    let log = Buffer::default();
    let writer = log.clone();
    // As in the README.
    let log_filter = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("perfmon::progress", LevelFilter::OFF)
        .with_target("perfmon::thought", LevelFilter::OFF);
    let subscriber = tracing_subscriber::registry().with(monitor.layer()).with(
        tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_filter(log_filter),
    );
    let mut events = monitor.subscribe();
    tracing::subscriber::with_default(subscriber, || {
        let pipeline = monitor.start_pipeline("quiet");
        {
            let _agent = perfmon::agent("mesher");
            perfmon::progress!(percent = 40.0, stage = "meshing", "cells {}", 1200);
            perfmon::thought!("trying a coarser mesh");
            tracing::info!("an application log line");
        }
        pipeline.finish();
    });

    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("an application log line"), "{log}");
    assert!(
        !log.contains("cells 1200"),
        "progress kept out of the log: {log}"
    );
    assert!(
        !log.contains("coarser mesh"),
        "thought kept out of the log: {log}"
    );

    let mut seen = Vec::new();
    while let Some(event) = events.recv_blocking_timeout(Duration::from_secs(5)) {
        seen.push(event.type_name());
        if event.type_name() == "pipeline_completed" {
            break;
        }
    }
    assert!(
        seen.contains(&"agent_progress"),
        "perfmon recorded the progress: {seen:?}"
    );
    assert!(
        seen.contains(&"thought"),
        "perfmon recorded the thought: {seen:?}"
    );
}
