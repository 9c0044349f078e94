//! Stderr while the UI owns the terminal. Log lines (`tracing` warnings, the Ctrl-C notice)
//! written to stderr would land in the middle of the full-screen picture and stay there,
//! since the UI repaints only what it changed. So while the UI runs, file descriptor 2 is a
//! pipe: a thread collects what arrives, the latest line shows in the UI's key line, and
//! everything collected is written to the real stderr when the terminal is given back —
//! nothing is lost. A panic puts the real stderr back first (see [`restore_now`]), so its
//! message is seen.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The real stderr's saved descriptor while a capture runs, -1 otherwise.
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);
/// How long giving stderr back waits for the last bytes (a process that inherited the pipe
/// could keep it open forever).
const DRAIN_WAIT: Duration = Duration::from_millis(300);
/// Lines kept for the UI.
const KEPT_LINES: usize = 16;

/// Stderr redirected into a pipe.
pub struct StderrCapture {
    saved: OwnedFd,
    collected: Arc<Mutex<Collected>>,
    reader: JoinHandle<()>,
}

#[derive(Default)]
struct Collected {
    bytes: Vec<u8>,
    lines: VecDeque<String>,
    partial: String,
}

impl StderrCapture {
    /// Redirects fd 2 into a new pipe.
    pub fn start() -> std::io::Result<StderrCapture> {
        let mut fds = [-1; 2];
        // SAFETY: pipe writes two new descriptors into the array.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both were just opened by pipe and are owned by nobody else.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: dup of the process's stderr descriptor; the copy is owned here.
        let saved = unsafe { libc::dup(2) };
        if saved < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `saved` was just returned by dup.
        let saved = unsafe { OwnedFd::from_raw_fd(saved) };
        // SAFETY: dup2 onto fd 2 with a live descriptor; the pipe's write end is then fd 2.
        if unsafe { libc::dup2(write_end.as_raw_fd(), 2) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        drop(write_end);
        SAVED_STDERR.store(saved.as_raw_fd(), Ordering::SeqCst);
        let collected = Arc::new(Mutex::new(Collected::default()));
        let sink = collected.clone();
        let reader = std::thread::Builder::new()
            .name("conclave-tui-stderr".into())
            .spawn(move || {
                let mut pipe = std::fs::File::from(read_end);
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let Ok(mut collected) = sink.lock() else {
                        break;
                    };
                    collected.bytes.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    for c in text.chars() {
                        if c == '\n' {
                            let line = printable(&std::mem::take(&mut collected.partial));
                            if !line.trim().is_empty() {
                                collected.lines.push_back(line);
                                if collected.lines.len() > KEPT_LINES {
                                    collected.lines.pop_front();
                                }
                            }
                        } else {
                            collected.partial.push(c);
                        }
                    }
                }
            })?;
        Ok(StderrCapture {
            saved,
            collected,
            reader,
        })
    }

    /// The latest complete line written to stderr, if any.
    pub fn latest_line(&self) -> Option<String> {
        self.collected
            .lock()
            .ok()
            .and_then(|c| c.lines.back().cloned())
    }

    /// Puts the real stderr back and writes to it everything collected.
    pub fn finish(self) {
        restore_now();
        // fd 2 no longer holds the pipe: the reader sees the end (unless a child kept it).
        let started = Instant::now();
        while !self.reader.is_finished() && started.elapsed() < DRAIN_WAIT {
            std::thread::sleep(Duration::from_millis(5));
        }
        let bytes = self
            .collected
            .lock()
            .map(|mut c| std::mem::take(&mut c.bytes))
            .unwrap_or_default();
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(&bytes);
        let _ = stderr.flush();
        drop(self.saved);
    }
}

/// A log line as plain text: colour sequences (`ESC [ … letter`) and other control
/// characters removed, since the UI must not send them to the terminal.
pub fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates up to the final byte (@ to ~).
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else if c == '\t' {
            out.push(' ');
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// Points fd 2 at the real stderr again, if a capture runs. Safe to call from a panic hook.
pub fn restore_now() {
    let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if saved >= 0 {
        // SAFETY: `saved` is the live descriptor held by the running capture.
        unsafe {
            libc::dup2(saved, 2);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_lines_lose_their_colour_sequences_and_control_characters() {
        let line = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m started\t\u{7}ok\r";
        assert_eq!(super::printable(line), "2026  INFO started ok");
    }
}
