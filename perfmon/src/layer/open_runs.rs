//! Per-thread stacks of open synchronous runs: where the layer keeps the
//! state of a run opened by a guard (entered once, on one thread, closed
//! there almost always), instead of in the span's extensions.
//!
//! A span's extensions cost a boxed allocation, a type-map insert and a
//! remove, and a registry lookup at each end. Here opening a run is a
//! push onto the opening thread's own stack, and closing it a search from
//! the top (where it almost always is) and a removal, under a lock that
//! only a rare reader from another thread ever contends.
//!
//! Other threads can still find a run: a run nested in it on a thread of
//! its own (a scoped thread or a task carrying the span), or its span
//! closed elsewhere (a clone sent away). They search every thread's
//! stack, which is slow and rare. A stack outlives its thread while it
//! holds runs, so such runs are still found and closed.
//!
//! Generic over the state kept, so that it imports nothing from the layer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// One open run: the layer that opened it, its span id, its state.
struct Open<T> {
    layer: u64,
    span: u64,
    state: T,
}

/// One thread's open runs, in the order they opened.
pub(super) struct Stack<T> {
    runs: Mutex<Vec<Open<T>>>,
    /// `runs.len()`, readable without the lock: a span closing on a thread
    /// with no open run (an unrelated span) costs one load.
    open: AtomicUsize,
    /// Its thread has exited (the stack stays while it holds runs).
    orphaned: AtomicBool,
}

impl<T> Stack<T> {
    fn position(runs: &[Open<T>], layer: u64, span: u64) -> Option<usize> {
        runs.iter()
            .rposition(|o| o.span == span && o.layer == layer)
    }

    fn with<R>(&self, layer: u64, span: u64, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut runs = lock(&self.runs);
        let i = Self::position(&runs, layer, span)?;
        Some(f(&mut runs[i].state))
    }

    fn take(&self, layer: u64, span: u64) -> Option<T> {
        if self.open.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut runs = lock(&self.runs);
        let taken = Self::take_locked(&mut runs, layer, span);
        self.open.store(runs.len(), Ordering::Relaxed);
        taken
    }

    fn take_locked(runs: &mut Vec<Open<T>>, layer: u64, span: u64) -> Option<T> {
        // The innermost run first: it is nearly always the one closing.
        if runs
            .last()
            .is_some_and(|o| o.span == span && o.layer == layer)
        {
            return runs.pop().map(|o| o.state);
        }
        let i = Self::position(runs, layer, span)?;
        Some(runs.remove(i).state)
    }

    fn is_empty(&self) -> bool {
        lock(&self.runs).is_empty()
    }
}

/// Every thread's stack.
pub(super) struct Stacks<T> {
    all: Mutex<Vec<Arc<Stack<T>>>>,
}

impl<T> Stacks<T> {
    pub(super) const fn new() -> Self {
        Stacks {
            all: Mutex::new(Vec::new()),
        }
    }

    /// A new stack for the calling thread, registered.
    pub(super) fn register(&'static self) -> Local<T> {
        let stack = Arc::new(Stack {
            runs: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            orphaned: AtomicBool::new(false),
        });
        lock(&self.all).push(Arc::clone(&stack));
        Local {
            stack,
            stacks: self,
        }
    }

    /// Runs `f` on the run `(layer, span)` in any thread's stack.
    #[cold]
    pub(super) fn with_any<R>(
        &self,
        layer: u64,
        span: u64,
        f: impl FnOnce(&mut T) -> R,
    ) -> Option<R> {
        let stacks: Vec<Arc<Stack<T>>> = lock(&self.all).clone();
        let mut f = Some(f);
        for stack in stacks {
            let found = stack.with(layer, span, |state| f.take().map(|f| f(state)));
            if let Some(result) = found {
                return result;
            }
        }
        None
    }

    /// Removes the run `(layer, span)` from whichever thread's stack holds it.
    #[cold]
    pub(super) fn take_any(&self, layer: u64, span: u64) -> Option<T> {
        let stacks: Vec<Arc<Stack<T>>> = lock(&self.all).clone();
        for stack in stacks {
            if let Some(state) = stack.take(layer, span) {
                if stack.orphaned.load(Ordering::Acquire) && stack.is_empty() {
                    lock(&self.all).retain(|s| !Arc::ptr_eq(s, &stack));
                }
                return Some(state);
            }
        }
        None
    }
}

/// The calling thread's stack (in a `thread_local!`).
pub(super) struct Local<T: 'static> {
    stack: Arc<Stack<T>>,
    stacks: &'static Stacks<T>,
}

impl<T> Local<T> {
    /// Opens a run on this thread.
    #[inline]
    pub(super) fn push(&self, layer: u64, span: u64, state: T) {
        let mut runs = lock(&self.stack.runs);
        runs.push(Open { layer, span, state });
        self.stack.open.store(runs.len(), Ordering::Relaxed);
    }

    /// Runs `f` on the run `(layer, span)` if this thread holds it.
    #[inline]
    pub(super) fn with<R>(&self, layer: u64, span: u64, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.stack.with(layer, span, f)
    }

    /// Removes the run `(layer, span)` if this thread holds it.
    #[inline]
    pub(super) fn take(&self, layer: u64, span: u64) -> Option<T> {
        self.stack.take(layer, span)
    }
}

impl<T> Drop for Local<T> {
    fn drop(&mut self) {
        // Runs still open (their spans live on elsewhere) stay findable.
        self.stack.orphaned.store(true, Ordering::Release);
        if self.stack.is_empty() {
            lock(&self.stacks.all).retain(|s| !Arc::ptr_eq(s, &self.stack));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static STACKS: Stacks<u32> = Stacks::new();

    #[test]
    fn runs_are_found_on_their_thread_and_from_others_and_outlive_it() {
        let local = STACKS.register();
        local.push(1, 10, 100);
        local.push(1, 11, 110);
        local.push(2, 11, 211); // another layer, the same span id
        assert_eq!(local.with(1, 11, |s| *s), Some(110));
        assert_eq!(local.with(2, 11, |s| *s), Some(211));
        assert_eq!(local.take(1, 12), None);
        let from_another = std::thread::spawn(|| {
            let mine = STACKS.register();
            (mine.with(1, 10, |s| *s), STACKS.with_any(1, 10, |s| *s))
        })
        .join()
        .unwrap();
        assert_eq!(from_another, (None, Some(100)));
        // The owner exits with runs open: another thread still closes them.
        let leaving = std::thread::spawn(|| {
            let mine = STACKS.register();
            mine.push(3, 30, 300);
        });
        leaving.join().unwrap();
        assert_eq!(STACKS.take_any(3, 30), Some(300));
        assert_eq!(STACKS.take_any(3, 30), None);
        assert_eq!(local.take(1, 11), Some(110));
        assert_eq!(local.take(1, 10), Some(100));
        assert_eq!(local.take(2, 11), Some(211));
    }
}
