//! The demo server's binary starts and explains itself. Having an integration test also makes
//! `cargo test --workspace` build the binary, which the tool-layer and e2e tests run.

#[test]
fn the_binary_prints_its_usage() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_conclave-mcp-demo"))
        .arg("--help")
        .output()
        .expect("the demo server runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--http"), "{text}");
}
