//! [`Collector`]: reads the fleet's stream on a thread of its own, keeps the
//! [`FleetState`](super::state::FleetState), forwards every event (renumbered
//! with the stream's gap-free seq, tagged with its source) to a hub, and
//! serves the dashboard, REST, `/metrics` and the WebSocket protocol for the
//! whole fleet. Top of the fleet's dependency order.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use perfmon_ws::{Backend, Hub, Priority};

use super::FleetError;
use super::backend::FleetBackend;
use super::broker::Broker;
use super::publisher::{DEFAULT_MAXLEN, DEFAULT_STREAM};
use super::redis::RedisBroker;
use super::shared::{BrokerStatus, Shared};
use super::state::{Forward, SourceView};
use super::wire::{self, Outgoing};
use crate::sync::lock;
use crate::ws::{Sidecar, SidecarBuilder};

/// Entries per read.
const READ_MAX: usize = 1_000;
/// How long a live read waits for new entries.
const READ_WAIT: Duration = Duration::from_millis(500);
/// Default: no heartbeat for this long makes a source silent.
pub const DEFAULT_SILENT_AFTER: Duration = Duration::from_secs(12);
/// Default: no heartbeat for this long makes a source gone.
pub const DEFAULT_GONE_AFTER: Duration = Duration::from_secs(30);
/// How long `serve` waits for a first connection to the broker.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How often the broker's clock is read again.
const CLOCK_EVERY: Duration = Duration::from_secs(10);

/// Configures a [`Collector`].
#[derive(Debug)]
#[must_use = "a builder does nothing until .serve()"]
pub struct CollectorBuilder {
    url: String,
    stream: String,
    maxlen: u64,
    server: SidecarBuilder,
    ring_capacity: usize,
    silent_after: Duration,
    gone_after: Duration,
}

/// A running collector; it stops when dropped.
#[derive(Debug)]
#[must_use = "the collector stops when dropped: bind it"]
pub struct Collector {
    sidecar: Option<Sidecar>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Collector {
    /// Starts configuring a collector of the Redis at `url`.
    pub fn builder(url: impl Into<String>) -> CollectorBuilder {
        CollectorBuilder {
            url: url.into(),
            stream: DEFAULT_STREAM.to_owned(),
            maxlen: DEFAULT_MAXLEN,
            server: Sidecar::builder(),
            ring_capacity: perfmon_ws::Config::default().ring_capacity,
            silent_after: DEFAULT_SILENT_AFTER,
            gone_after: DEFAULT_GONE_AFTER,
        }
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.sidecar
            .as_ref()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), Sidecar::local_addr)
    }

    /// `http://HOST:PORT/`: the fleet's dashboard.
    pub fn url(&self) -> String {
        format!("http://{}/", self.local_addr())
    }

    /// Every source the stream has shown, by name.
    pub fn sources(&self) -> Vec<SourceView> {
        let s = &self.shared;
        lock(&s.state).sources(s.broker_now_ms(), s.silent_after, s.gone_after)
    }

    /// The broker's status and what was read.
    pub fn broker(&self) -> BrokerStatus {
        self.shared.broker_status()
    }

    /// Stops reading and serving (closing WebSockets with 1001, so
    /// dashboards resume from another collector or this one restarted).
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(sidecar) = self.sidecar.take() {
            sidecar.shutdown();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop_now();
    }
}

impl CollectorBuilder {
    /// The stream's key (default `perfmon:events`), as its publishers use.
    pub fn stream(mut self, key: impl Into<String>) -> Self {
        self.stream = key.into();
        self
    }

    /// Where to listen (default `127.0.0.1:9464`).
    pub fn bind(mut self, addr: impl Into<String>) -> Self {
        self.server = self.server.bind(addr);
        self
    }

    /// The server's other settings (token, origins, limits): a
    /// [`SidecarBuilder`] as for a sidecar.
    pub fn server(mut self, server: SidecarBuilder) -> Self {
        self.server = server;
        self
    }

    /// Events kept for WebSocket resume (default 10,000).
    pub fn ring_capacity(mut self, events: usize) -> Self {
        self.ring_capacity = events.max(1);
        self
    }

    /// No heartbeat for this long makes a source silent (default 12 s).
    pub fn silent_after(mut self, after: Duration) -> Self {
        self.silent_after = after;
        self
    }

