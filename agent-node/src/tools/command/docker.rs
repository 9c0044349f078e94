//! Docker mode: one long-lived container per agent, each command a `docker exec` in it.
//!
//! Choices, and why:
//! - **One container per agent, started with the agent** (`docker run -d`, then `docker exec`
//!   per command), as MassGen does: what a command installs or leaves outside the workspace
//!   is there for the next one, a call costs one `exec` instead of a container start, and a
//!   missing image fails the agent's start with a message saying how to build one, not its
//!   first command. The container's main process is a shell sleeping in a loop; it is only
//!   there to keep the namespaces alive.
//! - **The docker CLI** (through `tokio::process`), not an engine API crate: it honours
//!   `DOCKER_HOST` and the user's docker contexts, and it is what the operator debugs with.
//!   Every invocation has a deadline. `CONCLAVE_DOCKER_BIN` names another binary.
//! - **The workspace is mounted at its own path** (read-write; the peers' snapshot directory
//!   and the agent's context paths read-only), and commands run there: paths the model sees in
//!   one mode mean the same in the other. Context paths are read-only for commands even when
//!   they are `write` paths: the container lives for the whole session, and a `write` path may
//!   only be written during the final presentation, which the file tools enforce per call. `HOME` is the workspace. No variable of the node's environment is passed.
//! - **Limits**: `--network` (`none` unless configured), `--memory`, `--cpus` from the config.
//! - **No registry**: the image must exist on the engine (`docker image inspect`); conclave never
//!   pulls (`--pull never`).
//! - **Killing a command** (deadline, or its call abandoned): the `docker exec` client going
//!   away does not stop what it started in the container, so every command runs with a marker
//!   variable (`CONCLAVE_CALL=<id>`) that its children inherit, and a second `exec` kills every
//!   process whose environment holds it.
//! - **Containers never outlive their owner**: each is labelled `conclave.runner=1`, with the
//!   session, the agent and its owner (`host:pid:process start time`). The agent's shutdown
//!   removes it (`docker rm -f`), and so does dropping it (a detached `docker rm -f`). After a
//!   crash or `kill -9` no code runs, so the first docker-mode start of any later conclave
//!   process on the same host sweeps: every labelled container whose owner process is gone
//!   (no such pid, or a pid reused by a process started at another time) is removed.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::process::Command;
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use super::output::{Hooks, Outcome, run_child};

/// The environment variable that names the docker binary (default `docker` on `PATH`).
pub const DOCKER_BIN_ENV: &str = "CONCLAVE_DOCKER_BIN";
/// The label every runner container carries.
pub const RUNNER_LABEL: &str = "conclave.runner";
/// The label naming the session of a runner container.
pub const SESSION_LABEL: &str = "conclave.session";
/// The label naming the agent of a runner container.
pub const AGENT_LABEL: &str = "conclave.agent";
/// The label naming the process that owns a runner container (`host:pid:start time`).
pub const OWNER_LABEL: &str = "conclave.owner";
/// The variable that marks a command's processes in the container.
const MARKER_VAR: &str = "CONCLAVE_CALL";
/// Deadline of a docker CLI call that manages containers (run, rm, ps, inspect).
const DOCKER_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How to build a runner image, for the error when the configured one is missing.
pub const BUILD_HINT: &str = "build one with `deploy/runner-image/build.sh` (`--flavour minimal` \
     is busybox in 2 MB, `--flavour full` is Debian with python3) and name it in \
     `command_line_docker_image`, or `docker load` one";

/// The docker settings of one agent (from `CommandMode::Docker`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerSettings {
    pub image: String,
    pub network_mode: String,
    pub memory_limit: Option<String>,
    pub cpu_limit: Option<String>,
}

fn docker_bin() -> String {
    std::env::var(DOCKER_BIN_ENV)
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "docker".to_owned())
}

/// Runs one docker CLI call to its end under [`DOCKER_CALL_TIMEOUT`]; `Err` says what failed,
/// with the tail of its stderr.
async fn docker(args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(docker_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = args.first().copied().unwrap_or("docker");
    let output = match tokio::time::timeout(DOCKER_CALL_TIMEOUT, cmd.output()).await {
        Err(_) => {
            return Err(format!(
                "`docker {what}` did not finish within {} s; is the Docker engine healthy?",
                DOCKER_CALL_TIMEOUT.as_secs()
            ));
        }
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "the docker CLI (`{}`) is not installed; command_line_execution_mode: docker \
                 needs Docker on the node that runs the agent",
                docker_bin()
            ));
        }
        Ok(Err(error)) => return Err(format!("cannot run `docker {what}`: {error}")),
        Ok(Ok(output)) => output,
    };
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("`docker {what}` failed: {}", stderr.trim()))
    }
}

