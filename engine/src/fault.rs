//! Fault injection for the end-to-end tests, compiled only with the `fault-injection` feature.
//!
//! The feature is turned on by the CLI crate's dev-dependencies, so the `sluice` binary that
//! `cargo test` builds has it, and a `cargo build --release` (or `cargo install`) never does:
//! there the functions below are constants and no environment variable is read.

/// Blocks to damage on arrival, from `SLUICE_FAULT_CORRUPT=FILE_ID:BLOCK_INDEX,...`: the tests use
/// it to prove that a damaged block is detected and only it is sent again. Each listed block is
/// damaged once, on its first arrival.
#[cfg(feature = "fault-injection")]
pub(crate) fn corrupt_blocks() -> std::collections::HashSet<(u32, u64)> {
    let Ok(spec) = std::env::var("SLUICE_FAULT_CORRUPT") else {
        return Default::default();
    };
    spec.split(',')
        .filter_map(|item| {
            let (f, i) = item.trim().split_once(':')?;
            Some((f.parse().ok()?, i.parse().ok()?))
        })
        .collect()
}

/// Without the feature: nothing is damaged.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn corrupt_blocks() -> std::collections::HashSet<(u32, u64)> {
    Default::default()
}

/// With `SLUICE_FAULT_FROZEN_VERSION` set in the sender's environment, a file's version is a hash
/// of its size alone, given at once and on any filesystem — as on a filesystem whose change
/// times never move — so that the tests can show a source that is not the version a resume
/// journal vouches for being caught (the sender's spot check).
#[cfg(feature = "fault-injection")]
pub(crate) fn frozen_versions() -> bool {
    std::env::var_os("SLUICE_FAULT_FROZEN_VERSION").is_some()
}

/// Without the feature: versions are what the filesystem says.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn frozen_versions() -> bool {
    false
}

/// From `SLUICE_FAULT_DB_LOSE_ROW=schema.table` in the receiver's environment: once, the target
/// loses one row of that table's range right after the range was checked and before it commits
/// (as a stray `DELETE` or a faulty storage layer would), so that the tests can show the final
/// re-read catching it, naming the range, and a second run repairing it.
#[cfg(feature = "fault-injection")]
pub(crate) fn db_lose_row(table: &str) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static DONE: AtomicBool = AtomicBool::new(false);
    std::env::var("SLUICE_FAULT_DB_LOSE_ROW").is_ok_and(|t| t == table)
        && !DONE.swap(true, Ordering::Relaxed)
}

/// Without the feature: no row is lost.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn db_lose_row(_table: &str) -> bool {
    false
}

/// From `SLUICE_FAULT_SLOW_COPY=MS` in the receiver's environment: each run of the older
/// version's copy into a delta's part file (8 MiB) takes `MS` milliseconds longer, as on a slow
/// disk, so that the tests can show a copy outlasting the stall timeout without a file of
/// hundreds of GiB.
#[cfg(feature = "fault-injection")]
pub(crate) fn slow_copy() -> Option<std::time::Duration> {
    millis("SLUICE_FAULT_SLOW_COPY")
}

/// Without the feature: copies go at the disk's pace.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn slow_copy() -> Option<std::time::Duration> {
    None
}

/// From `SLUICE_FAULT_SLOW_READ=MS` in the sender's environment: each block the sender reads
/// takes `MS` milliseconds longer, as from a slow disk, so that the tests can show a sender
/// that reads for long without sending anything (a large unchanged file).
/// Asked for every block read, so the variable is read once.
#[cfg(feature = "fault-injection")]
pub(crate) fn slow_read() -> Option<std::time::Duration> {
    static PAUSE: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *PAUSE.get_or_init(|| millis("SLUICE_FAULT_SLOW_READ"))
}

/// From `SLUICE_FAULT_SLOW_SINK=MS` in the environment of `sluice bench`'s receiving end: each
/// block it verifies takes `MS` milliseconds longer, as a slow disk behind `--to` would, so that
/// the tests can show on loopback what a slow link shows: the sender's bytes handed to the
/// network running a window ahead of those that crossed.
#[cfg(feature = "fault-injection")]
pub(crate) fn slow_sink() -> Option<std::time::Duration> {
    millis("SLUICE_FAULT_SLOW_SINK")
}

/// Without the feature: blocks go at the sink's pace.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn slow_sink() -> Option<std::time::Duration> {
    None
}

/// The milliseconds environment variable `name` holds, if it holds a number.
#[cfg(feature = "fault-injection")]
fn millis(name: &str) -> Option<std::time::Duration> {
    let ms: u64 = std::env::var(name).ok()?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// Without the feature: reads go at the disk's pace.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn slow_read() -> Option<std::time::Duration> {
    None
}

/// From `SLUICE_FAULT_EARLY=N` in the sender's environment: the first file's first `N` blocks go
/// before the receiver's answer whatever the round trip, and all of them even if the answer
/// comes first, so that the tests can show on loopback both what a receiver holding nothing
/// keeps of them and what one holding the file drops.
#[cfg(feature = "fault-injection")]
pub(crate) fn early_blocks() -> Option<u64> {
    std::env::var("SLUICE_FAULT_EARLY").ok()?.parse().ok()
}

/// Without the feature: early blocks go by the round trip.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn early_blocks() -> Option<u64> {
    None
}

/// From `SLUICE_FAULT_DB_DIE_AFTER=STEP` in the receiver's environment: the process ends at once
/// (exit 137, as if killed) after the schema step `STEP` (`sequences`, `views`, …) has committed,
/// so that the tests can interrupt a copy at that exact point.
#[cfg(feature = "fault-injection")]
pub(crate) fn db_die_after(step: &str) -> bool {
    std::env::var("SLUICE_FAULT_DB_DIE_AFTER").is_ok_and(|s| s == step)
}

/// Without the feature: nothing ends early.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn db_die_after(_step: &str) -> bool {
    false
}