    /// No heartbeat for this long makes a source gone and its open
    /// pipelines lost (default 30 s).
    pub fn gone_after(mut self, after: Duration) -> Self {
        self.gone_after = after;
        self
    }

    /// The stream's MAXLEN used for the `source_gone` events this collector
    /// appends (default as the publishers').
    pub fn maxlen(mut self, entries: u64) -> Self {
        self.maxlen = entries;
        self
    }

    /// Connects, reads everything the stream keeps (rebuilding the fleet's
    /// statistics), then serves. Returns once it serves.
    ///
    /// # Errors
    ///
    /// A bad URL, a broker unreachable for 10 s, a port in use, no thread:
    /// see [`FleetError`].
    pub fn serve(self) -> Result<Collector, FleetError> {
        let broker = RedisBroker::new(&self.url, &self.stream, self.maxlen)?;
        let shared = Arc::new(Shared::new(
            &self.stream,
            self.silent_after,
            self.gone_after,
        ));
        let hub = Arc::new(Hub::new(self.ring_capacity));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), FleetError>>();
        let reader = Reader {
            broker: Box::new(broker),
            shared: Arc::clone(&shared),
            hub: Arc::clone(&hub),
            stop: Arc::clone(&stop),
            ready: Some(ready_tx),
            cursor: "0-0".to_owned(),
            base: 0,
            epoch: None,
            failures: 0,
            started: Instant::now(),
            clock_at: None,
            gone_written: BTreeSet::new(),
        };
        let thread = std::thread::Builder::new()
            .name("perfmon-collector".into())
            .spawn(move || {
                let _quiet =
                    tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
                reader.run();
            })
            .map_err(FleetError::Thread)?;
        let mut collector = Collector {
            sidecar: None,
            shared: Arc::clone(&shared),
            stop,
            reader: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                return Err(FleetError::Thread(std::io::Error::other(
                    "the collector's reader ended while starting",
                )));
            }
        }
        let backend: Arc<dyn Backend> = Arc::new(FleetBackend { shared });
        collector.sidecar = Some(self.server.serve_backend(backend, hub)?);
        Ok(collector)
    }
}

/// The reader thread's state.
struct Reader {
    broker: Box<dyn Broker>,
    shared: Arc<Shared>,
    hub: Arc<Hub>,
    stop: Arc<AtomicBool>,
    /// Told once the retained stream is read (or the broker stayed away).
    ready: Option<mpsc::Sender<Result<(), FleetError>>>,
    cursor: String,
    /// Added to the stream's seqs: the hub's seqs go on increasing when the
    /// stream's numbering starts again (a new epoch).
    base: u64,
    epoch: Option<String>,
    failures: u32,
    started: Instant,
    clock_at: Option<Instant>,
    /// Instances this collector has appended `source_gone` for.
    gone_written: BTreeSet<String>,
}

