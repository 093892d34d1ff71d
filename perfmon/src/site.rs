//! Where perfmon's own spans are made: a guard's or tracked function's
//! callsite ([`HintSite`]), learned from the first enabled span it made,
//! and the set of callsites whose spans belong to futures that time their
//! own polls (`busy`), so that the layer leaves their busy time to them.
//!
//! The set is a fixed lock-free table of callsite addresses, filled once
//! per site (when it learns its callsite) and read when such a span opens.
//! A site that does not fit (more than [`TIMED_SITES`] of them) is simply
//! not in it: the layer times its spans' polls itself, as for any future.
//!
//! Imports nothing from the crate.

use std::sync::atomic::{AtomicPtr, Ordering};

use tracing::{Metadata, Span};

/// Callsites of self-timing futures the table holds at most.
pub(crate) const TIMED_SITES: usize = 1024;

/// The callsites whose futures time their own polls; null: free.
static TIMED: [AtomicPtr<Metadata<'static>>; TIMED_SITES] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; TIMED_SITES];

/// Where `meta`'s probe starts in [`TIMED`].
fn start(meta: *const Metadata<'static>) -> usize {
    // Metadata is at least 8-byte aligned: the low bits say nothing.
    (meta as usize >> 3).wrapping_mul(0x9E37_79B9) % TIMED_SITES
}

/// Whether spans made at `meta` belong to futures that time their own polls.
#[inline]
pub(crate) fn is_timed(meta: &'static Metadata<'static>) -> bool {
    let meta = std::ptr::from_ref(meta).cast_mut();
    let first = start(meta);
    for i in 0..TIMED_SITES {
        let slot = TIMED[(first + i) % TIMED_SITES].load(Ordering::Acquire);
        if slot == meta {
            return true;
        }
        if slot.is_null() {
            return false;
        }
    }
    false
}

/// Adds `meta` to the self-timing callsites (once per site; a full table
/// leaves it out).
#[cold]
fn add_timed(meta: *mut Metadata<'static>) {
    let first = start(meta);
    for i in 0..TIMED_SITES {
        let slot = &TIMED[(first + i) % TIMED_SITES];
        match slot.compare_exchange(
            std::ptr::null_mut(),
            meta,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return,
            Err(existing) if existing == meta => return,
            Err(_) => {}
        }
    }
}

/// The callsite of a guard's span, learned from the first enabled span it
/// made. Public only for the attribute macros' expansions (`__private`).
#[derive(Debug)]
pub struct HintSite {
    meta: AtomicPtr<Metadata<'static>>,
    /// Its spans belong to futures that time their own polls.
    timed: bool,
}

impl HintSite {
    /// A site that has not made a span yet.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        HintSite {
            meta: AtomicPtr::new(std::ptr::null_mut()),
            timed: false,
        }
    }

    /// A site whose spans belong to futures that time their own polls
    /// (`track_agent`'s, an `async fn`'s under `#[track_agent]`).
    pub const fn timed() -> Self {
        HintSite {
            meta: AtomicPtr::new(std::ptr::null_mut()),
            timed: true,
        }
    }

    /// Its callsite, once learned.
    #[inline]
    pub(crate) fn get(&self) -> Option<&'static Metadata<'static>> {
        let meta = self.meta.load(Ordering::Acquire);
        // SAFETY: the pointer is null or came from a `&'static Metadata`
        // (`learn_from`), which lives for the whole program.
        #[allow(unsafe_code)]
        unsafe {
            meta.as_ref()
        }
    }

    /// Learns its callsite from `span`, if it is enabled (every thread that
    /// races here stores the same one).
    #[cold]
    #[inline(never)]
    pub(crate) fn learn_from(&self, span: &Span) {
        if !span.is_disabled()
            && let Some(meta) = span.metadata()
        {
            let meta = std::ptr::from_ref(meta).cast_mut();
            if self.timed {
                add_timed(meta);
            }
            self.meta.store(meta, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timed_site_registers_its_callsite_and_a_plain_one_does_not() {
        // Enabled spans (a disabled one teaches a site nothing).
        let _g = tracing::subscriber::set_default(tracing_subscriber::registry());
        static TIMED_SITE: HintSite = HintSite::timed();
        static PLAIN_SITE: HintSite = HintSite::new();
        let timed = tracing::info_span!("timed");
        let plain = tracing::info_span!("plain");
        TIMED_SITE.learn_from(&timed);
        PLAIN_SITE.learn_from(&plain);
        let (Some(timed), Some(plain)) = (TIMED_SITE.get(), PLAIN_SITE.get()) else {
            panic!("both sites learned their callsites");
        };
        assert!(is_timed(timed));
        assert!(!is_timed(plain));
    }
}
