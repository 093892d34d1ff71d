//! [`Exporter`]s: consumers of the event stream on threads of their own,
//! and the [`ExporterHandle`] that flushes or removes one.
//!
//! Each exporter reads the bus like any subscriber, so a slow one loses
//! only its own events (reported through [`Exporter::missed`]); it never
//! slows the recorder or other subscribers. Above `events` in the crate's
//! dependency order; the monitor owns the handles and joins the threads.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::events::{Bus, Event, Subscription, TryRecv};
use crate::sync::lock;

/// Events handed to [`Exporter::export`] at most at once.
pub const EXPORT_BATCH_MAX: usize = 256;
/// How long an idle exporter thread sleeps before it looks again, when no
/// drain woke it (a bound, not a poll interval: drains wake it).
const IDLE_PARK: Duration = Duration::from_millis(100);

/// Sends events somewhere: a log, a queue, a socket.
///
/// Registered with [`Monitor::add_exporter`](crate::Monitor::add_exporter),
/// it runs on its own thread with its own subscription.
pub trait Exporter: Send + 'static {
    /// Handles a batch of consecutive events (everything that arrived since
    /// the last call, at most [`EXPORT_BATCH_MAX`]).
    fn export(&mut self, events: &[Event]);

    /// Called when `count` events were skipped because this exporter fell behind.
    fn missed(&mut self, count: u64) {
        let _ = count;
    }

    /// Pushes out anything buffered. Called by [`ExporterHandle::flush`],
    /// and once more before the exporter stops.
    fn flush(&mut self) {}

    /// Called when the thread has read everything ready, before it waits
    /// for more (at least every 100 ms): time to send what a timer holds.
    fn idle(&mut self) {}
}

/// Why a flush did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExporterError {
    /// The exporter's thread has stopped (removed, its monitor dropped, or
    /// it panicked): nothing more will be exported.
    #[error("the exporter has stopped; add it again with Monitor::add_exporter")]
    Stopped,
    /// The exporter did not get through the events within the time given:
    /// it is slower than the stream, or blocked.
    #[error(
        "the exporter did not flush within {0:?}; it is blocked or slower than the event stream"
    )]
    Timeout(Duration),
}

/// A running exporter; from [`Monitor::add_exporter`](crate::Monitor::add_exporter).
///
/// Dropping the handle leaves the exporter running until its monitor is
/// dropped (which flushes and joins it).
#[must_use = "dropping the handle leaves the exporter running; keep it to flush or remove it"]
pub struct ExporterHandle {
    control: Arc<Control>,
}

impl fmt::Debug for ExporterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExporterHandle")
            .field("name", &self.control.name)
            .field("running", &!self.control.has_exited())
            .finish()
    }
}

/// What the handle, the monitor and the exporter thread share.
pub(crate) struct Control {
    name: String,
    bus: Arc<Bus>,
    stop: AtomicBool,
    /// Flush requests made; the thread answers them in order.
    requested: AtomicU64,
    state: Mutex<State>,
    changed: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct State {
    /// The last request answered.
    flushed: u64,
    exited: bool,
}

impl Control {
    pub(crate) fn has_exited(&self) -> bool {
        lock(&self.state).exited
    }

    /// Asks the thread to stop after a last flush, and joins it within
    /// `grace`; past that the thread is left to finish on its own.
    pub(crate) fn stop_and_join(&self, grace: Duration) {
        self.stop.store(true, Ordering::Release);
        let Some(handle) = lock(&self.thread).take() else {
            return;
        };
        handle.thread().unpark();
        if handle.thread().id() == thread::current().id() {
            return;
        }
        if self.wait(grace, |s| s.exited) {
            let _ = handle.join();
        }
    }

    /// Waits until `done` holds or `timeout` passes; `true` if it holds.
    fn wait(&self, timeout: Duration, done: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        while !done(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut lock(&self.state));
        self.changed.notify_all();
    }
}

impl ExporterHandle {
    /// Waits until every event published before this call has been handed
    /// to [`Exporter::export`] and [`Exporter::flush`] has returned, for at
    /// most `timeout`.
    ///
    /// # Errors
    ///
    /// [`ExporterError::Stopped`] if the exporter is no longer running;
    /// [`ExporterError::Timeout`] if it did not get there in time.
    pub fn flush(&self, timeout: Duration) -> Result<(), ExporterError> {
        flush(&self.control, timeout)
    }

