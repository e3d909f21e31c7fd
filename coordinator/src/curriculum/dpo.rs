//! DPO preference pairs: hard anomaly descriptions preferred over easy ones.
//!
//! Each line of `runs/<experiment>/dpo/round_<r>.jsonl` is one JSON object
//! `{"prompt": ..., "chosen": ..., "rejected": ...}`, the "standard" explicit-prompt preference
//! format that TRL's `DPOTrainer` loads with `datasets.load_dataset("json", ...)`.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One preference pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DpoPair {
    pub prompt: String,
    /// Description of an anomaly the detector found hard.
    pub chosen: String,
    /// Description of an anomaly the detector found easy.
    pub rejected: String,
}

/// A description with the splitting detector's score of the anomaly it produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredDescription {
    pub description: String,
    pub score: f64,
}

/// Pairs the round's distinct hard descriptions, hardest (lowest score) first, with its distinct
/// easy descriptions, easiest (highest score) first, rank by rank. A description that is both
/// hard and easy in the round is kept on both sides, but never paired with itself.
pub fn build_pairs(prompt: &str, hard: &[ScoredDescription], easy: &[ScoredDescription]) -> Vec<DpoPair> {
    let chosen = distinct_descriptions(hard, false);
    let rejected = distinct_descriptions(easy, true);
    chosen
        .into_iter()
        .zip(rejected)
        .filter(|(chosen, rejected)| chosen != rejected)
        .map(|(chosen, rejected)| DpoPair { prompt: prompt.to_owned(), chosen, rejected })
        .collect()
}

/// Lists distinct descriptions ordered by score (descending when `highest_first`), each at the
/// rank of its best-scored occurrence. Equal scores order by text, so input order never matters.
pub fn distinct_descriptions(items: &[ScoredDescription], highest_first: bool) -> Vec<String> {
    let mut sorted: Vec<&ScoredDescription> = items.iter().filter(|d| !d.description.trim().is_empty()).collect();
    sorted.sort_by(|a, b| {
        let by_score = a.score.total_cmp(&b.score);
        let by_score = if highest_first { by_score.reverse() } else { by_score };
        by_score.then_with(|| a.description.cmp(&b.description))
    });
    let mut seen = std::collections::HashSet::new();
    sorted.into_iter().filter(|d| seen.insert(d.description.as_str())).map(|d| d.description.clone()).collect()
}

/// Writes `pairs` as JSON lines to `path`, replacing the file atomically (a temporary file
/// beside it, then a rename), so a crash never leaves a half-written round.
pub fn write_jsonl(path: &Path, pairs: &[DpoPair]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let temporary = path.with_extension("jsonl.tmp");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&temporary)?);
    for pair in pairs {
        serde_json::to_writer(&mut file, pair)?;
        file.write_all(b"\n")?;
    }
    file.into_inner().map_err(|error| error.into_error())?.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described(description: &str, score: f64) -> ScoredDescription {
        ScoredDescription { description: description.into(), score }
    }

    #[test]
    fn pairs_hardest_with_easiest() {
        let hard = [described("faint stain", 0.2), described("small tear", 0.1), described("faint stain", 0.3)];
        let easy = [described("huge hole", 5.0), described("missing sleeve", 9.0)];
        let pairs = build_pairs("p", &hard, &easy);
        assert_eq!(pairs.len(), 2);
        assert_eq!((pairs[0].chosen.as_str(), pairs[0].rejected.as_str()), ("small tear", "missing sleeve"));
        assert_eq!((pairs[1].chosen.as_str(), pairs[1].rejected.as_str()), ("faint stain", "huge hole"));
        assert!(pairs.iter().all(|p| p.prompt == "p"));
    }

    #[test]
    fn no_pair_repeats_one_description() {
        let pairs = build_pairs("p", &[described("same", 0.1)], &[described("same", 5.0)]);
        assert!(pairs.is_empty());
    }

    #[test]
    fn empty_side_gives_no_pairs() {
        assert!(build_pairs("p", &[], &[described("x", 1.0)]).is_empty());
        assert!(build_pairs("p", &[described("x", 1.0)], &[]).is_empty());
    }

    #[test]
    fn jsonl_lines_have_exactly_the_trl_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dpo").join("round_1.jsonl");
        let pairs = build_pairs("Describe a defect", &[described("tear \"quoted\"", 0.1)], &[described("hole\nline", 9.0)]);
        write_jsonl(&path, &pairs).unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1);
        let value: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let object = value.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["chosen", "prompt", "rejected"]);
        assert_eq!(object["chosen"], "tear \"quoted\"");
        assert_eq!(object["rejected"], "hole\nline");
        assert!(!path.with_extension("jsonl.tmp").exists());
    }

    #[test]
    fn empty_round_writes_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("round_2.jsonl");
        write_jsonl(&path, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