/// This process as container owners are written: `host:pid:start time`.
fn owner() -> String {
    format!(
        "{}:{}:{}",
        hostname(),
        std::process::id(),
        start_time(std::process::id()).unwrap_or_default()
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The start time of process `pid` (clock ticks since boot, `/proc/<pid>/stat` field 22).
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last `)`.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19).map(str::to_owned)
}

/// Whether the owner written in a label is a live process of this host. Owners of other hosts
/// (an engine shared by several machines) are never judged dead.
fn owner_alive(label: &str, this_host: &str) -> bool {
    let mut parts = label.rsplitn(3, ':');
    let (Some(started), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return true;
    };
    if host != this_host {
        return true;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return true;
    };
    start_time(pid).is_some_and(|now| now == started)
}

/// Removes the runner containers of this host whose owner process is gone (see the module
/// docs). Returns their names.
pub async fn sweep_orphans() -> Result<Vec<String>, String> {
    let listing = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={RUNNER_LABEL}"),
        "--format",
        &format!("{{{{.Names}}}}\t{{{{.Label \"{OWNER_LABEL}\"}}}}"),
    ])
    .await?;
    let this_host = hostname();
    let mut removed = Vec::new();
    for line in listing.lines() {
        let Some((name, owner)) = line.split_once('\t') else {
            continue;
        };
        if owner_alive(owner, &this_host) {
            continue;
        }
        match docker(&["rm", "-f", name]).await {
            Ok(_) => {
                info!(
                    container = name,
                    owner, "removed a runner container whose owner is gone"
                );
                removed.push(name.to_owned());
            }
            Err(error) => {
                warn!(container = name, %error, "cannot remove an orphaned runner container")
            }
        }
    }
    Ok(removed)
}

/// The sweep runs once per process, before its first container starts.
static SWEPT: OnceCell<()> = OnceCell::const_new();

/// A container name from the session and agent: `[a-zA-Z0-9_.-]`, unique with a random tail.
fn container_name(session: &str, agent: &str) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .take(40)
            .collect()
    };
    format!(
        "conclave-{}-{}-{:08x}",
        clean(session),
        clean(agent),
        rand::random::<u32>()
    )
}

/// One agent's container.
#[derive(Debug)]
pub struct Container {
    name: String,
    removed: AtomicBool,
}

