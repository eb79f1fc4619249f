//! The protocol crate is sans-IO as a crate, not only in its modules: nothing it links can open a
//! socket, run an event loop or speak TLS. That is what lets the fuzz target link it alone.

use std::process::Command;

#[test]
fn the_protocol_crate_links_no_io() {
    let out = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--locked", "--offline", "-p", "sluice-proto"])
        .args(["-e", "normal", "--prefix", "none", "-f", "{p}"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    assert!(tree.contains("blake3"), "{tree}");
    for io in [
        "quinn", "tokio", "rustls", "rcgen", "ring", "mio", "socket2", "io-uring",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(&format!("{io} "))),
            "sluice-proto links {io}:\n{tree}"
        );
    }
}
