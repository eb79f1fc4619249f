//! Benchmarks for Sluice live in `benches/` (criterion, `cargo bench -p sluice-bench`) and in
//! `compare.sh` (end-to-end against scp, rsync, qcp and friends). This library is empty.
#![forbid(unsafe_code)]
