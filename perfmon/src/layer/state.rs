//! The layer's per-span state: an agent run's ([`AgentData`]), a
//! pipeline's ([`PipelineData`]), a future's busy time ([`Busy`]), and
//! where a new run goes ([`Placement`]), read off the nearest perfmon span
//! around it ([`Nearest`]).

use std::sync::{Arc, Mutex, OnceLock};

use crate::coverage::Coverage;
use crate::outcome::Outcome;
use crate::pipeline::{PipelineState, RunExtras, Ticket};
use crate::record::RunKind;
use crate::stats::AgentEntry;

/// Per-span state of an agent (or tool) run: on its thread's stack of open
/// runs (`open_runs`) for synchronous runs, in the span's extensions for
/// the others.
pub(super) struct AgentData {
    pub(super) entry: Arc<AgentEntry>,
    pub(super) kind: RunKind,
    /// Usage and output, boxed and only once the run reports some.
    pub(super) extras: Option<Box<RunExtras>>,
    pub(super) pipeline: Option<Arc<PipelineState>>,
    pub(super) ticket: Ticket,
    pub(super) start: quanta::Instant,
    pub(super) busy: Option<Busy>,
    /// Boxed: only runs that did not simply succeed have one, and a small
    /// `AgentData` moves in and out of the span's extensions without a memcpy call.
    pub(super) outcome: Option<Box<Outcome>>,
    /// What the runs nested in this one covered, made when the first opens.
    pub(super) children: OnceLock<Arc<Children>>,
    /// The enclosing run's `children`, for runs nested in one.
    pub(super) parent: Option<Arc<Children>>,
    /// Opened outside any pipeline while one was active.
    pub(super) lost: bool,
}

/// The runs nested in one run: the time they covered, as offsets from the
/// enclosing run's start.
pub(super) struct Children {
    /// The enclosing run's agent and start.
    pub(super) agent: Arc<str>,
    pub(super) start: quanta::Instant,
    pub(super) cover: Mutex<Coverage>,
}

/// A span the layer's per-layer filter hides (`Context::span` finds nothing).
pub(super) struct Hidden;

/// Where a new run goes: its pipeline, its parent's slot there, and its
/// parent run's `children`.
#[derive(Default)]
pub(super) struct Placement {
    pub(super) pipeline: Option<Arc<PipelineState>>,
    pub(super) slot: Option<u32>,
    pub(super) parent: Option<Arc<Children>>,
}

impl AgentData {
    /// The slot of this run in its pipeline, for runs nested in it.
    pub(super) fn slot(&self) -> Option<u32> {
        match self.ticket {
            Ticket::Slot(i) => Some(i),
            Ticket::Aggregated | Ticket::Late => None,
        }
    }
}

/// Busy time of a run whose span may be entered many times (a future's).
/// Compact: a synchronous run's state (which has none) moves without a
/// `memcpy` call.
pub(super) struct Busy {
    /// Nanoseconds spent entered.
    pub(super) total_ns: u64,
    /// When the span was last entered from outside (valid while `depth > 0`).
    pub(super) entered_at: quanta::Instant,
    pub(super) depth: u32,
    pub(super) entered: bool,
    /// Timed by the future itself (`busy`): the layer only takes its total.
    pub(super) self_timed: bool,
}

impl Busy {
    /// The total a self-timing future handed over (`None`: never polled).
    pub(super) fn set_total(&mut self, busy_ns: Option<u64>) {
        if self.self_timed
            && let Some(ns) = busy_ns
        {
            self.total_ns = ns;
            self.entered = true;
        }
    }
}

/// Per-span state of a pipeline, in the span's extensions.
pub(super) struct PipelineData {
    pub(super) state: Arc<PipelineState>,
    pub(super) error: Option<String>,
}

/// The nearest perfmon span around an event, found for changing it.
pub(super) enum NearestMut<'a> {
    Agent(&'a mut AgentData),
    Pipeline(&'a mut PipelineData),
}

/// The nearest perfmon span around something, as the walk found it.
pub(super) enum Nearest<'a> {
    /// An agent run's state.
    Agent(&'a AgentData),
    /// A pipeline's state.
    Pipeline(&'a PipelineData),
}

impl NearestMut<'_> {
    pub(super) fn as_ref(&self) -> Nearest<'_> {
        match self {
            NearestMut::Agent(agent) => Nearest::Agent(agent),
            NearestMut::Pipeline(pipeline) => Nearest::Pipeline(pipeline),
        }
    }
}

impl Nearest<'_> {
    /// Where a run opened right inside this span goes.
    pub(super) fn placement(&self) -> Placement {
        match self {
            Nearest::Agent(agent) => Placement {
                pipeline: agent.pipeline.clone(),
                slot: agent.slot(),
                parent: Some(Arc::clone(agent.children.get_or_init(|| {
                    Arc::new(Children {
                        agent: Arc::clone(&agent.entry.name),
                        start: agent.start,
                        cover: Mutex::default(),
                    })
                }))),
            },
            Nearest::Pipeline(pipeline) => Placement {
                pipeline: Some(Arc::clone(&pipeline.state)),
                slot: None,
                parent: None,
            },
        }
    }

    /// The pipeline, and the run's slot in it for runs nested in an agent.
    pub(super) fn pipeline_and_slot(&self) -> (Option<Arc<PipelineState>>, Option<u32>) {
        match self {
            Nearest::Agent(agent) => (agent.pipeline.clone(), agent.slot()),
            Nearest::Pipeline(pipeline) => (Some(Arc::clone(&pipeline.state)), None),
        }
    }

    /// The agent's name (if the nearest is an agent run) and the pipeline.
    pub(super) fn agent_and_pipeline(&self) -> (Option<Arc<str>>, Option<Arc<PipelineState>>) {
        match self {
            Nearest::Agent(agent) => (Some(Arc::clone(&agent.entry.name)), agent.pipeline.clone()),
            Nearest::Pipeline(pipeline) => (None, Some(Arc::clone(&pipeline.state))),
        }
    }
}
