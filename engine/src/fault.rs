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
