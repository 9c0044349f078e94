//! End-to-end: agents with MCP servers (`backend.mcp_servers`) through the real `conclave`
//! binary. The servers start with the session and stop with it: no server process survives a
//! finished session; a required server that cannot start fails the session at start with a
//! message naming the agent, the server and its stderr.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use conclave_sim::{SimConfig, SimServer};
use conclave_tests::{Finished, run_with_deadline, workspace_bin};

const DEADLINE: Duration = Duration::from_secs(60);

async fn sim() -> SimServer {
    let config = SimConfig {
        tokens: 4,
        token_delay: Duration::from_millis(1),
        ..SimConfig::default()
    };
    SimServer::start(config, "127.0.0.1:0".parse().expect("address"))
        .await
        .expect("sim provider starts")
}

async fn conclave(args: Vec<String>, cwd: PathBuf) -> Finished {
    let bin = workspace_bin("conclave").expect("conclave binary");
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(bin);
        command.args(&args).current_dir(&cwd).env_remove("RUST_LOG");
        run_with_deadline(&mut command, DEADLINE)
    })
    .await
    .expect("runner thread")
    .expect("conclave finishes in time")
}

/// A config of two sim agents; the first has one demo MCP server (`extra_args` for the
/// server), whose environment carries `marker` so its process can be found afterwards.
fn config(dir: &Path, base_url: &str, extra_args: &str, marker: &str) -> PathBuf {
    let demo = workspace_bin("conclave-mcp-demo").expect("demo server built");
    let yaml = format!(
        "agents:\n  - id: alpha\n    backend:\n      type: sim\n      model: sim-a\n      base_url: \"{base_url}\"\n      mcp_servers:\n        - name: demo\n          type: stdio\n          command: \"{}\"\n          args: [{extra_args}]\n          env:\n            CONCLAVE_TEST_MARKER: \"{marker}\"\n  - id: beta\n    backend:\n      type: sim\n      model: sim-b\n      base_url: \"{base_url}\"\norchestrator:\n  restart_policy: cancel\ntimeout_settings:\n  orchestrator_timeout_seconds: 60\n",
        demo.display()
    );
    let path = dir.join("tools.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

/// The pids of live processes whose environment holds `marker`.
pub(crate) fn processes_with(marker: &str) -> Vec<u32> {
    let needle = format!("CONCLAVE_TEST_MARKER={marker}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            !zombie
                && environ
                    .split(|b| *b == 0)
                    .any(|var| var == needle.as_bytes())
        })
        .collect()
}

fn args(config: &Path) -> Vec<String> {
    [
        "--config",
        config.to_str().unwrap_or_default(),
        "--display",
        "plain",
        "--session-dir",
        "sessions",
        "What is the capital of France?",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_servers_start_with_the_session_and_leave_no_process_behind() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = format!("e2e-tools-{}", std::process::id());
    let config = config(dir.path(), &sim.base_url(), "", &marker);
    let run = conclave(args(&config), dir.path().to_owned()).await;
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let left = conclave_tests::poll_until(DEADLINE, || {
        processes_with(&marker).is_empty().then_some(())
    });
    assert!(
        left.is_some(),
        "MCP server processes survived the session: {:?}",
        processes_with(&marker)
    );
    // The start is journaled: one line per server and agent (beta has none).
    let journal = conclave_tests::read_journal(&only_session(dir.path())).expect("journal");
    let starts = conclave_tests::events_of(&journal, "tool_server_started");
    assert_eq!(starts.len(), 1, "{starts:#?}");
    let start = &starts[0];
    assert_eq!(start["agent"], "alpha");
    assert!(start["node"].is_null(), "a local agent: {start}");
    assert_eq!(start["server"], "demo");
    assert_eq!(start["transport"], "stdio");
    assert_eq!(start["optional"], false);
    assert!(start["error"].is_null(), "{start}");
    assert!(start["duration_ms"].is_u64(), "{start}");
    // The demo server has several tools; the config filters none.
    assert!(start["tools"].as_u64().unwrap_or(0) >= 2, "{start}");
    // The display says so, as a sentence.
    let shown = format!(
        "[alpha] MCP server demo (stdio) started in {} ms with {} tool(s)",
        start["duration_ms"], start["tools"]
    );
    assert!(run.stdout.contains(&shown), "stdout:\n{}", run.stdout);
}

/// The one session directory under `dir/sessions`.
fn only_session(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join("sessions"))
        .expect("sessions dir")
        .flatten()
        .next()
        .expect("one session")
        .path()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_server_that_cannot_start_fails_the_session_naming_it() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = format!("e2e-tools-fail-{}", std::process::id());
    let config = config(
        dir.path(),
        &sim.base_url(),
        "\"--fail-start\", \"demo: WEATHER_TOKEN is not set\"",
        &marker,
    );
    let run = conclave(args(&config), dir.path().to_owned()).await;
    assert_ne!(run.code, Some(0), "stdout:\n{}", run.stdout);
    let shown = format!("{}{}", run.stdout, run.stderr);
    assert!(shown.contains("agent `alpha`"), "{shown}");
    assert!(
        shown.contains("MCP server `demo` could not start"),
        "{shown}"
    );
    assert!(
        shown.contains("demo: WEATHER_TOKEN is not set"),
        "stderr tail missing: {shown}"
    );
    assert!(
        sim.requests().is_empty(),
        "no provider call before the tools started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_leaves_no_server_process_behind() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = format!("e2e-tools-int-{}", std::process::id());
    // Slow models keep the session running until the interrupt.
    let config = config(dir.path(), &sim.base_url(), "", &marker);
    let yaml = std::fs::read_to_string(&config)
        .expect("config")
        .replace(
            "model: sim-a",
            "model: \"sim-a:tokens=400,token_delay_ms=50\"",
        )
        .replace(
            "model: sim-b",
            "model: \"sim-b:tokens=400,token_delay_ms=50\"",
        );
    std::fs::write(&config, yaml).expect("write");
    let bin = workspace_bin("conclave").expect("conclave binary");
    let mut command = Command::new(bin);
    command
        .args(args(&config))
        .current_dir(dir.path())
        .env_remove("RUST_LOG");
    let running = conclave_tests::Running::start(&mut command).expect("conclave starts");
    let started = tokio::task::spawn_blocking({
        let marker = marker.clone();
        move || {
            conclave_tests::poll_until(DEADLINE, || {
                (!processes_with(&marker).is_empty()).then_some(())
            })
        }
    })
    .await
    .expect("poll thread");
    assert!(started.is_some(), "the MCP server never started");
    running.signal(libc::SIGINT).expect("SIGINT");
    let finished = tokio::task::spawn_blocking(move || running.wait(DEADLINE))
        .await
        .expect("wait thread")
        .expect("conclave stops after Ctrl-C");
    assert_ne!(
        finished.code,
        Some(0),
        "an interrupted session does not succeed"
    );
    let left = tokio::task::spawn_blocking({
        let marker = marker.clone();
        move || {
            conclave_tests::poll_until(DEADLINE, || {
                processes_with(&marker).is_empty().then_some(())
            })
        }
    })
    .await
    .expect("poll thread");
    assert!(
        left.is_some(),
        "MCP server processes survived Ctrl-C: {:?}",
        processes_with(&marker)
    );
}

/// `conclave server` runs many sessions in one process: each session's MCP servers stop when
/// that session ends, not when the server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_running_server_stops_each_sessions_mcp_servers() {
    use std::io::{BufRead, BufReader, Write};
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = format!("e2e-tools-srv-{}", std::process::id());
    let config = config(dir.path(), &sim.base_url(), "", &marker);
    let bin = workspace_bin("conclave").expect("conclave binary");
    let mut server = Command::new(bin)
        .arg("server")
        // The HTTP API is not used; stdin jobs are. A free loopback port.
        .args([
            "--http",
            &format!("127.0.0.1:{}", conclave_tests::free_port().expect("port")),
        ])
        .arg("--config")
        .arg(&config)
        .args(["--session-dir", "sessions"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("server starts");
    let mut stdin = server.stdin.take().expect("stdin");
    let stdout = server.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let _ = writeln!(stdin, "What is the capital of France?");
        let _ = stdin.flush();
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        (line, stdin)
    });
    let (line, stdin) = tokio::time::timeout(DEADLINE, line)
        .await
        .expect("a session result in time")
        .expect("reader thread");
    let result: serde_json::Value = serde_json::from_str(&line).expect("a JSON result line");
    assert_eq!(result["exit_code"], 0, "{result}");
    let gone = tokio::task::spawn_blocking({
        let marker = marker.clone();
        move || {
            conclave_tests::poll_until(DEADLINE, || {
                processes_with(&marker).is_empty().then_some(())
            })
        }
    })
    .await
    .expect("poll thread");
    let still_running = server.try_wait().ok().flatten().is_none();
    // SAFETY: kill(2) on the child this test spawned and has not reaped.
    unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGTERM) };
    drop(stdin);
    let _ = tokio::task::spawn_blocking(move || server.wait()).await;
    assert!(still_running, "the server kept running after the session");
    assert!(
        gone.is_some(),
        "the finished session's MCP server is still running: {:?}",
        processes_with(&marker)
    );
}

