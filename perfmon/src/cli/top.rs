//! `perfmon top`: the terminal loop. Reads keys (crossterm), the stream
//! ([`stream`](super::stream::start)) and REST refreshes (a thread of its own, every
//! 2 s, and at once after a gap), and draws 5 frames a second (and after each key).
//! Above `view` and `stream`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use serde_json::Value;

use super::model::{Link, Model};
use super::rest::{CliError, Rest};
use super::stream::{self, Input};
use super::view::{self, Theme};

/// The longest a frame waits for a key: 5 frames a second while events
/// stream (a key is answered at once, and redrawn right after it).
const FRAME: Duration = Duration::from_millis(200);
/// How often the overview and the agents table are fetched again.
const REFRESH: Duration = Duration::from_secs(2);
/// Inputs applied at most per frame (the rest wait for the next one).
const INPUTS_PER_FRAME: usize = 20_000;

/// What the REST thread fetched.
enum Fetched {
    Stats(Value, Value),
    Pipelines(Value, Value),
    Failed(String),
}

/// Runs the live view until `q` (or Ctrl-C).
///
/// # Errors
///
/// The first REST call's error (unreachable, refused token), before the
/// screen is taken; or the terminal's.
pub fn run(rest: &Rest, token: Option<String>) -> Result<(), CliError> {
    // Fail before taking the screen, with a clear line.
    let overview = rest.get("/api/performance/overview")?;
    let mut model = Model::new(rest.base());
    model.set_stats(overview, rest.get("/api/performance/agents")?);
    model.set_pipelines(
        &rest.get("/api/performance/pipelines/active")?,
        &rest.get("/api/performance/pipelines/recent?limit=50")?,
    );
    let inputs = stream::start(rest.ws_url(), token, Vec::new());
    let reload = Arc::new(AtomicBool::new(false));
    let fetched = refresher(rest.clone(), Arc::clone(&reload));
    let mut terminal = ratatui::init();
    let theme = Theme::from_env();
    let result = (|| -> std::io::Result<()> {
        while !model.quit {
            // Paused: the screen stands still; what arrives waits in the
            // bounded channel (past it, a gap the view reloads over).
            if !model.paused {
                take_inputs(&mut model, &inputs, &fetched);
            }
            if model.reload {
                model.reload = false;
                reload.store(true, Ordering::Release);
            }
            terminal.draw(|frame| view::render(frame, &model, theme))?;
            if event::poll(FRAME)?
                && let Event::Key(key) = event::read()?
                && key.kind != KeyEventKind::Release
            {
                if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
                    break;
                }
                let name = match key.code {
                    KeyCode::Char(c) => c.to_string(),
                    KeyCode::Enter => "Enter".into(),
                    KeyCode::Esc => "Esc".into(),
                    KeyCode::Up => "Up".into(),
                    KeyCode::Down => "Down".into(),
                    KeyCode::Backspace => "Backspace".into(),
                    _ => continue,
                };
                model.key(&name);
            }
        }
        Ok(())
    })();
    ratatui::restore();
    result.map_err(|e| CliError::Unreachable {
        url: "the terminal".into(),
        reason: e.to_string(),
    })
}

/// Applies what arrived, bounded per frame.
fn take_inputs(model: &mut Model, inputs: &Receiver<Input>, fetched: &Receiver<Fetched>) {
    for input in inputs.try_iter().take(INPUTS_PER_FRAME) {
        match input {
            Input::Event(e) => {
                model.apply_json(&e);
            }
            Input::Gap(what) => model.gap(&what),
            Input::Link(link) => {
                if link == Link::Live && matches!(model.link, Link::Reconnecting { .. }) {
                    model
                        .log
                        .push_back("reconnected: resumed where the view stopped".into());
                }
                model.link = link;
            }
        }
    }
    for f in fetched.try_iter() {
        match f {
            Fetched::Stats(o, a) => model.set_stats(o, a),
            Fetched::Pipelines(a, r) => model.set_pipelines(&a, &r),
            Fetched::Failed(e) => {
                if model.link == Link::Live {
                    model.log.push_back(format!("REST: {e}"));
                }
            }
        }
    }
}

/// Fetches the overview and agents every 2 s, and the pipelines when
/// `reload` is set, on a thread of its own.
fn refresher(rest: Rest, reload: Arc<AtomicBool>) -> Receiver<Fetched> {
    let (tx, rx) = sync_channel(16);
    let _ = std::thread::Builder::new()
        .name("perfmon-cli-rest".into())
        .spawn(move || {
            loop {
                let started = Instant::now();
                let stats = rest
                    .get("/api/performance/overview")
                    .and_then(|o| Ok(Fetched::Stats(o, rest.get("/api/performance/agents")?)));
                let sent = tx.send(stats.unwrap_or_else(|e| Fetched::Failed(e.to_string())));
                if sent.is_err() {
                    return;
                }
                if reload.swap(false, Ordering::AcqRel) {
                    let pipelines = rest.get("/api/performance/pipelines/active").and_then(|a| {
                        Ok(Fetched::Pipelines(
                            a,
                            rest.get("/api/performance/pipelines/recent?limit=50")?,
                        ))
                    });
                    match pipelines {
                        Ok(p) => {
                            if tx.send(p).is_err() {
                                return;
                            }
                        }
                        // Try again next round.
                        Err(_) => reload.store(true, Ordering::Release),
                    }
                }
                std::thread::sleep(REFRESH.saturating_sub(started.elapsed()));
            }
        });
    rx
}
