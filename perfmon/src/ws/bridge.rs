//! The bridge: an [`Exporter`] that turns the monitor's events into the
//! hub's items, each encoded to JSON once, and mirrors the sidecar's
//! counters into the `metrics` facade.

use std::sync::Arc;
use std::time::{Duration, Instant};

use perfmon_ws::{Hub, Priority, StatsSnapshot};

use super::SidecarError;
use super::exposition::sidecar_series;
use crate::events::{Event, EventKind};
use crate::exporter::Exporter;
use crate::metrics;
use crate::monitor::Monitor;

/// How often the sidecar's counters are mirrored into the facade.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The monitor's hub: created with its bridge exporter on first use, then
/// kept for the monitor's lifetime, so that a restarted sidecar serves the
/// same replay ring and nothing published while it was down is lost.
pub(super) fn hub_of(monitor: &Monitor, ring_capacity: usize) -> Result<Arc<Hub>, SidecarError> {
    let slot = monitor.ws_hub();
    if let Some(hub) = slot.get() {
        return Ok(Arc::clone(hub));
    }
    let hub = Arc::new(Hub::new(ring_capacity));
    if slot.set(Arc::clone(&hub)).is_err() {
        // Another sidecar won the race: use its hub.
        return slot.get().cloned().ok_or_else(|| {
            SidecarError::Thread(std::io::Error::other(
                "the sidecar hub vanished while starting",
            ))
        });
    }
    let bridge = Bridge {
        hub: Arc::clone(&hub),
        export_metrics: monitor.metrics_enabled(),
        exported: Instant::now(),
    };
    let handle = monitor.add_exporter(bridge).map_err(|err| match err {
        crate::Error::Thread(source) => SidecarError::Thread(source),
        other => SidecarError::Thread(std::io::Error::other(other.to_string())),
    })?;
    // The monitor keeps the bridge running (and joins it when dropped).
    drop(handle);
    Ok(hub)
}

/// Monitor events → hub items.
struct Bridge {
    hub: Arc<Hub>,
    export_metrics: bool,
    exported: Instant,
}

impl Exporter for Bridge {
    fn export(&mut self, events: &[Event]) {
        for event in events {
            let Ok(json) = serde_json::to_string(event) else {
                continue;
            };
            self.hub.publish(perfmon_ws::item(
                event.seq,
                event.pipeline.clone(),
                Arc::from(event.type_name()),
                event.agent().map(Arc::from),
                priority(event),
                json,
            ));
        }
        if self.export_metrics && self.exported.elapsed() >= STATS_INTERVAL {
            export_stats(&self.hub.stats_snapshot());
            self.exported = Instant::now();
        }
    }
}

/// What to shed first for slow clients: chatter before outcomes.
fn priority(event: &Event) -> Priority {
    match event.kind {
        EventKind::AgentProgress { .. }
        | EventKind::Thought { .. }
        | EventKind::ToolOutput { .. }
        | EventKind::StateUpdate { .. } => Priority::Low,
        _ => Priority::High,
    }
}

fn export_stats(s: &StatsSnapshot) {
    for (name, value) in sidecar_series(s) {
        match metrics::family_of(name).map(|f| f.kind) {
            Some(metrics::Kind::Gauge) => ::metrics::gauge!(name).set(value as f64),
            _ => metrics::set_total(name, value),
        }
    }
}
