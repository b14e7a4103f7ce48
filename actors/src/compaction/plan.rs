//! Which files to merge: the strategy described in the [module docs](super), as a pure
//! function of a table's live files.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::CompactionConfig;
use crate::catalog::DataFile;

/// Files below this size share the lowest tier.
const TIER_BASE_BYTES: u64 = 1 << 20;

/// One merge to run: files of one partition, in sequence order.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The partition all inputs belong to.
    pub partition: String,
    /// The files to merge, ordered by `min_seq`.
    pub inputs: Vec<Arc<DataFile>>,
}

impl Job {
    /// Total size of the inputs in bytes.
    pub fn input_bytes(&self) -> u64 {
        self.inputs.iter().map(|f| f.size_bytes).sum()
    }
}

/// The size tier of a file: 0 below 1 MiB, then one tier per factor of 4.
fn tier(size: u64) -> u32 {
    let mut t = 0;
    let mut bound = TIER_BASE_BYTES;
    while size >= bound && t < 32 {
        t += 1;
        bound = bound.saturating_mul(4);
    }
    t
}

/// Splits files (sorted by `min_seq`) into runs within the per-merge limits, dropping runs of
/// fewer than `min` files.
fn chunks(
    files: Vec<Arc<DataFile>>,
    cfg: &CompactionConfig,
    min: usize,
) -> Vec<Vec<Arc<DataFile>>> {
    let mut out = Vec::new();
    let mut cur: Vec<Arc<DataFile>> = Vec::new();
    let mut bytes = 0u64;
    for f in files {
        let full = cur.len() >= cfg.max_input_files.max(2)
            || (!cur.is_empty() && bytes + f.size_bytes > cfg.max_input_bytes);
        if full {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += f.size_bytes;
        cur.push(f);
    }
    out.push(cur);
    out.retain(|c| c.len() >= min.max(2));
    out
}

/// The merges worth running now among `files` (a table's live files). With `force`, every
/// partition's small files are merged whatever their tiers, as long as there are two.
pub fn plan(files: &[Arc<DataFile>], cfg: &CompactionConfig, force: bool) -> Vec<Job> {
    let small = cfg.target_file_bytes / 2;
    let mut by_partition: BTreeMap<&str, Vec<Arc<DataFile>>> = BTreeMap::new();
    for f in files.iter().filter(|f| f.size_bytes < small) {
        by_partition
            .entry(&f.partition)
            .or_default()
            .push(f.clone());
    }
    let mut jobs = Vec::new();
    for (partition, mut files) in by_partition {
        files.sort_by_key(|f| f.min_seq);
        let groups: Vec<Vec<Arc<DataFile>>> = if force {
            chunks(files, cfg, 2)
        } else {
            let mut tiers: BTreeMap<u32, Vec<Arc<DataFile>>> = BTreeMap::new();
            for f in files {
                tiers.entry(tier(f.size_bytes)).or_default().push(f);
            }
            tiers
                .into_values()
                .filter(|t| t.len() >= cfg.min_input_files)
                .flat_map(|t| chunks(t, cfg, cfg.min_input_files))
                .collect()
        };
        jobs.extend(groups.into_iter().map(|inputs| Job {
            partition: partition.to_string(),
            inputs,
        }));
    }
    jobs
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(partition: &str, seq: u64, size: u64) -> Arc<DataFile> {
        Arc::new(DataFile {
            path: format!("p/{partition}/{seq}"),
            partition: partition.into(),
            size_bytes: size,
            rows: 1,
            min_seq: seq,
            max_seq: seq,
            schema_version: 1,
            min_time: None,
            max_time: None,
            min_key: None,
            max_key: None,
            index: None,
        })
    }

    fn cfg() -> CompactionConfig {
        CompactionConfig {
            target_file_bytes: 64 << 20,
            min_input_files: 4,
            max_input_files: 6,
            max_input_bytes: 40 << 20,
            ..CompactionConfig::default()
        }
    }

    fn seqs(job: &Job) -> Vec<u64> {
        job.inputs.iter().map(|f| f.min_seq).collect()
    }

    #[test]
    fn tiers_grow_by_four() {
        assert_eq!(tier(0), 0);
        assert_eq!(tier((1 << 20) - 1), 0);
        assert_eq!(tier(1 << 20), 1);
        assert_eq!(tier((4 << 20) - 1), 1);
        assert_eq!(tier(4 << 20), 2);
        assert_eq!(tier(u64::MAX), 32);
    }

    #[test]
    fn merges_a_tier_once_it_has_enough_files() {
        // Three tiny files: not yet.
        let files: Vec<_> = (1..=3).map(|s| file("all", s, 1000)).collect();
        assert!(plan(&files, &cfg(), false).is_empty());
        // A fourth: one merge, in sequence order, whatever the listing order.
        let mut files = files;
        files.insert(0, file("all", 9, 2000));
        let jobs = plan(&files, &cfg(), false);
        assert_eq!(jobs.len(), 1);
        assert_eq!(seqs(&jobs[0]), vec![1, 2, 3, 9]);
        // Files of another tier do not count towards this one.
        let mixed = vec![
            file("all", 1, 1000),
            file("all", 2, 1000),
            file("all", 3, 1000),
            file("all", 4, 2 << 20),
        ];
        assert!(plan(&mixed, &cfg(), false).is_empty());
        assert_eq!(plan(&mixed, &cfg(), true).len(), 1, "forced: tiers ignored");
    }

    #[test]
    fn partitions_are_never_mixed_and_big_files_stay() {
        let files = vec![
            file("2026-11-24", 1, 1000),
            file("2026-11-25", 2, 1000),
            file("2026-11-24", 3, 1000),
            file("2026-11-25", 4, 1000),
            file("2026-11-25", 5, 40 << 20), // at or above half the target
        ];
        let jobs = plan(&files, &cfg(), true);
        assert_eq!(jobs.len(), 2);
        for j in &jobs {
            assert!(j.inputs.iter().all(|f| f.partition == j.partition));
        }
        assert_eq!(seqs(&jobs[1]), vec![2, 4]);
        // A lone small file is nothing to merge.
        assert!(plan(&files[..2], &cfg(), true).is_empty());
    }

    #[test]
    fn merges_respect_the_file_and_byte_limits() {
        let files: Vec<_> = (1..=14).map(|s| file("all", s, 1000)).collect();
        let jobs = plan(&files, &cfg(), false);
        let lens: Vec<usize> = jobs.iter().map(|j| j.inputs.len()).collect();
        assert_eq!(lens, vec![6, 6], "the last two files wait for more");
        let forced = plan(&files, &cfg(), true);
        let lens: Vec<usize> = forced.iter().map(|j| j.inputs.len()).collect();
        assert_eq!(lens, vec![6, 6, 2]);

        let big: Vec<_> = (1..=4).map(|s| file("all", s, 15 << 20)).collect();
        let jobs = plan(&big, &cfg(), true);
        assert!(jobs.iter().all(|j| j.input_bytes() <= 40 << 20));
        assert_eq!(jobs.len(), 2);
    }
}
