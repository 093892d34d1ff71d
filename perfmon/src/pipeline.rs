//! The state of one pipeline while it runs, and the report it becomes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rustc_hash::FxHashMap;

use crate::analysis::{self, Rule};
use crate::outcome::Outcome;
use crate::output::OutputTail;
use crate::record::{
    AgentRun, AggregatedRuns, PipelineReport, PipelineSnapshot, Progress, RunKind,
};
use crate::sync::lock;
use crate::usage::UsageSum;

/// What a run gathered besides its timing: usage and output. Most runs
/// have none, so the layer keeps it boxed and only when there is some.
#[derive(Debug, Default)]
pub(crate) struct RunExtras {
    pub(crate) usage: UsageSum,
    pub(crate) model: Option<Arc<str>>,
    pub(crate) output: OutputTail,
}

/// Where an agent run is kept in its pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ticket {
    /// Stored individually at this index.
    Slot(u32),
    /// Past `max_runs_per_pipeline`: kept in per-agent totals only.
    Aggregated,
    /// The pipeline had already finished when the run started.
    Late,
}

/// A pipeline's shared state: referenced by its span and its agents' spans.
/// Its lock is per pipeline, taken when a run opens or closes.
#[derive(Debug)]
pub(crate) struct PipelineState {
    pub(crate) id: Arc<str>,
    pub(crate) run: u64,
    pub(crate) start: quanta::Instant,
    pub(crate) started_at: SystemTime,
    /// Set once it is finished (its report made): readable without the lock.
    ended: AtomicBool,
    record: Mutex<Record>,
}

#[derive(Debug)]
struct Record {
    slots: Vec<Slot>,
    max_slots: usize,
    /// Per agent, keyed by the address of its interned name (one `Arc<str>`
    /// per agent for the monitor's lifetime): cheap to hash, no string compare.
    per_agent: FxHashMap<usize, AgentTotals>,
    finished_runs: u64,
    last_progress: Option<Progress>,
    report: Option<Arc<PipelineReport>>,
    /// Usage of its finished runs and of `usage!` outside any run.
    usage: UsageSum,
}

/// The times of one finished run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Span open to span close.
    pub(crate) wall: Duration,
    /// `wall` minus what the runs nested in it covered.
    pub(crate) self_time: Duration,
    /// Time being polled, for futures.
    pub(crate) busy: Option<Duration>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    runs: u64,
    failures: u64,
    wall: Duration,
    self_time: Duration,
}

impl Totals {
    fn add(&mut self, timing: Timing, outcome: &Outcome) {
        self.runs += 1;
        self.failures += u64::from(outcome.is_failure());
        self.wall += timing.wall;
        self.self_time += timing.self_time;
    }
}

#[derive(Debug)]
struct AgentTotals {
    agent: Arc<str>,
    /// Every finished run.
    all: Totals,
    /// The finished runs that were not stored (past `max_slots`).
    aggregated: Totals,
    running_aggregated: u32,
}

fn key(agent: &Arc<str>) -> usize {
    Arc::as_ptr(agent).cast::<u8>() as usize
}

#[derive(Debug)]
struct Slot {
    agent: Arc<str>,
    kind: RunKind,
    parent: Option<u32>,
    /// From the pipeline's start; the run's wall-clock start is the
    /// pipeline's plus this (both come from one monotonic clock).
    offset: Duration,
    end: Option<SlotEnd>,
}

#[derive(Debug)]
struct SlotEnd {
    timing: Timing,
    outcome: Outcome,
    extras: Option<Box<RunExtras>>,
}

impl Record {
    /// One entry per run still open: stored ones in start order, then aggregated ones.
    fn running(&self) -> Vec<String> {
        let stored = self
            .slots
            .iter()
            .filter(|s| s.end.is_none())
            .map(|s| s.agent.to_string());
        let aggregated = self
            .per_agent
            .values()
            .flat_map(|t| std::iter::repeat_n(t.agent.to_string(), t.running_aggregated as usize));
        stored.chain(aggregated).collect()
    }