impl Container {
    /// Starts the agent's container (see the module docs), after the once-per-process sweep.
    pub async fn start(
        session: &str,
        agent: &str,
        settings: &DockerSettings,
        workspace: &Path,
        read_only: &[std::path::PathBuf],
    ) -> Result<Container, String> {
        SWEPT
            .get_or_init(|| async {
                if let Err(error) = sweep_orphans().await {
                    debug!(%error, "the sweep of orphaned runner containers failed");
                }
            })
            .await;
        if let Err(error) =
            docker(&["image", "inspect", "--format", "{{.Id}}", &settings.image]).await
        {
            if error.contains("not installed") {
                return Err(error);
            }
            return Err(format!(
                "the docker image `{}` (command_line_docker_image) is not on this machine's \
                 Docker engine, and conclave never pulls images: {BUILD_HINT} (docker said: {error})",
                settings.image
            ));
        }
        let name = container_name(session, agent);
        let workspace = workspace.display().to_string();
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--pull".into(),
            "never".into(),
            "--name".into(),
            name.clone(),
            "--label".into(),
            format!("{RUNNER_LABEL}=1"),
            "--label".into(),
            format!("{SESSION_LABEL}={session}"),
            "--label".into(),
            format!("{AGENT_LABEL}={agent}"),
            "--label".into(),
            format!("{OWNER_LABEL}={}", owner()),
            "--network".into(),
            settings.network_mode.clone(),
            "--volume".into(),
            format!("{workspace}:{workspace}"),
            "--workdir".into(),
            workspace.clone(),
            "--env".into(),
            format!("HOME={workspace}"),
        ];
        for dir in read_only {
            let dir = dir.display().to_string();
            args.extend(["--volume".into(), format!("{dir}:{dir}:ro")]);
        }
        if let Some(memory) = &settings.memory_limit {
            args.extend(["--memory".into(), memory.clone()]);
        }
        if let Some(cpus) = &settings.cpu_limit {
            args.extend(["--cpus".into(), cpus.clone()]);
        }
        args.extend([
            "--entrypoint".into(),
            "/bin/sh".into(),
            settings.image.clone(),
            "-c".into(),
            "while :; do sleep 3600; done".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args).await.map_err(|error| {
            format!(
                "cannot start a container of image `{}` for the command tool: {error}",
                settings.image
            )
        })?;
        info!(container = %name, image = %settings.image, "runner container started");
        Ok(Container {
            name,
            removed: AtomicBool::new(false),
        })
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `command` with `/bin/sh -c` in `dir` (a path of the workspace, the same inside).
    pub(crate) async fn run(
        &self,
        command: &str,
        dir: &Path,
        timeout: Duration,
        max_output: u64,
    ) -> Result<Outcome, String> {
        let marker = format!("{:016x}", rand::random::<u64>());
        let mut cmd = Command::new(docker_bin());
        cmd.args(["exec", "--workdir"])
            .arg(dir)
            .arg("--env")
            .arg(format!("{MARKER_VAR}={marker}"))
            .arg(&self.name)
            .args(["/bin/sh", "-c", command])
            .env_clear()
            .envs(docker_client_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|error| format!("cannot run `docker exec`: {error}"))?;
        let guard = KillOnDrop {
            container: self.name.clone(),
            marker: marker.clone(),
            armed: AtomicBool::new(true),
        };
        let outcome = run_child(
            child,
            timeout,
            max_output,
            Hooks {
                on_timeout: Box::new(|| -> BoxFuture<'_, ()> {
                    Box::pin(async {
                        kill_marked(&self.name, &marker).await;
                    })
                }),
                on_exit: Box::new(|| -> BoxFuture<'_, ()> { Box::pin(async {}) }),
            },
        )
        .await;
        guard.armed.store(false, Ordering::Relaxed);
        Ok(outcome)
    }

    /// Removes the container (idempotent).
    pub async fn remove(&self) {
        if self.removed.swap(true, Ordering::SeqCst) {
            return;
        }
        match docker(&["rm", "-f", &self.name]).await {
            Ok(_) => info!(container = %self.name, "runner container removed"),
            Err(error) => warn!(container = %self.name, %error, "cannot remove runner container"),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if !self.removed.swap(true, Ordering::SeqCst) {
            spawn_detached(&["rm", "-f", &self.name]);
        }
    }
}

/// The environment of the docker CLI itself: how to reach the engine, nothing else (the
/// container's environment is set by `docker run`, never copied from this process).
fn docker_client_env() -> Vec<(String, String)> {
    [
        "PATH",
        "HOME",
        "DOCKER_HOST",
        "DOCKER_CONFIG",
        "DOCKER_CONTEXT",
        "DOCKER_CERT_PATH",
        "DOCKER_TLS_VERIFY",
    ]
    .iter()
    .filter_map(|key| std::env::var(key).ok().map(|v| ((*key).to_owned(), v)))
    .collect()
}

/// The shell script that kills every process of the container marked with `marker`.
fn kill_script(marker: &str) -> String {
    format!(
        "for p in /proc/[0-9]*; do \
           if tr '\\0' '\\n' < \"$p/environ\" 2>/dev/null | grep -qx '{MARKER_VAR}={marker}'; then \
             kill -9 \"${{p#/proc/}}\" 2>/dev/null; \
           fi; \
         done; true"
    )
}

/// Kills the processes of one command in the container (see the module docs).
async fn kill_marked(container: &str, marker: &str) {
    if let Err(error) = docker(&["exec", container, "/bin/sh", "-c", &kill_script(marker)]).await {
        warn!(container, %error, "cannot kill a timed-out command in its container");
    }
}

/// Kills a command's processes when its call is abandoned before it ended.
struct KillOnDrop {
    container: String,
    marker: String,
    armed: AtomicBool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed.load(Ordering::Relaxed) {
            let script = kill_script(&self.marker);
            spawn_detached(&["exec", &self.container, "/bin/sh", "-c", &script]);
        }
    }
}

/// Starts a docker CLI call that nobody waits for (from a destructor, where nothing can be
/// awaited); it runs on even if this process exits.
fn spawn_detached(args: &[&str]) {
    let spawned = std::process::Command::new(docker_bin())
        .args(args)
        .env_clear()
        .envs(docker_client_env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        // Reap it in the background so it does not linger as a zombie.
        Ok(mut child) => {
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
        Err(error) => warn!(%error, "cannot run docker to clean up a runner container"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_judged_by_pid_and_start_time_on_this_host_only() {
        let me = owner();
        let host = hostname();
        assert!(owner_alive(&me, &host), "{me}");
        let (prefix, _) = me.rsplit_once(':').unwrap();
        assert!(
            !owner_alive(&format!("{prefix}:1"), &host),
            "a reused pid is dead"
        );
        assert!(!owner_alive(&format!("{host}:4000000000:5"), &host));
        assert!(owner_alive("elsewhere:4000000000:5", &host));
        assert!(owner_alive("garbage", &host));
    }

    #[test]
    fn container_names_are_valid_for_docker() {
        let name = container_name("2025-01-01 12:00/x", "agent a");
        assert!(
            name.starts_with("conclave-2025-01-01-12-00-x-agent-a-"),
            "{name}"
        );
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        );
    }
}
