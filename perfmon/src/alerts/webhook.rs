//! Alert webhooks: each URL has its own thread and bounded queue; a POST of
//! the alert as JSON, with a timeout and retries with backoff. A webhook
//! that is down or never answers delays only its own queue; what it cannot
//! deliver is counted in [`WebhookStats`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use serde::Serialize;

use crate::alert_state::{Alert, AlertState};
use crate::sync::lock;

/// Alerts waiting per webhook; past that new ones are dropped and counted.
const QUEUE: usize = 64;
/// Attempts per alert: the first and three retries.
const ATTEMPTS: u32 = 4;
/// Wait before the first retry; doubled each time.
const BACKOFF: Duration = Duration::from_millis(200);

/// What one webhook delivered and failed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WebhookStats {
    /// Its URL.
    pub url: String,
    /// Alerts delivered (a 2xx answer).
    pub delivered: u64,
    /// Attempts retried after an error, a timeout or a non-2xx answer.
    pub retries: u64,
    /// Alerts given up after every attempt failed.
    pub failed: u64,
    /// Alerts dropped because its queue was full.
    pub dropped: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// What the sender, its thread and the board share.
#[derive(Debug)]
pub(crate) struct Shared {
    url: String,
    queue: ArrayQueue<Arc<Alert>>,
    stop: AtomicBool,
    delivered: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn stats(&self) -> WebhookStats {
        WebhookStats {
            url: self.url.clone(),
            delivered: self.delivered.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
        }
    }
}

/// The sending side, owned by the evaluator; dropping it stops the thread
/// after its current attempt (it is not waited for).
#[derive(Debug)]
pub(crate) struct Webhook {
    shared: Arc<Shared>,
    thread: Option<thread::Thread>,
}

/// The JSON body: `{"event": "alert_fired" | "alert_resolved", "alert": {...}}`.
#[derive(Serialize)]
struct Body<'a> {
    event: &'static str,
    alert: &'a Alert,
}

impl Webhook {
    /// Starts the thread for `url`, with `timeout` per attempt. A thread
    /// that cannot start is counted as its first failure.
    pub(crate) fn start(url: String, timeout: Duration) -> Webhook {
        let shared = Arc::new(Shared {
            url,
            queue: ArrayQueue::new(QUEUE),
            stop: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        let worker = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("perfmon-webhook".into())
            .spawn(move || run(&worker, timeout));
        let thread = match thread {
            Ok(handle) => Some(handle.thread().clone()),
            Err(e) => {
                *lock(&shared.last_error) = Some(format!("could not start its thread: {e}"));
                None
            }
        };
        Webhook { shared, thread }
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Queues `alert` without waiting; a full queue counts a drop.
    pub(crate) fn send(&self, alert: &Arc<Alert>) {
        match &self.thread {
            Some(thread) if self.shared.queue.push(Arc::clone(alert)).is_ok() => thread.unpark(),
            _ => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = &self.thread {
            thread.unpark();
        }
    }
}

fn run(shared: &Shared, timeout: Duration) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    while !shared.stop.load(Ordering::Acquire) {
        let Some(alert) = shared.queue.pop() else {
            thread::park_timeout(Duration::from_millis(500));
            continue;
        };
        let event = if alert.state == AlertState::Resolved {
            "alert_resolved"
        } else {
            "alert_fired"
        };
        let body = match serde_json::to_string(&Body {
            event,
            alert: &alert,
        }) {
            Ok(body) => body,
            Err(e) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                *lock(&shared.last_error) = Some(format!("could not encode the alert: {e}"));
                continue;
            }
        };
        deliver(shared, &agent, &body);
    }
}

fn deliver(shared: &Shared, agent: &ureq::Agent, body: &str) {
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            shared.retries.fetch_add(1, Ordering::Relaxed);
            thread::sleep(
                BACKOFF * 2u32.pow(attempt - 1) + Duration::from_millis(fastrand::u64(0..50)),
            );
            if shared.stop.load(Ordering::Acquire) {
                break;
            }
        }
        let error = match agent
            .post(&shared.url)
            .header("content-type", "application/json")
            .send(body)
        {
            Ok(response) if response.status().is_success() => {
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(response) => format!("answered {}", response.status()),
            Err(e) => e.to_string(),
        };
        *lock(&shared.last_error) = Some(format!("POST {}: {error}", shared.url));
    }
    shared.failed.fetch_add(1, Ordering::Relaxed);
}
