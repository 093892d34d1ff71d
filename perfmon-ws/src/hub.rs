//! The hub: the replay ring and fan-out to per-connection queues.
//!
//! Publishing encodes nothing: an [`Item`] carries its JSON once, as shared
//! bytes, and every connection gets a reference to the same bytes. Each
//! connection has a bounded queue; when it is full, the oldest droppable item
//! (low [`Priority`]) goes first, and the connection is told what it missed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use crate::stats::Stats;

/// How much an item matters when a slow client's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Dropped first: progress reports, thoughts, periodic state.
    Low,
    /// Kept while anything low can go instead: completions, failures, errors.
    High,
}

/// One already-encoded message for subscribers.
#[derive(Debug, Clone)]
pub struct Item {
    /// Gap-free sequence number assigned by the publisher.
    pub seq: u64,
    /// The room it belongs to (`/ws/{topic}`), if any.
    pub topic: Option<Arc<str>>,
    /// Its type, for `subscribe {types}` filters.
    pub kind: Arc<str>,
    /// A tag for `subscribe {agents}` filters.
    pub tag: Option<Arc<str>>,
    /// What to shed first under backpressure.
    pub priority: Priority,
    /// The JSON object, encoded once and shared by every connection.
    pub json: Utf8Bytes,
    /// When it was published, for publish→send latency.
    pub published: Instant,
}

/// Which items a connection wants. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Fixed by the URL (`/ws/{topic}`); `None` for `/ws`.
    pub room: Option<String>,
    /// `subscribe {pipelines}`.
    pub topics: Vec<String>,
    /// `subscribe {types}`.
    pub kinds: Vec<String>,
    /// `subscribe {agents}`.
    pub tags: Vec<String>,
}

impl Filter {
    /// Whether `item` passes.
    pub fn matches(&self, item: &Item) -> bool {
        let topic = item.topic.as_deref();
        if let Some(room) = &self.room
            && topic != Some(room.as_str())
        {
            return false;
        }
        let in_list = |list: &[String], value: Option<&str>| {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|x| x == v))
        };
        in_list(&self.topics, topic)
            && in_list(&self.kinds, Some(&item.kind))
            && in_list(&self.tags, item.tag.as_deref())
    }
}

/// What a connection lost to backpressure since it was last told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// How many items.
    pub count: u64,
    /// The lowest seq among them.
    pub first_seq: u64,
    /// The highest seq among them.
    pub last_seq: u64,
}

impl Dropped {
    fn add(&mut self, seq: u64) {
        if self.count == 0 {
            self.first_seq = seq;
            self.last_seq = seq;
        } else {
            self.first_seq = self.first_seq.min(seq);
            self.last_seq = self.last_seq.max(seq);
        }
        self.count += 1;
    }
}

/// A connection's bounded outgoing queue.
#[derive(Debug)]
pub(crate) struct Queue {
    inner: Mutex<QueueInner>,
    pub(crate) notify: Notify,
    capacity: usize,
}

#[derive(Debug)]
struct QueueInner {
    /// High- and low-priority items, each in seq order: shedding takes the
    /// oldest low item in O(1), and `take` merges the two by seq.
    high: VecDeque<Arc<Item>>,
    low: VecDeque<Arc<Item>>,
    filter: Filter,
    dropped: Dropped,
    /// Since when the queue has been shedding items without a break.
    stalled_since: Option<Instant>,
    closed: bool,
    /// The highest seq queued so far: a live item at or below it was
    /// already replayed, and is skipped (no duplicates, no reordering).
    high_water: u64,
}

impl QueueInner {
    fn len(&self) -> usize {
        self.high.len() + self.low.len()
    }

    /// Appends in seq order: items arrive in seq order (live items past the
    /// high-water mark, replays in ring order).
    fn push(&mut self, item: Arc<Item>) {
        match item.priority {
            Priority::High => self.high.push_back(item),
            Priority::Low => self.low.push_back(item),
        }
    }
}

