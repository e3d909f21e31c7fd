//! The hard and easy anomaly pools: capping and seeded sampling of labelled anomalies.
//!
//! Pools live in Redis as sorted sets scored by the detector that split the anomaly. These
//! functions compute a pool's next contents from its current contents, so that the coordinator
//! can write the result in one transaction and re-running a split gives the same pool.

use std::collections::BTreeMap;

use kka_shared::config::PoolPolicy;
use kka_shared::ids::AnomalyId;
use rand::seq::index;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One anomaly in a pool, with its score under the detector that split it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolEntry {
    pub id: AnomalyId,
    pub score: f64,
}

/// Merges `new` into `current` and caps the result at `cap` entries under `policy`.
///
/// An id present in both keeps the score from `new`. The result is sorted by id, and the
/// function is idempotent: merging the same `new` into its own output changes nothing.
pub fn merge_and_cap(current: &[PoolEntry], new: &[PoolEntry], cap: usize, policy: PoolPolicy) -> Vec<PoolEntry> {
    let mut by_id: BTreeMap<&AnomalyId, f64> = current.iter().map(|e| (&e.id, e.score)).collect();
    for entry in new {
        by_id.insert(&entry.id, entry.score);
    }
    let mut entries: Vec<PoolEntry> =
        by_id.into_iter().map(|(id, score)| PoolEntry { id: id.clone(), score }).collect();

    if entries.len() > cap {
        match policy {
            // Ids order by (round, shard, index), so the last entries are the newest.
            PoolPolicy::DropOldest => {
                entries.drain(..entries.len() - cap);
            }
            // Ties on the score break by id, so the choice never depends on input order.
            PoolPolicy::KeepHardest => {
                entries.sort_by(|a, b| a.score.total_cmp(&b.score).then_with(|| a.id.cmp(&b.id)));
                entries.truncate(cap);
                entries.sort_by(|a, b| a.id.cmp(&b.id));
            }
        }
    }
    entries
}

/// The labelled anomalies of one train task and how they were drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledSample {
    /// Hard ids first, then easy ids. An id may repeat when its pool ran short.
    pub ids: Vec<AnomalyId>,
    pub hard: PoolDraw,
    pub easy: PoolDraw,
}

/// How many anomalies were requested from one pool and what it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolDraw {
    /// Anomalies drawn from this pool.
    pub wanted: usize,
    /// Distinct anomalies the pool held.
    pub available: usize,
}

impl PoolDraw {
    /// Checks whether the pool held fewer anomalies than requested, so that some repeat.
    pub fn is_short(&self) -> bool {
        self.wanted > self.available
    }
}

/// Draws `total` labelled anomalies, a share `hard_ratio` from `hard` and the rest from `easy`.
///
/// A pool with enough entries is sampled without replacement. A pool that is short contributes
/// every entry once and fills the rest by sampling with replacement. An empty pool's share goes
/// to the other pool. Returns an empty sample only when both pools are empty. The draw depends
/// only on `seed` and the pools' contents in id order.
pub fn sample_labelled(
    hard: &[PoolEntry],
    easy: &[PoolEntry],
    total: usize,
    hard_ratio: f64,
    seed: u64,
) -> LabelledSample {
    let mut hard_wanted = (total as f64 * hard_ratio.clamp(0.0, 1.0)).round() as usize;
    if hard.is_empty() {
        hard_wanted = 0;
    } else if easy.is_empty() {
        hard_wanted = total;
    }
    let easy_wanted = if hard.is_empty() && easy.is_empty() { 0 } else { total - hard_wanted };

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ids = draw(&sorted_ids(hard), hard_wanted, &mut rng);
    ids.extend(draw(&sorted_ids(easy), easy_wanted, &mut rng));
    LabelledSample {
        ids,
        hard: PoolDraw { wanted: hard_wanted, available: hard.len() },
        easy: PoolDraw { wanted: easy_wanted, available: easy.len() },
    }
}

fn sorted_ids(pool: &[PoolEntry]) -> Vec<&AnomalyId> {
    let mut ids: Vec<&AnomalyId> = pool.iter().map(|e| &e.id).collect();
    ids.sort();
    ids
}

