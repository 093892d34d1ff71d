//! [`Publisher`]: puts every event of a [`Monitor`] on the fleet's stream,
//! tagged with its source, plus a heartbeat. An [`Exporter`] on a thread of
//! its own: the host only ever hands events to the lossy bus. While the
//! broker is down it keeps a bounded buffer, retries with backoff and full
//! jitter, delivers what it kept, and counts what it had to drop. Above
//! `redis` and `broker`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::FleetError;
use super::broker::{Broker, BrokerError};
use super::redis::RedisBroker;
use super::wire::{self, Heartbeat, Outgoing, SourceInfo};
use crate::events::Event;
use crate::exporter::{Exporter, ExporterHandle};
use crate::monitor::Monitor;
use crate::sync::lock;

/// Default stream key.
pub const DEFAULT_STREAM: &str = "perfmon:events";
/// Default bound on the stream's length (`XADD ... MAXLEN ~ N`).
pub const DEFAULT_MAXLEN: u64 = 100_000;
/// Default bound on the entries a publisher keeps while the broker is away.
pub const DEFAULT_BUFFER: usize = 100_000;
/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Entries per append call.
const CHUNK: usize = 512;
/// First retry delay, doubled per failure up to [`RETRY_MAX`], then drawn
/// uniformly below that (full jitter).
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Configures a [`Publisher`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .start(&monitor)"]
pub struct PublisherBuilder {
    url: String,
    source: String,
    stream: String,
    maxlen: u64,
    buffer: usize,
    heartbeat: Duration,
}

/// A running publisher; from [`Publisher::builder`]. It publishes until its
/// monitor is dropped (which delivers what is buffered, bounded in time) or
/// until [`Publisher::stop`].
#[derive(Debug)]
#[must_use = "keep the publisher to read its stats or stop it"]
pub struct Publisher {
    handle: ExporterHandle,
    counters: Arc<Counters>,
    info: SourceInfo,
}

/// What a publisher did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PublisherStats {
    /// Entries (events and heartbeats) appended to the stream.
    pub published: u64,
    /// Events lost: the buffer was full while the broker was away, or the
    /// publisher's thread fell behind the event bus.
    pub dropped: u64,
    /// Entries waiting in the buffer now.
    pub buffered: u64,
    /// Appends that failed (each is retried with backoff).
    pub send_failures: u64,
    /// Whether the last append succeeded.
    pub connected: bool,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    dropped: AtomicU64,
    buffered: AtomicU64,
    send_failures: AtomicU64,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Publisher {
    /// Starts configuring a publisher to the Redis at `url`
    /// (`redis://HOST:PORT`, `redis+unix:///path/redis.sock`).
    pub fn builder(url: impl Into<String>) -> PublisherBuilder {
        PublisherBuilder {
            url: url.into(),
            source: default_source(),
            stream: DEFAULT_STREAM.to_owned(),
            maxlen: DEFAULT_MAXLEN,
            buffer: DEFAULT_BUFFER,
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> PublisherStats {
        let c = &self.counters;
        PublisherStats {
            published: c.published.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            buffered: c.buffered.load(Ordering::Relaxed),
            send_failures: c.send_failures.load(Ordering::Relaxed),
            connected: c.connected.load(Ordering::Relaxed),
            last_error: lock(&c.last_error).clone(),
        }
    }

    /// Who this publisher says it is.
    pub fn source(&self) -> &SourceInfo {
        &self.info
    }

    /// Waits until every event published before the call was handed to the
    /// broker, or the broker failed, for at most `timeout`.
    ///
    /// # Errors
    ///
    /// See [`ExporterHandle::flush`].
    pub fn flush(&self, timeout: Duration) -> Result<(), crate::ExporterError> {
        self.handle.flush(timeout)
    }

    /// Delivers what is buffered (one attempt, bounded in time) and stops.
    pub fn stop(self) {
        self.handle.remove(Duration::from_secs(5));
    }
}

/// `perfmon-PID` when no name is given.
fn default_source() -> String {
    format!("perfmon-{}", std::process::id())
}

impl PublisherBuilder {
    /// The source's name in the fleet (default `perfmon-PID`).
    pub fn source(mut self, name: impl Into<String>) -> Self {
        self.source = name.into();
        self
    }

    /// The stream's key (default [`DEFAULT_STREAM`]); its collector reads
    /// the same key.
    pub fn stream(mut self, key: impl Into<String>) -> Self {
        self.stream = key.into();
        self
    }

    /// About how many entries the stream keeps (default
    /// [`DEFAULT_MAXLEN`]): Redis memory is bounded by this, whatever the
    /// publish rate. Collectors rebuild their state from what is kept.
    pub fn maxlen(mut self, entries: u64) -> Self {
        self.maxlen = entries;
        self
    }

    /// How many entries to keep while the broker is away (default
    /// [`DEFAULT_BUFFER`]); past that the oldest are dropped and counted.
    pub fn buffer(mut self, entries: usize) -> Self {
        self.buffer = entries.max(1);
        self
    }

    /// How often to tell collectors this source is alive (default 5 s).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(10));
        self
    }

    /// Starts publishing `monitor`'s events. Does not wait for the broker:
    /// an unreachable one is retried in the background.
    ///
    /// # Errors
    ///
    /// A URL that is not a Redis URL, or no thread: see [`FleetError`].
    pub fn start(self, monitor: &Monitor) -> Result<Publisher, FleetError> {
        let broker = RedisBroker::new(&self.url, &self.stream, self.maxlen)?;
        let info = SourceInfo::of_this_process(&self.source);
        let counters = Arc::new(Counters::default());
        let mut pump = Pump {
            broker: Box::new(broker),
            buffer: VecDeque::new(),
            capacity: self.buffer,
            counters: Arc::clone(&counters),
            source: Arc::from(info.name.as_str()),
            instance: Arc::from(info.instance.as_str()),
            info: info.clone(),
            heartbeat: self.heartbeat,
            last_heartbeat: None,
            retry_at: None,
            failures: 0,
        };
        let started = serde_json::json!({
            "type": wire::SOURCE_STARTED,
            "seq": 0,
            "ts": wire::unix_ms_now(),
            "pipeline": null,
            "data": &info,
        });
        pump.push(wire::KIND_EVENT, started.to_string());
        let handle = monitor.add_exporter(pump).map_err(|e| match e {
            crate::Error::Thread(source) => FleetError::Thread(source),
            other => FleetError::Thread(std::io::Error::other(other.to_string())),
        })?;
        Ok(Publisher {
            handle,
            counters,
            info,
        })
    }
}

/// The exporter: events → buffer → broker.
struct Pump {
    broker: Box<dyn Broker>,
    buffer: VecDeque<Outgoing>,
    capacity: usize,
    counters: Arc<Counters>,
    source: Arc<str>,
    instance: Arc<str>,
    info: SourceInfo,
    heartbeat: Duration,
    last_heartbeat: Option<Instant>,
    /// No attempt before this, after a failure.
    retry_at: Option<Instant>,
    failures: u32,
}

impl Pump {
    fn push(&mut self, kind: &'static str, body: String) {
        if self.buffer.len() >= self.capacity {
            self.buffer.pop_front();
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.buffer.push_back(Outgoing {
            kind,
            source: Arc::clone(&self.source),
            instance: Arc::clone(&self.instance),
            body,
        });
        self.counters
            .buffered
            .store(self.buffer.len() as u64, Ordering::Relaxed);
    }

    fn heartbeat_if_due(&mut self) {
        let due = self
            .last_heartbeat
            .is_none_or(|at| at.elapsed() >= self.heartbeat);
        // While the broker is away, a heartbeat would only say something
        // stale once delivered: skip it.
        if !due || self.retry_at.is_some() {
            return;
        }
        self.last_heartbeat = Some(Instant::now());
        let c = &self.counters;
        let body = Heartbeat {
            info: self.info.clone(),
            published: c.published.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            buffered: self.buffer.len() as u64,
            sent_at_ms: wire::unix_ms_now(),
        };
        if let Ok(body) = serde_json::to_string(&body) {
            self.push(wire::KIND_HEARTBEAT, body);
        }
    }

    /// Appends what is buffered, chunk by chunk, until done or a failure
    /// (then waits out a backoff before the next attempt, unless `now`).
    fn send(&mut self, now: bool) {
        if !now && self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        while !self.buffer.is_empty() {
            let n = self.buffer.len().min(CHUNK);
            let chunk: Vec<Outgoing> = self.buffer.range(..n).cloned().collect();
            match self.broker.append(&chunk) {
                Ok(()) => {
                    self.buffer.drain(..n);
                    self.counters
                        .published
                        .fetch_add(n as u64, Ordering::Relaxed);
                    if self.failures > 0 {
                        tracing::info!(target: "perfmon", source = %self.source,
                            "perfmon fleet publisher: the broker is back; delivering what was buffered");
                    }
                    self.failures = 0;
                    self.retry_at = None;
                    self.counters.connected.store(true, Ordering::Relaxed);
                }
                Err(err) => {
                    self.failed(&err);
                    break;
                }
            }
        }
        self.counters
            .buffered
            .store(self.buffer.len() as u64, Ordering::Relaxed);
    }

    fn failed(&mut self, err: &BrokerError) {
        if self.failures == 0 {
            tracing::warn!(target: "perfmon", source = %self.source, error = %err,
                "perfmon fleet publisher: cannot append to the stream; buffering (bounded) and retrying");
        }
        self.failures = self.failures.saturating_add(1);
        self.counters.send_failures.fetch_add(1, Ordering::Relaxed);
        self.counters.connected.store(false, Ordering::Relaxed);
        *lock(&self.counters.last_error) = Some(err.to_string());
        self.retry_at = Some(Instant::now() + backoff(self.failures));
    }
}

/// Full jitter: uniform in `0..=min(RETRY_MAX, RETRY_BASE * 2^(n-1))`.
fn backoff(failures: u32) -> Duration {
    let ceiling = RETRY_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(RETRY_MAX);
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=ms))
}

impl Exporter for Pump {
    fn export(&mut self, events: &[Event]) {
        for event in events {
            if let Ok(body) = serde_json::to_string(event) {
                self.push(wire::KIND_EVENT, body);
            }
        }
        self.heartbeat_if_due();
        self.send(false);
    }

    fn missed(&mut self, count: u64) {
        self.counters.dropped.fetch_add(count, Ordering::Relaxed);
    }

    fn flush(&mut self) {
        self.send(true);
    }

    fn idle(&mut self) {
        self.heartbeat_if_due();
        self.send(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_below_it() {
        for n in 1..40 {
            let d = backoff(n);
            assert!(d <= RETRY_MAX, "{n}: {d:?}");
        }
        assert!(backoff(1) <= RETRY_BASE);
    }
}
