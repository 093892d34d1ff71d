//! The live stream for the command line: a [`perfmon_ws::Client`] on a
//! current-thread runtime of its own, turned into [`Input`]s on a bounded
//! channel (what does not fit is a gap the view reloads over, never a
//! silent one). Above `model`.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use perfmon_ws::{Client, ConnectionState, Received};
use serde_json::Value;

use super::model::Link;

/// What the stream hands the view.
#[derive(Debug)]
pub enum Input {
    /// An event, as the server sent it.
    Event(String),
    /// A gap: the server shed events, or a resume did not recover them, or
    /// this channel was full.
    Gap(String),
    /// The connection's state changed.
    Link(Link),
}

/// Inputs buffered at most between two frames.
const CAPACITY: usize = 50_000;

/// Starts the client for `url` on a thread of its own; `subscribe` and
/// `replay` are sent once connected.
pub fn start(url: String, token: Option<String>, commands: Vec<Value>) -> Receiver<Input> {
    let (tx, rx) = sync_channel(CAPACITY);
    let spawned = std::thread::Builder::new()
        .name("perfmon-cli-stream".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Input::Link(Link::Offline(e.to_string())));
                    return;
                }
            };
            runtime.block_on(pump(url, token, commands, tx));
        });
    if let Err(e) = spawned {
        let (tx, rx) = sync_channel(1);
        let _ = tx.send(Input::Link(Link::Offline(e.to_string())));
        return rx;
    }
    rx
}

async fn pump(url: String, token: Option<String>, commands: Vec<Value>, tx: SyncSender<Input>) {
    let mut builder = Client::builder(url).raw_events(true);
    if let Some(token) = token {
        builder = builder.token(token);
    }
    let mut client = builder.connect();
    for command in &commands {
        let _ = client.send(command);
    }
    let mut state = client.state();
    let mut full = 0u64;
    let send = |input: Input, full: &mut u64| match tx.try_send(input) {
        Ok(()) => {
            if *full > 0 {
                let _ = tx.try_send(Input::Gap(format!(
                    "{full} events arrived faster than the view read them"
                )));
                *full = 0;
            }
            true
        }
        Err(TrySendError::Full(_)) => {
            *full += 1;
            true
        }
        Err(TrySendError::Disconnected(_)) => false,
    };
    loop {
        tokio::select! {
            received = client.recv() => {
                let input = match received {
                    None => return,
                    Some(Received::RawEvent { json, .. }) => Input::Event(json),
                    Some(Received::Event { value, .. }) => Input::Event(value.to_string()),
                    Some(Received::Dropped { count, first_seq, last_seq }) => Input::Gap(format!(
                        "the server shed {count} events to this view (seq {first_seq}..{last_seq})"
                    )),
                    Some(Received::Resumed { recovered: false, since }) => {
                        Input::Gap(format!("events after seq {since} were no longer on the server"))
                    }
                    Some(Received::Welcome { .. }) => Input::Link(Link::Live),
                    Some(_) => continue,
                };
                if !send(input, &mut full) {
                    return;
                }
            }
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                let link = match &*state.borrow_and_update() {
                    ConnectionState::Connected => Link::Live,
                    ConnectionState::Connecting => Link::Connecting,
                    ConnectionState::Reconnecting { attempt, .. } => Link::Reconnecting { attempt: *attempt },
                    ConnectionState::GaveUp { error } => Link::Offline(error.clone()),
                    _ => continue,
                };
                if !send(Input::Link(link), &mut full) {
                    return;
                }
            }
        }
    }
}
