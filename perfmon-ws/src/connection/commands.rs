//! Client commands (`ping`, `subscribe`, `replay`, ...): what to answer,
//! and what to replay.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::hub::{Filter, Item, Queue, Replay};
use crate::protocol::{Command, Lists, ServerMessage, codes};
use crate::shared::Shared;

/// The answer to one client message.
#[derive(Debug, Default)]
pub(crate) struct Handled {
    /// Replies to send, in order.
    pub(crate) replies: Vec<String>,
    /// Items to queue after the replies (a `replay`).
    pub(crate) replay: Option<Vec<Arc<Item>>>,
}

impl Handled {
    fn reply(text: String) -> Self {
        Handled {
            replies: vec![text],
            replay: None,
        }
    }
}

/// `resumed`, for a replay from `since`.
pub(crate) fn resumed(since: u64, replay: &Replay) -> String {
    ServerMessage::Resumed {
        since,
        recovered: replay.recovered,
        replayed: replay.items.len(),
        oldest_seq: replay.oldest,
    }
    .encode()
}

/// `error` with `code` and `message`.
pub(crate) fn error(code: &str, message: &str) -> String {
    ServerMessage::Error { code, message }.encode()
}

/// `snapshot` of `topic` (or of everything), if the backend knows it.
pub(crate) fn snapshot(shared: &Shared, topic: Option<&str>) -> Option<String> {
    let data = shared.backend.snapshot(topic)?;
    Some(
        ServerMessage::Snapshot {
            pipeline: topic,
            data,
        }
        .encode(),
    )
}

/// Answers one client message.
pub(crate) fn handle(shared: &Shared, queue: &Queue, text: &str) -> Handled {
    let command: Command = match serde_json::from_str(text) {
        Ok(command) => command,
        Err(err) => {
            shared.hub.stats.error(1);
            return Handled::reply(error(
                codes::BAD_MESSAGE,
                &format!("not a perfmon.v1 command: {err}"),
            ));
        }
    };
    match command {
        Command::Ping { id } => Handled::reply(ServerMessage::Pong { id }.encode()),
        Command::Subscribe(Lists {
            pipelines,
            types,
            agents,
            sources,
        }) => {
            // Built outside the queue's lock, then swapped in.
            let mut f = queue.filter();
            if let Some(p) = pipelines {
                f.topics = p.into_iter().collect();
            }
            if let Some(t) = types {
                f.kinds = t.into_iter().collect();
            }
            if let Some(a) = agents {
                f.tags = a.into_iter().collect();
            }
            if let Some(s) = sources {
                f.sources = s.into_iter().collect();
            }
            let reply = subscribed(&f);
            queue.set_filter(f);
            Handled::reply(reply)
        }
        Command::Unsubscribe(Lists {
            pipelines,
            types,
            agents,
            sources,
        }) => {
            // O(n log n) in the names sent, outside the queue's lock.
            let mut f = queue.filter();
            let remove = |set: &mut BTreeSet<String>, gone: Option<Vec<String>>| {
                for name in gone.into_iter().flatten() {
                    set.remove(&name);
                }
            };
            remove(&mut f.topics, pipelines);
            remove(&mut f.kinds, types);
            remove(&mut f.tags, agents);
            remove(&mut f.sources, sources);
            let reply = subscribed(&f);
            queue.set_filter(f);
            Handled::reply(reply)
        }
        Command::Replay { .. } if !queue.try_begin_replay() => Handled::reply(error(
            codes::REPLAY_BUSY,
            "the previous replay is still being sent to you: read it, then ask again",
        )),
        Command::Replay { since } => {
            let replay = shared.hub.replay(since);
            Handled {
                replies: vec![resumed(since, &replay)],
                replay: Some(replay.items),
            }
        }
        Command::GetMetrics => Handled::reply(
            ServerMessage::Metrics {
                data: &shared.hub.stats_snapshot(),
            }
            .encode(),
        ),
        Command::GetSnapshot { pipeline } => match snapshot(shared, pipeline.as_deref()) {
            Some(text) => Handled::reply(text),
            None => Handled::reply(error(
                codes::NOT_FOUND,
                &format!("no pipeline {:?}", pipeline.unwrap_or_default()),
            )),
        },
    }
}

fn subscribed(filter: &Filter) -> String {
    ServerMessage::Subscribed {
        room: filter.room.as_deref(),
        pipelines: &filter.topics,
        types: &filter.kinds,
        agents: &filter.tags,
        sources: &filter.sources,
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::Config;
    use crate::connection::test_support;
    use crate::hub::{Hub, Priority, item};

    /// A JSON value a hostile client might put in a field.
    fn value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            "(?s).{0,20}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 32, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z_]{0,10}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A message shaped like a command: a known or unknown type, known or
    /// unknown fields, any values.
    fn command() -> impl Strategy<Value = String> {
        let kind = prop_oneof![
            Just("ping"),
            Just("subscribe"),
            Just("unsubscribe"),
            Just("replay"),
            Just("get_metrics"),
            Just("get_snapshot"),
            Just("launch"),
            Just(""),
        ];
        let field = prop_oneof![
            Just("id"),
            Just("pipelines"),
            Just("types"),
            Just("agents"),
            Just("since"),
            Just("pipeline"),
            Just("type"),
            Just("extra"),
        ];
        (kind, prop::collection::vec((field, value()), 0..4)).prop_map(|(kind, fields)| {
            let mut obj = serde_json::Map::new();
            obj.insert("type".into(), kind.into());
            for (k, v) in fields {
                obj.insert(k.into(), v);
            }
            serde_json::Value::Object(obj).to_string()
        })
    }

    proptest! {
        /// Any client message: at least one reply, each a JSON object with
        /// a `type`; never a panic; a replay never larger than the ring.
        #[test]
        fn fuzz_client_messages(text in prop_oneof!["(?s).{0,200}", command()]) {
            let hub = Arc::new(Hub::new(16));
            for seq in 1..=20 {
                hub.publish(item(seq, None, "agent_completed".into(), None, Priority::High, format!(r#"{{"seq":{seq}}}"#)));
            }
            let (shared, _stop) = test_support::shared(Arc::clone(&hub), Config::default());
            let queue = Queue::new(8, Filter::default());
            let handled = handle(&shared, &queue, &text);
            prop_assert!(!handled.replies.is_empty());
            for reply in &handled.replies {
                let v: serde_json::Value = serde_json::from_str(reply).unwrap();
                prop_assert!(v["type"].is_string(), "{}", reply);
            }
            prop_assert!(handled.replay.map_or(0, |r| r.len()) <= 16);
        }
    }
}