impl Reader {
    fn run(mut self) {
        while !self.stop.load(Ordering::Acquire) {
            if (self.epoch.is_none() || self.failures > 0)
                && let Err(err) = self.check_epoch()
            {
                self.failed(&err);
                continue;
            }
            let wait = if self.ready.is_some() {
                Duration::ZERO
            } else {
                READ_WAIT
            };
            match self.broker.read(&self.cursor, READ_MAX, wait) {
                Ok(entries) => {
                    self.succeeded();
                    let caught_up = entries.len() < READ_MAX;
                    self.apply(&entries);
                    if caught_up && let Some(ready) = self.ready.take() {
                        let _ = ready.send(Ok(()));
                    }
                }
                Err(err) => self.failed(&err),
            }
            self.mark_gone();
        }
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(target: "perfmon", "perfmon collector: reading the stream again");
        }
        self.failures = 0;
        self.shared.connected.store(true, Ordering::Relaxed);
    }

    fn failed(&mut self, err: &super::BrokerError) {
        self.failures = self.failures.saturating_add(1);
        self.shared.connected.store(false, Ordering::Relaxed);
        self.shared.read_failures.fetch_add(1, Ordering::Relaxed);
        *lock(&self.shared.last_error) = Some(err.to_string());
        if self.ready.is_some() && self.started.elapsed() >= CONNECT_WAIT {
            if let Some(ready) = self.ready.take() {
                let _ = ready.send(Err(FleetError::NoBroker {
                    waited: CONNECT_WAIT,
                    error: err.to_string(),
                }));
            }
            self.stop.store(true, Ordering::Release);
            return;
        }
        // Full jitter, up to 2 s, in slices so a shutdown is prompt.
        let ceiling = 100u64.saturating_mul(1 << self.failures.min(5)).min(2_000);
        let until = Instant::now() + Duration::from_millis(fastrand::u64(ceiling / 2..=ceiling));
        while Instant::now() < until && !self.stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads the stream's epoch (and the broker's clock); a new epoch (the
    /// broker lost its data) starts the stream again from its oldest entry.
    fn check_epoch(&mut self) -> Result<(), super::BrokerError> {
        if self.clock_at.is_none_or(|at| at.elapsed() >= CLOCK_EVERY) || self.failures > 0 {
            let theirs = self.broker.now_ms()?;
            let ours = wire::unix_ms_now();
            let offset =
                i64::try_from(theirs).unwrap_or(i64::MAX) - i64::try_from(ours).unwrap_or(i64::MAX);
            self.shared.clock_offset_ms.store(offset, Ordering::Relaxed);
            self.clock_at = Some(Instant::now());
        }
        let Some(epoch) = self.broker.epoch()? else {
            // Nothing appended yet.
            return Ok(());
        };
        if self.epoch.as_deref() == Some(&epoch) {
            return Ok(());
        }
        if self.epoch.is_some() {
            // The stream's numbering starts again: keep ours increasing.
            self.base = self.hub.last_seq();
            self.cursor = "0-0".to_owned();
            lock(&self.shared.state).restart_numbering();
            tracing::warn!(target: "perfmon",
                "perfmon collector: the stream's epoch changed (the broker lost its data); \
                 reading it from the start, resumes from before get recovered: false");
        }
        let name = if self.base == 0 {
            epoch.clone()
        } else {
            format!("{epoch}+{}", self.base)
        };
        self.hub.set_epoch(name.as_str());
        *lock(&self.shared.epoch) = Some(name);
        self.epoch = Some(epoch);
        Ok(())
    }

    fn apply(&mut self, entries: &[wire::Incoming]) {
        if entries.is_empty() {
            return;
        }
        let now = self.shared.broker_now_ms();
        let forwards: Vec<Forward> = {
            let mut state = lock(&self.shared.state);
            entries
                .iter()
                .filter_map(|e| state.apply(e, self.base, now))
                .collect()
        };
        if let Some(last) = entries.last() {
            self.cursor.clone_from(&last.id);
        }
        for f in forwards {
            let priority = match &*f.kind {
                "agent_progress" | "thought" | "tool_output" | "state_update" => Priority::Low,
                _ => Priority::High,
            };
            self.hub.publish(
                perfmon_ws::item(f.seq, f.pipeline, f.kind, f.agent, priority, f.json)
                    .with_source(Some(f.source)),
            );
        }
    }

    /// Appends `source_gone` for sources past the gone limit (once across
    /// every collector of the stream: a marker in the broker).
    fn mark_gone(&mut self) {
        if self.ready.is_some() {
            // Judge heartbeats once the retained stream is read.
            return;
        }
        let now = self.shared.broker_now_ms();
        let overdue = lock(&self.shared.state).overdue(now, self.shared.gone_after);
        for (name, instance) in overdue {
            if self.gone_written.contains(&instance) {
                continue;
            }
            let body = serde_json::json!({
                "type": wire::SOURCE_GONE,
                "seq": 0,
                "ts": wire::unix_ms_now(),
                "pipeline": null,
                "data": {
                    "source": &name,
                    "instance": &instance,
                    "gone_after_ms": self.shared.gone_after.as_millis() as u64,
                },
            });
            let entry = Outgoing {
                kind: wire::KIND_EVENT,
                source: Arc::from(name.as_str()),
                instance: Arc::from(instance.as_str()),
                body: body.to_string(),
            };
            match self.broker.append_once(&format!("gone:{instance}"), &entry) {
                Ok(_) => {
                    self.gone_written.insert(instance);
                }
                Err(err) => {
                    *lock(&self.shared.last_error) = Some(err.to_string());
                    return;
                }
            }
        }
    }
}
