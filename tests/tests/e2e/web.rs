//! End-to-end: the web page of `conclave server --http`, in a real browser.
//!
//! Headless Chromium (Debian's `chromium`; `.ci/run` installs it) is driven through its
//! DevTools protocol over `--remote-debugging-pipe` (JSON messages separated by NUL bytes on
//! file descriptors 3 and 4): no websocket, no port, no extra crate. The test starts the server
//! with a bearer token and the simulated provider, submits a session, opens the page with the
//! token in the address fragment, and waits (bounded) until the DOM shows one column per
//! agent, at least one vote and the final answer; it reads them from the DOM, checks them
//! against the API's result, checks the token left the address bar, and saves a screenshot
//! under the test's temp dir. With `CONCLAVE_UPDATE_SCREENSHOTS=1` the screenshot is also
//! copied to `docs/web.png` (the README's picture is this test's own capture).
//!
//! Without Chromium the test says it did not run; under `CI=true` that is a failure.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::server::{DEADLINE, Server, TOKEN, sim, team_yaml};

/// One browser test at a time: two headless Chromiums starting at once on a small machine can
/// take longer than a simulated session, and the live-stream check would miss the stream.
pub(crate) static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The browser binary: `CONCLAVE_CHROMIUM`, else the first of the usual names on PATH.
pub(crate) fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CONCLAVE_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A headless Chromium spoken to over its DevTools pipe. Killed on drop.
pub(crate) struct Browser {
    child: Child,
    to_browser: std::fs::File,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    pub(crate) fn start(binary: &Path, profile: &Path, log: &Path) -> Browser {
        let (command_read, command_write) = pipe();
        let (reply_read, reply_write) = pipe();
        let (child_in, child_out) = (command_read.as_raw_fd(), reply_write.as_raw_fd());
        let mut command = Command::new(binary);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-pipe",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("browser log file"));
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Move both ends above 4 first, so dup2 onto 3 and 4 cannot clobber either.
                let high_in = libc::fcntl(child_in, libc::F_DUPFD, 10);
                let high_out = libc::fcntl(child_out, libc::F_DUPFD, 10);
                if high_in < 0
                    || high_out < 0
                    || libc::dup2(high_in, 3) < 0
                    || libc::dup2(high_out, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("chromium starts");
        drop(command_read);
        drop(reply_write);
        let (tx, rx) = mpsc::channel();
        let mut reader = std::fs::File::from(reply_read);
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buffer = [0u8; 65536];
            loop {
                let n = match reader.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buffer[..n]);
                while let Some(end) = pending.iter().position(|b| *b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(value) = serde_json::from_slice(&message[..message.len() - 1])
                        && tx.send(value).is_err()
                    {
                        return;
                    }
                }
            }
        });
        Browser {
            child,
            to_browser: std::fs::File::from(command_write),
            from_browser: rx,
            next_id: 0,
            session: None,
        }
    }

    /// Sends one command (to the attached page, once there is one) and waits for its reply.
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .expect("write to the browser");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("the browser answers {method} in time"));
            if reply["id"] == id {
                assert!(
                    reply.get("error").is_none(),
                    "{method} failed: {}",
                    reply["error"]
                );
                return reply["result"].clone();
            }
        }
    }

    /// Opens a page target and attaches to it (flat sessions).
    pub(crate) fn open_page(&mut self) {
        let created = self.call("Target.createTarget", json!({"url": "about:blank"}));
        let target = created["targetId"]
            .as_str()
            .expect("a target id")
            .to_owned();
        let attached = self.call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        self.session = Some(
            attached["sessionId"]
                .as_str()
                .expect("a session id")
                .to_owned(),
        );
        self.call("Page.enable", json!({}));
        self.call("Runtime.enable", json!({}));
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        );
    }

    /// Evaluates `expression` in the page and returns its JSON value.
    pub(crate) fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        result["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decodes standard base64 (what `Page.captureScreenshot` returns).
pub(crate) fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0);
    for c in text.bytes() {
        let Some(v) = value(c) else { continue };
        bits = (bits << 6) | v;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

/// What the test reads from the page.
const READ_DOM: &str = r#"JSON.stringify({
  columns: [...document.querySelectorAll('.agent-column')].map(c => c.dataset.agent),
  streamed: [...document.querySelectorAll('.agent-column .stream')].map(s => s.textContent.length),
  answers: document.querySelectorAll('.agent-column .answer').length,
  votes: [...document.querySelectorAll('#votes .vote')].map(v => v.textContent),
  finalShown: !document.getElementById('final').hidden,
  finalAnswer: document.getElementById('final-answer').textContent,
  winner: document.getElementById('final-winner').textContent,
  state: document.getElementById('session-state').textContent,
  address: location.href,
  tokenKept: sessionStorage.getItem('conclave-token') !== null,
})"#;

