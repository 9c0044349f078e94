//! End-to-end: the HTTP API of `conclave server --http`, through the real binary and real
//! HTTP against the simulated provider:
//!
//! * a session submitted over HTTP runs, its live event feed (SSE) carries the stream chunks,
//!   the journal events and the final answer, and its status then matches `final.md`; a late
//!   watcher replays the journal events;
//! * bad requests get a status and a message that says what to fix;
//! * a cancelled session ends with its best answer (exit code 130) and `?wait=true` returns it;
//!   SIGTERM stops the server with exit 0;
//! * a token guards every route but `/healthz`, and a non-loopback address without a token is
//!   refused at start.
//!
//! What a client may not do (untrusted configs, same-site checks, limits) is in
//! `server_trust`, which shares the [`Server`] helper.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use conclave_sim::SimServer;
use conclave_tests::start_sim;
use conclave_tests::{
    Running, SimAgent, events_of, free_port, journal_lines, poll_until, read_journal,
    run_with_deadline, sim_config_yaml, workspace_bin,
};
use futures::StreamExt;
use serde_json::{Value, json};

/// Any server or request still running after this fails the test.
pub(crate) const DEADLINE: Duration = Duration::from_secs(40);
pub(crate) const TOKEN: &str = "0123456789abcdef0123456789abcdef";

pub(crate) async fn sim() -> SimServer {
    start_sim(8, 5).await.expect("sim provider starts")
}

pub(crate) fn team_yaml(sim: &SimServer, model_options: &str) -> String {
    let models: Vec<String> = ["sim-a", "sim-b", "sim-c"]
        .iter()
        .map(|m| format!("{m}{model_options}"))
        .collect();
    sim_config_yaml(
        &sim.base_url(),
        &[
            SimAgent {
                id: "alpha",
                model: &models[0],
            },
            SimAgent {
                id: "beta",
                model: &models[1],
            },
            SimAgent {
                id: "gamma",
                model: &models[2],
            },
        ],
        "",
        60,
    )
}

pub(crate) struct Server {
    running: Running,
    pub(crate) base: String,
    pub(crate) port: u16,
    pub(crate) http: reqwest::Client,
}

impl Server {
    /// Starts `conclave server --http` in `dir` and waits until `/healthz` answers.
    pub(crate) async fn start(dir: &Path, config: &Path, extra: &[&str]) -> Server {
        Server::start_env(dir, config, extra, &[]).await
    }

