//! Local mode: the command runs as `/bin/sh -c COMMAND`, a child of the agent's process, in
//! the agent's workspace.
//!
//! - **Environment**: built from nothing. The child gets `PATH` (the node's, which is not a
//!   secret and finds the node's interpreters), `HOME` (the workspace), `LANG` (the node's, or
//!   `C.UTF-8`) and, when the workspace has a `.venv`, that venv first on `PATH` with
//!   `VIRTUAL_ENV` (MassGen does the same). Nothing else of the node's environment: no API
//!   keys, no tokens, no `.env` values.
//! - **Process group**: the shell leads a process group of its own. At the deadline the whole
//!   group gets SIGKILL (a `sleep` under a pipeline dies too); when the shell exits by itself,
//!   whatever it left running in the group is killed too, so a command leaves no processes
//!   behind; on Linux the shell also asks for SIGKILL when the agent process dies
//!   (`PR_SET_PDEATHSIG`). A call that is abandoned (the turn is cancelled, the tool loop's
//!   own bound passes) kills the group when its future is dropped.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::output::{Hooks, Outcome, run_child};
use crate::tools::mcp::kill_group;

/// The `PATH` a child gets when the node has none.
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment of a command run in `workspace` (see the module docs).
pub(crate) fn environment(workspace: &Path) -> Vec<(String, String)> {
    let node_path = std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| FALLBACK_PATH.to_owned());
    let lang = std::env::var("LANG")
        .ok()
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "C.UTF-8".to_owned());
    let venv = workspace.join(".venv");
    let venv_bin = venv.join("bin");
    let mut env = Vec::new();
    if venv_bin.is_dir() {
        env.push((
            "PATH".to_owned(),
            format!("{}:{node_path}", venv_bin.display()),
        ));
        env.push(("VIRTUAL_ENV".to_owned(), venv.display().to_string()));
    } else {
        env.push(("PATH".to_owned(), node_path));
    }
    env.push(("HOME".to_owned(), workspace.display().to_string()));
    env.push(("LANG".to_owned(), lang));
    env
}

/// Kills a process group when dropped: the call's future going away kills the command.
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

/// Runs `command` in `dir` with the workspace's environment.
pub(crate) async fn run(
    command: &str,
    workspace: &Path,
    dir: &Path,
    timeout: Duration,
    max_output: u64,
) -> Result<Outcome, String> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(dir)
        .env_clear()
        .envs(environment(workspace))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::tools::own_group_dying_with_us(&mut cmd);
    let child = cmd
        .spawn()
        .map_err(|error| format!("cannot start /bin/sh: {error}"))?;
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .unwrap_or(0);
    let _guard = GroupGuard(group);
    let kill = move || -> futures::future::BoxFuture<'static, ()> {
        kill_group(group);
        Box::pin(async {})
    };
    Ok(run_child(
        child,
        timeout,
        max_output,
        Hooks {
            on_timeout: Box::new(kill),
            on_exit: Box::new(kill),
        },
    )
    .await)
}