/// The tool loop end to end: agents whose simulated model calls the demo server's `lookup`
/// (MassGen-format `mcp_servers`, stdio) get its result back in the provider's wire format,
/// and the result reaches the answers and the final answer; every call is journaled and shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_result_reaches_the_final_answer() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let demo = workspace_bin("conclave-mcp-demo").expect("demo server built");
    let agent = |id: &str, model: &str| {
        format!(
            "  - id: {id}\n    backend:\n      type: sim\n      model: \"{model}:policy=tools,tool=lookup\"\n      base_url: \"{}\"\n      mcp_servers:\n        demo:\n          type: stdio\n          command: \"{}\"\n",
            sim.base_url(),
            demo.display()
        )
    };
    let yaml = format!(
        "agents:\n{}{}orchestrator:\n  restart_policy: cancel\ntimeout_settings:\n  orchestrator_timeout_seconds: 60\n",
        agent("alpha", "sim-a"),
        agent("beta", "sim-b")
    );
    let config = dir.path().join("tools.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let finished = conclave(args(&config), dir.path().to_owned()).await;
    assert_eq!(
        finished.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        finished.stdout,
        finished.stderr
    );
    let journal = conclave_tests::read_journal(&only_session(dir.path())).expect("journal");
    let calls: Vec<&serde_json::Value> = conclave_tests::events_of(&journal, "turn_progress")
        .into_iter()
        .filter(|e| e["event"]["ToolCalled"].is_object())
        .collect();
    assert!(!calls.is_empty(), "tool calls are journaled");
    let call = &calls[0]["event"]["ToolCalled"];
    assert_eq!(call["report"]["tool"], "mcp__demo__lookup");
    assert!(call["report"]["error"].is_null(), "{call}");
    let result = call["result"].as_str().unwrap_or_default().to_owned();
    assert!(!result.is_empty());
    let finals = conclave_tests::events_of(&journal, "final_answer");
    let final_answer = finals[0]["content"].as_str().unwrap_or_default();
    assert!(
        final_answer.contains(&result)
            || conclave_tests::events_of(&journal, "answer_accepted")
                .iter()
                .any(|a| a["content"].as_str().is_some_and(|c| c.contains(&result))),
        "the tool's result `{result}` reaches the answers: {final_answer}"
    );
    assert!(
        finished.stdout.contains("called mcp__demo__lookup"),
        "{}",
        finished.stdout
    );
    sim.shutdown().await;
}

