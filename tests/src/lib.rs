//! Support for conclave's end-to-end tests and bench: find the built binaries, run them with
//! a deadline, write configs that point at a simulated provider, and read session journals.
//!
//! The tests drive the real `conclave` binary as a user would, against the real
//! `conclave-sim` provider over loopback HTTP. Nothing here mocks the HTTP or SSE path.

pub mod pty;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Finds a binary built from this workspace, next to the running test or bench executable
/// (`target/<profile>/<name>`). `cargo test --workspace` builds every binary before running
/// tests; for a partial build, run `cargo build --workspace --bins` first.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let mut dir = exe
        .parent()
        .map(Path::to_path_buf)
        .context("executable has no parent directory")?;
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        bail!(
            "{} is not built; run `cargo build --workspace --bins` (same profile) first",
            path.display()
        );
    }
    Ok(path)
}

/// The result of running a command with a deadline.
#[derive(Debug)]
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs a command, killing it if it outlives `deadline`.
pub fn run_with_deadline(command: &mut Command, deadline: Duration) -> anyhow::Result<Finished> {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))?;
    // Drain the pipes on threads so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let out_thread = std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut buf);
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut buf);
        buf
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    let Some(status) = status else {
        bail!(
            "{command:?} did not finish within {deadline:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    };
    Ok(Finished {
        code: status.code(),
        stdout,
        stderr,
        elapsed: started.elapsed(),
    })
}

/// Starts the simulated provider on a free loopback port: `tokens` pieces per reply,
/// `token_delay_ms` between them.
pub async fn start_sim(
    tokens: u32,
    token_delay_ms: u64,
) -> anyhow::Result<conclave_sim::SimServer> {
    let config = conclave_sim::SimConfig {
        tokens,
        token_delay: Duration::from_millis(token_delay_ms),
        ..conclave_sim::SimConfig::default()
    };
    conclave_sim::SimServer::start(config, "127.0.0.1:0".parse().context("loopback address")?)
        .await
        .context("the simulated provider did not start")
}

/// One agent of a simulated-provider config.
pub struct SimAgent<'a> {
    pub id: &'a str,
    /// The sim model string, options included (`sim:tokens=5,first_byte_ms=300`).
    pub model: &'a str,
}

/// A YAML config (MassGen shape) of agents that talk to the simulated provider at `base_url`.
/// `orchestrator` is extra YAML placed under `orchestrator:` (indented by the caller).
pub fn sim_config_yaml(
    base_url: &str,
    agents: &[SimAgent<'_>],
    orchestrator: &str,
    timeout_seconds: u64,
) -> String {
    let mut yaml = String::from("agents:\n");
    for agent in agents {
        yaml.push_str(&format!(
            "  - id: {}\n    backend:\n      type: sim\n      model: \"{}\"\n      base_url: \"{}\"\n",
            agent.id, agent.model, base_url
        ));
    }
    yaml.push_str("orchestrator:\n");
    if orchestrator.trim().is_empty() {
        yaml.push_str("  restart_policy: cancel\n");
    } else {
        yaml.push_str(orchestrator);
    }
    yaml.push_str(&format!(
        "timeout_settings:\n  orchestrator_timeout_seconds: {timeout_seconds}\n"
    ));
    yaml
}

/// Reads a session's `events.jsonl` as JSON values.
pub fn read_journal(session_dir: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let path = session_dir.join("events.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{}:{} is not JSON", path.display(), i + 1))
        })
        .collect()
}

/// The events of a journal with the given `type`.
pub fn events_of<'a>(journal: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    journal.iter().filter(|e| e["type"] == kind).collect()
}

/// The `timeout_settings:` of a test config, in seconds (the config loader accepts whole
/// seconds from 1 up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimTimeouts {
    pub orchestrator: u64,
    pub turn: u64,
    pub stall: u64,
}

