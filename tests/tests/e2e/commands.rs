//! End-to-end: the command tool (`enable_mcp_command_line`) through the real `conclave`
//! binary. A simulated agent calls `mcp__command_line__execute_command` (the sim's `tools`
//! policy with `tool_args`); the command runs in the agent's default workspace under the
//! session directory, locally or in a container; runner containers are gone after a normal
//! end, and after a `kill -9` of the orchestrator the next docker-mode session sweeps them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use conclave_sim::{SimConfig, SimServer};
use conclave_tests::{
    Finished, docker_ready, poll_until, run_with_deadline, runner_containers, workspace_bin,
};

const DEADLINE: Duration = Duration::from_secs(90);

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

/// Percent-encodes every byte that is not a letter or a digit (the sim's `tool_args`).
pub(crate) fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Two sim agents; `alpha` runs `command` with the command tool (`extra` backend keys).
fn config(dir: &Path, base_url: &str, command: &str, extra: &str) -> PathBuf {
    let args = percent_encode(&serde_json::json!({ "command": command }).to_string());
    let yaml = format!(
        "agents:\n  - id: alpha\n    backend:\n      type: sim\n      model: \"sim-a:policy=tools,tool=execute_command,tool_args={args}\"\n      base_url: \"{base_url}\"\n      enable_mcp_command_line: true\n{extra}  - id: beta\n    backend:\n      type: sim\n      model: sim-b\n      base_url: \"{base_url}\"\norchestrator:\n  restart_policy: cancel\ntimeout_settings:\n  orchestrator_timeout_seconds: 80\n"
    );
    let path = dir.join("commands.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

fn docker_keys() -> String {
    format!(
        "      command_line_execution_mode: docker\n      command_line_docker_image: {}\n      command_line_docker_memory_limit: 128m\n",
        conclave_tests::RUNNER_IMAGE
    )
}

fn command(config: &Path, cwd: &Path) -> Command {
    let bin = workspace_bin("conclave").expect("conclave binary");
    let mut command = Command::new(bin);
    command
        .args([
            "--config",
            &config.display().to_string(),
            "--display",
            "plain",
        ])
        .args(["--session-dir", "sessions", "Run the command."])
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env("OPENAI_API_KEY", "sk-e2e-parent-key");
    command
}

async fn conclave(config: PathBuf, cwd: PathBuf) -> Finished {
    tokio::task::spawn_blocking(move || run_with_deadline(&mut command(&config, &cwd), DEADLINE))
        .await
        .expect("runner thread")
        .expect("conclave finishes in time")
}

fn sessions(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("sessions"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The whole journal of a session as text: answers, votes (whose reasons quote the tool's
/// result) and the final answer.
fn journal_text(session: &Path) -> String {
    let journal = conclave_tests::read_journal(session).expect("journal");
    journal
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_command_runs_in_the_agents_workspace_without_the_nodes_keys() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        dir.path(),
        &sim.base_url(),
        "echo e2e-ran > proof.txt; cat proof.txt; echo keys=$(env | grep -c API_KEY)",
        "",
    );
    let run = conclave(config, dir.path().to_owned()).await;
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let session = sessions(dir.path()).pop().expect("one session");
    let proof = session.join("workspaces/alpha/proof.txt");
    assert_eq!(
        std::fs::read_to_string(&proof).expect("proof.txt"),
        "e2e-ran\n"
    );
    let journal = journal_text(&session);
    assert!(
        journal.contains("e2e-ran"),
        "the result reaches the agents' decisions: {journal}"
    );
    // `grep -c` counted no variable: the parent's OPENAI_API_KEY did not reach the command.
    assert!(journal.contains("keys=0"), "{journal}");
    assert!(!journal.contains("sk-e2e-parent-key"), "{journal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_session_runs_in_a_container_that_is_gone_at_its_end() {
    if !docker_ready() {
        return;
    }
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        dir.path(),
        &sim.base_url(),
        "echo in-container > proof.txt; echo nets=$(ls /sys/class/net | tr '\\n' ,)",
        &docker_keys(),
    );
    let run = conclave(config, dir.path().to_owned()).await;
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let session = sessions(dir.path()).pop().expect("one session");
    let id = session.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        std::fs::read_to_string(session.join("workspaces/alpha/proof.txt")).expect("proof.txt"),
        "in-container\n"
    );
    let journal = journal_text(&session);
    assert!(
        journal.contains("nets=lo,"),
        "network none: only lo: {journal}"
    );
    assert!(
        runner_containers(&format!("conclave.session={id}")).is_empty(),
        "the session's container outlived it: {:?}",
        runner_containers(&format!("conclave.session={id}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_killed_orchestrator_are_swept_by_the_next_session() {
    if !docker_ready() {
        return;
    }
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = config(dir.path(), &sim.base_url(), "sleep 60", &docker_keys());
    let mut child = command(&slow, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("conclave starts");
    let pid = child.id();
    // The owner label is `host:pid:start`: wait for this process's container.
    let owned = || -> Vec<String> {
        let output = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                "label=conclave.runner",
                "--format",
                "{{.Names}} {{.Label \"conclave.owner\"}}",
            ])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.contains(&format!(":{pid}:")))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let started = poll_until(DEADLINE, || Some(owned()).filter(|c| !c.is_empty()));
    let Some(orphans) = started else {
        let _ = child.kill();
        panic!("the session's container never started");
    };
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = child.wait();
    assert_eq!(
        owned(),
        orphans,
        "kill -9 runs no cleanup: the container is still there"
    );

    // The next docker-mode session sweeps it before starting its own.
    let next = config(dir.path(), &sim.base_url(), "echo next", &docker_keys());
    std::fs::rename(&next, dir.path().join("next.yaml")).expect("rename");
    let run = conclave(dir.path().join("next.yaml"), dir.path().to_owned()).await;
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        owned().is_empty(),
        "the orphaned containers survived the next start: {:?}",
        owned()
    );
}