    /// [`Server::start`] with extra environment variables for the server.
    pub(crate) async fn start_env(
        dir: &Path,
        config: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let port = free_port().expect("a free port");
        let mut command = Command::new(workspace_bin("conclave").expect("conclave binary"));
        command
            .args(["server", "--http", &format!("127.0.0.1:{port}"), "--config"])
            .arg(config)
            .args(["--session-dir", "sessions"])
            .args(extra)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env_remove("CONCLAVE_HTTP_TOKEN")
            .envs(env.iter().copied());
        let running = Running::start(&mut command).expect("server starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(DEADLINE)
            .build()
            .expect("client");
        let health = format!("{base}/healthz");
        let ready = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                if let Ok(response) = http.get(&health).send().await
                    && response.status().is_success()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "the server's HTTP API came up");
        Server {
            running,
            base,
            port,
            http,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Reads a session's event feed to its end: the `data:` objects and the `event:` names.
    pub(crate) async fn events(&self, id: &str) -> Vec<Value> {
        let response = self
            .http
            .get(self.url(&format!("/sessions/{id}/events")))
            .send()
            .await
            .expect("GET events");
        assert_eq!(response.status().as_u16(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let mut body = String::new();
        let mut stream = response.bytes_stream();
        while let Some(piece) = stream.next().await {
            body.push_str(&String::from_utf8_lossy(&piece.expect("event bytes")));
        }
        body.lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .map(|data| serde_json::from_str(data).expect("each data line is JSON"))
            .collect()
    }

    /// SIGTERM, then the exit status and stdout.
    pub(crate) fn stop(self) -> (Option<i32>, String) {
        self.signal_and_wait(libc::SIGTERM)
    }

    fn signal_and_wait(self, signal: libc::c_int) -> (Option<i32>, String) {
        self.running.signal(signal).expect("signal the server");
        let finished = self.running.wait(DEADLINE).expect("the server stops");
        (finished.code, finished.stdout)
    }

    /// Polls a session's status until it is `done`.
    pub(crate) async fn until_done(&self, id: &str) -> Value {
        let path = format!("/sessions/{id}");
        tokio::time::timeout(DEADLINE, async {
            loop {
                let (code, status) = self.get(&path).await;
                if code == 200 && status["state"] == "done" {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("session {id} ended in time"))
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_session_streams_live_and_reports_the_result_it_journaled() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    std::fs::write(&config, team_yaml(&sim, ":tokens=30,token_delay_ms=10")).unwrap();
    let server = Server::start(dir.path(), &config, &[]).await;

    let (code, submitted) = server
        .post(
            "/sessions",
            r#"{"question": "What is 2+2?", "session_id": "web"}"#,
        )
        .await;
    assert_eq!(code, 202, "{submitted}");
    assert_eq!(submitted["session"], "web");
    assert_eq!(submitted["state"], "running");

    // Watching from the start: chunks arrive live, then journal events, then the final answer.
    let live = tokio::time::timeout(DEADLINE, server.events("web"))
        .await
        .expect("the feed ends with the session");
    let kinds = types(&live);
    assert!(
        kinds.contains(&"chunk"),
        "stream chunks are live: {kinds:?}"
    );
    assert!(kinds.contains(&"turn_started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"final"), "{kinds:?}");

    let (code, status) = server.get("/sessions/web").await;
    assert_eq!(code, 200);
    assert_eq!(status["state"], "done", "{status}");
    let result = &status["result"];
    assert_eq!(result["exit_code"], 0, "{status}");
    assert_eq!(result["reason"], "consensus");
    let final_md = std::fs::read_to_string(dir.path().join("sessions/web/final.md")).unwrap();
    let answer = result["final_answer"].as_str().expect("a final answer");
    assert!(!answer.is_empty());
    assert_eq!(
        final_md.trim(),
        answer.trim(),
        "the API reports what was journaled"
    );
    assert_eq!(
        live.last().unwrap()["content"].as_str().map(str::trim),
        Some(answer.trim())
    );

    // A late watcher replays the kept events (no chunks) and the feed ends at once.
    let replay = tokio::time::timeout(Duration::from_secs(5), server.events("web"))
        .await
        .expect("a finished session's feed ends");
    // It is read from the journal, which holds every event the live feed showed, in order,
    // and more (the start with its config, usage, the end), then the final object.
    let live_kept: Vec<&Value> = live.iter().filter(|e| e["type"] != "chunk").collect();
    let mut rest = replay.iter();
    for event in &live_kept {
        assert!(
            rest.any(|r| r == *event),
            "the replay lacks (or misorders) {event}"
        );
    }
    let replay_kinds = types(&replay);
    assert_eq!(
        replay_kinds.first(),
        Some(&"session_started"),
        "{replay_kinds:?}"
    );
    assert!(replay_kinds.contains(&"session_ended"), "{replay_kinds:?}");
    assert_eq!(replay.last(), live.last(), "the final object comes last");
    assert!(!replay_kinds.contains(&"chunk"));
    assert_eq!(status["events"], live_kept.len());

    let (code, list) = server.get("/sessions").await;
    assert_eq!(code, 200);
    assert_eq!(list["sessions"][0]["session"], "web");

    let (exit, stdout) = server.stop();
    assert_eq!(exit, Some(0));
    let line: Value = serde_json::from_str(stdout.lines().next().expect("a result line")).unwrap();
    assert_eq!(&line, result, "stdout and the API agree");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_status_and_say_what_to_fix() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    std::fs::write(&config, team_yaml(&sim, "")).unwrap();
    let server = Server::start(dir.path(), &config, &[]).await;

    let cases = [
        ("not json", 400, "must be JSON"),
        (
            r#"{"question": "q", "confg": "x.yaml"}"#,
            400,
            "unknown field `confg`",
        ),
        (r#"{"question": "   "}"#, 400, "question is empty"),
        (
            r#"{"question": "q", "config": "missing.yaml"}"#,
            404,
            "no config `missing.yaml` in the server's config directory",
        ),
        (
            r#"{"question": "q", "config_yaml": "agents: 5"}"#,
            400,
            "config_yaml: `agents`",
        ),
        (
            r#"{"question": "q", "session_id": "../up"}"#,
            400,
            "session_id",
        ),
        (
            r#"{"question": "q", "config": "team.yaml", "config_yaml": "agents: []"}"#,
            400,
            "not both",
        ),
    ];
    for (body, want, says) in cases {
        let (code, reply) = server.post("/sessions", body).await;
        assert_eq!(code, want, "{body} -> {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{body} -> {error}");
    }

    // An inline config runs; its id is then taken.
    let inline = json!({
        "question": "q",
        "session_id": "inline",
        "config_yaml": team_yaml(&sim, ""),
    })
    .to_string();
    let (code, done) = server.post("/sessions?wait=true", &inline).await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["result"]["reason"], "consensus", "{done}");
    let (code, reply) = server.post("/sessions", &inline).await;
    assert_eq!(code, 409, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("already exists"));

    let (code, reply) = server.get("/sessions/nope").await;
    assert_eq!(code, 404);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("no session `nope`")
    );
    assert_eq!(server.post("/sessions/nope/cancel", "").await.0, 404);
    assert_eq!(server.get("/no/such/route").await.0, 404);
    let (exit, _) = server.stop();
    assert_eq!(exit, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_session_ends_with_its_best_answer_and_sigterm_stops_the_server() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    // Slow agents: a turn takes ~6 s, so the session is surely running when it is cancelled.
    std::fs::write(&config, team_yaml(&sim, ":tokens=300,token_delay_ms=20")).unwrap();
    let server = Server::start(dir.path(), &config, &[]).await;

    let waiting = {
        let http = server.http.clone();
        let url = server.url("/sessions?wait=true");
        tokio::spawn(async move {
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(r#"{"question": "q", "session_id": "slow"}"#)
                .send()
                .await
                .expect("POST");
            let code = response.status().as_u16();
            (code, response.json::<Value>().await.unwrap())
        })
    };
    let running = poll_until(Duration::from_secs(10), || {
        dir.path()
            .join("sessions/slow/events.jsonl")
            .exists()
            .then_some(())
    });
    assert!(running.is_some(), "the session started");
    let (code, reply) = server.post("/sessions/slow/cancel", "").await;
    assert_eq!(code, 202, "{reply}");
    let (code, done) = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("the waiting request returns")
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["result"]["reason"], "interrupted", "{done}");
    assert_eq!(done["result"]["exit_code"], 130);
    let (code, reply) = server.post("/sessions/slow/cancel", "").await;
    assert_eq!(code, 409, "{reply}");

    // A session still running when SIGTERM comes ends as interrupted; the server exits 0.
    let (code, _) = server
        .post("/sessions", r#"{"question": "q", "session_id": "cut"}"#)
        .await;
    assert_eq!(code, 202);
    let (exit, stdout) = server.stop();
    assert_eq!(exit, Some(0), "{stdout}");
    let cut: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["session"] == "cut")
        .expect("the cut session's result line");
    assert_eq!(cut["reason"], "interrupted", "{cut}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_the_api_and_a_public_address_needs_one() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    std::fs::write(&config, team_yaml(&sim, "")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let server = Server::start(dir.path(), &config, &["--http-token-file", "token"]).await;

    assert_eq!(server.get("/healthz").await.0, 200, "health needs no token");
    let (code, reply) = server.get("/sessions").await;
    assert_eq!(code, 401);
    assert!(reply["error"].as_str().unwrap().contains("Bearer"));
    let send = |token: &str| {
        server
            .http
            .get(server.url("/nodes"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(send("wrong-token-wrong-token").await.unwrap().status(), 401);
    let ok = send(TOKEN).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap(), json!({"nodes": []}));
    let (exit, _) = server.stop();
    assert_eq!(exit, Some(0));

    let refused = run_with_deadline(
        Command::new(workspace_bin("conclave").unwrap())
            .args(["server", "--http", "0.0.0.0:0", "--config"])
            .arg(&config)
            .current_dir(dir.path())
            .env_remove("CONCLAVE_HTTP_TOKEN"),
        DEADLINE,
    )
    .unwrap();
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--http-token-file"),
        "{}",
        refused.stderr
    );
    let neither = run_with_deadline(
        Command::new(workspace_bin("conclave").unwrap()).args(["server"]),
        DEADLINE,
    )
    .unwrap();
    assert_eq!(neither.code, Some(1));
    assert!(
        neither.stderr.contains("--http IP:PORT"),
        "{}",
        neither.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_the_server_died_under_are_resumed_over_http_or_at_start() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    // alpha decides at once; beta and gamma take ~4 s a turn, so the server dies mid-session.
    let yaml = sim_config_yaml(
        &sim.base_url(),
        &[
            SimAgent {
                id: "alpha",
                model: "sim-a:tokens=5,token_delay_ms=5",
            },
            SimAgent {
                id: "beta",
                model: "sim-b:tokens=200,token_delay_ms=20",
            },
            SimAgent {
                id: "gamma",
                model: "sim-c:tokens=200,token_delay_ms=20",
            },
        ],
        "",
        120,
    );
    std::fs::write(&config, yaml).unwrap();
    let first = Server::start(dir.path(), &config, &[]).await;
    for id in ["crash", "auto"] {
        let (code, reply) = first
            .post(
                "/sessions",
                &json!({"question": "q", "session_id": id}).to_string(),
            )
            .await;
        assert_eq!(code, 202, "{reply}");
    }
    let sessions = dir.path().join("sessions");
    let decided = poll_until(Duration::from_secs(20), || {
        ["crash", "auto"]
            .iter()
            .all(|id| {
                journal_lines(&sessions.join(id))
                    .iter()
                    .any(|l| l.contains("\"decision_received\""))
            })
            .then_some(())
    });
    assert!(decided.is_some(), "alpha's decisions were journaled");
    let (code, _) = first.signal_and_wait(libc::SIGKILL);
    assert_eq!(code, None, "killed");

    // A new server reads what it did not run off disk, and resumes on request.
    let second = Server::start(dir.path(), &config, &[]).await;
    let (code, status) = second.get("/sessions/crash").await;
    assert_eq!(code, 200);
    assert_eq!(status["state"], "unfinished", "{status}");
    let (code, done) = second.post("/sessions/crash/resume?wait=true", "").await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["result"]["reason"], "consensus", "{done}");
    assert_eq!(done["result"]["exit_code"], 0);
    let (code, reply) = second.post("/sessions/crash/resume", "").await;
    assert_eq!(code, 409, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("running")
            || reply["error"].as_str().unwrap().contains("already ended"),
        "{reply}"
    );
    assert_eq!(second.post("/sessions/never/resume", "").await.0, 404);
    assert_eq!(second.get("/sessions/auto").await.1["state"], "unfinished");
    assert_eq!(second.stop().0, Some(0));

    // --resume-unfinished picks up the other one; the first stays ended.
    let third = Server::start(dir.path(), &config, &["--resume-unfinished"]).await;
    let status = third.until_done("auto").await;
    assert_eq!(status["result"]["reason"], "consensus", "{status}");
    let (code, reply) = third.post("/sessions/crash/resume", "").await;
    assert_eq!(code, 409, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("already ended"),
        "{reply}"
    );
    let (code, status) = third.get("/sessions/crash").await;
    assert_eq!(code, 200);
    assert_eq!(status["state"], "done", "read off its journal: {status}");
    assert_eq!(status["result"]["reason"], "consensus");
    assert_eq!(third.stop().0, Some(0));

    for id in ["crash", "auto"] {
        let journal = read_journal(&sessions.join(id)).unwrap();
        assert_eq!(events_of(&journal, "session_resumed").len(), 1, "{id}");
        assert_eq!(events_of(&journal, "session_ended").len(), 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_max_sessions_wait_their_turn() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    std::fs::write(&config, team_yaml(&sim, ":tokens=40,token_delay_ms=10")).unwrap();
    let server = Server::start(dir.path(), &config, &["--max-sessions", "1"]).await;
    for id in ["one", "two", "three"] {
        let (code, reply) = server
            .post(
                "/sessions",
                &json!({"question": "q", "session_id": id}).to_string(),
            )
            .await;
        assert_eq!(code, 202, "{reply}");
    }
    let (_, two) = server.get("/sessions/two").await;
    assert_eq!(two["state"], "queued", "{two}");
    // A queued session that is cancelled never starts: no provider call, no journal.
    let (code, reply) = server.post("/sessions/three/cancel", "").await;
    assert_eq!(code, 202, "{reply}");
    let three = server.until_done("three").await;
    assert_eq!(
        three["result"]["reason"], "cancelled_while_queued",
        "{three}"
    );
    assert_eq!(three["result"]["exit_code"], 130);
    assert!(!dir.path().join("sessions/three").exists());

    let two = server.until_done("two").await;
    assert_eq!(two["result"]["reason"], "consensus", "{two}");
    let one = server.until_done("one").await;
    assert_eq!(one["result"]["reason"], "consensus", "{one}");
    // One at a time: the second session started after the first had ended.
    let times = |id: &str| -> Vec<u64> {
        read_journal(&dir.path().join("sessions").join(id))
            .unwrap()
            .iter()
            .filter_map(|e| e["unix_ms"].as_u64())
            .collect()
    };
    let one_ended = *times("one").iter().max().unwrap();
    let two_started = *times("two").iter().min().unwrap();
    assert!(
        two_started >= one_ended,
        "session two started at {two_started}, before one ended at {one_ended}"
    );
    assert_eq!(server.stop().0, Some(0));
}
