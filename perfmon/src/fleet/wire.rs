//! What travels through the broker: the entries a publisher appends (events,
//! heartbeats), their field names, and the source description they carry.
//! Bottom of the fleet's dependency order: plain data, no I/O.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Field: the entry's kind, [`KIND_EVENT`] or [`KIND_HEARTBEAT`].
pub(crate) const FIELD_KIND: &str = "k";
/// Field: the source's name.
pub(crate) const FIELD_SOURCE: &str = "src";
/// Field: the source's instance (name, pid and start time: one process).
pub(crate) const FIELD_INSTANCE: &str = "inst";
/// Field: the fleet-wide seq the broker gave an event (events only).
pub(crate) const FIELD_SEQ: &str = "seq";
/// Field: the body, JSON: an event as the sidecar sends it, or a heartbeat.
pub(crate) const FIELD_BODY: &str = "e";

/// An event: numbered by the broker, forwarded by collectors.
pub(crate) const KIND_EVENT: &str = "event";
/// A heartbeat: not numbered, not forwarded; keeps its source live.
pub(crate) const KIND_HEARTBEAT: &str = "hb";

/// Event type a publisher appends when it starts: its [`SourceInfo`].
pub(crate) const SOURCE_STARTED: &str = "source_started";
/// Event type a collector appends (once per instance, whichever collector
/// sees it first) when a source stopped heartbeating: its open pipelines
/// are lost.
pub(crate) const SOURCE_GONE: &str = "source_gone";

/// One entry to append.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// [`KIND_EVENT`] or [`KIND_HEARTBEAT`].
    pub(crate) kind: &'static str,
    /// The source's name.
    pub(crate) source: std::sync::Arc<str>,
    /// The source's instance.
    pub(crate) instance: std::sync::Arc<str>,
    /// The JSON body.
    pub(crate) body: String,
}

/// One entry read back, as the broker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Incoming {
    /// The broker's id for it (for Redis, `ms-n`), the position to read after.
    pub(crate) id: String,
    /// When the broker stored it, unix ms by the broker's clock.
    pub(crate) stored_ms: u64,
    /// The fields, `None` where one was missing or not text.
    pub(crate) kind: Option<String>,
    pub(crate) source: Option<String>,
    pub(crate) instance: Option<String>,
    pub(crate) seq: Option<u64>,
    pub(crate) body: Option<String>,
}

/// Who a source is: carried by its `source_started` event and heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SourceInfo {
    /// The name given with `PublisherBuilder::source` (e.g. `worker-3`).
    pub name: String,
    /// The machine's host name.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// The perfmon version that published.
    pub version: String,
    /// When the publisher started, unix ms.
    pub started_at_ms: u64,
    /// Name, pid and start time together: one process's identity.
    pub instance: String,
}

impl SourceInfo {
    /// This process, named `name`.
    pub(crate) fn of_this_process(name: &str) -> Self {
        let pid = std::process::id();
        let started_at_ms = unix_ms_now();
        SourceInfo {
            name: name.to_owned(),
            host: host_name(),
            pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at_ms,
            instance: format!("{name}/{pid}/{started_at_ms}"),
        }
    }
}

/// A heartbeat's body: who, and how the publisher is doing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub(crate) info: SourceInfo,
    /// Entries appended so far.
    pub(crate) published: u64,
    /// Events lost so far (buffer full, or the exporter fell behind).
    pub(crate) dropped: u64,
    /// Entries waiting in the publisher's buffer.
    pub(crate) buffered: u64,
    /// When it was sent, unix ms by the publisher's clock.
    pub(crate) sent_at_ms: u64,
}

/// The machine's name: `HOSTNAME`, else `/etc/hostname`, else `unknown`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Now, unix milliseconds.
pub(crate) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The millisecond part of a Redis-style id `ms-n` (0 if it has none).
pub(crate) fn id_ms(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_give_their_milliseconds() {
        assert_eq!(id_ms("1700000000123-4"), 1_700_000_000_123);
        assert_eq!(id_ms("junk"), 0);
    }

    #[test]
    fn an_instance_names_the_process() {
        let info = SourceInfo::of_this_process("w1");
        assert!(
            info.instance
                .starts_with(&format!("w1/{}/", std::process::id()))
        );
    }
}
