//! The agent table: agent name → [`AgentEntry`], a copy-on-write map whose
//! reads take no lock, behind a per-thread cache of the last few entries
//! used (no hashing, no shared memory touched for a thread's usual agents),
//! and the name hint by which a guard hands the layer its run's entry
//! without the layer visiting the span's fields.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use tracing::{Metadata, Span};

use crate::record::RunKind;
use crate::site::HintSite;
use crate::stats::AgentEntry;
use crate::sync::lock;

/// Source of [`AgentTable`] ids.
static NEXT_TABLE: AtomicU64 = AtomicU64::new(1);

/// Entries each thread keeps at hand (most programs' threads run a handful
/// of agents); they keep at most this many entries alive per thread after
/// their monitor is dropped.
const RECENT_SLOTS: usize = 4;

/// A thread's recently resolved entries, with their table's id.
struct Recent {
    slots: [Option<(u64, Arc<AgentEntry>)>; RECENT_SLOTS],
    /// The slot the next new entry replaces.
    next: usize,
}

thread_local! {
    static RECENT: RefCell<Recent> = const {
        RefCell::new(Recent {
            slots: [const { None }; RECENT_SLOTS],
            next: 0,
        })
    };
}

/// The name runs are filed under once `max_agents` distinct names exist.
pub(crate) const OVERFLOW_AGENT: &str = "(other)";

/// Agent name → entry. Reads are lock-free (`ArcSwap::load`, then an FxHash
/// lookup: names come from the program, not from untrusted input); inserting
/// a new name copies the map under a writer lock, once per name.
#[derive(Debug)]
pub(crate) struct AgentTable {
    /// Process-unique, for the threads' caches of recent entries (an
    /// address could be reused by a later table).
    id: u64,
    map: ArcSwap<FxHashMap<Arc<str>, Arc<AgentEntry>>>,
    writer: Mutex<()>,
    max_agents: usize,
    metrics_enabled: bool,
}

impl AgentTable {
    pub(crate) fn new(max_agents: usize, metrics_enabled: bool) -> Self {
        AgentTable {
            id: NEXT_TABLE.fetch_add(1, Ordering::Relaxed),
            map: ArcSwap::from_pointee(FxHashMap::default()),
            writer: Mutex::new(()),
            max_agents,
            metrics_enabled,
        }
    }

    /// The entry for `name`, created on first use (as a `kind`). Once
    /// `max_agents` names exist, new names share the `"(other)"` entry and
    /// `overflowed` counts them.
    pub(crate) fn get_or_insert(
        &self,
        name: &str,
        kind: RunKind,
        overflowed: &AtomicU64,
    ) -> Arc<AgentEntry> {
        if let Some(entry) = self.recent(name) {
            return entry;
        }
        if let Some(entry) = self.map.load().get(name) {
            self.remember(entry);
            return Arc::clone(entry);
        }
        let _writer = lock(&self.writer);
        let current = self.map.load_full();
        if let Some(entry) = current.get(name) {
            return Arc::clone(entry);
        }
        let key = if current.len() >= self.max_agents {
            // Pathological input (unbounded distinct names): such runs take
            // this locked path every time, and are counted.
            overflowed.fetch_add(1, Ordering::Relaxed);
            if let Some(entry) = current.get(OVERFLOW_AGENT) {
                return Arc::clone(entry);
            }
            Arc::<str>::from(OVERFLOW_AGENT)
        } else {
            Arc::<str>::from(name)
        };
        let entry = Arc::new(AgentEntry::new(
            Arc::clone(&key),
            kind,
            self.metrics_enabled,
        ));
        let mut next = FxHashMap::clone(&current);
        next.insert(key, Arc::clone(&entry));
        self.map.store(Arc::new(next));
        if &*entry.name == name {
            self.remember(&entry);
        }
        entry
    }

    /// `name`'s entry, if this thread resolved it lately: a few string
    /// compares, no hashing, no shared memory touched.
    #[inline]
    fn recent(&self, name: &str) -> Option<Arc<AgentEntry>> {
        RECENT
            .try_with(|recent| {
                let recent = recent.try_borrow().ok()?;
                recent
                    .slots
                    .iter()
                    .flatten()
                    .find(|(table, entry)| *table == self.id && *entry.name == *name)
                    .map(|(_, entry)| Arc::clone(entry))
            })
            .ok()
            .flatten()
    }

    /// Keeps `entry` among this thread's recent ones (never the overflow
    /// entry for another name: those runs must each be counted).
    fn remember(&self, entry: &Arc<AgentEntry>) {
        let _ = RECENT.try_with(|recent| {
            if let Ok(mut recent) = recent.try_borrow_mut() {
                let i = recent.next;
                recent.slots[i] = Some((self.id, Arc::clone(entry)));
                recent.next = (i + 1) % RECENT_SLOTS;
            }
        });
    }

