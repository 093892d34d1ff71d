//! The hub: the replay ring, and per-connection queues that pull from it.
//!
//! Publishing encodes nothing: an [`Item`] carries its JSON once, as shared
//! bytes, and every connection gets a reference to the same bytes.
//!
//! Publishing is O(1) whatever the number of connections: the item goes into
//! the ring (and, if high priority, into a second ring of high items only)
//! and the new seq is announced on a `watch` channel. Each connection's
//! writer pulls what is new into its own bounded queue when it is ready to
//! write, so a stalled client, whose writer is blocked on its socket, costs
//! nothing per event. When a queue is full, the oldest droppable item (low
//! [`Priority`]) goes first, and the connection is told what it missed. A
//! writer that fell behind the ring takes the high items it missed from the
//! high ring, and counts the rest as dropped.
//!
//! # Lock order
//!
//! Three kinds of lock, always taken in this order, never the other way:
//!
//! 1. `Hub::rings` (the replay and high rings),
//! 2. `Hub::queues` (the registry of connection queues),
//! 3. one `Queue::inner` (a connection's queue).
//!
//! `attach` holds 1, then 2, then 3, so that a new queue's cursor is exact.
//! `Queue::pull` takes 3 to read its cursor and releases it, takes 1 to copy
//! what is new and releases it, then takes 3 again: never 1 while holding 3.
//! `stats_snapshot` takes 2, then each 3 in turn.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, watch};

use crate::stats::Stats;

/// How much an item matters when a slow client's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Priority {
    /// Dropped first: progress reports, thoughts, periodic state.
    Low,
    /// Kept while anything low can go instead: completions, failures, errors.
    High,
}

/// One already-encoded message for subscribers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Item {
    /// Gap-free sequence number assigned by the publisher.
    pub seq: u64,
    /// The room it belongs to (`/ws/{topic}`), if any.
    pub topic: Option<Arc<str>>,
    /// Its type, for `subscribe {types}` filters.
    pub kind: Arc<str>,
    /// A tag for `subscribe {agents}` filters.
    pub tag: Option<Arc<str>>,
    /// The process it came from, for `subscribe {sources}` filters (a
    /// fleet collector sets it; see [`Item::with_source`]).
    pub source: Option<Arc<str>>,
    /// What to shed first under backpressure.
    pub priority: Priority,
    /// The JSON object, encoded once and shared by every connection
    /// (read it with [`Item::json`]).
    pub(crate) json: Utf8Bytes,
    /// When it was published, for publish→send latency.
    pub published: Instant,
}

impl Item {
    /// The same item, tagged with the process it came from.
    #[must_use]
    pub fn with_source(mut self, source: Option<Arc<str>>) -> Self {
        self.source = source;
        self
    }

    /// The item's JSON text.
    pub fn json(&self) -> &str {
        self.json.as_str()
    }
}

/// Builds an [`Item`] stamped now.
pub fn item(
    seq: u64,
    topic: Option<Arc<str>>,
    kind: Arc<str>,
    tag: Option<Arc<str>>,
    priority: Priority,
    json: String,
) -> Item {
    Item {
        seq,
        topic,
        kind,
        tag,
        source: None,
        priority,
        json: Utf8Bytes::from(json),
        published: Instant::now(),
    }
}

/// Which items a connection wants. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Filter {
    /// Fixed by the URL (`/ws/{topic}`); `None` for `/ws`.
    pub room: Option<String>,
    /// `subscribe {pipelines}`. Sets: a lookup per item and an update per
    /// name cost O(log n), whatever sizes a client sends.
    pub topics: BTreeSet<String>,
    /// `subscribe {types}`.
    pub kinds: BTreeSet<String>,
    /// `subscribe {agents}`.
    pub tags: BTreeSet<String>,
    /// `subscribe {sources}`: the processes of a fleet.
    pub sources: BTreeSet<String>,
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
        let in_list = |list: &BTreeSet<String>, value: Option<&str>| {
            list.is_empty() || value.is_some_and(|v| list.contains(v))
        };
        in_list(&self.topics, topic)
            && in_list(&self.kinds, Some(&item.kind))
            && in_list(&self.tags, item.tag.as_deref())
            && in_list(&self.sources, item.source.as_deref())
    }
}

