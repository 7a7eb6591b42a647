//! The same scenario and seeds give byte-identical outputs with 1 or 2 threads, and with or without shards.

use safebet_simulations::{RunOptions, Shard, merge, simulate};

use crate::{read, small_scenario, summary_without_wall_time};

const OUTPUTS: [&str; 4] = ["curves.csv", "regret.svg", "margin.svg", "baseline_share.svg"];

#[test]
fn one_and_two_threads_give_identical_files() {
    let scenario = small_scenario();
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    for (threads, dir) in [(1, &one), (2, &two)] {
        let options = RunOptions { threads, ..RunOptions::default() };
        simulate(&scenario, &options, &|_| {}).unwrap().write_all(dir).unwrap();
    }
    assert_eq!(summary_without_wall_time(&one), summary_without_wall_time(&two));
    for file in OUTPUTS.iter().chain(&["runs.jsonl"]) {
        assert_eq!(read(&one, file), read(&two, file), "{file} differs between 1 and 2 threads");
    }
}

#[test]
fn merged_shards_equal_the_unsharded_run() {
    let scenario = small_scenario();
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    simulate(&scenario, &RunOptions { threads: 2, ..RunOptions::default() }, &|_| {})
        .unwrap()
        .write_all(&whole)
        .unwrap();

    // Three shards for five seeds: uneven shards, one thread each, given to merge out of order.
    let mut shard_dirs = Vec::new();
    for index in [2, 0, 1] {
        let dir = tmp.path().join(format!("shard{index}"));
        let options = RunOptions { threads: 1, shard: Shard { index, count: 3 }, ..RunOptions::default() };
        let set = simulate(&scenario, &options, &|_| {}).unwrap();
        assert!(set.summary().is_err(), "a shard alone must not pass for a complete result");
        assert!(set.write_all(&dir).unwrap().is_none());
        assert!(!dir.join("summary.json").exists());
        shard_dirs.push(dir);
    }
    let merged = tmp.path().join("merged");
    merge(&shard_dirs).unwrap().write_all(&merged).unwrap();
    assert_eq!(summary_without_wall_time(&whole), summary_without_wall_time(&merged));
    for file in OUTPUTS {
        assert_eq!(read(&whole, file), read(&merged, file), "{file} differs between sharded and unsharded runs");
    }
}

#[test]
fn merge_refuses_missing_repeated_or_foreign_shards() {
    let scenario = small_scenario();
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for index in 0..2 {
        let dir = tmp.path().join(format!("s{index}"));
        let options = RunOptions { shard: Shard { index, count: 2 }, runs: Some(2), ..RunOptions::default() };
        simulate(&scenario, &options, &|_| {}).unwrap().write_runs(&dir).unwrap();
        dirs.push(dir);
    }
    let missing = merge(&dirs[..1]).unwrap_err().to_string();
    assert!(missing.contains("shard 1/2 is missing"), "{missing}");
    let repeated = merge(&[dirs[0].clone(), dirs[0].clone()]).unwrap_err().to_string();
    assert!(repeated.contains("given twice"), "{repeated}");

    let other = tmp.path().join("other");
    let options = RunOptions { shard: Shard { index: 1, count: 2 }, runs: Some(3), ..RunOptions::default() };
    simulate(&scenario, &options, &|_| {}).unwrap().write_runs(&other).unwrap();
    let foreign = merge(&[dirs[0].clone(), other]).unwrap_err().to_string();
    assert!(foreign.contains("different scenario, seed count or shard count"), "{foreign}");
    assert!(merge(&dirs).is_ok());
}

#[test]
fn progress_reports_every_round_once() {
    let scenario = small_scenario();
    let options = RunOptions { threads: 2, runs: Some(3), ..RunOptions::default() };
    let done = std::sync::atomic::AtomicU64::new(0);
    simulate(&scenario, &options, &|n| {
        done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(done.into_inner(), safebet_simulations::total_rounds(&scenario, &options));
}

#[test]
fn shard_option_parses_and_rejects() {
    assert_eq!("3/8".parse::<Shard>().unwrap(), Shard { index: 3, count: 8 });
    for bad in ["8/8", "1", "a/b", "0/0", "-1/2"] {
        assert!(bad.parse::<Shard>().is_err(), "{bad}");
    }
}