/// Like [`sim_config_yaml`], with every `timeout_settings:` key and, when given, the
/// backends' `max_retries` (the number of retries of one provider call).
pub fn sim_config_yaml_with(
    base_url: &str,
    agents: &[SimAgent<'_>],
    orchestrator: &str,
    timeouts: SimTimeouts,
    max_retries: Option<u32>,
) -> String {
    let mut yaml = String::from("agents:\n");
    for agent in agents {
        yaml.push_str(&format!(
            "  - id: {}\n    backend:\n      type: sim\n      model: \"{}\"\n      base_url: \"{}\"\n",
            agent.id, agent.model, base_url
        ));
        if let Some(retries) = max_retries {
            yaml.push_str(&format!("      max_retries: {retries}\n"));
        }
    }
    yaml.push_str("orchestrator:\n");
    if orchestrator.trim().is_empty() {
        yaml.push_str("  restart_policy: cancel\n");
    } else {
        yaml.push_str(orchestrator);
    }
    yaml.push_str(&format!(
        "timeout_settings:\n  orchestrator_timeout_seconds: {}\n  turn_timeout_seconds: {}\n  stall_timeout_seconds: {}\n",
        timeouts.orchestrator, timeouts.turn, timeouts.stall
    ));
    yaml
}

/// A child process started with piped output, drained on threads, that a test can signal
/// while it runs (Ctrl-C tests) and then wait for with a deadline.
pub struct Running {
    child: std::process::Child,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<()>,
    /// What the child wrote to stderr so far.
    stderr_text: std::sync::Arc<std::sync::Mutex<String>>,
    started: Instant,
}

impl Running {
    /// Starts `command` with stdin closed and stdout/stderr captured.
    pub fn start(command: &mut Command) -> anyhow::Result<Running> {
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let mut out = child.stdout.take().context("no stdout")?;
        let mut err = child.stderr.take().context("no stderr")?;
        let stdout = std::thread::spawn(move || {
            let mut buf = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut buf);
            buf
        });
        let stderr_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = std::thread::spawn({
            let text = stderr_text.clone();
            move || {
                let mut buf = [0u8; 4096];
                let mut bytes = Vec::new();
                while let Ok(n) = std::io::Read::read(&mut err, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    bytes.extend_from_slice(&buf[..n]);
                    if let Ok(mut text) = text.lock() {
                        *text = String::from_utf8_lossy(&bytes).into_owned();
                    }
                }
            }
        });
        Ok(Running {
            child,
            stdout,
            stderr,
            stderr_text,
            started,
        })
    }

    /// What the child wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr_text
            .lock()
            .map(|text| text.clone())
            .unwrap_or_default()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since the child was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) to the child.
    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) with a pid this process spawned and has not reaped yet (the child
        // is only waited for in `wait`, which consumes `self`).
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            bail!(
                "kill({pid}, {signal}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Waits for the child to exit, killing it if it is still running `deadline` after it
    /// was started.
    pub fn wait(mut self, deadline: Duration) -> anyhow::Result<Finished> {
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break Some(status);
            }
            if self.started.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stdout = self.stdout.join().unwrap_or_default();
        let _ = self.stderr.join();
        let stderr = self
            .stderr_text
            .lock()
            .map(|text| text.clone())
            .unwrap_or_default();
        let Some(status) = status else {
            bail!(
                "the child did not finish within {deadline:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
        };
        Ok(Finished {
            code: status.code(),
            stdout,
            stderr,
            elapsed: self.started.elapsed(),
        })
    }
}

/// Polls `probe` every 10 ms until it returns `Some`, for at most `deadline`.
pub fn poll_until<T>(deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if started.elapsed() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The complete lines of a journal file so far (a line still being written is left out);
/// empty if the file does not exist yet.
pub fn journal_lines(session_dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(session_dir.join("events.jsonl")).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete.lines().map(str::to_owned).collect()
}

/// A free TCP port on 127.0.0.1 (bound, then released: a tiny race with other processes, fine
/// on a test machine).
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// One agent of a cluster config: like [`SimAgent`], placed on an agent node (`node:`) or,
/// with `node: None`, run inside the orchestrator.
pub struct NodeAgent<'a> {
    pub id: &'a str,
    pub model: &'a str,
    pub node: Option<&'a str>,
}

/// A YAML config of agents on the simulated provider, placed on agent nodes.
/// `orchestrator` is extra YAML under `orchestrator:`; `node_join_timeout` is
/// `timeout_settings.node_join_timeout_seconds`.
pub fn sim_cluster_yaml(
    base_url: &str,
    agents: &[NodeAgent<'_>],
    orchestrator: &str,
    timeout_seconds: u64,
    node_join_timeout: u64,
) -> String {
    let mut yaml = String::from("agents:\n");
    for agent in agents {
        yaml.push_str(&format!(
            "  - id: {}\n    backend:\n      type: sim\n      model: \"{}\"\n      base_url: \"{}\"\n",
            agent.id, agent.model, base_url
        ));
        if let Some(node) = agent.node {
            yaml.push_str(&format!("    node: {node}\n"));
        }
    }
    yaml.push_str("orchestrator:\n");
    if orchestrator.trim().is_empty() {
        yaml.push_str("  restart_policy: cancel\n");
    } else {
        yaml.push_str(orchestrator);
    }
    yaml.push_str(&format!(
        "timeout_settings:\n  orchestrator_timeout_seconds: {timeout_seconds}\n  node_join_timeout_seconds: {node_join_timeout}\n"
    ));
    yaml
}

/// Starts a `conclave-agent` node joining `join` as `name`, with the cookie in `cookie_file`
/// and `extra` flags; `env` is added to its environment. Its output is captured (see
/// [`Running`]); stop it with [`Running::signal`] and [`Running::wait`].
pub fn start_agent_node(
    join: &str,
    name: &str,
    cookie_file: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Running> {
    start_agent_node_in(None, join, name, cookie_file, extra, env)
}

/// [`start_agent_node`] with the node's work directory (its current directory, against which
/// relative workspace paths of its agents are taken) set to `work_dir`.
pub fn start_agent_node_in(
    work_dir: Option<&Path>,
    join: &str,
    name: &str,
    cookie_file: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Running> {
    let bin = workspace_bin("conclave-agent")?;
    let mut command = Command::new(bin);
    if let Some(dir) = work_dir {
        command.current_dir(dir);
    }
    command
        .args(["--join", join, "--name", name, "--cookie-file"])
        .arg(cookie_file)
        .args(extra)
        .env_remove("RUST_LOG")
        .env_remove("CONCLAVE_COOKIE");
    for (key, value) in env {
        command.env(key, value);
    }
    Running::start(&mut command)
}

/// Polls a session's journal until an event of type `kind` matching `matches` appears, for at
/// most `deadline`.
pub fn wait_for_event(
    session_dir: &Path,
    kind: &str,
    deadline: Duration,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    poll_until(deadline, || {
        journal_lines(session_dir)
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|event| event["type"] == kind && matches(event))
    })
}

/// The runner image of the docker-mode command tool tests (`deploy/runner-image/build.sh
/// --flavour minimal`).
pub const RUNNER_IMAGE: &str = "conclave-runner:minimal";

/// Whether docker-mode tests can run: a Docker engine answers and [`RUNNER_IMAGE`] exists
/// (built with `deploy/runner-image/build.sh` when it does not). Without an engine this prints
/// that the test did not run and returns `false`, except under `CI=true`, where it panics.
pub fn docker_ready() -> bool {
    let engine = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: no Docker engine answers `docker info`; the docker-mode command tool tests need one"
        );
        eprintln!("skipped: no Docker engine answers `docker info`");
        return false;
    }
    let present = || {
        Command::new("docker")
            .args(["image", "inspect", RUNNER_IMAGE])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !present() {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/runner-image/build.sh"
        );
        let built = Command::new("bash")
            .args([script, "--flavour", "minimal", "--tag", RUNNER_IMAGE])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            built && present(),
            "deploy/runner-image/build.sh could not build {RUNNER_IMAGE}"
        );
    }
    true
}

/// The names of the runner containers (label `conclave.runner`) carrying label `filter`
/// (`key=value`), running or not.
pub fn runner_containers(filter: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            "label=conclave.runner",
            "--filter",
            &format!("label={filter}"),
            "--format",
            "{{.Names}}",
        ])
        .output();
    output
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}
