//! Running one child (a local shell, or a `docker exec` client) to its end under a deadline,
//! with its stdout and stderr captured under one shared byte budget.
//!
//! The budget is shared because the model reads both streams in one result: a command that
//! floods stderr must not get twice the room. Bytes past the budget are read and counted (so a
//! chatty child never blocks on a full pipe, and the note can say how much was dropped) but
//! not kept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Child;

/// After the child exits (or is killed), how long its pipes may stay open before reading
/// stops: a background process that escaped the kill may hold them forever.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What one stream produced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Captured {
    /// The bytes kept (at most the shared budget, across both streams).
    pub kept: Vec<u8>,
    /// Every byte the stream produced.
    pub total: u64,
}

impl Captured {
    /// The kept bytes as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.kept).into_owned()
    }

    pub fn truncated(&self) -> bool {
        self.total > self.kept.len() as u64
    }
}

/// How the child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The exit code; `None` when it was killed by a signal or by the deadline.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did (Unix).
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub elapsed: Duration,
    pub stdout: Captured,
    pub stderr: Captured,
}

/// Reads `reader` to its end, keeping what fits in `budget`.
async fn read_capped<R: AsyncRead + Unpin>(
    reader: Option<R>,
    budget: &AtomicU64,
    into: &mut Captured,
) {
    let Some(mut reader) = reader else { return };
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        into.total += n as u64;
        let mut room = budget.load(Ordering::Relaxed);
        loop {
            let take = room.min(n as u64);
            match budget.compare_exchange(room, room - take, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    into.kept
                        .extend_from_slice(&buffer[..usize::try_from(take).unwrap_or(n)]);
                    break;
                }
                Err(now) => room = now,
            }
        }
    }
}

/// Hooks of the process kind: how to kill what the child started.
pub(crate) struct Hooks<'a> {
    /// Runs when the deadline passes, before the child itself is killed: kills everything
    /// the command started (its process group, or its processes in the container).
    pub on_timeout: Box<dyn FnOnce() -> BoxFuture<'a, ()> + Send + 'a>,
    /// Runs when the child exits by itself: ends what it left running in the background.
    pub on_exit: Box<dyn FnOnce() -> BoxFuture<'a, ()> + Send + 'a>,
}

/// Runs `child` (stdout and stderr piped) until it exits or `timeout` passes, capturing at
/// most `max_output` bytes of output in all.
pub(crate) async fn run_child(
    mut child: Child,
    timeout: Duration,
    max_output: u64,
    hooks: Hooks<'_>,
) -> Outcome {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let budget = AtomicU64::new(max_output);
    let mut stdout = Captured::default();
    let mut stderr = Captured::default();
    let (status, timed_out) = {
        let out_pipe = child.stdout.take();
        let err_pipe = child.stderr.take();
        let reading = async {
            tokio::join!(
                read_capped(out_pipe, &budget, &mut stdout),
                read_capped(err_pipe, &budget, &mut stderr)
            )
        };
        tokio::pin!(reading);
        let mut read_all = false;
        let exited = loop {
            tokio::select! {
                status = child.wait() => break Some(status),
                _ = &mut reading, if !read_all => read_all = true,
                _ = tokio::time::sleep_until(deadline) => break None,
            }
        };
        let timed_out = exited.is_none();
        let status = match exited {
            Some(status) => {
                (hooks.on_exit)().await;
                status.ok()
            }
            None => {
                (hooks.on_timeout)().await;
                let _ = child.start_kill();
                tokio::time::timeout(DRAIN_GRACE, child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        };
        if !read_all {
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut reading).await;
        }
        (status, timed_out)
    };
    #[cfg(unix)]
    let signal = status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s));
    #[cfg(not(unix))]
    let signal = None;
    Outcome {
        exit_code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        signal,
        timed_out,
        elapsed: started.elapsed(),
        stdout,
        stderr,
    }
}
