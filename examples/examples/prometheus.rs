//! perfmon's metrics through `metrics-exporter-prometheus`.
//!
//! ```text
//! cargo run --example prometheus
//! ```
//!
//! Installs the Prometheus recorder first (per-agent handles are registered
//! when an agent is first seen), with perfmon's duration buckets so that
//! durations render as histograms, runs two small pipelines and prints the
//! Prometheus text exposition of the `perfmon_*` metrics. In a service you
//! would serve `handle.render()` on `/metrics`. The `ws` sidecar's own
//! `/metrics` needs no recorder: it renders the same families, label sets
//! and buckets from the monitor's numbers.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use perfmon::Monitor;
use tracing_subscriber::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&perfmon::metrics::DURATION_BUCKETS)?
        .install_recorder()?;
    let monitor = Monitor::new();
    tracing_subscriber::registry()
        .with(monitor.layer())
        .try_init()?;

    for id in ["proj_a", "proj_b"] {
        let pipeline = monitor.start_pipeline(id);
        for (agent, ms) in [("geometry", 20), ("physics", 60)] {
            let _agent = perfmon::agent(agent);
            std::thread::sleep(Duration::from_millis(ms));
        }
        perfmon::agent("codegen").fail("did not compile");
        pipeline.finish();
    }

    for line in handle.render().lines().filter(|l| l.contains("perfmon_")) {
        println!("{line}");
    }
    Ok(())
}
