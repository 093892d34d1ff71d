//! The live event stream: [`Event`], [`Subscription`], [`Exporter`].
//!
//! The recorder (hot path) pushes events into a bounded lock-free queue with
//! `try`-semantics: when the queue is full the event is dropped and counted
//! ([`Overview::events_dropped`](crate::Overview::events_dropped)); the
//! recorder never waits. When nobody listens, no event is even built.
//!
//! A dispatcher thread per monitor (started by the first
//! [`Monitor::subscribe`](crate::Monitor::subscribe)) drains the queue every
//! few milliseconds, numbers the events with a gap-free `seq`, and fans them
//! out through a bounded broadcast ring. A subscriber that lags behind the
//! ring loses the oldest events and is told how many
//! ([`Subscription::missed`]); nobody else is affected.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, SystemTime};

use crossbeam_queue::ArrayQueue;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::record::{Outcome, PipelineReport, ser};

/// One thing that happened, as streamed to subscribers and over the wire.
///
/// JSON: `{"type": "...", "seq": 1, "ts": <unix ms>, "pipeline": "id" | null, "data": {...}}`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Gap-free, increasing per monitor, starting at 1.
    pub seq: u64,
    /// When it happened.
    #[serde(serialize_with = "ser::unix_ms")]
    pub ts: SystemTime,
    /// The pipeline it belongs to, if any.
    pub pipeline: Option<Arc<str>>,
    /// What happened: serialized as `"type"` and `"data"`.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// The event's `"type"` string, e.g. `"agent_completed"`.
    pub fn type_name(&self) -> &'static str {
        self.kind.type_name()
    }

    /// The agent the event is about, if any.
    pub fn agent(&self) -> Option<&str> {
        match &self.kind {
            EventKind::AgentStarted { agent, .. }
            | EventKind::AgentProgress { agent, .. }
            | EventKind::Thought { agent, .. }
            | EventKind::AgentCompleted { agent, .. } => Some(agent),
            EventKind::Error { agent, .. } => agent.as_deref(),
            _ => None,
        }
    }
}

/// The kinds of [`Event`], with their `data`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A pipeline span opened.
    PipelineStarted {
        /// The pipeline's run number.
        run: u64,
    },
    /// An agent span opened.
    AgentStarted {
        /// The agent's name.
        agent: Arc<str>,
        /// The pipeline's run number, if inside one.
        run: Option<u64>,
    },
    /// `perfmon::progress!` inside an agent.
    AgentProgress {
        /// The agent's name.
        agent: Arc<str>,
        /// Percent done, if given.
        percent: Option<f64>,
        /// Stage name, if given.
        stage: Option<String>,
        /// The formatted message, if any.
        message: Option<String>,
    },
    /// `perfmon::thought!` inside an agent.
    Thought {
        /// The agent's name.
        agent: Arc<str>,
        /// The thought.
        text: String,
    },
    /// A periodic process sample (see `MonitorBuilder::process_sampler`).
    StateUpdate {
        /// Process CPU use, percent of one core.
        cpu_percent: f64,
        /// Resident memory in bytes.
        rss_bytes: u64,
        /// Threads in the process.
        threads: u64,
        /// Pipelines running now.
        pipelines_active: u64,
    },
    /// An agent span closed.
    AgentCompleted {
        /// The agent's name.
        agent: Arc<str>,
        /// Wall time.
        #[serde(rename = "duration_ms", serialize_with = "ser::ms")]
        duration: Duration,
        /// Busy (polled) time, for futures.
        #[serde(rename = "busy_ms", serialize_with = "ser::opt_ms")]
        busy: Option<Duration>,
        /// How it ended: `outcome` and, when failed, `error`.
        #[serde(flatten)]
        outcome: Outcome,
        /// The pipeline's run number, if inside one.
        run: Option<u64>,
    },
    /// A pipeline finished: the whole report, with `bottlenecks` and `critical_path`.
    PipelineCompleted(Arc<PipelineReport>),
    /// An `ERROR`-level tracing event inside a tracked span.
    Error {
        /// The agent it happened in, if any.
        agent: Option<Arc<str>>,
        /// The event's message and fields.
        message: String,
    },
}

