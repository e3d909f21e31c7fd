//! Typed ids for everything that crosses RabbitMQ or Redis.
//!
//! Task and anomaly ids are derived from the experiment, round and shard, never drawn at random,
//! so a redelivered or re-published task rewrites exactly the records it wrote before.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Error returned when a string is not a valid id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// Maximum length of a user-chosen id such as an experiment or worker id.
pub const MAX_NAME_LEN: usize = 64;

fn check_name(kind: &'static str, value: &str) -> Result<(), InvalidId> {
    let invalid = |reason| InvalidId { kind, value: value.to_owned(), reason };
    if value.is_empty() {
        return Err(invalid("it is empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(invalid("it is longer than 64 characters"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    if !value.chars().all(allowed) {
        return Err(invalid("use only ASCII letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidId> {
                let value = value.into();
                check_name($kind, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(value: String) -> Result<Self, InvalidId> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(value: &str) -> Result<Self, InvalidId> {
                Self::new(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_id!(
    /// Name of one experiment: a curriculum run with its own config, pools and checkpoints.
    ExperimentId,
    "experiment id"
);
name_id!(
    /// Name of one worker process, used in logs and completion events.
    WorkerId,
    "worker id"
);

/// Index of a curriculum round. Round 0 trains the baseline detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoundIndex(pub u32);

impl RoundIndex {
    pub const BASELINE: RoundIndex = RoundIndex(0);

    pub fn previous(self) -> Option<RoundIndex> {
        self.0.checked_sub(1).map(RoundIndex)
    }

    pub fn next(self) -> RoundIndex {
        RoundIndex(self.0 + 1)
    }
}

impl fmt::Display for RoundIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The kind of work a task message asks for. Each kind has its own queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Generate,
    Score,
    Train,
    /// A task with no body, used by the smoke job and the throughput benchmark.
    Noop,
}

impl TaskKind {
    pub const ALL: [TaskKind; 4] = [TaskKind::Generate, TaskKind::Score, TaskKind::Train, TaskKind::Noop];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Generate => "generate",
            TaskKind::Score => "score",
            TaskKind::Train => "train",
            TaskKind::Noop => "noop",
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskKind {
    type Err = InvalidId;
    fn from_str(value: &str) -> Result<Self, InvalidId> {
        TaskKind::ALL.into_iter().find(|kind| kind.as_str() == value).ok_or_else(|| InvalidId {
            kind: "task kind",
            value: value.to_owned(),
            reason: "expected generate, score, train or noop",
        })
    }
}

/// Deterministic id of one task: `<experiment>/r<round>/<kind>/<shard>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId {
    pub experiment: ExperimentId,
    pub round: RoundIndex,
    pub kind: TaskKind,
    pub shard: u32,
}

impl TaskId {
    pub fn new(experiment: ExperimentId, round: RoundIndex, kind: TaskKind, shard: u32) -> Self {
        Self { experiment, round, kind, shard }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/r{}/{}/{}", self.experiment, self.round, self.kind, self.shard)
    }
}

impl FromStr for TaskId {
    type Err = InvalidId;
    fn from_str(value: &str) -> Result<Self, InvalidId> {
        let invalid = |reason| InvalidId { kind: "task id", value: value.to_owned(), reason };
        let parts: Vec<&str> = value.split('/').collect();
        let [experiment, round, kind, shard] = parts[..] else {
            return Err(invalid("expected <experiment>/r<round>/<kind>/<shard>"));
        };
        let round = round
            .strip_prefix('r')
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| invalid("the round part must look like r3"))?;
        let shard = shard.parse().map_err(|_| invalid("the shard part must be an unsigned integer"))?;
        Ok(TaskId {
            experiment: ExperimentId::new(experiment)?,
            round: RoundIndex(round),
            kind: kind.parse()?,
            shard,
        })
    }
}

impl TryFrom<String> for TaskId {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, InvalidId> {
        value.parse()
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> String {
        id.to_string()
    }
}

/// Deterministic id of one generated anomaly: `<experiment>.r<round>.s<shard>.<index>`.
///
/// The index counts within the shard, so the id and the generator seed for the anomaly
/// follow from the generate task alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AnomalyId {
    pub experiment: ExperimentId,
    pub round: RoundIndex,
    pub shard: u32,
    pub index: u32,
}

impl AnomalyId {
    pub fn new(experiment: ExperimentId, round: RoundIndex, shard: u32, index: u32) -> Self {
        Self { experiment, round, shard, index }
    }
}

impl fmt::Display for AnomalyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.r{}.s{}.{}", self.experiment, self.round, self.shard, self.index)
    }
}

impl FromStr for AnomalyId {
    type Err = InvalidId;
    fn from_str(value: &str) -> Result<Self, InvalidId> {
        let invalid = |reason| InvalidId { kind: "anomaly id", value: value.to_owned(), reason };
        // The experiment id may itself contain dots, so split the three numeric parts off the end.
        let mut parts = value.rsplitn(4, '.');
        let index = parts.next().and_then(|p| p.parse().ok());
        let shard = parts.next().and_then(|p| p.strip_prefix('s')).and_then(|p| p.parse().ok());
        let round = parts.next().and_then(|p| p.strip_prefix('r')).and_then(|p| p.parse().ok());
        let experiment = parts.next();
        match (experiment, round, shard, index) {
            (Some(experiment), Some(round), Some(shard), Some(index)) => Ok(AnomalyId {
                experiment: ExperimentId::new(experiment)?,
                round: RoundIndex(round),
                shard,
                index,
            }),
            _ => Err(invalid("expected <experiment>.r<round>.s<shard>.<index>")),
        }
    }
}

impl TryFrom<String> for AnomalyId {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, InvalidId> {
        value.parse()
    }
}

impl From<AnomalyId> for String {
    fn from(id: AnomalyId) -> String {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment() -> ExperimentId {
        ExperimentId::new("fmnist.c0-run_1").unwrap()
    }

    #[test]
    fn experiment_id_rejects_bad_names() {
        assert!(ExperimentId::new("").is_err());
        assert!(ExperimentId::new("has space").is_err());
        assert!(ExperimentId::new("slash/inside").is_err());
        assert!(ExperimentId::new("x".repeat(65)).is_err());
        assert!(ExperimentId::new("x".repeat(64)).is_ok());
    }

    #[test]
    fn task_id_round_trips_through_text() {
        let id = TaskId::new(experiment(), RoundIndex(3), TaskKind::Score, 17);
        assert_eq!(id.to_string(), "fmnist.c0-run_1/r3/score/17");
        assert_eq!(id.to_string().parse::<TaskId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<TaskId>(&json).unwrap(), id);
    }

    #[test]
    fn task_id_rejects_malformed_text() {
        for bad in ["", "a/r1/score", "a/1/score/0", "a/r1/paint/0", "a/r1/score/-1", "a b/r1/score/0"] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn anomaly_id_round_trips_with_dotted_experiment() {
        let id = AnomalyId::new(experiment(), RoundIndex(2), 5, 99);
        assert_eq!(id.to_string(), "fmnist.c0-run_1.r2.s5.99");
        assert_eq!(id.to_string().parse::<AnomalyId>().unwrap(), id);
    }

    #[test]
    fn anomaly_id_rejects_malformed_text() {
        for bad in ["", "exp.r2.s5", "exp.2.s5.1", "exp.r2.5.1", "exp.r2.s5.x"] {
            assert!(bad.parse::<AnomalyId>().is_err(), "{bad:?} parsed");
        }
    }
}