/// What a connection lost to backpressure since it was last told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
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
        self.add_range(seq, seq, 1);
    }

    /// `count` items with seqs in `first..=last`.
    fn add_range(&mut self, first: u64, last: u64, count: u64) {
        if count == 0 {
            return;
        }
        if self.count == 0 {
            self.first_seq = first;
            self.last_seq = last;
        } else {
            self.first_seq = self.first_seq.min(first);
            self.last_seq = self.last_seq.max(last);
        }
        self.count += count;
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
    /// The highest seq pulled from the hub so far (or skipped): the next
    /// pull starts after it. No duplicates, no reordering.
    cursor: u64,
    /// Items up to this seq are a resume's replay: queued without shedding.
    replay_until: u64,
    /// A `replay` command's items, sent before anything else and in seq
    /// order (not merged with live items, which may be newer).
    replay: VecDeque<Arc<Item>>,
    /// A `replay` was accepted and is not all sent yet: one replay at a
    /// time, so a client's replays cannot pile up in memory.
    replay_pending: bool,
    /// Its items have reached `replay` (so an empty `replay` means sent).
    replay_pushed: bool,
    /// A fresh connection attached before the hub had anything: its stream
    /// starts at the first item published, whatever its seq (seqs before
    /// it were never in this hub, not lost to this connection).
    unanchored: bool,
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
                cursor: 0,
                replay_until: 0,
                replay: VecDeque::new(),
                replay_pending: false,
                replay_pushed: false,
                unanchored: false,
            }),
            notify: Notify::new(),
            capacity,
        }
    }

    /// Pulls what the hub published since this queue's cursor into the
    /// queue, shedding under pressure. Called by the connection's writer
    /// when it is ready to write; returns how many items were shed.
    pub(crate) fn pull(&self, hub: &Hub) -> u64 {
        let cursor = lock(&self.inner).cursor;
        if hub.last_seq() <= cursor {
            return 0;
        }
        let Pull {
            mut missed_high,
            mut lost,
            fresh,
        } = hub.since(cursor);
        let mut q = lock(&self.inner);
        if q.closed || q.cursor != cursor {
            return 0; // closed, or a concurrent pull got there first
        }
        if std::mem::take(&mut q.unanchored) {
            // Seqs before the hub's first item were never in it: not lost
            // to a connection that attached before anything was published.
            let first = hub.first_seq.load(Ordering::Acquire);
            lost = lost
                .map(|(from, to)| (from.max(first), to))
                .filter(|(from, to)| from <= to);
            missed_high.retain(|i| i.seq >= first);
        }
        let mut shed = 0;
        if let Some((first, last)) = lost {
            // Fell out of both rings: lost, whatever their priority. The
            // count is of seqs, so with a filter it is an upper bound.
            let count = (last - first + 1).saturating_sub(missed_high.len() as u64);
            q.dropped.add_range(first, last, count);
            shed += count;
            q.stalled_since.get_or_insert_with(Instant::now);
        }
        for item in missed_high.iter().chain(fresh.iter()) {
            shed += self.offer_locked(&mut q, item);
        }
        let mut next = fresh
            .last()
            .or(missed_high.last())
            .map_or(cursor, |i| i.seq);
        if let Some((_, last)) = lost {
            next = next.max(last);
        }
        q.cursor = q.cursor.max(next);
        drop(q);
        if shed > 0 {
            hub.stats.dropped(shed);
        }
        shed
    }

    /// Queues `item` if the filter lets it through, shedding under pressure.
    /// Returns how many items were shed.
    fn offer_locked(&self, q: &mut QueueInner, item: &Arc<Item>) -> u64 {
        if item.seq <= q.cursor || !q.filter.matches(item) {
            return 0;
        }
        if item.seq <= q.replay_until {
            q.push(Arc::clone(item));
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
                q.stalled_since.get_or_insert_with(Instant::now);
                if Arc::ptr_eq(&evicted, item) {
                    return shed;
                }
            }
        }
        q.push(Arc::clone(item));
        shed
    }

    /// Items waiting for this connection: queued, plus published and not
    /// pulled yet.
    pub(crate) fn backlog(&self, hub: &Hub) -> usize {
        let q = lock(&self.inner);
        q.len()
            + q.replay.len()
            + usize::try_from(hub.last_seq().saturating_sub(q.cursor)).unwrap_or(usize::MAX)
    }

    /// Appends items (a replay) in order, bypassing shedding: the caller
    /// bounds them.
    pub(crate) fn push_replay(&self, items: impl IntoIterator<Item = Arc<Item>>) {
        let mut q = lock(&self.inner);
        for item in items {
            if q.filter.matches(&item) {
                q.replay.push_back(item);
            }
        }
        q.replay_pushed = true;
        drop(q);
        self.notify.notify_one();
    }

    /// Takes up to `max` items and any drop notice.
    pub(crate) fn take(&self, max: usize) -> Batch {
        let mut q = lock(&self.inner);
        // A replay first, as one block in seq order.
        let from_replay = q.replay.len().min(max);
        let mut items: Vec<Arc<Item>> = q.replay.drain(..from_replay).collect();
        let n = items.len() + q.len().min(max - items.len());
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
        if q.replay_pushed && q.replay.is_empty() {
            q.replay_pending = false;
            q.replay_pushed = false;
        }
        Batch { items, dropped }
    }

    /// Accepts a `replay` unless one is still being sent; the caller then
    /// has its items pushed with `push_replay`.
    pub(crate) fn try_begin_replay(&self) -> bool {
        let mut q = lock(&self.inner);
        !std::mem::replace(&mut q.replay_pending, true)
    }

    /// How long the queue has been full and shedding, if it is.
    pub(crate) fn stalled_for(&self) -> Option<std::time::Duration> {
        lock(&self.inner).stalled_since.map(|t| t.elapsed())
    }

    /// Replaces the filter (built by the caller outside the lock).
    pub(crate) fn set_filter(&self, filter: Filter) {
        lock(&self.inner).filter = filter;
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
#[non_exhaustive]
pub struct Replay {
    /// The items after `since` still in the ring, in order.
    pub items: Vec<Arc<Item>>,
    /// `false` if some items after `since` already fell out of the ring.
    pub recovered: bool,
    /// The oldest seq still in the ring (0 if empty).
    pub oldest: u64,
}

/// The replay ring and the registry of connection queues. See the module
/// docs for the lock order.
#[derive(Debug)]
pub struct Hub {
    rings: Mutex<Rings>,
    ring_capacity: usize,
    last_seq: AtomicU64,
    /// The seq of the first item ever published (0 before that).
    first_seq: AtomicU64,
    /// The newest seq, for writers waiting for something to send.
    announce: watch::Sender<u64>,
    queues: Mutex<Vec<Arc<Queue>>>,
    /// The history's identity (see [`Hub::set_epoch`]).
    epoch: Mutex<Option<Arc<str>>>,
    pub(crate) stats: Arc<Stats>,
}

/// The high ring keeps at least this many items, so a connection's queue
/// (1,024 by default) can be refilled with the high items it missed even
/// when the replay ring is smaller.
const HIGH_RING_MIN: usize = 4_096;

/// The replay ring, and the ring of high-priority items that outlive it
/// for writers that fell behind.
#[derive(Debug)]
struct Rings {
    all: VecDeque<Arc<Item>>,
    high: VecDeque<Arc<Item>>,
}

/// What a writer at some cursor has to pull from the hub.
#[derive(Debug)]
struct Pull {
    /// High items that fell out of the replay ring but not the high ring.
    missed_high: Vec<Arc<Item>>,
    /// The seq range that fell out of the replay ring, if any.
    lost: Option<(u64, u64)>,
    /// The replay ring's items after the cursor.
    fresh: Vec<Arc<Item>>,
}

/// The items of `ring` with `seq > since`, cloned (O(log n) to find them).
fn after(ring: &VecDeque<Arc<Item>>, since: u64) -> Vec<Arc<Item>> {
    let start = ring.partition_point(|i| i.seq <= since);
    ring.range(start..).cloned().collect()
}

impl Hub {
    /// A hub keeping the last `ring_capacity` items for replay.
    pub fn new(ring_capacity: usize) -> Self {
        let stats = Arc::new(Stats::default());
        Hub {
            rings: Mutex::new(Rings {
                all: VecDeque::with_capacity(ring_capacity.min(16_384)),
                high: VecDeque::new(),
            }),
            ring_capacity: ring_capacity.max(1),
            last_seq: AtomicU64::new(0),
            first_seq: AtomicU64::new(0),
            announce: watch::Sender::new(0),
            queues: Mutex::new(Vec::new()),
            epoch: Mutex::new(None),
            stats,
        }
    }

    /// Names the history the seqs count in, as Centrifugo's epoch does: a
    /// client resuming with another epoch (`?since=N&epoch=E`) is told
    /// `recovered: false` and given the whole ring, since its seqs mean
    /// nothing here. Change it when the numbering starts again. The
    /// `welcome` carries it.
    pub fn set_epoch(&self, epoch: impl Into<Arc<str>>) {
        *lock(&self.epoch) = Some(epoch.into());
    }

    /// The epoch set with [`Hub::set_epoch`], if any.
    pub fn epoch(&self) -> Option<Arc<str>> {
        lock(&self.epoch).clone()
    }

    /// The highest seq published so far.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Stores `item` for replay and tells waiting writers. O(1): the
    /// connections pull it when they are ready (see the module docs).
    pub fn publish(&self, item: Item) {
        let item = Arc::new(item);
        let seq = item.seq;
        {
            let mut rings = lock(&self.rings);
            if item.priority == Priority::High {
                if rings.high.len() >= self.ring_capacity.max(HIGH_RING_MIN) {
                    rings.high.pop_front();
                }
                rings.high.push_back(Arc::clone(&item));
            }
            if rings.all.len() >= self.ring_capacity {
                rings.all.pop_front();
            }
            rings.all.push_back(item);
            let _ = self
                .first_seq
                .compare_exchange(0, seq, Ordering::AcqRel, Ordering::Acquire);
            self.last_seq.fetch_max(seq, Ordering::AcqRel);
        }
        self.announce.send_if_modified(|last| {
            *last = (*last).max(seq);
            true
        });
    }

    /// A receiver that changes whenever something is published.
    pub(crate) fn announcements(&self) -> watch::Receiver<u64> {
        self.announce.subscribe()
    }

    /// What a writer at `cursor` has to pull.
    fn since(&self, cursor: u64) -> Pull {
        let rings = lock(&self.rings);
        let fresh = after(&rings.all, cursor);
        let oldest = rings.all.front().map_or(0, |i| i.seq);
        if oldest <= cursor + 1 {
            return Pull {
                missed_high: Vec::new(),
                lost: None,
                fresh,
            };
        }
        // Seqs cursor+1 .. oldest-1 are gone from the replay ring.
        let high: Vec<_> = after(&rings.high, cursor)
            .into_iter()
            .take_while(|i| i.seq < oldest)
            .collect();
        Pull {
            missed_high: high,
            lost: Some((cursor + 1, oldest - 1)),
            fresh,
        }
    }

    /// Items with `seq > since`, and whether that is all of them.
    pub fn replay(&self, since: u64) -> Replay {
        let rings = lock(&self.rings);
        let ring = &rings.all;
        let oldest = ring.front().map_or(0, |i| i.seq);
        let items = after(ring, since);
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
        // Under the ring lock, so `last` is exact: the queue's cursor starts
        // there (live) or at `since` (resume), and its writer pulls the rest.
        // Every item reaches the queue exactly once, in order.
        let rings = lock(&self.rings);
        let ring = &rings.all;
        let last = self.last_seq();
        lock(&self.queues).push(Arc::clone(&queue));
        let Some(since) = since else {
            // A fresh client starts live: nothing at or before `last` (or,
            // before anything was published, from the first item on).
            let mut q = lock(&queue.inner);
            q.cursor = last;
            q.unanchored = last == 0;
            return None;
        };
        let oldest = ring.front().map_or(0, |i| i.seq);
        let items = after(ring, since);
        let recovered = since >= last || ring.front().is_some_and(|first| first.seq <= since + 1);
        let mut q = lock(&queue.inner);
        // Resume from what the ring still has; the replay is not shed.
        q.cursor = since.max(oldest.saturating_sub(1)).min(last);
        q.replay_until = last;
        drop(q);
        Some(Replay {
            items,
            recovered,
            oldest,
        })
    }

    pub(crate) fn detach(&self, queue: &Arc<Queue>) {
        lock(&self.queues).retain(|q| !Arc::ptr_eq(q, queue));
    }

    /// The server's counters right now.
    pub fn stats_snapshot(&self) -> crate::stats::StatsSnapshot {
        let mut snapshot = self.stats.snapshot();
        let last = self.last_seq();
        snapshot.connections_behind = lock(&self.queues)
            .iter()
            .filter(|q| {
                let q_inner = lock(&q.inner);
                q_inner.len() as u64 + last.saturating_sub(q_inner.cursor) > q.capacity as u64
            })
            .count() as u64;
        snapshot
    }

    /// Connections attached now.
    pub fn connections(&self) -> usize {
        lock(&self.queues).len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What happens to a connection's queue, in order.
    #[derive(Debug, Clone)]
    enum Step {
        /// The hub publishes an item of this priority.
        Publish(bool),
        /// The writer pulls what is new.
        Pull,
        /// The writer takes up to n items.
        Take(usize),
        /// The client asks for a replay after this share (in 1/16ths) of
        /// what was published so far.
        Replay(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => any::<bool>().prop_map(Step::Publish),
            1 => Just(Step::Pull),
            1 => (1usize..8).prop_map(Step::Take),
            1 => (0u64..17).prop_map(Step::Replay),
        ]
    }

    fn publish(hub: &Hub, seq: u64, high: bool) {
        let priority = if high { Priority::High } else { Priority::Low };
        hub.publish(item(
            seq,
            None,
            "e".into(),
            None,
            priority,
            format!("{seq}"),
        ));
    }

    #[test]
    fn a_client_attached_before_the_first_item_loses_nothing_before_it() {
        // The host numbered events before the hub existed (a sidecar started
        // after the monitor): the hub's first item is seq 7.
        let hub = Hub::new(100);
        let queue = Arc::new(Queue::new(8, Filter::default()));
        let _ = hub.attach(Arc::clone(&queue), None);
        for seq in 7..=9 {
            publish(&hub, seq, true);
        }
        assert_eq!(queue.pull(&hub), 0);
        let batch = queue.take(usize::MAX);
        assert!(batch.dropped.is_none(), "{:?}", batch.dropped);
        assert_eq!(
            batch.items.iter().map(|i| i.seq).collect::<Vec<_>>(),
            [7, 8, 9]
        );
        // Later losses still count: it falls 200 items behind a ring of 100.
        for seq in 10..=210 {
            publish(&hub, seq, false);
        }
        assert!(queue.pull(&hub) > 0);
    }

    #[test]
    fn a_replay_is_sent_first_as_one_block_in_seq_order() {
        let hub = Hub::new(100);
        let queue = Arc::new(Queue::new(8, Filter::default()));
        let _ = hub.attach(Arc::clone(&queue), None);
        for seq in 1..=6 {
            publish(&hub, seq, seq % 2 == 0);
        }
        queue.pull(&hub);
        let first = queue.take(2);
        assert_eq!(
            first.items.iter().map(|i| i.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(queue.try_begin_replay());
        assert!(!queue.try_begin_replay(), "one replay at a time");
        queue.push_replay(hub.replay(1).items);
        let rest: Vec<u64> = queue.take(usize::MAX).items.iter().map(|i| i.seq).collect();
        assert_eq!(
            rest,
            [2, 3, 4, 5, 6, 3, 4, 5, 6],
            "the replay block, then what was queued"
        );
        assert!(
            queue.try_begin_replay(),
            "sent: the next replay is accepted"
        );
    }

    proptest! {
        /// Whatever the interleaving: what a connection receives is in seq
        /// order with no duplicate, and every published item is either
        /// received or counted as dropped.
        #[test]
        fn no_duplicate_no_reordering_nothing_unaccounted(
            steps in proptest::collection::vec(step(), 1..200),
            capacity in 1usize..12,
            ring in prop_oneof![Just(1_000usize), 1usize..24],
        ) {
            // A small ring: items fall out of it before the writer pulls
            // them (lost, or kept by the high ring) as well.
            let hub = Hub::new(ring);
            let queue = Arc::new(Queue::new(capacity, Filter::default()));
            let _ = hub.attach(Arc::clone(&queue), None);
            let (mut seq, mut received, mut dropped) = (0u64, Vec::new(), 0u64);
            // Replays: what each accepted one must send, and what was sent.
            let (mut replays_expected, mut replays_received) = (Vec::new(), Vec::new());
            let mut replay_pending = false;
            for step in steps.into_iter().chain([Step::Pull, Step::Take(usize::MAX)]) {
                match step {
                    Step::Publish(high) => { seq += 1; publish(&hub, seq, high); }
                    Step::Pull => { queue.pull(&hub); }
                    Step::Take(n) => {
                        let from_replay = lock(&queue.inner).replay.len().min(n);
                        let batch = queue.take(n);
                        let (replayed, live) = batch.items.split_at(from_replay);
                        replays_received.extend(replayed.iter().map(|i| i.seq));
                        received.extend(live.iter().map(|i| i.seq));
                        dropped += batch.dropped.map_or(0, |d| d.count);
                        if lock(&queue.inner).replay.is_empty() {
                            replay_pending = false;
                        }
                    }
                    Step::Replay(share) => {
                        let accepted = queue.try_begin_replay();
                        prop_assert_eq!(accepted, !replay_pending, "one replay at a time");
                        if accepted {
                            let items = hub.replay(seq * share / 16).items;
                            replays_expected.extend(items.iter().map(|i| i.seq));
                            // Done when the writer has taken it all (at once if empty).
                            replay_pending = true;
                            queue.push_replay(items);
                        }
                    }
                }
            }
            prop_assert!(received.windows(2).all(|w| w[0] < w[1]), "in order, no duplicate: {received:?}");
            prop_assert_eq!(received.len() as u64 + dropped, seq);
            // Every replay arrives whole, in order, before the live items
            // queued after it: the same items the ring held.
            prop_assert_eq!(replays_received, replays_expected);
        }

        /// With no take in between, a full queue keeps the high items: low
        /// ones are shed first, and a high one only when no low one is left.
        #[test]
        fn low_priority_is_shed_first_and_high_only_when_no_low_is_left(
            priorities in proptest::collection::vec(any::<bool>(), 1..100),
            capacity in 1usize..20,
        ) {
            let hub = Hub::new(1_000);
            let queue = Arc::new(Queue::new(capacity, Filter::default()));
            let _ = hub.attach(Arc::clone(&queue), None);
            for (i, &high) in priorities.iter().enumerate() {
                publish(&hub, i as u64 + 1, high);
                queue.pull(&hub);
            }
            let batch = queue.take(usize::MAX);
            let highs = priorities.iter().filter(|&&h| h).count();
            let kept_highs = batch.items.iter().filter(|i| i.priority == Priority::High).count();
            prop_assert_eq!(batch.items.len(), priorities.len().min(capacity));
            prop_assert_eq!(kept_highs, highs.min(capacity), "high items kept while low ones could go");
            // The high items shed, if any, are the oldest ones.
            let kept: Vec<u64> = batch.items.iter().filter(|i| i.priority == Priority::High).map(|i| i.seq).collect();
            let newest_highs: Vec<u64> = priorities.iter().enumerate()
                .filter(|(_, h)| **h).map(|(i, _)| i as u64 + 1)
                .collect::<Vec<_>>().into_iter().rev().take(kept.len()).rev().collect();
            prop_assert_eq!(kept, newest_highs);
        }
    }
}
