//! The opt-in process sampler (feature `process`): CPU, memory and threads of
//! this process, every interval, as `state_update` events and gauges.
//!
//! Writes into the recorder like the layer does; the monitor owns the
//! [`Sampler`] handle and stops it when the last `Monitor` is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::events::EventKind;
use crate::metrics;
use crate::recorder::Recorder;
use crate::stats::ProcessSample;

/// The running sampler thread.
#[derive(Debug)]
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Sampler {
    /// Stops the thread and waits for it (it wakes at once: it parks
    /// between samples).
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        if self.thread.thread().id() != std::thread::current().id() {
            let _ = self.thread.join();
        }
    }
}

/// Starts sampling every `interval`.
///
/// # Errors
///
/// The thread could not be spawned.
pub(crate) fn spawn(recorder: &Arc<Recorder>, interval: Duration) -> std::io::Result<Sampler> {
    let weak: Weak<Recorder> = Arc::downgrade(recorder);
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("perfmon-sampler".into())
        .spawn(move || {
            let Ok(pid) = sysinfo::get_current_pid() else {
                return;
            };
            let mut system = System::new();
            loop {
                std::thread::park_timeout(interval);
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                let Some(recorder) = weak.upgrade() else {
                    return;
                };
                let Some(sample) = read(&mut system, pid) else {
                    return;
                };
                publish(&recorder, sample);
            }
        })?;
    Ok(Sampler { stop, thread })
}

fn publish(recorder: &Recorder, sample: ProcessSample) {
    if recorder.config.metrics {
        ::metrics::gauge!(metrics::PROCESS_CPU).set(sample.cpu_percent);
        ::metrics::gauge!(metrics::PROCESS_RSS).set(sample.rss_bytes as f64);
        ::metrics::gauge!(metrics::PROCESS_THREADS).set(sample.threads as f64);
    }
    recorder.set_last_sample(sample);
    let active = recorder.active_count() as u64;
    recorder.publish(None, recorder.now(), || EventKind::StateUpdate {
        cpu_percent: sample.cpu_percent,
        rss_bytes: sample.rss_bytes,
        threads: sample.threads,
        pipelines_active: active,
    });
}

fn read(system: &mut System, pid: Pid) -> Option<ProcessSample> {
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing()
            .with_cpu()
            .with_memory()
            .with_tasks(),
    );
    let process = system.process(pid)?;
    Some(ProcessSample {
        cpu_percent: f64::from(process.cpu_usage()),
        rss_bytes: process.memory(),
        threads: process.tasks().map_or(0, |t| t.len() as u64),
    })
}
