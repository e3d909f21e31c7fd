//! Deterministic seeds for tasks and sampling.
//!
//! Seeds follow from `curriculum.seed`, the round and a purpose, never from the experiment id,
//! so two experiments with the same config generate the same anomalies and draw the same
//! labelled samples.

use kka_shared::ids::{RoundIndex, TaskKind};

/// Purpose of a derived seed. Each purpose gets its own stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedPurpose {
    /// A task's own seed, per kind and shard.
    Task(TaskKind, u32),
    /// The draw of labelled anomalies for a round's train task.
    LabelledSample,
}

/// Mixes one value with the SplitMix64 output step (Steele, Lea and Flood, "Fast splittable pseudorandom number
/// generators", OOPSLA 2014): a bijective mix with good avalanche.
fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives the seed for `purpose` in `round` from the experiment's base seed.
pub fn derive_seed(base: u64, round: RoundIndex, purpose: SeedPurpose) -> u64 {
    let (tag, shard) = match purpose {
        SeedPurpose::Task(kind, shard) => (1 + kind as u64, u64::from(shard)),
        SeedPurpose::LabelledSample => (100, 0),
    };
    [u64::from(round.0), tag, shard].into_iter().fold(splitmix64(base), |seed, part| splitmix64(seed ^ part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_stable() {
        let a = derive_seed(0, RoundIndex(1), SeedPurpose::Task(TaskKind::Generate, 0));
        assert_eq!(a, derive_seed(0, RoundIndex(1), SeedPurpose::Task(TaskKind::Generate, 0)));
    }

    #[test]
    fn seeds_differ_by_every_input() {
        let base = derive_seed(5, RoundIndex(1), SeedPurpose::Task(TaskKind::Generate, 0));
        let others = [
            derive_seed(6, RoundIndex(1), SeedPurpose::Task(TaskKind::Generate, 0)),
            derive_seed(5, RoundIndex(2), SeedPurpose::Task(TaskKind::Generate, 0)),
            derive_seed(5, RoundIndex(1), SeedPurpose::Task(TaskKind::Train, 0)),
            derive_seed(5, RoundIndex(1), SeedPurpose::Task(TaskKind::Generate, 1)),
            derive_seed(5, RoundIndex(1), SeedPurpose::LabelledSample),
        ];
        for other in others {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn splitmix_matches_reference_output() {
        // First output of the reference SplitMix64 generator seeded with 0 is
        // splitmix64(0) = 0xE220A8397B1DCDAF.
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
    }
}
