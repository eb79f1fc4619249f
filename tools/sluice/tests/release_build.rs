//! What a release build of `sluice` holds: no fault injection. The end-to-end tests damage
//! blocks through `SLUICE_FAULT_*` variables, which only a test build reads (the engine's
//! `fault-injection` feature, turned on by this crate's dev-dependencies).

use std::process::Command;

/// The features cargo resolves for the engine under `sluice-cli` with `edges` (`normal`: what
/// `cargo build --release` and `cargo install` build; `all`: what `cargo test` builds).
fn engine_features(edges: &str) -> String {
    let out = Command::new(env!("CARGO"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            "sluice-cli",
            "-e",
            edges,
        ])
        .args(["-i", "sluice-engine", "-f", "{p} [{f}]", "--depth", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_release_build_reads_no_fault_injection_variable() {
    let release = engine_features("normal");
    assert!(release.contains("sluice-engine"), "{release}");
    assert!(!release.contains("fault-injection"), "{release}");
    // The check means something: the test build does have it.
    assert!(engine_features("all").contains("fault-injection"));
    // And the binary under test reads the variables the release build lacks.
    let bin = std::fs::read(env!("CARGO_BIN_EXE_sluice")).unwrap();
    assert!(bin.windows(20).any(|w| w == b"SLUICE_FAULT_CORRUPT"));
}
