//! [`Backend`]: what the host application answers besides the stream
//! (snapshots and read-only HTTP), and the [`Reply`] it answers with.

use crate::stats::Stats;

/// What the host application serves besides the stream: snapshots and
/// read-only HTTP endpoints. perfmon implements it for its `Monitor`.
pub trait Backend: Send + Sync + 'static {
    /// The current state of `topic` (or of everything, for `None`), as a
    /// JSON value; `None` if the topic is unknown.
    fn snapshot(&self, topic: Option<&str>) -> Option<serde_json::Value>;

    /// Answers `GET path?query` for paths the server does not handle
    /// itself; `None` gives 404.
    fn get(&self, path: &str, query: &str, server: &ServerInfo<'_>) -> Option<Reply>;
}

/// What a [`Backend`] may want to know about the server while answering.
#[derive(Debug)]
#[non_exhaustive]
pub struct ServerInfo<'a> {
    /// The server's counters.
    pub stats: &'a Stats,
    /// The highest seq published.
    pub last_seq: u64,
}

impl<'a> ServerInfo<'a> {
    pub(crate) fn new(stats: &'a Stats, last_seq: u64) -> Self {
        ServerInfo { stats, last_seq }
    }
}

/// An HTTP reply from a [`Backend`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Reply {
    /// A 200 JSON reply.
    pub fn json(value: &impl serde::Serialize) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => Reply {
                status: 200,
                content_type: "application/json",
                body,
            },
            Err(err) => Reply::error(500, &format!("could not encode the reply: {err}")),
        }
    }

    /// A 200 reply of another type (`text/plain`, ...).
    pub fn text(content_type: &'static str, body: String) -> Self {
        Reply {
            status: 200,
            content_type,
            body,
        }
    }

    /// An error reply with a JSON body `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Self {
        Reply {
            status,
            content_type: "application/json",
            body: serde_json::json!({ "error": message }).to_string(),
        }
    }
}