/// The end of a log, for a failure message.
pub(crate) fn tail(log: &str) -> &str {
    let start = log.len().saturating_sub(2000);
    let start = (start..=log.len())
        .find(|i| log.is_char_boundary(*i))
        .unwrap_or(log.len());
    &log[start..]
}

pub(crate) fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_shows_agents_votes_and_the_final_answer_in_a_real_browser() {
    let Some(binary) = chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Chromium is missing (install Debian's `chromium`, or set CONCLAVE_CHROMIUM); under CI=true the web UI test must run"
        );
        eprintln!(
            "web: DID NOT RUN: no Chromium on PATH (install `chromium` or set CONCLAVE_CHROMIUM)"
        );
        return;
    };
    let _one = ONE_BROWSER.lock().await;
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    // Slow enough that the page sees the streams live.
    std::fs::write(&config, team_yaml(&sim, ":tokens=40,token_delay_ms=25")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let server = Server::start(dir.path(), &config, &["--http-token-file", "token"]).await;

    // The page without the token: served, but its API calls are refused until it has one.
    let page = server.http.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200, "the page itself needs no token");
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.text().await.unwrap().contains("/app.js"));

    let submitted = server
        .http
        .post(server.url("/sessions"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"question": "Name a prime number and say why.", "session_id": "web"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 202);

    let url = format!("{}/#/s/web&token={TOKEN}", server.base);
    let shots = dir.path().join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let profile = dir.path().join("chromium-profile");
    let log = dir.path().join("chromium.log");
    let browser_dir = shots.clone();
    let base = server.base.clone();
    let (seen, live_stream) = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::start(&binary, &profile, &log);
        browser.open_page();
        // Without a token the page asks for one (its API calls get 401).
        browser.call("Page.navigate", json!({"url": format!("{base}/")}));
        let deadline = Instant::now() + DEADLINE;
        while browser.eval("document.getElementById('token-form').hidden") != json!(false) {
            assert!(
                Instant::now() < deadline,
                "the page asked for the token in time"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The token pasted into the address of the open page (a fragment change).
        browser.call("Page.navigate", json!({"url": url}));
        // Bounded wait for the DOM: three columns, a vote, the final answer.
        let deadline = Instant::now() + DEADLINE;
        let mut live_stream = false;
        let seen = loop {
            let text = browser.eval(READ_DOM);
            let seen: Value = text
                .as_str()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or(Value::Null);
            if !seen["finalShown"].as_bool().unwrap_or(false)
                && seen["streamed"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|n| n.as_u64().unwrap_or(0) > 0))
            {
                live_stream = true;
            }
            let done = seen["columns"].as_array().is_some_and(|c| c.len() == 3)
                && seen["votes"].as_array().is_some_and(|v| !v.is_empty())
                && seen["finalShown"] == true
                && seen["state"].as_str().is_some_and(|s| s.starts_with("ended"));
            if done {
                break seen;
            }
            assert!(
                Instant::now() < deadline,
                "the page showed the agents, a vote and the final answer in time; it shows {seen}; browser log: {}",
                tail(&std::fs::read_to_string(&log).unwrap_or_default())
            );
            std::thread::sleep(Duration::from_millis(150));
        };
        // Agents' text is untrusted: the page's Markdown renderer escapes it.
        let rendered = browser.eval(
            r#"markdown('<img src=x onerror=alert(1)> **bold** [a](javascript:alert(1)) [b](https://example.org) `<i>`')"#,
        );
        let rendered = rendered.as_str().expect("the renderer returns HTML text");
        assert!(
            !rendered.contains("<img") && !rendered.contains("javascript:\"")
                && !rendered.contains("href=\"javascript"),
            "{rendered}"
        );
        assert!(rendered.contains("&lt;img") && rendered.contains("<strong>bold</strong>"));
        assert!(rendered.contains("<code>&lt;i&gt;</code>"), "{rendered}");
        assert!(rendered.contains("href=\"https://example.org\""), "{rendered}");
        let shot = browser.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        std::fs::write(browser_dir.join("web.png"), &png).unwrap();
        (seen, live_stream)
    })
    .await
    .expect("the browser task ends");

    // The page saw the end, so the status is final.
    let status: Value = server
        .http
        .get(server.url("/sessions/web"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "done", "{status}");
    let result = &status["result"];
    assert_eq!(result["reason"], "consensus", "{status}");
    let mut columns: Vec<&str> = seen["columns"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    columns.sort_unstable();
    assert_eq!(
        columns,
        ["alpha", "beta", "gamma"],
        "one column per agent: {seen}"
    );
    assert!(
        seen["answers"].as_u64().unwrap_or(0) >= 1,
        "answers with labels: {seen}"
    );
    for vote in seen["votes"].as_array().unwrap() {
        assert!(
            vote.as_str().unwrap().contains("votes for agent"),
            "a vote names the answer it is for: {vote}"
        );
    }
    let answer = result["final_answer"].as_str().expect("a final answer");
    assert_eq!(
        squash(seen["finalAnswer"].as_str().unwrap()),
        squash(answer),
        "the page shows the final answer the API reports"
    );
    let winner = result["winner"].as_str().expect("a winner");
    assert!(seen["winner"].as_str().unwrap().contains(winner), "{seen}");
    assert!(
        live_stream,
        "the page showed streams before the end: {seen}"
    );
    let address = seen["address"].as_str().unwrap();
    assert!(
        !address.contains(TOKEN),
        "the token left the address bar: {address}"
    );
    assert_eq!(seen["tokenKept"], true, "the token is kept for the tab");

    let png = std::fs::read(shots.join("web.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a real screenshot was saved ({} bytes)",
        png.len()
    );
    eprintln!("web: screenshot at {}", shots.join("web.png").display());
    if std::env::var("CONCLAVE_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("web.png"), &png).unwrap();
        eprintln!("web: copied to {}", docs.join("web.png").display());
    }
    let (exit, _) = server.stop();
    assert_eq!(exit, Some(0));
}

/// `conclave --web`: one session served with the page; without a terminal it ends with the
/// session, printing the page's address and the session's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conclave_web_runs_one_session_and_prints_where_to_watch_it() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("team.yaml"), team_yaml(&sim, "")).unwrap();
    let mut command = Command::new(conclave_tests::workspace_bin("conclave").unwrap());
    command
        .args([
            "--web",
            "--config",
            "team.yaml",
            "--session-dir",
            "sessions",
        ])
        .args(["--session-id", "watched", "What is 2+2?"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("CONCLAVE_HTTP_TOKEN");
    let finished = conclave_tests::run_with_deadline(&mut command, DEADLINE).unwrap();
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains("watch session watched at http://127.0.0.1:"),
        "{}",
        finished.stderr
    );
    let result: Value = serde_json::from_str(finished.stdout.lines().last().unwrap_or(""))
        .expect("the result line");
    assert_eq!(result["session"], "watched");
    assert_eq!(result["reason"], "consensus");
    assert!(dir.path().join("sessions/watched/final.md").is_file());
    assert!(
        dir.path()
            .join("sessions/watched/conversation.jsonl")
            .is_file(),
        "a --web session starts a conversation --continue can pick up"
    );

    let refused = conclave_tests::run_with_deadline(
        Command::new(conclave_tests::workspace_bin("conclave").unwrap())
            .args(["--web", "--model", "sim-a", "Hello?"])
            .current_dir(dir.path()),
        DEADLINE,
    )
    .unwrap();
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains("--web needs --config"),
        "{}",
        refused.stderr
    );
}

/// An ended session replays on the page after a restart: the feed of a session the server
/// did not run comes from its journal, with the `final` object rebuilt from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_before_a_restart_replays_from_its_journal() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    std::fs::write(&config, team_yaml(&sim, "")).unwrap();
    let first = Server::start(dir.path(), &config, &[]).await;
    let (code, _) = first
        .post(
            "/sessions?wait=true",
            r#"{"question": "What is 2+2?", "session_id": "before"}"#,
        )
        .await;
    assert_eq!(code, 200);
    let live = first.events("before").await;
    assert_eq!(first.stop().0, Some(0));

    let second = Server::start(dir.path(), &config, &[]).await;
    let replay = tokio::time::timeout(DEADLINE, second.events("before"))
        .await
        .expect("the replay ends");
    let kinds: Vec<&str> = replay.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"session_started"), "{kinds:?}");
    assert!(kinds.contains(&"vote_accepted"), "{kinds:?}");
    assert!(kinds.contains(&"session_ended"), "{kinds:?}");
    let last = replay.last().unwrap();
    let final_md = std::fs::read_to_string(dir.path().join("sessions/before/final.md")).unwrap();
    assert_eq!(last["type"], "final", "{last}");
    assert_eq!(
        last["content"].as_str().map(str::trim),
        Some(final_md.trim())
    );
    assert_eq!(
        last["reason"],
        live.last().unwrap()["reason"],
        "as the live feed said"
    );
    assert_eq!(last["winner"], live.last().unwrap()["winner"]);
    // An id that could name a path is never looked up.
    assert_eq!(second.get("/sessions/..%2Fx/events").await.0, 404);
    assert_eq!(second.stop().0, Some(0));
}