impl EventKind {
    /// The `"type"` string of this kind.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::PipelineStarted { .. } => "pipeline_started",
            EventKind::AgentStarted { .. } => "agent_started",
            EventKind::AgentProgress { .. } => "agent_progress",
            EventKind::Thought { .. } => "thought",
            EventKind::StateUpdate { .. } => "state_update",
            EventKind::AgentCompleted { .. } => "agent_completed",
            EventKind::PipelineCompleted(_) => "pipeline_completed",
            EventKind::Error { .. } => "error",
        }
    }
}

/// How long the dispatcher waits between drains while events flow.
const ACTIVE_INTERVAL: Duration = Duration::from_millis(2);
/// Longest sleep of an idle dispatcher.
const IDLE_PARK: Duration = Duration::from_millis(100);
/// Empty drains in a row before the dispatcher sleeps until woken.
const IDLE_ROUNDS: u32 = 250;

/// The hot-path side of the stream.
#[derive(Debug)]
pub(crate) struct Bus {
    queue: ArrayQueue<Event>,
    /// Shared with each [`Subscription`], which must not keep the bus (and
    /// so the broadcast sender) alive: `recv` ends when the monitor is gone.
    listeners: Arc<AtomicUsize>,
    dropped: AtomicU64,
    published: AtomicU64,
    sleeping: AtomicBool,
    sender: broadcast::Sender<Event>,
    dispatcher: std::sync::OnceLock<thread::Thread>,
}

impl Bus {
    pub(crate) fn new(queue_capacity: usize, subscriber_capacity: usize) -> Self {
        Bus {
            queue: ArrayQueue::new(queue_capacity),
            listeners: Arc::new(AtomicUsize::new(0)),
            dropped: AtomicU64::new(0),
            published: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            sender: broadcast::Sender::new(subscriber_capacity),
            dispatcher: std::sync::OnceLock::new(),
        }
    }

