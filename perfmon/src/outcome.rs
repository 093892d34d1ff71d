//! [`Outcome`] and its one text encoding: the strings recorded in the
//! `perfmon.outcome` field, written in JSON, and used as metric labels.
//!
//! Bottom of the crate's dependency order: imports nothing from the crate.
//! Every other module that writes or reads an outcome's name goes through
//! [`Outcome::as_str`] and [`Outcome::parse`].

use std::fmt;

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Deserializer, Serialize};

/// How an agent run or a pipeline ended.
///
/// Serialized (and flattened into its parent object) as
/// `"outcome": "succeeded" | "failed" | "panicked" | "cancelled"`, plus
/// `"error": "..."` for [`Outcome::Failed`].
///
/// Non-exhaustive: match with a `_` arm, or use [`Outcome::is_failure`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Outcome {
    /// Ran to completion without reporting an error.
    #[default]
    Succeeded,
    /// Reported an error: `AgentGuard::fail`, an `Err` from a tracked
    /// `Result`, a recorded `perfmon.error` field, or an `ERROR` event with an
    /// `error` field inside the span (what `#[tracing::instrument(err)]` emits).
    Failed {
        /// The error's `Display` text.
        error: String,
    },
    /// The guard was dropped while its thread was unwinding from a panic.
    Panicked,
    /// A tracked future was dropped before it completed.
    Cancelled,
}

/// A `perfmon.outcome` value that is none of the four names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown perfmon.outcome value {0:?}: record one of \"succeeded\", \"failed\", \"panicked\" \
     or \"cancelled\" (or perfmon.error with the error text)"
)]
pub struct UnknownOutcome(pub String);

impl Outcome {
    /// Every outcome's name, in [`Outcome::index`] order.
    pub(crate) const NAMES: [&'static str; 4] = ["succeeded", "failed", "panicked", "cancelled"];

    /// The outcome's name as it appears in JSON and in metric labels.
    pub fn as_str(&self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// Reads a recorded `perfmon.outcome` value. `error` is the run's
    /// `perfmon.error`, if one was recorded: it becomes the text of
    /// `"failed"` (plain `"failed"` otherwise).
    ///
    /// # Errors
    ///
    /// [`UnknownOutcome`] for any other value: the caller reports it; it is
    /// never taken for a success.
    pub(crate) fn parse(value: &str, error: Option<&str>) -> Result<Outcome, UnknownOutcome> {
        Ok(match value {
            "succeeded" => Outcome::Succeeded,
            "failed" => Outcome::Failed {
                error: error.unwrap_or("failed").to_owned(),
            },
            "panicked" => Outcome::Panicked,
            "cancelled" => Outcome::Cancelled,
            other => return Err(UnknownOutcome(other.to_owned())),
        })
    }

    /// `true` for every outcome but [`Outcome::Succeeded`].
    pub fn is_failure(&self) -> bool {
        !matches!(self, Outcome::Succeeded)
    }

    /// The error text of a failed run.
    pub fn error(&self) -> Option<&str> {
        match self {
            Outcome::Failed { error } => Some(error),
            _ => None,
        }
    }

    /// A small dense index, used to pick per-outcome counters and metric handles.
    pub(crate) fn index(&self) -> usize {
        match self {
            Outcome::Succeeded => 0,
            Outcome::Failed { .. } => 1,
            Outcome::Panicked => 2,
            Outcome::Cancelled => 3,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Failed { error } => write!(f, "failed: {error}"),
            other => f.write_str(other.as_str()),
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let error = self.error();
        let mut map = serializer.serialize_map(Some(1 + usize::from(error.is_some())))?;
        map.serialize_entry("outcome", self.as_str())?;
        if let Some(error) = error {
            map.serialize_entry("error", error)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Outcome {
    /// Reads what [`Serialize`] writes: `outcome`, and `error` when failed.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            outcome: String,
            error: Option<String>,
        }
        let fields = Fields::deserialize(deserializer)?;
        Outcome::parse(&fields.outcome, fields.error.as_deref()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_outcome() {
        for outcome in [
            Outcome::Succeeded,
            Outcome::Failed {
                error: "boom".into(),
            },
            Outcome::Panicked,
            Outcome::Cancelled,
        ] {
            assert_eq!(Outcome::parse(outcome.as_str(), Some("boom")), Ok(outcome));
        }
        assert_eq!(
            Outcome::parse("failed", None),
            Ok(Outcome::Failed {
                error: "failed".into()
            })
        );
    }

    #[test]
    fn an_unknown_name_is_an_error_not_a_success() {
        let err = Outcome::parse("sucess", None).unwrap_err();
        assert_eq!(err, UnknownOutcome("sucess".into()));
        assert!(err.to_string().contains("\"succeeded\""), "{err}");
    }
}
