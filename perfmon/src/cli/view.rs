//! Draws a [`Model`] with ratatui: the header, active pipelines with a gauge
//! per running agent, the agents table, recent failures and the log; a
//! pipeline's text Gantt (Enter); the help (`?`). Works in 80×24, degrades
//! to a list below 60×12; no colours with `NO_COLOR`. Above `model`.

use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, Wrap};
use serde_json::Value;

use super::model::{Link, Mode, Model};
use crate::record::PipelineReport;

/// Colours, or none (`NO_COLOR`).
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    color: bool,
}

impl Theme {
    /// Colours unless `NO_COLOR` is set (to anything).
    pub fn from_env() -> Self {
        Theme {
            color: std::env::var_os("NO_COLOR").is_none(),
        }
    }

    /// With colours or without.
    pub fn new(color: bool) -> Self {
        Theme { color }
    }

    fn fg(self, color: Color) -> Style {
        if self.color {
            Style::default().fg(color)
        } else {
            Style::default()
        }
    }

    fn bold(self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }

    fn bad(self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }
}

/// Milliseconds, readable: `812µs`, `45.2ms`, `1.30s`.
fn fmt_ms(ms: f64) -> String {
    if !ms.is_finite() {
        return "–".into();
    }
    if ms < 1.0 {
        format!("{:.0}µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

fn fmt_dur(d: Duration) -> String {
    fmt_ms(d.as_secs_f64() * 1000.0)
}

/// A text bar of `width` cells, `percent` full.
fn bar(percent: f64, width: usize) -> String {
    let full = ((percent.clamp(0.0, 100.0) / 100.0) * width as f64).round() as usize;
    format!(
        "{}{}",
        "█".repeat(full),
        "░".repeat(width.saturating_sub(full))
    )
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Draws the whole screen.
pub fn render(frame: &mut Frame<'_>, model: &Model, theme: Theme) {
    let area = frame.area();
    if area.width < 60 || area.height < 12 {
        small(frame, model, theme, area);
        return;
    }
    let notice = u16::from(model.notice.is_some());
    let [head, note, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(notice),
        Constraint::Min(6),
        Constraint::Length(1),
    ])
    .areas(area);
    header(frame, model, theme, head);
    if let Some(n) = &model.notice {
        frame.render_widget(
            Paragraph::new(Line::styled(
                format!("! {n}  (Esc hides)"),
                theme.fg(Color::Yellow),
            )),
            note,
        );
    }
    match &model.mode {
        Mode::Detail(id) => detail(frame, model, theme, body, id),
        _ => main_view(frame, model, theme, body),
    }
    let keys = match model.mode {
        Mode::Filter => format!("filter: {}▏ (Enter keeps, Esc clears)", model.filter),
        Mode::Detail(_) => "Esc back  ↑↓ select  s sort  p pause  ? help  q quit".to_owned(),
        _ => format!(
            "↑↓ select  Enter detail  s sort ({})  / filter{}  p {}  ? help  q quit",
            model.sort.name(),
            if model.filter.is_empty() {
                String::new()
            } else {
                format!(" [{}]", model.filter)
            },
            if model.paused { "resume" } else { "pause" }
        ),
    };
    frame.render_widget(
        Paragraph::new(Line::styled(keys, theme.fg(Color::DarkGray))),
        foot,
    );
    if model.mode == Mode::Help {
        help(frame, theme, area);
    }
}

fn link_span(model: &Model, theme: Theme) -> Span<'static> {
    match &model.link {
        Link::Live => Span::styled(
            "● live",
            theme.fg(Color::Green).add_modifier(Modifier::BOLD),
        ),
        Link::Connecting => Span::styled("○ connecting", theme.fg(Color::Yellow)),
        Link::Reconnecting { attempt } => Span::styled(
            format!("◌ reconnecting ({attempt})"),
            theme.fg(Color::Yellow),
        ),
        Link::Offline(e) => Span::styled(format!("✕ offline: {e}"), theme.bad()),
    }
}

fn header(frame: &mut Frame<'_>, model: &Model, theme: Theme, area: Rect) {
    let o = &model.overview;
    let n = |k: &str| o[k].as_u64().unwrap_or(0);
    let active = n("pipelines_active");
    let total = n("pipelines_total");
    let failed = n("pipelines_failed");
    let completed = total.saturating_sub(active);
    let rate = if completed == 0 {
        0.0
    } else {
        failed as f64 / completed as f64 * 100.0
    };
    let mut first = vec![
        Span::styled("perfmon top ", theme.bold()),
        link_span(model, theme),
        Span::raw(format!(
            "  {}  seq {}  {:.1} ev/s",
            model.url,
            model.last_seq,
            model.events_per_sec()
        )),
    ];
    if model.paused {
        first.push(Span::styled(
            "  PAUSED",
            theme.fg(Color::Yellow).add_modifier(Modifier::BOLD),
        ));
    }
    let mut second = format!(
        "active {active}  completed {completed}  failed {failed} ({rate:.1}%)  mean {}",
        fmt_ms(o["avg_pipeline_duration_ms"].as_f64().unwrap_or(f64::NAN)),
    );
    if let Some(p) = model.process.as_ref() {
        second.push_str(&format!(
            "  cpu {:.1}%  mem {:.1} MiB",
            p.0,
            p.1 / 1_048_576.0
        ));
    }
    frame.render_widget(
        Paragraph::new(vec![Line::from(first), Line::raw(second)]),
        area,
    );
}

fn main_view(frame: &mut Frame<'_>, model: &Model, theme: Theme, area: Rect) {
    let bottom = if area.height >= 26 {
        8
    } else if area.height >= 14 {
        5
    } else {
        0
    };
    let [top, low] = Layout::vertical([Constraint::Min(4), Constraint::Length(bottom)]).areas(area);
    let (left, right) = if top.width >= 110 {
        let [l, r] =
            Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(top);
        (l, r)
    } else {
        let [l, r] =
            Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
        (l, r)
    };
    pipelines(frame, model, theme, left);
    agents(frame, model, theme, right);
    if bottom > 0 {
        let [f, l] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(low);
        failures(frame, model, theme, f);
        log(frame, model, theme, l);
    }
}

fn pipelines(frame: &mut Frame<'_>, model: &Model, theme: Theme, area: Rect) {
    let now = now_ms();
    let gauge = usize::from(area.width.saturating_sub(40).clamp(4, 20));
    let mut lines = Vec::new();
    for (i, (id, active)) in model.pipeline_ids().iter().enumerate() {
        let selected = i == model.selected;
        let mark = if selected { "▶ " } else { "  " };
        let style = if selected {
            theme.bold().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        };
        if *active {
            let Some(a) = model.active.get(id) else {
                continue;
            };
            let name = match &a.source {
                Some(s) => format!("{s} · {id}"),
                None => id.clone(),
            };
            lines.push(Line::from(vec![
                Span::styled(format!("{mark}{name}"), style),
                Span::styled(
                    format!("  running {}", fmt_ms(now - a.started_ms)),
                    theme.fg(Color::Cyan),
                ),
            ]));
            for (agent, r) in &a.running {
                let pct = r.percent.unwrap_or(0.0);
                lines.push(Line::from(vec![
                    Span::raw(format!("    {agent:<12.12} ")),
                    Span::styled(bar(pct, gauge), theme.fg(Color::Cyan)),
                    Span::raw(format!(" {pct:>3.0}% {}", r.stage.as_deref().unwrap_or(""))),
                ]));
            }
        } else if let Some(r) = model.finished_pipeline(id) {
            let failed = r.failed;
            let name = match model.sources.get(id) {
                Some(s) => format!("{s} · {id}"),
                None => id.clone(),
            };
            let mut spans = vec![
                Span::styled(format!("{mark}{name}"), style),
                Span::styled(
                    format!("  {} {}", r.outcome, fmt_ms(r.duration_ms)),
                    if failed {
                        theme.bad()
                    } else {
                        theme.fg(Color::Green)
                    },
                ),
            ];
            if let Some((agent, share)) = &r.bottleneck {
                spans.push(Span::styled(
                    format!("  ◆ {agent} {:.0}%", share * 100.0),
                    theme.fg(Color::Magenta),
                ));
            }
            lines.push(Line::from(spans));
        }
    }
    if lines.is_empty() {
        lines.push(Line::styled(
            "  no pipelines yet",
            theme.fg(Color::DarkGray),
        ));
    }
    // Keep the selection in view.
    let height = usize::from(area.height.saturating_sub(2));
    let selected_line = lines
        .iter()
        .position(|l| l.spans.first().is_some_and(|s| s.content.starts_with('▶')))
        .unwrap_or(0);
    let skip = selected_line.saturating_sub(height.saturating_sub(1));
    let title = format!(
        " pipelines: {} active, {} recent ",
        model.active.len(),
        model.recent.len()
    );
    frame.render_widget(
        Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>())
            .block(Block::bordered().title(title)),
        area,
    );
}

fn agents(frame: &mut Frame<'_>, model: &Model, theme: Theme, area: Rect) {
    let wide = area.width >= 90;
    let mut header = vec!["agent", "runs", "fail%", "p50", "p90", "p99", "max"];
    if wide {
        header.extend(["tokens", "cost"]);
    }
    let rows_shown = usize::from(area.height.saturating_sub(3));
    let rows = model
        .agent_rows()
        .into_iter()
        .take(rows_shown)
        .map(|a: &Value| {
            let name = a["agent"].as_str().unwrap_or("?");
            let bottleneck = model.bottlenecks.contains_key(name);
            let f = |k: &str| fmt_ms(a[k].as_f64().unwrap_or(f64::NAN));
            let rate = a["failure_rate"].as_f64().unwrap_or(0.0) * 100.0;
            let mut cells = vec![
                Cell::from(if bottleneck {
                    format!("◆ {name}")
                } else {
                    format!("  {name}")
                })
                .style(if bottleneck {
                    theme.fg(Color::Magenta)
                } else {
                    Style::default()
                }),
                Cell::from(a["runs"].as_u64().unwrap_or(0).to_string()),
                Cell::from(format!("{rate:.1}")).style(if rate > 0.0 {
                    theme.bad()
                } else {
                    Style::default()
                }),
                Cell::from(f("p50_ms")),
                Cell::from(f("p90_ms")),
                Cell::from(f("p99_ms")),
                Cell::from(f("max_ms")),
            ];
            if wide {
                let u = &a["usage"];
                let tokens = u["input_tokens"].as_u64().unwrap_or(0)
                    + u["output_tokens"].as_u64().unwrap_or(0);
                cells.push(Cell::from(tokens.to_string()));
                cells.push(Cell::from(format!(
                    "${:.4}",
                    u["cost_usd"].as_f64().unwrap_or(0.0)
                )));
            }
            Row::new(cells)
        });
    let mut widths = vec![
        Constraint::Min(14),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    if wide {
        widths.extend([Constraint::Length(8), Constraint::Length(9)]);
    }
    let title = format!(
        " agents by {} ({}; ◆ bottleneck) ",
        model.sort.name(),
        model.agents.len()
    );
    frame.render_widget(
        Table::new(rows, widths)
            .header(Row::new(header).style(theme.bold()))
            .block(Block::bordered().title(title)),
        area,
    );
}

fn failures(frame: &mut Frame<'_>, model: &Model, theme: Theme, area: Rect) {
    let lines: Vec<Line<'_>> = model
        .failures
        .iter()
        .take(usize::from(area.height.saturating_sub(2)))
        .map(|(_, p, a, e)| {
            Line::from(vec![
                Span::raw(format!("{p} {a}: ")),
                Span::styled(e.clone(), theme.bad()),
            ])
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" recent failures ")),
        area,
    );
}

fn log(frame: &mut Frame<'_>, model: &Model, _theme: Theme, area: Rect) {
    let n = usize::from(area.height.saturating_sub(2));
    let lines: Vec<Line<'_>> = model
        .log
        .iter()
        .skip(model.log.len().saturating_sub(n))
        .map(|l| Line::raw(l.clone()))
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" log ")),
        area,
    );
}

