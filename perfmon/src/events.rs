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
//!
//! When the last [`Monitor`](crate::Monitor) handle is dropped, the bus is
//! closed: the dispatcher drains what is queued, is joined, and every
//! subscription ends (`recv` returns `None`) once it has read the rest.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, SystemTime};

use crossbeam_queue::ArrayQueue;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::alert_state::Alert;
use crate::metrics;
use crate::outcome::Outcome;
use crate::record::{PipelineReport, ser};
use crate::sync::lock;
use crate::usage::Usage;

/// One thing that happened, as streamed to subscribers and over the wire.
///
/// JSON: `{"type": "...", "seq": 1, "ts": <unix ms>, "pipeline": "id" | null, "data": {...}}`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
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
            | EventKind::AgentCompleted { agent, .. }
            | EventKind::ToolStarted { agent, .. }
            | EventKind::ToolOutput { agent, .. }
            | EventKind::ToolCompleted { agent, .. } => Some(agent),
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
        /// The agent whose run this one is nested in, if any.
        parent: Option<Arc<str>>,
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
        /// Wall time minus the time covered by the runs nested in it.
        #[serde(rename = "self_time_ms", serialize_with = "ser::ms")]
        self_time: Duration,
        /// Busy (polled) time, for futures.
        #[serde(rename = "busy_ms", serialize_with = "ser::opt_ms")]
        busy: Option<Duration>,
        /// How it ended: `outcome` and, when failed, `error`.
        #[serde(flatten)]
        outcome: Outcome,
        /// The pipeline's run number, if inside one.
        run: Option<u64>,
        /// Tokens and cost reported in the run (`usage!`), if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    },
    /// A tool span opened (`#[track_tool]`, `perfmon::tool`, `track_tool`):
    /// the same data as `agent_started`, `agent` naming the tool.
    ToolStarted {
        /// The tool's name.
        agent: Arc<str>,
        /// The pipeline's run number, if inside one.
        run: Option<u64>,
        /// The agent (or tool) whose run called it, if any.
        parent: Option<Arc<str>>,
    },
    /// One line of a run's live output (`perfmon::output!`), in a tool run
    /// or an agent run. Low priority: a slow client loses these first.
    ToolOutput {
        /// The tool (or agent) that wrote it.
        agent: Arc<str>,
        /// `stdout`, `stderr`, ... (`"out"` if not given).
        stream: Arc<str>,
        /// The line, cut at `max_output_line_bytes`.
        line: String,
        /// Whether the line was cut.
        cut: bool,
    },
    /// A tool span closed: the same data as `agent_completed`.
    ToolCompleted {
        /// The tool's name.
        agent: Arc<str>,
        /// Wall time.
        #[serde(rename = "duration_ms", serialize_with = "ser::ms")]
        duration: Duration,
        /// Wall time minus the time covered by the runs nested in it.
        #[serde(rename = "self_time_ms", serialize_with = "ser::ms")]
        self_time: Duration,
        /// Busy (polled) time, for futures.
        #[serde(rename = "busy_ms", serialize_with = "ser::opt_ms")]
        busy: Option<Duration>,
        /// How it ended: `outcome` and, when failed, `error`.
        #[serde(flatten)]
        outcome: Outcome,
        /// The pipeline's run number, if inside one.
        run: Option<u64>,
        /// Tokens and cost reported in the run (`usage!`), if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    },
    /// A pipeline finished: the whole report, with `bottlenecks` and `critical_path`.
    PipelineCompleted(Arc<PipelineReport>),
    /// An alert rule started firing (`MonitorBuilder::alert`): its state.
    AlertFired(Arc<Alert>),
    /// A firing alert rule went back below its line: its state.
    AlertResolved(Arc<Alert>),
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
            EventKind::ToolStarted { .. } => "tool_started",
            EventKind::ToolOutput { .. } => "tool_output",
            EventKind::ToolCompleted { .. } => "tool_completed",
            EventKind::PipelineCompleted(_) => "pipeline_completed",
            EventKind::AlertFired(_) => "alert_fired",
            EventKind::AlertResolved(_) => "alert_resolved",
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
/// How often the dispatcher mirrors the drop count into the `metrics` facade.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);
/// Set in `listeners` once the bus is closed: `is_active` is then false
/// whatever the count, with one load on the hot path.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// The hot-path side of the stream.
#[derive(Debug)]
pub(crate) struct Bus {
    queue: ArrayQueue<Event>,
    /// Live subscriptions, plus the `CLOSED` bit. Shared with each
    /// [`Subscription`], which must not keep the bus (and so the broadcast
    /// sender) alive.
    listeners: Arc<AtomicUsize>,
    /// Live subscriptions that want pipeline-level events only (finished
    /// reports, alerts), plus the `CLOSED` bit: with only these, runs
    /// build no event at all.
    report_listeners: Arc<AtomicUsize>,
    dropped: AtomicU64,
    published: AtomicU64,
    sleeping: AtomicBool,
    /// The broadcast sender; `None` once closed. Its lock is also the drain
    /// lock: whoever drains numbers the events, so `seq` stays gap-free and
    /// in order whether the dispatcher or a `flush` drains.
    sender: Mutex<Option<broadcast::Sender<Event>>>,
    subscriber_capacity: usize,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    dispatcher_thread: std::sync::OnceLock<Thread>,
    /// Threads to wake after a drain moved events (exporters).
    wakers: Mutex<Vec<Thread>>,
    thread_failures: AtomicU64,
    /// Mirror `dropped` into the `metrics` facade (from the dispatcher).
    export_metrics: bool,
}

impl Bus {
    pub(crate) fn new(
        queue_capacity: usize,
        subscriber_capacity: usize,
        export_metrics: bool,
    ) -> Self {
        Bus {
            queue: ArrayQueue::new(queue_capacity),
            listeners: Arc::new(AtomicUsize::new(0)),
            report_listeners: Arc::new(AtomicUsize::new(0)),
            dropped: AtomicU64::new(0),
            published: AtomicU64::new(0),
            sleeping: AtomicBool::new(false),
            sender: Mutex::new(Some(broadcast::Sender::new(subscriber_capacity))),
            subscriber_capacity,
            dispatcher: Mutex::new(None),
            dispatcher_thread: std::sync::OnceLock::new(),
            wakers: Mutex::new(Vec::new()),
            thread_failures: AtomicU64::new(0),
            export_metrics,
        }
    }

    /// `true` when someone listens and the bus is open; check before
    /// building an event.
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        let listeners = self.listeners.load(Ordering::Relaxed);
        listeners > 0 && listeners < CLOSED
    }

    /// `true` when someone listens to pipeline-level events (every
    /// subscriber does) and the bus is open.
    #[inline]
    pub(crate) fn wants_reports(&self) -> bool {
        let reports = self.report_listeners.load(Ordering::Relaxed);
        self.is_active() || (reports > 0 && reports < CLOSED)
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
            && let Some(thread) = self.dispatcher_thread.get()
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

    /// Event threads that failed: a dispatcher that could not be spawned,
    /// an exporter that panicked.
    pub(crate) fn thread_failures(&self) -> u64 {
        self.thread_failures.load(Ordering::Relaxed)
    }

    /// Counts one failed event thread.
    pub(crate) fn count_thread_failure(&self) {
        self.thread_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves everything queued to the subscribers, numbering it. Returns how
    /// many events moved. Safe from any thread: see `sender`.
    pub(crate) fn drain(&self) -> usize {
        let mut moved = 0;
        {
            let sender = lock(&self.sender);
            while let Some(mut event) = self.queue.pop() {
                event.seq = self.published.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(sender) = sender.as_ref() {
                    // An error here means no receiver right now: nothing to do.
                    let _ = sender.send(event);
                }
                moved += 1;
            }
        }
        if moved > 0 {
            for thread in lock(&self.wakers).iter() {
                thread.unpark();
            }
        }
        moved
    }

    /// Wakes `thread` after every drain that moved events.
    pub(crate) fn wake_on_events(&self, thread: Thread) {
        lock(&self.wakers).push(thread);
    }

    /// Stops waking `thread`.
    pub(crate) fn stop_waking(&self, thread: &Thread) {
        lock(&self.wakers).retain(|t| t.id() != thread.id());
    }

    /// A new receiver, or `None` once closed.
    fn receiver(&self) -> Option<broadcast::Receiver<Event>> {
        lock(&self.sender)
            .as_ref()
            .map(broadcast::Sender::subscribe)
    }

    /// Closes the bus: nothing more is published to subscribers; the
    /// dispatcher drains what is queued and is joined; subscriptions end
    /// once they have read what was sent. Idempotent.
    pub(crate) fn close(&self) {
        self.listeners.fetch_or(CLOSED, Ordering::Relaxed);
        self.report_listeners.fetch_or(CLOSED, Ordering::Relaxed);
        let dispatcher = lock(&self.dispatcher).take();
        if let Some(handle) = dispatcher {
            handle.thread().unpark();
            if handle.thread().id() != thread::current().id() {
                // The dispatcher runs no user code and exits within one
                // park interval of seeing CLOSED.
                let _ = handle.join();
            }
        }
        self.drain();
        // Dropping the only sender ends every `recv` after the backlog.
        lock(&self.sender).take();
        for thread in lock(&self.wakers).iter() {
            thread.unpark();
        }
    }

    fn is_closed(&self) -> bool {
        self.listeners.load(Ordering::Relaxed) >= CLOSED
    }
}

/// Starts the dispatcher thread of `bus` once. It exits when the bus is
/// closed or gone. A failure to spawn it is counted
/// (`Overview::thread_failures`); recording goes on without live events.
pub(crate) fn ensure_dispatcher(bus: &Arc<Bus>) {
    if bus.dispatcher_thread.get().is_some() || bus.is_closed() {
        return;
    }
    let mut slot = lock(&bus.dispatcher);
    if bus.dispatcher_thread.get().is_some() {
        return;
    }
    let weak: Weak<Bus> = Arc::downgrade(bus);
    let spawned = thread::Builder::new()
        .name("perfmon-events".into())
        .spawn(move || dispatch(&weak));
    match spawned {
        Ok(handle) => {
            let _ = bus.dispatcher_thread.set(handle.thread().clone());
            *slot = Some(handle);
        }
        Err(_) => {
            bus.count_thread_failure();
        }
    }
}

/// The dispatcher's loop: drain every few milliseconds while events flow,
/// sleep until woken when idle.
fn dispatch(weak: &Weak<Bus>) {
    let mut idle = 0u32;
    let mut exported = std::time::Instant::now();
    loop {
        let Some(bus) = weak.upgrade() else { return };
        if bus.is_closed() {
            return;
        }
        if bus.export_metrics && exported.elapsed() >= METRICS_INTERVAL {
            metrics::set_total(metrics::EVENTS_DROPPED, bus.dropped());
            exported = std::time::Instant::now();
        }
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
            // Bounded: notices a closed bus, and caps the delay if a
            // wake-up raced with falling asleep (publishers check the flag
            // with a relaxed load, to stay cheap).
            thread::park_timeout(IDLE_PARK);
            idle = 0;
        } else {
            drop(bus);
            thread::park_timeout(ACTIVE_INTERVAL);
        }
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

/// What a non-blocking receive found.
#[derive(Debug)]
pub(crate) enum TryRecv {
    /// The next event.
    Event(Event),
    /// Nothing yet.
    Empty,
    /// The bus is closed and everything sent was read.
    Closed,
}

impl Subscription {
    pub(crate) fn new(bus: &Arc<Bus>) -> Self {
        Subscription::counted(bus, &bus.listeners)
    }

    /// A subscription to pipeline-level events only (`pipeline_completed`,
    /// alerts): it receives whatever is published, but while only such
    /// subscriptions exist, agent and tool runs publish nothing.
    #[cfg_attr(not(feature = "history"), allow(dead_code))]
    pub(crate) fn reports_only(bus: &Arc<Bus>) -> Self {
        Subscription::counted(bus, &bus.report_listeners)
    }

    fn counted(bus: &Arc<Bus>, listeners: &Arc<AtomicUsize>) -> Self {
        listeners.fetch_add(1, Ordering::Relaxed);
        ensure_dispatcher(bus);
        let receiver = bus.receiver().unwrap_or_else(|| {
            // Closed: a receiver whose sender is already gone ends at once.
            broadcast::Sender::new(bus.subscriber_capacity.max(1)).subscribe()
        });
        Subscription {
            receiver,
            missed: 0,
            listeners: Arc::clone(listeners),
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
        match self.poll_next() {
            TryRecv::Event(event) => Some(event),
            TryRecv::Empty | TryRecv::Closed => None,
        }
    }

    /// Like [`try_recv`](Subscription::try_recv), telling "nothing yet" from "closed".
    pub(crate) fn poll_next(&mut self) -> TryRecv {
        loop {
            match self.receiver.try_recv() {
                Ok(event) => return TryRecv::Event(event),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.missed += n,
                Err(broadcast::error::TryRecvError::Empty) => return TryRecv::Empty,
                Err(broadcast::error::TryRecvError::Closed) => return TryRecv::Closed,
            }
        }
    }

    /// Waits for the next event for at most `timeout`, blocking the thread.
    /// For code without an async runtime; do not call it inside one.
    pub fn recv_blocking_timeout(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.poll_next() {
                TryRecv::Event(event) => return Some(event),
                TryRecv::Closed => return None,
                TryRecv::Empty => {}
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