fn draw(pool: &[&AnomalyId], wanted: usize, rng: &mut ChaCha8Rng) -> Vec<AnomalyId> {
    if pool.is_empty() || wanted == 0 {
        return Vec::new();
    }
    if wanted <= pool.len() {
        let mut picked: Vec<usize> = index::sample(rng, pool.len(), wanted).into_vec();
        picked.sort_unstable();
        return picked.into_iter().map(|i| pool[i].clone()).collect();
    }

    let mut ids: Vec<AnomalyId> = pool.iter().map(|&id| id.clone()).collect();
    for _ in pool.len()..wanted {
        ids.push(pool[rng.random_range(0..pool.len())].clone());
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use kka_shared::ids::{ExperimentId, RoundIndex};

    fn id(round: u32, shard: u32, index: u32) -> AnomalyId {
        AnomalyId::new(ExperimentId::new("pools").unwrap(), RoundIndex(round), shard, index)
    }

    fn entry(round: u32, index: u32, score: f64) -> PoolEntry {
        PoolEntry { id: id(round, 0, index), score }
    }

    fn pool(count: u32) -> Vec<PoolEntry> {
        (0..count).map(|i| entry(1, i, f64::from(i))).collect()
    }

    #[test]
    fn merge_under_cap_keeps_everything() {
        let merged = merge_and_cap(&[entry(1, 0, 1.0)], &[entry(2, 0, 2.0)], 10, PoolPolicy::DropOldest);
        assert_eq!(merged, vec![entry(1, 0, 1.0), entry(2, 0, 2.0)]);
    }

    #[test]
    fn drop_oldest_keeps_latest_rounds() {
        let current = vec![entry(1, 0, 0.1), entry(1, 1, 0.2), entry(2, 0, 0.3)];
        let new = vec![entry(3, 0, 9.0), entry(3, 1, 8.0)];
        let merged = merge_and_cap(&current, &new, 3, PoolPolicy::DropOldest);
        assert_eq!(merged, vec![entry(2, 0, 0.3), entry(3, 0, 9.0), entry(3, 1, 8.0)]);
    }

    #[test]
    fn drop_oldest_orders_shards_numerically() {
        let current = vec![PoolEntry { id: id(1, 10, 0), score: 0.0 }, PoolEntry { id: id(1, 2, 0), score: 0.0 }];
        let merged = merge_and_cap(&current, &[], 1, PoolPolicy::DropOldest);
        assert_eq!(merged[0].id, id(1, 10, 0));
    }

    #[test]
    fn keep_hardest_keeps_lowest_scores() {
        let current = vec![entry(1, 0, 5.0), entry(1, 1, 1.0)];
        let new = vec![entry(2, 0, 0.5), entry(2, 1, 3.0)];
        let merged = merge_and_cap(&current, &new, 2, PoolPolicy::KeepHardest);
        assert_eq!(merged, vec![entry(1, 1, 1.0), entry(2, 0, 0.5)]);
    }

    #[test]
    fn keep_hardest_breaks_ties_by_id() {
        let new = vec![entry(2, 0, 1.0), entry(1, 0, 1.0), entry(3, 0, 1.0)];
        let merged = merge_and_cap(&[], &new, 2, PoolPolicy::KeepHardest);
        assert_eq!(merged, vec![entry(1, 0, 1.0), entry(2, 0, 1.0)]);
    }

    #[test]
    fn merge_is_idempotent() {
        let current = pool(6);
        let new = vec![entry(2, 0, 0.5), entry(2, 1, 9.0)];
        for policy in [PoolPolicy::DropOldest, PoolPolicy::KeepHardest] {
            let once = merge_and_cap(&current, &new, 5, policy);
            let twice = merge_and_cap(&once, &new, 5, policy);
            assert_eq!(once, twice, "{policy:?}");
            assert_eq!(once.len(), 5, "{policy:?}");
        }
    }

    #[test]
    fn sample_splits_by_ratio_without_repeats() {
        let (hard, easy) = (pool(50), (0..50).map(|i| entry(2, i, 1.0)).collect::<Vec<_>>());
        let sample = sample_labelled(&hard, &easy, 20, 0.25, 7);
        assert_eq!(sample.ids.len(), 20);
        assert_eq!(sample.hard, PoolDraw { wanted: 5, available: 50 });
        assert_eq!(sample.easy, PoolDraw { wanted: 15, available: 50 });
        assert!(sample.ids[..5].iter().all(|id| id.round == RoundIndex(1)));
        assert!(sample.ids[5..].iter().all(|id| id.round == RoundIndex(2)));
        let mut distinct = sample.ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 20);
    }

    #[test]
    fn sample_is_deterministic_per_seed() {
        let (hard, easy) = (pool(40), pool(40));
        assert_eq!(sample_labelled(&hard, &easy, 10, 0.5, 3), sample_labelled(&hard, &easy, 10, 0.5, 3));
        assert_ne!(sample_labelled(&hard, &easy, 10, 0.5, 3).ids, sample_labelled(&hard, &easy, 10, 0.5, 4).ids);
    }

    #[test]
    fn sample_ignores_pool_order() {
        let hard = pool(30);
        let mut reversed = hard.clone();
        reversed.reverse();
        assert_eq!(sample_labelled(&hard, &[], 10, 1.0, 1), sample_labelled(&reversed, &[], 10, 1.0, 1));
    }

    #[test]
    fn short_pool_uses_all_then_repeats() {
        let hard = pool(3);
        let easy = (0..100).map(|i| entry(2, i, 1.0)).collect::<Vec<_>>();
        let sample = sample_labelled(&hard, &easy, 20, 0.5, 11);
        assert!(sample.hard.is_short());
        assert!(!sample.easy.is_short());
        let hard_ids = &sample.ids[..10];
        for expected in &hard {
            assert!(hard_ids.contains(&expected.id), "{} missing", expected.id);
        }
        assert!(hard_ids.iter().all(|id| id.round == RoundIndex(1)));
        assert_eq!(sample.ids.len(), 20);
    }

    #[test]
    fn empty_pool_share_moves_to_other_pool() {
        let easy = pool(5);
        let sample = sample_labelled(&[], &easy, 8, 0.75, 2);
        assert_eq!(sample.hard.wanted, 0);
        assert_eq!(sample.easy.wanted, 8);
        assert_eq!(sample.ids.len(), 8);

        let sample = sample_labelled(&easy, &[], 8, 0.0, 2);
        assert_eq!(sample.hard.wanted, 8);
        assert_eq!(sample.ids.len(), 8);
    }

    #[test]
    fn both_pools_empty_gives_empty_sample() {
        let sample = sample_labelled(&[], &[], 8, 0.5, 2);
        assert!(sample.ids.is_empty());
    }
}