/// A pipeline's runs on its time axis: one row per run (parallel runs on
/// their own rows), the bottleneck and the critical path marked, failed
/// runs in red with their error; its thoughts and output below.
fn detail(frame: &mut Frame<'_>, model: &Model, theme: Theme, area: Rect, id: &str) {
    let Some(report) = model.report(id) else {
        let text = match model.active.get(id) {
            Some(a) => format!(
                "{id} is running ({} runs finished; running: {}). Its timeline shows once it finishes.",
                a.finished,
                a.running.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            None => format!("{id} is no longer listed"),
        };
        frame.render_widget(
            Paragraph::new(text).block(Block::bordered().title(format!(" {id} "))),
            area,
        );
        return;
    };
    frame.render_widget(
        Paragraph::new(gantt(
            &report,
            model,
            theme,
            usize::from(area.width.saturating_sub(2)),
        ))
        .wrap(Wrap { trim: false })
        .block(Block::bordered().title(format!(" {id}: Esc to go back "))),
        area,
    );
}

/// The Gantt's lines for `width` columns.
pub fn gantt<'a>(
    report: &'a PipelineReport,
    model: &Model,
    theme: Theme,
    width: usize,
) -> Vec<Line<'a>> {
    let total = report.duration.as_secs_f64().max(1e-9);
    let label = 16usize;
    let axis = width.saturating_sub(label + 30).max(10);
    let mut lines = vec![Line::from(vec![
        Span::styled(
            format!("{} ", report.outcome),
            if report.outcome.is_failure() {
                theme.bad()
            } else {
                theme.fg(Color::Green)
            },
        ),
        Span::raw(format!(
            "in {}, {} runs",
            fmt_dur(report.duration),
            report.total_runs()
        )),
    ])];
    lines.push(Line::styled(
        format!("{:label$} 0{:>w$}", "", fmt_dur(report.duration), w = axis),
        theme.fg(Color::DarkGray),
    ));
    let critical: Vec<&crate::record::AgentRun> = report
        .critical_runs
        .iter()
        .filter_map(|&i| report.agents.get(i))
        .collect();
    for (run, depth) in report.tree_order() {
        let start = ((run.offset.as_secs_f64() / total) * axis as f64).floor() as usize;
        let len = (((run.duration.as_secs_f64() / total) * axis as f64).round() as usize).max(1);
        let start = start.min(axis.saturating_sub(1));
        let len = len.min(axis - start);
        let on_path = critical.iter().any(|c| std::ptr::eq(*c, run));
        let bottleneck = report.bottleneck(&run.agent);
        let failed = run.outcome.is_failure();
        let name = format!(
            "{}{}{}",
            if on_path { "*" } else { " " },
            "  ".repeat(depth),
            run.agent
        );
        let style = if failed {
            theme.bad()
        } else if bottleneck.is_some() {
            theme.fg(Color::Magenta)
        } else {
            theme.fg(Color::Blue)
        };
        let mut spans = vec![
            Span::raw(format!("{name:<label$.label$} ")),
            Span::raw(" ".repeat(start)),
            Span::styled("█".repeat(len), style),
            Span::raw(" ".repeat(axis - start - len)),
            Span::raw(format!(" {}", fmt_dur(run.duration))),
        ];
        if let Some(b) = bottleneck
            && !failed
        {
            spans.push(Span::styled(
                format!(" ◆ BOTTLENECK {:.0}%", b.share * 100.0),
                theme.fg(Color::Magenta),
            ));
        }
        if failed {
            spans.push(Span::styled(format!(" ✕ {}", run.outcome), theme.bad()));
        }
        lines.push(Line::from(spans));
    }
    lines.push(Line::raw(format!(
        "* critical path: {}",
        report.nested_critical_path()
    )));
    if let Some(thoughts) = model.thoughts.get(&report.id) {
        lines.push(Line::styled("thoughts:", theme.bold()));
        lines.extend(thoughts.iter().map(|t| Line::raw(format!("  {t}"))));
    }
    let output: Vec<_> = report
        .agents
        .iter()
        .flat_map(|r| {
            r.output
                .iter()
                .map(move |o| format!("  {} {}> {}", r.agent, o.stream, o.line))
        })
        .collect();
    if !output.is_empty() {
        lines.push(Line::styled("output:", theme.bold()));
        lines.extend(output.into_iter().map(Line::raw));
    }
    lines
}

