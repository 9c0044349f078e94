//! The `conclave-sim` binary: it announces its address on stdout and serves there.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn binary_prints_its_listening_line_and_serves() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_conclave-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            "3",
            "--token-delay-ms",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("reader task")
    .expect("a line on stdout");

    let result = async {
        let base_url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        assert!(base_url.starts_with("http://127.0.0.1:"), "{base_url}");
        assert!(base_url.ends_with("/v1"), "{base_url}");
        let response = reqwest::Client::new()
            .post(format!("{base_url}/chat/completions"))
            .json(&serde_json::json!({
                "model": "cli",
                "messages": [{"role": "user", "content": "hello"}],
            }))
            .send()
            .await
            .expect("request reaches the binary");
        assert_eq!(response.status(), 200);
        let completion: serde_json::Value = response.json().await.expect("completion JSON");
        assert_eq!(completion["usage"]["completion_tokens"], 3);
    }
    .await;

    let _ = child.kill();
    let _ = child.wait();
    result
}

#[test]
fn binary_exits_cleanly_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_conclave-sim"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("listening line");
    assert!(line.starts_with("listening on http://"), "{line:?}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exit = child.wait().expect("binary exits");
    assert!(exit.success(), "{exit:?}");
}