    /// Stops the exporter after a last [`Exporter::flush`] and waits for its
    /// thread, up to `grace` (past that it finishes on its own). Events
    /// published after this call are not exported.
    pub fn remove(self, grace: Duration) {
        self.control.stop_and_join(grace);
    }

    /// `false` once the exporter has stopped.
    pub fn is_running(&self) -> bool {
        !self.control.has_exited()
    }

    pub(crate) fn control(&self) -> Arc<Control> {
        Arc::clone(&self.control)
    }
}

/// See [`ExporterHandle::flush`].
pub(crate) fn flush(control: &Control, timeout: Duration) -> Result<(), ExporterError> {
    if control.has_exited() {
        return Err(ExporterError::Stopped);
    }
    // Number and send what the recorder queued so far, so the request
    // covers it; the thread reads it all before answering.
    control.bus.drain();
    let ticket = control.requested.fetch_add(1, Ordering::AcqRel) + 1;
    if let Some(handle) = lock(&control.thread).as_ref() {
        handle.thread().unpark();
    }
    if control.wait(timeout, |s| s.flushed >= ticket || s.exited) {
        if lock(&control.state).flushed >= ticket {
            Ok(())
        } else {
            Err(ExporterError::Stopped)
        }
    } else {
        Err(ExporterError::Timeout(timeout))
    }
}

/// Starts `exporter` on a thread named `perfmon-exporter` reading `subscription`.
pub(crate) fn spawn(
    bus: &Arc<Bus>,
    subscription: Subscription,
    exporter: Box<dyn Exporter>,
    name: String,
) -> std::io::Result<ExporterHandle> {
    let control = Arc::new(Control {
        name,
        bus: Arc::clone(bus),
        stop: AtomicBool::new(false),
        requested: AtomicU64::new(0),
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
        thread: Mutex::new(None),
    });
    let thread_control = Arc::clone(&control);
    let handle = thread::Builder::new()
        .name("perfmon-exporter".into())
        .spawn(move || {
            let control = thread_control;
            // Marks the exporter stopped even if it panics, and counts a
            // panic in `Overview::thread_failures`.
            struct Exited<'a>(&'a Control);
            impl Drop for Exited<'_> {
                fn drop(&mut self) {
                    if thread::panicking() {
                        self.0.bus.count_thread_failure();
                    }
                    self.0.bus.stop_waking(&thread::current());
                    self.0.set(|s| s.exited = true);
                }
            }
            let _exited = Exited(&control);
            control.bus.wake_on_events(thread::current());
            run(&control, subscription, exporter);
        })?;
    *lock(&control.thread) = Some(handle);
    Ok(ExporterHandle { control })
}

/// The exporter thread: read what is ready, export it in batches, answer
/// flush requests, stop when asked or when the bus closes.
fn run(control: &Control, mut subscription: Subscription, mut exporter: Box<dyn Exporter>) {
    let mut batch = Vec::with_capacity(EXPORT_BATCH_MAX);
    let mut reported_missed = 0;
    loop {
        // Read the request count before draining: a request made before
        // this point had its events sent already, so they are read below.
        let requested = control.requested.load(Ordering::Acquire);
        let stopping = control.stop.load(Ordering::Acquire);
        let mut closed = false;
        loop {
            match subscription.poll_next() {
                TryRecv::Event(event) => batch.push(event),
                TryRecv::Empty => break,
                TryRecv::Closed => {
                    closed = true;
                    break;
                }
            }
            if batch.len() == EXPORT_BATCH_MAX {
                deliver(
                    &mut *exporter,
                    &mut batch,
                    &subscription,
                    &mut reported_missed,
                );
            }
        }
        deliver(
            &mut *exporter,
            &mut batch,
            &subscription,
            &mut reported_missed,
        );
        if stopping || closed {
            exporter.flush();
            control.set(|s| s.flushed = s.flushed.max(requested));
            return;
        }
        if requested > lock(&control.state).flushed {
            exporter.flush();
            control.set(|s| s.flushed = requested);
        }
        exporter.idle();
        thread::park_timeout(IDLE_PARK);
    }
}

fn deliver(
    exporter: &mut dyn Exporter,
    batch: &mut Vec<Event>,
    subscription: &Subscription,
    reported_missed: &mut u64,
) {
    if subscription.missed() > *reported_missed {
        exporter.missed(subscription.missed() - *reported_missed);
        *reported_missed = subscription.missed();
    }
    if !batch.is_empty() {
        exporter.export(batch);
        batch.clear();
    }
}
