//! [`lock`]: how perfmon takes its mutexes. Bottom of the dependency order.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering from poisoning: perfmon keeps its state consistent
/// across panics (a panic in the host never stops recording), so a guard
/// dropped while unwinding leaves nothing half-written to refuse.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
