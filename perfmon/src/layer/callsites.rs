//! Which callsites perfmon cares about, decided once per callsite (in
//! `register_callsite`, or at its first sight if that never reached this
//! layer) and kept in a fixed lock-free table.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tracing::Metadata;

use crate::fields::{
    AGENT_FIELD, OUTPUT_TARGET, PIPELINE_FIELD, PROGRESS_TARGET, SYNC_FIELD, THOUGHT_TARGET,
    TOOL_FIELD, USAGE_TARGET,
};

/// What a callsite is to perfmon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Kind {
    Pipeline = 1,
    Agent = 2,
    /// An agent span from a synchronous guard: entered once, no busy time.
    AgentSync = 3,
    Progress = 4,
    Thought = 5,
    Output = 6,
    Usage = 7,
}

impl Kind {
    fn from_bits(bits: usize) -> Option<Kind> {
        Some(match bits {
            1 => Kind::Pipeline,
            2 => Kind::Agent,
            3 => Kind::AgentSync,
            4 => Kind::Progress,
            5 => Kind::Thought,
            6 => Kind::Output,
            7 => Kind::Usage,
            _ => return None,
        })
    }

    /// A span perfmon keeps state for (a run or a pipeline), not an event.
    pub(crate) fn is_span(self) -> bool {
        matches!(self, Kind::Pipeline | Kind::Agent | Kind::AgentSync)
    }

    /// What a callsite is to perfmon, from its metadata alone. Tool spans
    /// are agent kinds: the run's kind (agent or tool) is read with its name.
    pub(crate) fn classify(meta: &Metadata<'_>) -> Option<Kind> {
        if meta.is_span() {
            let fields = meta.fields();
            if fields.field(PIPELINE_FIELD).is_some() {
                Some(Kind::Pipeline)
            } else if fields.field(AGENT_FIELD).is_some() || fields.field(TOOL_FIELD).is_some() {
                Some(if fields.field(SYNC_FIELD).is_some() {
                    Kind::AgentSync
                } else {
                    Kind::Agent
                })
            } else {
                None
            }
        } else if meta.target() == PROGRESS_TARGET {
            Some(Kind::Progress)
        } else if meta.target() == THOUGHT_TARGET {
            Some(Kind::Thought)
        } else if meta.target() == OUTPUT_TARGET {
            Some(Kind::Output)
        } else if meta.target() == USAGE_TARGET {
            Some(Kind::Usage)
        } else {
            None
        }
    }

    /// An agent run, sync or not.
    pub(crate) fn is_agent(self) -> bool {
        matches!(self, Kind::Agent | Kind::AgentSync)
    }
}

/// Open-addressing table of the callsites perfmon cares about, keyed by the
/// address of their `'static` metadata, with the kind packed in the low bits
/// (metadata is 8-byte aligned). Writes happen in `register_callsite` only;
/// a lookup is a hash and an atomic load or two. If it ever fills up,
/// lookups that miss fall back to classifying the metadata directly.
pub(crate) struct Callsites {
    slots: Box<[AtomicUsize]>,
    full: AtomicBool,
}

/// Table size: a program has at most a few hundred perfmon callsites.
const CALLSITE_SLOTS: usize = 1 << 12;
const KIND_MASK: usize = 0b111;

impl Callsites {
    pub(crate) fn new() -> Self {
        Self::with_slots(CALLSITE_SLOTS)
    }

    fn with_slots(n: usize) -> Self {
        debug_assert!(
            n.is_power_of_two() && n >= 2,
            "the hash needs at least one bit"
        );
        Callsites {
            slots: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            full: AtomicBool::new(false),
        }
    }

    fn key(meta: &'static Metadata<'static>) -> usize {
        meta as *const Metadata<'static> as usize
    }