    /// `true` when someone listens; check before building an event.
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        self.listeners.load(Ordering::Relaxed) > 0
    }

    /// Queues an event without ever waiting. `seq` is assigned later.
    pub(crate) fn publish(&self, pipeline: Option<Arc<str>>, ts: SystemTime, kind: EventKind) {
        let event = Event {
            seq: 0,
            ts,
            pipeline,
            kind,
        };
        if self.queue.push(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        // Wake the dispatcher only if it went to sleep (idle); while events
        // flow it drains every ACTIVE_INTERVAL on its own. No `len()` here:
        // it would read the queue's contended head and tail on every event.
        if self.sleeping.load(Ordering::Relaxed)
            && self.sleeping.swap(false, Ordering::AcqRel)
            && let Some(thread) = self.dispatcher.get()
        {
            thread.unpark();
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Moves everything queued to the subscribers. Returns how many events moved.
    fn drain(&self) -> usize {
        let mut moved = 0;
        while let Some(mut event) = self.queue.pop() {
            // Only the dispatcher thread numbers events, so seq is gap-free.
            event.seq = self.published.fetch_add(1, Ordering::Relaxed) + 1;
            // An error here means no receiver right now: nothing to do.
            let _ = self.sender.send(event);
            moved += 1;
        }
        moved
    }
}

/// Starts the dispatcher thread of `bus` once. It exits when the monitor is gone.
pub(crate) fn ensure_dispatcher(bus: &Arc<Bus>) {
    if bus.dispatcher.get().is_some() {
        return;
    }
    let weak: Weak<Bus> = Arc::downgrade(bus);
    let spawned = thread::Builder::new()
        .name("perfmon-events".into())
        .spawn(move || {
            let mut idle = 0u32;
            loop {
                let Some(bus) = weak.upgrade() else { return };
                if bus.drain() > 0 {
                    idle = 0;
                } else {
                    idle += 1;
                }
                if idle >= IDLE_ROUNDS {
                    // Sleep until a publisher wakes us; re-check after announcing
                    // it so that an event pushed in between is not left behind.
                    bus.sleeping.store(true, Ordering::Release);
                    if !bus.queue.is_empty() {
                        bus.sleeping.store(false, Ordering::Release);
                        continue;
                    }
                    drop(bus);
                    // Bounded: notices a dropped monitor, and caps the delay
                    // if a wake-up raced with falling asleep (publishers
                    // check the flag with a relaxed load, to stay cheap).
                    thread::park_timeout(IDLE_PARK);
                    idle = 0;
                } else {
                    drop(bus);
                    thread::park_timeout(ACTIVE_INTERVAL);
                }
            }
        });
    match spawned {
        Ok(handle) => {
            let _ = bus.dispatcher.set(handle.thread().clone());
        }
        // No thread, no stream: recording still works; the subscriber just
        // sees nothing. Surface it where the user will look.
        Err(err) => eprintln!("perfmon: could not start the event dispatcher thread: {err}"),
    }
}

/// A live feed of a monitor's [`Event`]s, from [`Monitor::subscribe`](crate::Monitor::subscribe).
///
/// Holds a bounded window of events (`MonitorBuilder::subscriber_capacity`).
/// If it falls further behind than that, the oldest events are skipped and
/// [`Subscription::missed`] grows; the recorder is never slowed down.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Event>,
    missed: u64,
    listeners: Arc<AtomicUsize>,
}

impl Subscription {
    pub(crate) fn new(bus: &Arc<Bus>) -> Self {
        bus.listeners.fetch_add(1, Ordering::Relaxed);
        ensure_dispatcher(bus);
        Subscription {
            receiver: bus.sender.subscribe(),
            missed: 0,
            listeners: Arc::clone(&bus.listeners),
        }
    }

    /// Waits for the next event; `None` once the monitor is gone and every
    /// queued event was received.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            match self.receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(n)) => self.missed += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        loop {
            match self.receiver.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.missed += n,
                Err(_) => return None,
            }
        }
    }

    /// Waits for the next event for at most `timeout`, blocking the thread.
    /// For code without an async runtime; do not call it inside one.
    pub fn recv_blocking_timeout(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(event) = self.try_recv() {
                return Some(event);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Events this subscriber lost by lagging behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.listeners.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends events somewhere: a log, a queue, a socket.
///
/// Each exporter registered with [`Monitor::add_exporter`](crate::Monitor::add_exporter)
/// runs on its own thread with its own [`Subscription`], so a slow exporter
/// only loses its own events (reported through [`Exporter::missed`]); it
/// never slows the recorder or other subscribers.
pub trait Exporter: Send + 'static {
    /// Handles a batch of consecutive events (everything that arrived since
    /// the last call, at most 256).
    fn export(&mut self, events: &[Event]);

    /// Called when `count` events were skipped because this exporter fell behind.
    fn missed(&mut self, count: u64) {
        let _ = count;
    }
}

pub(crate) fn spawn_exporter(
    mut subscription: Subscription,
    mut exporter: Box<dyn Exporter>,
) -> std::io::Result<()> {
    thread::Builder::new()
        .name("perfmon-exporter".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(256);
            let mut reported_missed = 0;
            loop {
                // Block for the first event, then take what is ready.
                match subscription.recv_blocking_until_closed() {
                    Some(event) => batch.push(event),
                    None => return,
                }
                while batch.len() < 256 {
                    match subscription.try_recv() {
                        Some(event) => batch.push(event),
                        None => break,
                    }
                }
                if subscription.missed() > reported_missed {
                    exporter.missed(subscription.missed() - reported_missed);
                    reported_missed = subscription.missed();
                }
                exporter.export(&batch);
                batch.clear();
            }
        })?;
    Ok(())
}

impl Subscription {
    pub(crate) fn recv_blocking_until_closed(&mut self) -> Option<Event> {
        loop {
            match self.receiver.blocking_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(n)) => self.missed += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
