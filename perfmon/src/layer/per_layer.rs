//! perfmon's state in a span's extensions, one entry per monitor.
//!
//! tracing-subscriber's extensions hold one value per type, and the layers
//! of several monitors (each a `PerfmonLayer`, storing the same types) may
//! share one subscriber. Each keeps its own entry here, keyed by its
//! monitor's recorder; the usual single entry needs no allocation beyond
//! the extension's own.

use tracing_subscriber::registry::{Extensions, ExtensionsMut};

/// One monitor's value of type `T` on a span, and any other monitors'.
struct PerLayer<T> {
    first: (usize, T),
    rest: Vec<(usize, T)>,
}

impl<T> PerLayer<T> {
    fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        if self.first.0 == key {
            return Some(&mut self.first.1);
        }
        self.rest
            .iter_mut()
            .find(|(k, _)| *k == key)
            .map(|(_, value)| value)
    }

    fn get(&self, key: usize) -> Option<&T> {
        if self.first.0 == key {
            return Some(&self.first.1);
        }
        self.rest
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, value)| value)
    }
}

/// Keeps `value` as the monitor `key`'s. A monitor whose layer is in the
/// subscriber twice keeps the first value: its runs count once.
pub(super) fn insert<T: Send + Sync + 'static>(ext: &mut ExtensionsMut<'_>, key: usize, value: T) {
    match ext.get_mut::<PerLayer<T>>() {
        Some(all) if all.get(key).is_some() => {}
        Some(all) => all.rest.push((key, value)),
        None => ext.insert(PerLayer {
            first: (key, value),
            rest: Vec::new(),
        }),
    }
}

/// The monitor `key`'s value.
pub(super) fn get<'a, T: Send + Sync + 'static>(
    ext: &'a Extensions<'_>,
    key: usize,
) -> Option<&'a T> {
    ext.get::<PerLayer<T>>()?.get(key)
}

/// The monitor `key`'s value, to change.
pub(super) fn get_mut<'a, T: Send + Sync + 'static>(
    ext: &'a mut ExtensionsMut<'_>,
    key: usize,
) -> Option<&'a mut T> {
    ext.get_mut::<PerLayer<T>>()?.get_mut(key)
}

/// Every monitor's value, to change.
pub(super) fn for_each_mut<T: Send + Sync + 'static>(
    ext: &mut ExtensionsMut<'_>,
    mut f: impl FnMut(&mut T),
) {
    if let Some(all) = ext.get_mut::<PerLayer<T>>() {
        f(&mut all.first.1);
        all.rest.iter_mut().for_each(|(_, value)| f(value));
    }
}

/// Takes the monitor `key`'s value out.
pub(super) fn remove<T: Send + Sync + 'static>(
    ext: &mut ExtensionsMut<'_>,
    key: usize,
) -> Option<T> {
    let all = ext.get_mut::<PerLayer<T>>()?;
    if all.first.0 != key {
        let i = all.rest.iter().position(|(k, _)| *k == key)?;
        return Some(all.rest.swap_remove(i).1);
    }
    match all.rest.pop() {
        Some(next) => Some(std::mem::replace(&mut all.first, next).1),
        None => ext.remove::<PerLayer<T>>().map(|all| all.first.1),
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::registry::{LookupSpan, SpanData};

    use super::*;

    #[test]
    fn each_key_keeps_its_own_value() {
        let registry = tracing::Dispatch::new(tracing_subscriber::registry());
        tracing::dispatcher::with_default(&registry, || {
            let span = tracing::info_span!("s");
            let Some(id) = span.id() else {
                panic!("the registry enables every span")
            };
            let Some(registry) = registry.downcast_ref::<tracing_subscriber::Registry>() else {
                panic!("the dispatcher is the registry")
            };
            let Some(data) = registry.span_data(&id) else {
                panic!("the span is open")
            };
            let mut ext = data.extensions_mut();
            insert(&mut ext, 1, "one");
            insert(&mut ext, 2, "two");
            insert(&mut ext, 2, "again");
            insert(&mut ext, 3, "three");
            assert_eq!(get_mut::<&str>(&mut ext, 2).copied(), Some("two"));
            assert_eq!(remove::<&str>(&mut ext, 1), Some("one"));
            assert_eq!(remove::<&str>(&mut ext, 1), None);
            assert_eq!(get_mut::<&str>(&mut ext, 3).copied(), Some("three"));
            assert_eq!(remove::<&str>(&mut ext, 3), Some("three"));
            assert_eq!(remove::<&str>(&mut ext, 2), Some("two"));
            assert_eq!(get_mut::<&str>(&mut ext, 2), None);
        });
    }
}