    fn start(&self, key: usize) -> usize {
        // Fibonacci hashing of the address.
        let bits = self.slots.len().trailing_zeros();
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (usize::BITS - bits)) & (self.slots.len() - 1)
    }

    /// Remembers `meta` as `kind` (`None`: not perfmon's). If the table is
    /// full, remembers that instead, so that misses are classified on the spot.
    pub(crate) fn insert(&self, meta: &'static Metadata<'static>, kind: Option<Kind>) {
        let key = Self::key(meta);
        debug_assert_eq!(key & KIND_MASK, 0, "metadata is at least 8-byte aligned");
        let packed = key | kind.map_or(0, |k| k as usize);
        let start = self.start(key);
        let mask = self.slots.len() - 1;
        for i in 0..self.slots.len() {
            let slot = &self.slots[(start + i) & mask];
            match slot.compare_exchange(0, packed, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(existing) if existing & !KIND_MASK == key => return,
                Err(_) => {}
            }
        }
        self.full.store(true, Ordering::Release);
    }

    /// What `meta` is, if perfmon cares about it.
    ///
    /// A callsite this table has not seen is classified here and
    /// remembered: `register_callsite` does not always reach every layer
    /// (a callsite first hit on one thread while another thread's
    /// dispatcher is being registered is registered with the dispatchers
    /// that existed then), and a perfmon span must never go unseen for that.
    #[inline]
    pub(crate) fn get(&self, meta: &'static Metadata<'static>) -> Option<Kind> {
        let key = Self::key(meta);
        let start = self.start(key);
        let mask = self.slots.len() - 1;
        for i in 0..self.slots.len() {
            let packed = self.slots[(start + i) & mask].load(Ordering::Acquire);
            if packed == 0 {
                break;
            }
            if packed & !KIND_MASK == key {
                return Kind::from_bits(packed & KIND_MASK);
            }
        }
        self.first_sight(meta)
    }

    #[cold]
    fn first_sight(&self, meta: &'static Metadata<'static>) -> Option<Kind> {
        let kind = Kind::classify(meta);
        if !self.full.load(Ordering::Acquire) {
            self.insert(meta, kind);
        }
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metadata of a span callsite declared with `fields`.
    macro_rules! span_meta {
        ($($field:tt)*) => {{
            let span = tracing::info_span!("s", $($field)*);
            span.metadata()
        }};
    }

    #[test]
    fn spans_are_classified_by_their_fields() {
        let _d = tracing::subscriber::set_default(tracing_subscriber::registry());
        assert_eq!(
            Kind::classify(span_meta!(perfmon.pipeline = "p").unwrap()),
            Some(Kind::Pipeline)
        );
        assert_eq!(
            Kind::classify(span_meta!(perfmon.agent = "a").unwrap()),
            Some(Kind::Agent)
        );
        assert_eq!(
            Kind::classify(
                span_meta!(perfmon.agent = "a", perfmon.sync = tracing::field::Empty).unwrap()
            ),
            Some(Kind::AgentSync)
        );
        assert_eq!(
            Kind::classify(
                span_meta!(perfmon.tool = "t", perfmon.sync = tracing::field::Empty).unwrap()
            ),
            Some(Kind::AgentSync)
        );
        assert_eq!(Kind::classify(span_meta!(other = 1).unwrap()), None);
    }

    #[test]
    fn lookups_find_what_was_inserted_and_nothing_else() {
        let _d = tracing::subscriber::set_default(tracing_subscriber::registry());
        let table = Callsites::new();
        let agent = span_meta!(perfmon.agent = "a").unwrap();
        let pipeline = span_meta!(perfmon.pipeline = "p").unwrap();
        table.insert(agent, Some(Kind::Agent));
        table.insert(agent, Some(Kind::Agent)); // twice is once
        assert_eq!(table.get(agent), Some(Kind::Agent));
        let other = span_meta!(other = 1).unwrap();
        table.insert(other, None);
        assert_eq!(table.get(other), None);
        assert_eq!(
            table.get(pipeline),
            Some(Kind::Pipeline),
            "never registered here: classified at first sight"
        );
    }

    #[test]
    fn a_full_table_falls_back_to_classifying() {
        let _d = tracing::subscriber::set_default(tracing_subscriber::registry());
        let table = Callsites::with_slots(2);
        let agent = span_meta!(perfmon.agent = "a").unwrap();
        let pipeline = span_meta!(perfmon.pipeline = "p").unwrap();
        let sync = span_meta!(perfmon.agent = "s", perfmon.sync = tracing::field::Empty).unwrap();
        table.insert(agent, Some(Kind::Agent));
        table.insert(pipeline, Some(Kind::Pipeline));
        table.insert(sync, Some(Kind::AgentSync)); // no room
        assert_eq!(table.get(agent), Some(Kind::Agent));
        assert_eq!(table.get(pipeline), Some(Kind::Pipeline));
        assert_eq!(
            table.get(sync),
            Some(Kind::AgentSync),
            "classified on the spot"
        );
    }
}
