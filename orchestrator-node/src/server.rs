//! `conclave server`: a long-lived orchestrator. It keeps the cluster listener up, so agent
//! nodes stay joined between sessions, and runs the sessions submitted on stdin.
//!
//! ```text
//! conclave server --listen 0.0.0.0:7420 --cookie-file cookie --config team.yaml
//! ```
//!
//! Each stdin line is one session: a plain question (run with `--config`), or a JSON object
//! `{"question": "...", "config": "other.yaml", "session_id": "name"}` (`config` and
//! `session_id` optional). Sessions run concurrently; each prints one JSON line on stdout when
//! it ends: `{"session", "exit_code", "reason", "winner", "final_answer"}`, or
//! `{"session", "exit_code", "error"}` when it could not run. Journals go under
//! `--session-dir` as usual. When stdin closes the server keeps serving (a daemon's stdin is
//! usually closed) until SIGTERM or Ctrl-C, which interrupts running sessions (each ends with
//! its best answer so far), waits up to 30 s for them, and exits 0. No HTTP API yet.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use conclave_protocol::{SessionId, TaskSpec};
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::{
    ClusterArgs, CommonArgs, EXIT_OK, Failure, apply_common, check_placement, session_failure,
    usage,
};
use crate::cluster::Cluster;
use crate::config;
use crate::coordinator::reason_name;
use crate::display::Display;
use crate::session::{EnvFn, SessionPlan, new_session_id, run_session, session_dir};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// The session config for questions that do not name one.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// One submitted session.
#[derive(Debug, Deserialize)]
struct Job {
    question: String,
    config: Option<PathBuf>,
    session_id: Option<String>,
}

fn parse_job(line: &str) -> Result<Job, String> {
    if line.starts_with('{') {
        serde_json::from_str(line).map_err(|e| format!("not a session request: {e}"))
    } else {
        Ok(Job {
            question: line.to_owned(),
            config: None,
            session_id: None,
        })
    }
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn run(args: ServerArgs, env: EnvFn) -> Result<u8, Failure> {
    if args.cluster.listen.is_none() {
        return Err(usage(anyhow::anyhow!(
            "conclave server needs --listen IP:PORT (where agent nodes join)"
        )));
    }
    let Some(cluster) = args.cluster.start(&env).await? else {
        return Err(usage(anyhow::anyhow!("conclave server needs --listen")));
    };
    eprintln!(
        "conclave server: agent nodes join at {}; one session per stdin line (a question, or JSON {{\"question\", \"config\", \"session_id\"}}); SIGTERM or Ctrl-C stops",
        cluster.listen_addr()
    );
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")
        .map_err(crate::cli::execution)?;
    let stop = CancellationToken::new();
    let args = Arc::new(args);
    let mut running = JoinSet::new();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = lines.recv(), if stdin_open => match line {
                Some(line) => {
                    let line = line.trim().to_owned();
                    if line.is_empty() {
                        continue;
                    }
                    let (args, env, cluster, stop) =
                        (args.clone(), env.clone(), cluster.clone(), stop.clone());
                    running.spawn(async move { serve_one(&line, &args, env, &cluster, stop).await });
                }
                None => {
                    stdin_open = false;
                    info!("stdin closed; still serving agent nodes until SIGTERM or Ctrl-C");
                }
            },
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    eprintln!(
        "conclave server: stopping ({} session(s) running)",
        running.len()
    );
    stop.cancel();
    if tokio::time::timeout(Duration::from_secs(30), async {
        while running.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        warn!("sessions did not end within 30 s; leaving them");
    }
    cluster.shutdown().await;
    Ok(EXIT_OK)
}

/// Runs one submitted session and prints its result line.
async fn serve_one(
    line: &str,
    args: &ServerArgs,
    env: EnvFn,
    cluster: &Cluster,
    stop: CancellationToken,
) {
    let mut session_name = None;
    let result = async {
        let job = parse_job(line).map_err(|e| usage(anyhow::anyhow!(e)))?;
        let path = job.config.as_ref().or(args.config.as_ref()).ok_or_else(|| {
            usage(anyhow::anyhow!(
                "no config: start the server with --config FILE or give \"config\" in the request"
            ))
        })?;
        let loaded = config::load_file(path, &|key| env(key)).map_err(|e| usage(e.into()))?;
        let mut config = loaded.config;
        apply_common(&mut config, &args.common, &env)?;
        check_placement(&config, &args.cluster)?;
        if let Some((agent, var)) = config::missing_api_keys(&config, &|key| env(key)).first() {
            return Err(usage(anyhow::anyhow!(
                "agent `{agent}` needs an API key: set {var} on the orchestrator"
            )));
        }
        let session = match &job.session_id {
            Some(id) => {
                SessionId::parse(id).map_err(|e| usage(anyhow::anyhow!("session_id: {e}")))?
            }
            None => new_session_id(),
        };
        session_name = Some(session.to_string());
        let dir = session_dir(&args.common.session_dir, &session);
        if dir.join(crate::journal::EVENTS_FILE).exists() {
            return Err(usage(anyhow::anyhow!("session `{session}` already exists")));
        }
        let plan = SessionPlan {
            session,
            dir,
            config,
            task: TaskSpec {
                question: job.question,
                history: Vec::new(),
            },
            env: env.clone(),
            http: None,
            cluster: Some(cluster.clone()),
        };
        run_session(plan, Display::none(), stop)
            .await
            .map_err(session_failure)
    }
    .await;
    let line = match result {
        Ok(outcome) => serde_json::json!({
            "session": outcome.session.to_string(),
            "exit_code": outcome.exit_code(),
            "reason": reason_name(outcome.reason),
            "winner": outcome.winner,
            "final_answer": outcome.final_answer,
        }),
        Err(Failure { code, error }) => serde_json::json!({
            "session": session_name,
            "exit_code": code,
            "error": format!("{error:#}"),
        }),
    };
    println!("{line}");
}