/// `conclave demo --tools` without keys: every simulated agent calls the demo MCP server
/// (started beside the binary, over stdio) and answers with what it returned; the calls and
/// their results are in the journal and in the JSON display, and the result reaches the final
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_tools_shows_a_real_mcp_server_at_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args: Vec<String> = [
        "demo",
        "--tools",
        "--tokens",
        "5",
        "--token-delay-ms",
        "2",
        "--display",
        "json",
        "--session-dir",
        "sessions",
        "What is the capital of France?",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let run = conclave(args, dir.path().to_owned()).await;
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let journal = conclave_tests::read_journal(&only_session(dir.path())).expect("journal");
    let starts = conclave_tests::events_of(&journal, "tool_server_started");
    assert_eq!(starts.len(), 3, "one demo server per agent: {starts:#?}");
    assert!(
        starts
            .iter()
            .all(|s| s["server"] == "demo" && s["error"].is_null())
    );
    let calls: Vec<&serde_json::Value> = conclave_tests::events_of(&journal, "turn_progress")
        .into_iter()
        .filter_map(|e| {
            e["event"]["ToolCalled"]
                .as_object()
                .map(|_| &e["event"]["ToolCalled"])
        })
        .collect();
    assert!(!calls.is_empty(), "no tool call journaled");
    for call in &calls {
        assert_eq!(call["report"]["tool"], "mcp__demo__lookup", "{call}");
        assert!(call["report"]["error"].is_null(), "{call}");
    }
    let result = calls[0]["result"].as_str().unwrap_or_default();
    assert!(!result.is_empty(), "{}", calls[0]);
    let finals = conclave_tests::events_of(&journal, "final_answer");
    let final_answer = finals[0]["content"].as_str().unwrap_or_default();
    assert!(
        final_answer.contains(result),
        "the tool's result `{result}` is not in the final answer: {final_answer}"
    );
    // The JSON display shows the calls as they happen, and the final answer.
    let shown: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        shown
            .iter()
            .any(|e| e["event"]["ToolCalled"]["report"]["tool"] == "mcp__demo__lookup"),
        "{}",
        run.stdout
    );
    assert!(
        shown
            .iter()
            .any(|e| e["type"] == "final"
                && e["content"].as_str().is_some_and(|c| c.contains(result))),
        "{}",
        run.stdout
    );
}

/// Without conclave-mcp-demo beside the binary, `demo --tools` says what is missing and how
/// to get it, and runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_tools_without_the_demo_server_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir(&bin_dir).expect("bin dir");
    let alone = bin_dir.join("conclave");
    let bin = workspace_bin("conclave").expect("conclave binary");
    if std::fs::hard_link(&bin, &alone).is_err() {
        std::fs::copy(&bin, &alone).expect("copy conclave");
    }
    let cwd = dir.path().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(alone);
        command
            .args(["demo", "--tools", "--session-dir", "sessions", "Hi?"])
            .current_dir(&cwd)
            .env_remove("RUST_LOG");
        run_with_deadline(&mut command, DEADLINE)
    })
    .await
    .expect("runner thread")
    .expect("conclave finishes in time");
    assert_eq!(
        run.code,
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stderr.contains("conclave-mcp-demo"), "{}", run.stderr);
    assert!(
        run.stderr.contains("cargo build -p conclave-mcp-demo"),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("sessions").exists(), "a session ran");
}