    fn totals_of(&mut self, agent: &Arc<str>) -> &mut AgentTotals {
        self.per_agent
            .entry(key(agent))
            .or_insert_with(|| AgentTotals {
                agent: Arc::clone(agent),
                all: Totals::default(),
                aggregated: Totals::default(),
                running_aggregated: 0,
            })
    }
}

impl PipelineState {
    pub(crate) fn new(
        id: Arc<str>,
        run: u64,
        start: quanta::Instant,
        started_at: SystemTime,
        max_slots: usize,
    ) -> Self {
        PipelineState {
            id,
            run,
            start,
            started_at,
            ended: AtomicBool::new(false),
            record: Mutex::new(Record {
                slots: Vec::new(),
                max_slots,
                per_agent: FxHashMap::default(),
                finished_runs: 0,
                last_progress: None,
                report: None,
                usage: UsageSum::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Record> {
        // A panic while holding this lock cannot leave the record half
        // updated in a way that matters for reporting; keep going.
        lock(&self.record)
    }

    /// Registers a run that just opened.
    pub(crate) fn open_run(
        &self,
        agent: &Arc<str>,
        kind: RunKind,
        parent: Option<u32>,
        at: quanta::Instant,
    ) -> Ticket {
        let mut record = self.lock();
        if record.report.is_some() {
            return Ticket::Late;
        }
        if record.slots.len() >= record.max_slots {
            record.totals_of(agent).running_aggregated += 1;
            return Ticket::Aggregated;
        }
        let index = record.slots.len() as u32;
        record.slots.push(Slot {
            agent: Arc::clone(agent),
            kind,
            parent,
            offset: at.saturating_duration_since(self.start),
            end: None,
        });
        Ticket::Slot(index)
    }

    /// Records the ends of runs with one lock: `f` calls
    /// [`Closer::close`] for each.
    pub(crate) fn closing<R>(&self, f: impl FnOnce(&mut Closer<'_>) -> R) -> R {
        f(&mut Closer(self.lock()))
    }
}

/// A pipeline's record, locked for closing runs.
pub(crate) struct Closer<'a>(MutexGuard<'a, Record>);

impl Closer<'_> {
    /// Records the end of a run opened with `open_run`.
    pub(crate) fn close(
        &mut self,
        ticket: Ticket,
        agent: &Arc<str>,
        timing: Timing,
        outcome: &Outcome,
        extras: Option<Box<RunExtras>>,
    ) {
        let record = &mut *self.0;
        if record.report.is_some() || ticket == Ticket::Late {
            return;
        }
        record.finished_runs += 1;
        if let Some(extras) = &extras {
            record.usage.add(extras.usage);
        }
        let totals = record.totals_of(agent);
        totals.all.add(timing, outcome);
        if ticket == Ticket::Aggregated {
            totals.running_aggregated = totals.running_aggregated.saturating_sub(1);
            totals.aggregated.add(timing, outcome);
        } else if let Ticket::Slot(i) = ticket
            && let Some(slot) = record.slots.get_mut(i as usize)
        {
            slot.end = Some(SlotEnd {
                timing,
                outcome: outcome.clone(),
                extras,
            });
        }
    }
}

impl PipelineState {
    /// Adds `usage!` reported inside the pipeline but outside any run.
    pub(crate) fn add_usage(&self, usage: UsageSum) {
        let mut record = self.lock();
        if record.report.is_none() {
            record.usage.add(usage);
        }
    }

    pub(crate) fn set_progress(&self, progress: Progress) {
        self.lock().last_progress = Some(progress);
    }

    pub(crate) fn report(&self) -> Option<Arc<PipelineReport>> {
        self.lock().report.clone()
    }

    /// Whether it is finished, without taking its lock (a run opening in
    /// it then is late, whichever way it was found).
    pub(crate) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Ends the pipeline. Returns the report the first time only.
    pub(crate) fn finish(
        &self,
        end: quanta::Instant,
        outcome: Outcome,
        rule: Rule,
    ) -> Option<Arc<PipelineReport>> {
        let mut record = self.lock();
        if record.report.is_some() {
            return None;
        }
        let duration = end.saturating_duration_since(self.start);
        let report = Arc::new(self.build(&record, duration, outcome, true, rule));
        record.report = Some(Arc::clone(&report));
        self.ended.store(true, Ordering::Release);
        Some(report)
    }

    /// The report so far, for an active pipeline.
    pub(crate) fn report_so_far(&self, now: quanta::Instant, rule: Rule) -> Arc<PipelineReport> {
        let record = self.lock();
        if let Some(report) = &record.report {
            return Arc::clone(report);
        }
        Arc::new(self.build(
            &record,
            now.saturating_duration_since(self.start),
            Outcome::Succeeded,
            false,
            rule,
        ))
    }

    pub(crate) fn snapshot(&self, now: quanta::Instant) -> PipelineSnapshot {
        let record = self.lock();
        PipelineSnapshot {
            id: self.id.to_string(),
            run: self.run,
            started_at: self.started_at,
            elapsed: now.saturating_duration_since(self.start),
            running_agents: record.running(),
            finished_runs: record.finished_runs,
            last_progress: record.last_progress.clone(),
        }
    }

    fn build(
        &self,
        record: &Record,
        duration: Duration,
        outcome: Outcome,
        finished: bool,
        rule: Rule,
    ) -> PipelineReport {
        // Stored slots → runs, renumbering past unfinished ones.
        let mut index_of = vec![None; record.slots.len()];
        let mut agents = Vec::with_capacity(record.slots.len());
        for (i, slot) in record.slots.iter().enumerate() {
            let Some(end) = &slot.end else { continue };
            index_of[i] = Some(agents.len());
            let (usage, model, output, output_dropped) = match &end.extras {
                Some(extras) => {
                    let (lines, dropped) = extras.output.parts();
                    (
                        extras.usage.to_usage(),
                        extras.model.as_deref().map(str::to_owned),
                        lines,
                        dropped,
                    )
                }
                None => Default::default(),
            };
            agents.push(AgentRun {
                agent: slot.agent.to_string(),
                kind: slot.kind,
                usage,
                model,
                output,
                output_dropped,
                pipeline: self.id.to_string(),
                started_at: self.started_at + slot.offset,
                duration: end.timing.wall,
                self_time: end.timing.self_time,
                busy: end.timing.busy,
                outcome: end.outcome.clone(),
                offset: slot.offset,
                parent: slot
                    .parent
                    .and_then(|p| index_of.get(p as usize).copied().flatten()),
            });
        }
        let bottlenecks = analysis::bottlenecks(
            record
                .per_agent
                .values()
                .map(|t| (&*t.agent, t.all.wall, t.all.self_time)),
            duration,
            rule,
        );
        let critical_runs = analysis::critical_path(&agents, duration);
        let critical_path = critical_runs
            .iter()
            .map(|&i| agents[i].agent.clone())
            .collect();
        let mut aggregated: Vec<AggregatedRuns> = record
            .per_agent
            .values()
            .filter(|t| t.aggregated.runs > 0)
            .map(|t| AggregatedRuns {
                agent: t.agent.to_string(),
                runs: t.aggregated.runs,
                failures: t.aggregated.failures,
                total: t.aggregated.wall,
                self_time: t.aggregated.self_time,
            })
            .collect();
        aggregated.sort_by(|a, b| a.agent.cmp(&b.agent));
        PipelineReport {
            id: self.id.to_string(),
            run: self.run,
            started_at: self.started_at,
            duration,
            outcome,
            finished,
            agents,
            bottlenecks,
            critical_path,
            critical_runs,
            aggregated,
            unfinished: record.running(),
            usage: record.usage.to_usage(),
        }
    }
}
