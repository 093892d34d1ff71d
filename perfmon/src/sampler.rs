//! The opt-in process sampler (feature `process`): CPU, memory and threads of
//! this process, every interval, as `state_update` events and gauges.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::events::EventKind;
use crate::metrics;
use crate::monitor::{Inner, Monitor};

/// One reading of the process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    pub(crate) cpu_percent: f64,
    pub(crate) rss_bytes: u64,
    pub(crate) threads: u64,
}

pub(crate) fn spawn(monitor: &Monitor, interval: Duration) {
    let weak: Weak<Inner> = Arc::downgrade(&monitor.inner);
    let spawned = std::thread::Builder::new()
        .name("perfmon-sampler".into())
        .spawn(move || {
            let Ok(pid) = sysinfo::get_current_pid() else {
                return;
            };
            let mut system = System::new();
            loop {
                std::thread::sleep(interval);
                let Some(inner) = weak.upgrade() else { return };
                let Some(sample) = read(&mut system, pid) else {
                    return;
                };
                if inner.config.metrics {
                    ::metrics::gauge!(metrics::PROCESS_CPU).set(sample.cpu_percent);
                    ::metrics::gauge!(metrics::PROCESS_RSS).set(sample.rss_bytes as f64);
                    ::metrics::gauge!(metrics::PROCESS_THREADS).set(sample.threads as f64);
                }
                let active = inner.active_pipelines().len() as u64;
                inner.publish(None, inner.now(), || EventKind::StateUpdate {
                    cpu_percent: sample.cpu_percent,
                    rss_bytes: sample.rss_bytes,
                    threads: sample.threads,
                    pipelines_active: active,
                });
            }
        });
    if let Err(err) = spawned {
        eprintln!("perfmon: could not start the process sampler thread: {err}");
    }
}

fn read(system: &mut System, pid: Pid) -> Option<Sample> {
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing()
            .with_cpu()
            .with_memory()
            .with_tasks(),
    );
    let process = system.process(pid)?;
    Some(Sample {
        cpu_percent: f64::from(process.cpu_usage()),
        rss_bytes: process.memory(),
        threads: process.tasks().map_or(0, |t| t.len() as u64),
    })
}
