//! The terminal UI's cost: the same 60-agent `conclave demo` session with `--display quiet`
//! (stdout a pipe) and with `--display tui` (stdout a real pseudo-terminal read by a terminal
//! emulator, as a person's terminal would). It prints each run's session wall time (from the
//! journal's `session_ended`, which does not count the time the UI waits for `q` at the end)
//! and the medians.
//!
//! `cargo build --release --bins && target/release/conclave-tui-bench [--agents 60] [--runs 3]`

use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use conclave_tests::pty::PtySession;
use conclave_tests::{events_of, read_journal, run_with_deadline, workspace_bin};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 60)]
    agents: u32,
    #[arg(long, default_value_t = 3)]
    runs: u32,
    #[arg(long, default_value_t = 40)]
    tokens: u32,
    #[arg(long, default_value_t = 10)]
    token_delay_ms: u64,
}

const DEADLINE: Duration = Duration::from_secs(300);

fn session_wall_ms(dir: &std::path::Path, id: &str) -> anyhow::Result<u64> {
    let journal = read_journal(&dir.join("sessions").join(id))?;
    let ended = events_of(&journal, "session_ended");
    ended
        .first()
        .and_then(|e| e["wall_ms"].as_u64())
        .context("the session did not end")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = workspace_bin("conclave")?;
    let dir = tempfile::tempdir()?;
    let demo = |display: &str, id: &str| {
        let mut command = Command::new(&bin);
        command
            .arg("demo")
            .args(["--agents", &args.agents.to_string()])
            .args(["--tokens", &args.tokens.to_string()])
            .args(["--token-delay-ms", &args.token_delay_ms.to_string()])
            .args([
                "--display",
                display,
                "--session-dir",
                "sessions",
                "--session-id",
                id,
            ])
            .current_dir(dir.path())
            .env_remove("RUST_LOG");
        command
    };
    let mut quiet = Vec::new();
    let mut tui = Vec::new();
    for run in 0..args.runs {
        let id = format!("quiet-{run}");
        let finished = run_with_deadline(&mut demo("quiet", &id), DEADLINE)?;
        anyhow::ensure!(
            finished.code == Some(0),
            "quiet run failed: {}",
            finished.stderr
        );
        let ms = session_wall_ms(dir.path(), &id)?;
        println!("quiet run {run}: session {ms} ms");
        quiet.push(ms);

        let id = format!("tui-{run}");
        let mut session = PtySession::spawn(&mut demo("tui", &id), 50, 200)?;
        session.wait_for(DEADLINE, "the final answer view", |s| {
            s.contents().contains("final answer (")
        })?;
        session.send(b"q")?;
        let (code, _) = session.wait(DEADLINE)?;
        anyhow::ensure!(code == Some(0), "tui run failed with {code:?}");
        let ms = session_wall_ms(dir.path(), &id)?;
        println!("tui   run {run}: session {ms} ms");
        tui.push(ms);
    }
    quiet.sort_unstable();
    tui.sort_unstable();
    println!(
        "{} agents, {} tokens × {} ms: median session wall quiet {} ms, tui {} ms",
        args.agents,
        args.tokens,
        args.token_delay_ms,
        quiet[quiet.len() / 2],
        tui[tui.len() / 2]
    );
    Ok(())
}
