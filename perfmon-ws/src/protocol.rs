//! Protocol `perfmon.v1`: what clients send, and the server's own messages.
//! Every message is a JSON object with a `"type"`. See PROTOCOL.md.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::stats::StatsSnapshot;

/// The subprotocol name, and the `protocol` field of `welcome`.
pub const PROTOCOL: &str = "perfmon.v1";

/// The opt-in compressed variant (`Config::compression`): every server
/// frame is the same JSON, zlib-compressed, in a binary frame (a browser
/// inflates it with `new DecompressionStream("deflate")`). Client messages
/// stay JSON text.
pub const PROTOCOL_DEFLATE: &str = "perfmon.v1.deflate";

/// The subprotocol to answer a `Sec-WebSocket-Protocol` request with:
/// the first of `offered` (the server's preference order) that the client
/// listed. `Ok(None)` when the client listed none (plain WebSocket);
/// `Err` when it listed some and none is offered: the handshake is refused
/// (a browser would fail it anyway), with a message that says what to ask for.
///
/// # Errors
///
/// The client's list, for the refusal's message.
pub fn negotiate(
    requested: Option<&str>,
    offered: &[&'static str],
) -> Result<Option<&'static str>, String> {
    let Some(requested) = requested else {
        return Ok(None);
    };
    let listed: Vec<&str> = requested
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if listed.is_empty() {
        return Ok(None);
    }
    offered
        .iter()
        .find(|o| listed.contains(o))
        .map(|o| Some(*o))
        .ok_or_else(|| listed.join(", "))
}

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Command {
    /// `{"type":"ping","id":7}`: answered with `pong` (echoing `id`).
    Ping {
        /// Echoed back.
        #[serde(default)]
        id: Option<u64>,
    },
    /// Narrow what this connection receives: each list given replaces the
    /// previous one (empty = all).
    Subscribe(Lists),
    /// Remove entries from the lists set by `subscribe`.
    Unsubscribe(Lists),
    /// Send again every event after `since` that is still in the ring.
    Replay {
        /// The last seq the client has.
        since: u64,
    },
    /// The server's own counters (`metrics` reply).
    GetMetrics,
    /// The current state of one pipeline (or of everything): `snapshot` reply.
    GetSnapshot {
        /// The pipeline id; omitted = everything.
        #[serde(default)]
        pipeline: Option<String>,
    },
}

/// The filter lists of `subscribe` / `unsubscribe`; each is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Lists {
    /// Pipeline ids (topics).
    #[serde(default)]
    pub pipelines: Option<Vec<String>>,
    /// Event types, e.g. `"agent_completed"`.
    #[serde(default)]
    pub types: Option<Vec<String>>,
    /// Agent names.
    #[serde(default)]
    pub agents: Option<Vec<String>>,
    /// Sources (the processes of a fleet, on a collector).
    #[serde(default)]
    pub sources: Option<Vec<String>>,
}

/// Error codes of the `error` message.
pub mod codes {
    /// Not JSON, not an object, or not a known command.
    pub const BAD_MESSAGE: &str = "bad_message";
    /// Too many messages: slow down (the connection stays).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// `replay` while the previous replay is still being sent: read it, then ask again.
    pub const REPLAY_BUSY: &str = "replay_busy";
    /// `get_snapshot` for a pipeline the server does not know.
    pub const NOT_FOUND: &str = "not_found";
    /// A binary frame: the protocol is JSON text.
    pub const BINARY_NOT_SUPPORTED: &str = "binary_not_supported";
    /// The server failed to encode its own reply (a bug: please report it).
    pub const INTERNAL: &str = "internal";
}

/// WebSocket close codes the server uses.
pub mod close {
    /// The answer to a client's own close.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down: reconnect later, resume with `since`.
    pub const GOING_AWAY: u16 = 1001;
    /// A WebSocket protocol violation (unmasked or reserved frames, a
    /// fragmented or oversized control frame, a stray continuation).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Sustained flood past the rate limit.
    pub const POLICY: u16 = 1008;
    /// A message larger than the limit (64 KiB by default).
    pub const TOO_BIG: u16 = 1009;
    /// The client read too slowly for too long: reconnect and resume with `since`.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// Nothing received (not even a pong) for the idle timeout.
    pub const IDLE: u16 = 4001;
}