/// What a writer takes from its queue in one go.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) items: Vec<Arc<Item>>,
    pub(crate) dropped: Option<Dropped>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Queue {
    pub(crate) fn new(capacity: usize, filter: Filter) -> Self {
        Queue {
            inner: Mutex::new(QueueInner {
                high: VecDeque::with_capacity(capacity.min(1024)),
                low: VecDeque::new(),
                filter,
                dropped: Dropped::default(),
                stalled_since: None,
                closed: false,
                high_water: 0,
            }),
            notify: Notify::new(),
            capacity,
        }
    }

    /// Queues `item` if the filter lets it through, shedding under pressure.
    /// Returns how many items were shed.
    fn offer(&self, item: &Arc<Item>) -> u64 {
        let mut q = lock(&self.inner);
        if q.closed || item.seq <= q.high_water {
            return 0;
        }
        q.high_water = item.seq;
        if !q.filter.matches(item) {
            return 0;
        }
        let mut shed = 0;
        if q.len() >= self.capacity {
            // Oldest low-priority first; if none, the oldest of all. If the
            // new item is low priority and nothing lower is queued, it is
            // the one to go.
            let evicted = match (q.low.is_empty(), item.priority) {
                (false, _) => q.low.pop_front(),
                (true, Priority::Low) => Some(Arc::clone(item)),
                (true, Priority::High) => q.high.pop_front(),
            };
            if let Some(evicted) = evicted {
                q.dropped.add(evicted.seq);
                shed = 1;
                if q.stalled_since.is_none() {
                    q.stalled_since = Some(Instant::now());
                }
                if Arc::ptr_eq(&evicted, item) {
                    return shed;
                }
            }
        }
        q.push(Arc::clone(item));
        drop(q);
        self.notify.notify_one();
        shed
    }

    /// Appends items (a replay) in order, bypassing shedding: the caller
    /// bounds them.
    pub(crate) fn push_replay(&self, items: impl IntoIterator<Item = Arc<Item>>) {
        let mut q = lock(&self.inner);
        for item in items {
            q.high_water = q.high_water.max(item.seq);
            if q.filter.matches(&item) {
                q.push(item);
            }
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Takes up to `max` items and any drop notice.
    pub(crate) fn take(&self, max: usize) -> Batch {
        let mut q = lock(&self.inner);
        let n = q.len().min(max);
        let mut items = Vec::with_capacity(n);
        while items.len() < n {
            let from_low = match (q.high.front(), q.low.front()) {
                (Some(h), Some(l)) => l.seq < h.seq,
                (None, _) => true,
                (Some(_), None) => false,
            };
            let next = if from_low {
                q.low.pop_front()
            } else {
                q.high.pop_front()
            };
            items.extend(next);
        }
        let dropped = (q.dropped.count > 0).then(|| std::mem::take(&mut q.dropped));
        if q.len() < self.capacity {
            q.stalled_since = None;
        }
        Batch { items, dropped }
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).len()
    }

    /// How long the queue has been full and shedding, if it is.
    pub(crate) fn stalled_for(&self) -> Option<std::time::Duration> {
        lock(&self.inner).stalled_since.map(|t| t.elapsed())
    }

    pub(crate) fn update_filter(&self, f: impl FnOnce(&mut Filter)) {
        f(&mut lock(&self.inner).filter);
    }

    pub(crate) fn filter(&self) -> Filter {
        lock(&self.inner).filter.clone()
    }

    pub(crate) fn close(&self) {
        lock(&self.inner).closed = true;
        self.notify.notify_one();
    }
}

/// The result of asking for what came after a seq.
#[derive(Debug)]
pub struct Replay {
    /// The items after `since` still in the ring, in order.
    pub items: Vec<Arc<Item>>,
    /// `false` if some items after `since` already fell out of the ring.
    pub recovered: bool,
    /// The oldest seq still in the ring (0 if empty).
    pub oldest: u64,
}

/// The replay ring and the registry of connection queues.
#[derive(Debug)]
pub struct Hub {
    ring: Mutex<VecDeque<Arc<Item>>>,
    ring_capacity: usize,
    last_seq: AtomicU64,
    /// Copy-on-write: `publish` clones one `Arc`, not a thousand.
    queues: Mutex<Arc<Vec<Arc<Queue>>>>,
    pub(crate) stats: Arc<Stats>,
}

impl Hub {
    /// A hub keeping the last `ring_capacity` items for replay.
    pub fn new(ring_capacity: usize) -> Self {
        let stats = Arc::new(Stats::default());
        Hub {
            ring: Mutex::new(VecDeque::with_capacity(ring_capacity.min(16_384))),
            ring_capacity: ring_capacity.max(1),
            last_seq: AtomicU64::new(0),
            queues: Mutex::new(Arc::new(Vec::new())),
            stats,
        }
    }

    /// The highest seq published so far.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Stores `item` for replay and offers it to every connection.
    pub fn publish(&self, item: Item) {
        let item = Arc::new(item);
        {
            let mut ring = lock(&self.ring);
            if ring.len() >= self.ring_capacity {
                ring.pop_front();
            }
            ring.push_back(Arc::clone(&item));
            self.last_seq.fetch_max(item.seq, Ordering::AcqRel);
        }
        let queues = Arc::clone(&lock(&self.queues));
        let mut shed = 0;
        for queue in queues.iter() {
            shed += queue.offer(&item);
        }
        if shed > 0 {
            self.stats.dropped(shed);
        }
    }

    /// Items with `seq > since`, and whether that is all of them.
    pub fn replay(&self, since: u64) -> Replay {
        let ring = lock(&self.ring);
        let oldest = ring.front().map_or(0, |i| i.seq);
        let items: Vec<_> = ring.iter().filter(|i| i.seq > since).cloned().collect();
        let last = self.last_seq();
        // Recovered when nothing between `since` and the ring's start was lost.
        let recovered = since >= last || ring.front().is_some_and(|first| first.seq <= since + 1);
        Replay {
            items,
            recovered,
            oldest,
        }
    }

    /// Registers a connection queue and, with `since`, queues everything
    /// after it that the ring holds. Returns what was replayed (its `items`
    /// are already queued).
    pub(crate) fn attach(&self, queue: Arc<Queue>, since: Option<u64>) -> Option<Replay> {
        // Under the ring lock: `publish` pushes to the ring (under it) before
        // offering to queues, and the queue's high-water mark skips what was
        // replayed here. Every item reaches the queue exactly once, in order.
        let ring = lock(&self.ring);
        let last = ring.back().map_or(0, |i| i.seq);
        Arc::make_mut(&mut lock(&self.queues)).push(Arc::clone(&queue));
        let Some(since) = since else {
            // A fresh client starts live: nothing at or before `last`.
            lock(&queue.inner).high_water = last;
            return None;
        };
        let oldest = ring.front().map_or(0, |i| i.seq);
        let items: Vec<_> = ring.iter().filter(|i| i.seq > since).cloned().collect();
        let recovered = since >= last || ring.front().is_some_and(|first| first.seq <= since + 1);
        queue.push_replay(items.iter().cloned());
        let mut q = lock(&queue.inner);
        q.high_water = q.high_water.max(last).max(since);
        drop(q);
        Some(Replay {
            items,
            recovered,
            oldest,
        })
    }

    pub(crate) fn detach(&self, queue: &Arc<Queue>) {
        Arc::make_mut(&mut lock(&self.queues)).retain(|q| !Arc::ptr_eq(q, queue));
    }

    /// The server's counters right now.
    pub fn stats_snapshot(&self) -> crate::stats::StatsSnapshot {
        self.stats.snapshot()
    }

    /// Connections attached now.
    pub fn connections(&self) -> usize {
        lock(&self.queues).len()
    }
}