    pub(crate) fn entries(&self) -> Vec<Arc<AgentEntry>> {
        self.map.load().values().cloned().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.load().len()
    }

    /// The entry and kind a guard offered for the span being created at
    /// `meta` (an [`Offer`]), if it is this table's.
    #[inline]
    pub(crate) fn take_hint(
        &self,
        meta: &'static Metadata<'static>,
    ) -> Option<(Arc<AgentEntry>, RunKind)> {
        let offered = HINT.try_with(Cell::get).ok().flatten()?;
        if !std::ptr::eq(offered.meta, meta) || offered.table != self.id {
            return None;
        }
        RECENT
            .try_with(|recent| {
                let recent = recent.try_borrow().ok()?;
                let (table, entry) = recent.slots.get(offered.slot)?.as_ref()?;
                // Still the entry offered (another table's lookup may have
                // replaced it meanwhile).
                (*table == self.id && Arc::as_ptr(entry) as usize == offered.entry)
                    .then(|| (Arc::clone(entry), offered.kind))
            })
            .ok()
            .flatten()
    }
}

/// The entry a guard found for the span it is making, offered to the layer
/// (`AgentTable::take_hint`): a guard knows its run's name, so the layer
/// need not visit the span's fields to learn it. Plain data (no reference
/// count to move): the entry stays in this thread's cache of recent ones,
/// and the layer checks it is still there.
#[derive(Clone, Copy)]
struct Hint {
    /// The callsite of the span being made: the hint serves only a span
    /// made there.
    meta: &'static Metadata<'static>,
    /// The table the entry belongs to.
    table: u64,
    /// Where the entry is in [`RECENT`], and its address there (compared,
    /// never dereferenced).
    slot: usize,
    entry: usize,
    kind: RunKind,
}

thread_local! {
    /// The hint offered for the span being made on this thread.
    static HINT: Cell<Option<Hint>> = const { Cell::new(None) };
}

/// An offer of an agent's entry to the layer, for the span about to be made
/// at a [`HintSite`]: withdrawn by [`made`](Offer::made). Every offer at a
/// site replaces whatever hint is left (one left by a span whose making
/// unwound), so no span takes another's.
#[must_use = "make the span, then call `made`"]
pub(crate) struct Offer<'s> {
    /// The site, while it has not learned its callsite.
    learning: Option<&'s HintSite>,
    /// A hint is set, to withdraw.
    offered: bool,
}

impl<'s> Offer<'s> {
    /// Offers the entry of the agent (or tool) `name`, if this thread
    /// resolved it lately and the site knows its callsite.
    #[inline]
    pub(crate) fn new(site: &'s HintSite, name: &str, kind: RunKind) -> Self {
        // The site learns its callsite from its first enabled span: until
        // then (no subscriber installed, say), one load and nothing offered.
        let Some(meta) = site.get() else {
            // Only an enabled span can teach it: none is made while no
            // subscriber wants INFO spans (none is installed, say).
            let enabled = tracing::level_enabled!(tracing::Level::INFO);
            return Offer {
                learning: enabled.then_some(site),
                offered: false,
            };
        };
        Offer {
            learning: None,
            offered: offer(meta, name, kind),
        }
    }

    /// The span was made: the offer is withdrawn, and the site learns its
    /// callsite from the first enabled span it made. Takes the span and
    /// gives it back (a borrow would make the guards copy it around).
    #[inline(always)]
    pub(crate) fn made(self, span: Span) -> Span {
        if self.offered {
            let _ = HINT.try_with(|hint| hint.set(None));
        }
        if let Some(site) = self.learning {
            site.learn_from(&span);
        }
        span
    }
}

/// Sets the hint for `name` (or clears it, if this thread has no recent
/// entry of that name); whether one is set. Out of line: the guards stay
/// small where they are inlined.
#[inline(never)]
fn offer(meta: &'static Metadata<'static>, name: &str, kind: RunKind) -> bool {
    let offered = RECENT
        .try_with(|recent| {
            let recent = recent.try_borrow().ok()?;
            recent.slots.iter().enumerate().find_map(|(slot, cached)| {
                let (table, entry) = cached.as_ref()?;
                (*entry.name == *name).then_some(Hint {
                    meta,
                    table: *table,
                    slot,
                    entry: Arc::as_ptr(entry) as usize,
                    kind,
                })
            })
        })
        .ok()
        .flatten();
    HINT.try_with(|hint| hint.set(offered)).is_ok() && offered.is_some()
}