fn help(frame: &mut Frame<'_>, theme: Theme, area: Rect) {
    let w = area.width.min(64);
    let h = area.height.min(16);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    let text = vec![
        Line::styled("perfmon top: keys", theme.bold()),
        Line::raw("↑ ↓ (k j)   select a pipeline"),
        Line::raw("Enter       its timeline (Gantt), thoughts, output"),
        Line::raw("Esc         back; hides a notice"),
        Line::raw("s           sort agents: p99 p50 p90 max runs fail tokens cost"),
        Line::raw("/           filter pipelines and agents by text"),
        Line::raw("p           pause / resume the screen"),
        Line::raw("q           quit"),
        Line::raw(""),
        Line::raw("◆ bottleneck   * critical path   ✕ failed"),
        Line::raw("any key closes this help"),
    ];
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(text).block(Block::bordered().title(" help ")),
        popup,
    );
}

/// Below 60×12: the header and one line per pipeline.
fn small(frame: &mut Frame<'_>, model: &Model, theme: Theme, area: Rect) {
    let mut lines = vec![Line::from(vec![
        link_span(model, theme),
        Span::raw(format!(" seq {}", model.last_seq)),
    ])];
    for (id, active) in model
        .pipeline_ids()
        .into_iter()
        .take(usize::from(area.height))
    {
        let state = if active {
            "running".to_owned()
        } else {
            model
                .finished_pipeline(&id)
                .map_or_else(String::new, |r| r.outcome.clone())
        };
        lines.push(Line::raw(format!("{id} {state}")));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    use super::*;

    fn run(agent: &str, offset: f64, duration: f64, outcome: &str, error: Option<&str>) -> Value {
        json!({"agent": agent, "kind": "agent", "pipeline": "proj_7", "started_at_ms": 1.7e12 + offset,
            "duration_ms": duration, "self_time_ms": duration, "busy_ms": null, "outcome": outcome, "error": error,
            "offset_ms": offset, "parent": null, "usage": {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0},
            "model": null, "output": [], "output_dropped": 0})
    }

    fn model() -> Model {
        let mut m = Model::new("http://127.0.0.1:9464");
        m.link = Link::Live;
        m.set_stats(
            json!({"pipelines_total": 2, "pipelines_active": 1, "pipelines_failed": 1, "avg_pipeline_duration_ms": 1800.0}),
            json!([
                {"agent": "physics", "runs": 3, "failure_rate": 0.0, "p50_ms": 1300.0, "p90_ms": 1310.0, "p99_ms": 1320.0, "max_ms": 1320.0},
                {"agent": "codegen", "runs": 3, "failure_rate": 0.333, "p50_ms": 300.0, "p90_ms": 310.0, "p99_ms": 320.0, "max_ms": 320.0}
            ]),
        );
        let report = json!({
            "id": "proj_7", "run": 7, "started_at_ms": 1.7e12, "duration_ms": 1800.0, "outcome": "failed",
            "error": "codegen failed", "finished": true, "self_time_ms": 1800.0,
            "agents": [
                run("planner", 0.0, 200.0, "succeeded", None),
                run("physics", 200.0, 1300.0, "succeeded", None),
                run("geometry", 200.0, 500.0, "succeeded", None),
                run("codegen", 1500.0, 300.0, "failed", Some("rustc: mismatched types")),
            ],
            "bottlenecks": [{"agent": "physics", "duration_ms": 1300.0, "share": 0.72, "self_time_ms": 1300.0, "self_share": 0.72, "basis": "self_time"}],
            "critical_path": ["planner", "physics", "codegen"], "critical_runs": [0, 1, 3], "aggregated": [], "unfinished": [],
            "usage": {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}, "output": [], "output_dropped": 0
        });
        m.set_pipelines(
            &json!([{"id": "proj_8", "run": 8, "started_at_ms": 1.7e12, "elapsed_ms": 10.0,
                "running_agents": ["physics"], "finished_runs": 1,
                "last_progress": {"agent": "physics", "percent": 40.0, "stage": "meshing", "message": null}}]),
            &json!([report]),
        );
        m
    }

    fn screen(m: &Model, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| render(f, m, Theme::new(false))).unwrap();
        let buffer = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..h {
            for x in 0..w {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn the_overview_shows_gauges_bottlenecks_and_failures_at_80x24_and_200x50() {
        let m = model();
        for (w, h) in [(80, 24), (200, 50)] {
            let s = screen(&m, w, h);
            assert!(s.contains("● live"), "{w}x{h}\n{s}");
            assert!(s.contains("proj_8"), "{s}");
            assert!(s.contains("40% meshing"), "the gauge: {s}");
            assert!(s.contains("████"), "the gauge's bar: {s}");
            assert!(s.contains("◆ physics"), "the bottleneck mark: {s}");
            assert!(s.contains("failed"), "{s}");
            assert!(s.contains("q quit"), "{s}");
        }
        let s = screen(&m, 200, 50);
        assert!(
            s.contains("rustc: mismatched types"),
            "the failure pane: {s}"
        );
        assert!(s.contains("agents by p99"), "{s}");
    }

    #[test]
    fn the_detail_shows_the_gantt_the_critical_path_and_the_error() {
        let mut m = model();
        m.key("Down");
        m.key("Enter");
        assert_eq!(m.mode, Mode::Detail("proj_7".into()));
        for (w, h) in [(80, 24), (200, 50)] {
            let s = screen(&m, w, h);
            assert!(s.contains("BOTTLENECK 72%"), "{w}x{h}\n{s}");
            assert!(s.contains("*physics"), "on the critical path: {s}");
            assert!(s.contains(" geometry"), "off the path: {s}");
            assert!(
                s.contains("critical path: planner -> physics -> codegen"),
                "{s}"
            );
            // In red with its error (wrapped at 80 columns).
            assert!(
                s.contains("✕ failed: rustc:") && s.contains("mismatched types"),
                "{s}"
            );
        }
        m.key("Esc");
        assert_eq!(m.mode, Mode::Main);
    }

    #[test]
    fn sorting_filtering_help_and_a_small_terminal() {
        let mut m = model();
        m.key("s");
        assert_eq!(m.sort.name(), "p50");
        assert!(screen(&m, 120, 30).contains("agents by p50"));
        m.key("/");
        for c in ["c", "o", "d"] {
            m.key(c);
        }
        m.key("Enter");
        let s = screen(&m, 120, 30);
        assert!(s.contains("codegen") && !s.contains("  physics "), "{s}");
        m.key("?");
        assert!(screen(&m, 80, 24).contains("perfmon top: keys"));
        m.key("x");
        let s = screen(&m, 40, 8);
        assert!(s.contains("● live"), "{s}");
        m.gap("the server shed 12 events to this view");
        assert!(screen(&m, 80, 24).contains("shed 12 events"));
        assert!(m.reload);
    }
}