/// Every message the server writes itself (events come pre-encoded), as
/// one typed enum: `{"type": "<variant>", ...fields}`. See PROTOCOL.md.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ServerMessage<'a> {
    /// The first message on every connection.
    Welcome {
        session: u64,
        protocol: &'static str,
        last_seq: u64,
        room: Option<&'a str>,
        /// The history's epoch, when the server has one (a collector).
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    /// The state of a pipeline (a room's first message, or `get_snapshot`).
    Snapshot {
        pipeline: Option<&'a str>,
        data: serde_json::Value,
    },
    /// How a resume (`?since=` or `replay`) went; the replayed events follow.
    Resumed {
        since: u64,
        recovered: bool,
        replayed: usize,
        oldest_seq: u64,
    },
    /// A command was refused; the connection stays.
    Error { code: &'a str, message: &'a str },
    /// The answer to `ping`.
    Pong { id: Option<u64> },
    /// Events this connection lost to backpressure.
    Dropped {
        count: u64,
        first_seq: u64,
        last_seq: u64,
    },
    /// The connection's filter after `subscribe` / `unsubscribe`.
    Subscribed {
        room: Option<&'a str>,
        pipelines: &'a BTreeSet<String>,
        types: &'a BTreeSet<String>,
        agents: &'a BTreeSet<String>,
        sources: &'a BTreeSet<String>,
    },
    /// The server's counters (`get_metrics`).
    Metrics { data: &'a StatsSnapshot },
}

impl ServerMessage<'_> {
    /// The message as JSON text.
    pub(crate) fn encode(&self) -> String {
        // A derived `Serialize` of strings, numbers and JSON values cannot
        // fail; if it ever did, the client gets a well-formed error instead.
        serde_json::to_string(self).unwrap_or_else(|err| {
            format!(
                r#"{{"type":"error","code":"{}","message":"could not encode a reply: {}"}}"#,
                codes::INTERNAL,
                err.to_string().replace('"', "'")
            )
        })
    }
}

/// A `batch` frame from already-encoded events, without decoding them.
pub(crate) fn batch<'a>(events: impl ExactSizeIterator<Item = &'a str>) -> String {
    let mut out = String::with_capacity(32 + events.len() * 256);
    out.push_str(r#"{"type":"batch","events":["#);
    for (i, event) in events.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(event);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn subprotocols_are_chosen_in_the_servers_order_or_refused() {
        let both = [PROTOCOL_DEFLATE, PROTOCOL];
        assert_eq!(negotiate(None, &both), Ok(None));
        assert_eq!(negotiate(Some(" "), &both), Ok(None));
        assert_eq!(
            negotiate(Some("perfmon.v1, perfmon.v1.deflate"), &both),
            Ok(Some(PROTOCOL_DEFLATE))
        );
        assert_eq!(
            negotiate(Some("perfmon.v1.deflate"), &[PROTOCOL]),
            Err("perfmon.v1.deflate".into())
        );
        assert_eq!(
            negotiate(Some("perfmon.v1.deflate,perfmon.v1"), &[PROTOCOL]),
            Ok(Some(PROTOCOL))
        );
        assert_eq!(
            negotiate(Some("graphql-ws"), &[PROTOCOL]),
            Err("graphql-ws".into())
        );
    }

    proptest::proptest! {
        /// Any header value: an answer that is offered and was asked for, or a refusal.
        #[test]
        fn fuzz_subprotocol_lists(value in ".{0,60}", deflate in proptest::bool::ANY) {
            let offered: &[&'static str] = if deflate { &[PROTOCOL_DEFLATE, PROTOCOL] } else { &[PROTOCOL] };
            if let Ok(Some(p)) = negotiate(Some(&value), offered) {
                proptest::prop_assert!(offered.contains(&p));
                proptest::prop_assert!(value.split(',').any(|v| v.trim() == p));
            }
        }
    }

    use super::*;

    #[test]
    fn commands_parse_and_unknown_fields_are_refused() {
        let c: Command =
            serde_json::from_str(r#"{"type":"subscribe","types":["agent_completed"]}"#).unwrap();
        assert_eq!(
            c,
            Command::Subscribe(Lists {
                pipelines: None,
                types: Some(vec!["agent_completed".into()]),
                agents: None,
                sources: None,
            })
        );
        assert_eq!(
            serde_json::from_str::<Command>(r#"{"type":"replay","since":5}"#).unwrap(),
            Command::Replay { since: 5 }
        );
        assert!(serde_json::from_str::<Command>(r#"{"type":"replay"}"#).is_err());
        assert!(serde_json::from_str::<Command>(r#"{"type":"ping","bogus":1}"#).is_err());
        assert!(serde_json::from_str::<Command>(r#"{"type":"launch_missiles"}"#).is_err());
    }

    #[test]
    fn server_messages_carry_their_type_first() {
        let text = ServerMessage::Dropped {
            count: 3,
            first_seq: 5,
            last_seq: 9,
        }
        .encode();
        assert_eq!(
            text,
            r#"{"type":"dropped","count":3,"first_seq":5,"last_seq":9}"#
        );
        let v: serde_json::Value = serde_json::from_str(
            &ServerMessage::Error {
                code: codes::BAD_MESSAGE,
                message: "not \"json\"",
            }
            .encode(),
        )
        .unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["message"], "not \"json\"");
    }

    #[test]
    fn batches_are_valid_json() {
        let frame = batch([r#"{"seq":1}"#, r#"{"seq":2}"#].into_iter());
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["type"], "batch");
        assert_eq!(v["events"][1]["seq"], 2);
    }
}
