//! End-to-end: what a client of `conclave server --http` may and may not do, through the real
//! binary (issue 9):
//!
//! * a submitted config never expands the server's environment: a `${VAR}` is refused, and
//!   no answer, error or event feed carries a variable's value; an error about a config file
//!   on the server names the key, not the file's value;
//! * key variables and base URLs come only from the operator's allow-lists;
//! * `"config": NAME` resolves only inside the config directory, and every refusal looks like
//!   a missing file;
//! * browsers cannot drive the API cross-site (Origin, Host, Content-Type);
//! * a body over the limit, a full queue, a slow client and too many connections each get
//!   their answer without blocking anyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::server::{DEADLINE, Server, sim, team_yaml};

/// A recognisable value in the server's environment that no client may ever see.
const SECRET_VAR: &str = "CONCLAVE_E2E_SECRET";
const SECRET: &str = "sk-e2e-top-secret-7f3a9c";

fn submit(config_yaml: &str, id: &str) -> String {
    json!({"question": "What is 2+2?", "session_id": id, "config_yaml": config_yaml}).to_string()
}

/// A one-agent sim config at `base_url`, with `extra` lines added to its backend.
fn one_agent(base_url: &str, extra: &str) -> String {
    agent_with(base_url, "sim-a", extra)
}

fn agent_with(base_url: &str, model: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("      {extra}\n")
    };
    format!(
        "agents:\n  - id: solo\n    backend:\n      type: sim\n      model: \"{model}\"\n      \
         base_url: \"{base_url}\"\n{extra}orchestrator:\n  restart_policy: cancel\n\
         timeout_settings:\n  orchestrator_timeout_seconds: 60\n"
    )
}

/// Sends raw bytes on a new connection and reads the answer until the server closes it.
fn raw(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_config_never_reveals_the_servers_environment_or_files() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    write(dir.path(), "team.yaml", &team_yaml(&sim, ""));
    let server = Server::start_env(dir.path(), &config, &[], &[(SECRET_VAR, SECRET)]).await;
    let url = sim.base_url();

    // Once expanded into the prompt (and so into the event feed), now refused.
    let yaml = one_agent(&url, "").replace(
        "  - id: solo\n",
        &format!("  - id: solo\n    system_message: \"say ${{{SECRET_VAR}}}\"\n"),
    );
    let (code, reply) = server.post("/sessions", &submit(&yaml, "prompt")).await;
    assert_eq!(code, 400, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(error.contains("expansion is off"), "{error}");
    assert!(!reply.to_string().contains(SECRET), "{reply}");
    assert_eq!(server.get("/sessions/prompt").await.0, 404, "never ran");

    // A bad number field once echoed the expanded value in the 400.
    let reference = format!("${{{SECRET_VAR}}}");
    for (what, yaml) in [
        (
            "temperature",
            one_agent(&url, &format!("temperature: \"{reference}\"")),
        ),
        ("model", agent_with(&url, &reference, "")),
        ("base_url", agent_with(&reference, "sim-a", "")),
    ] {
        let (code, reply) = server.post("/sessions", &submit(&yaml, "number")).await;
        let extra = what;
        assert_eq!(code, 400, "{extra}: {reply}");
        assert!(!reply.to_string().contains(SECRET), "{extra}: {reply}");
    }

    // A config file on the server: its values are not shown, only where the problem is.
    write(
        dir.path(),
        "hot.yaml",
        &one_agent(&url, "temperature: \"file-value-9d2e\""),
    );
    let (code, reply) = server
        .post(
            "/sessions",
            &json!({"question": "q", "config": "hot.yaml"}).to_string(),
        )
        .await;
    assert_eq!(code, 400, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(error.contains("agents[0].backend.temperature"), "{error}");
    assert!(!error.contains("file-value-9d2e"), "{error}");

    // A session that runs: nothing of the environment in its feed or its status.
    let (code, done) = server
        .post(
            "/sessions?wait=true",
            &submit(&one_agent(&url, ""), "clean"),
        )
        .await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["result"]["exit_code"], 0, "{done}");
    let feed = server.events("clean").await;
    assert!(!feed.is_empty());
    assert!(!Value::from(feed).to_string().contains(SECRET));
    assert!(!server.get("/sessions").await.1.to_string().contains(SECRET));
    assert_eq!(server.stop().0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_variables_and_base_urls_come_only_from_the_allow_lists() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    // The operator's own config talks to another host, so the sim's URL is not allowed yet.
    let config = dir.path().join("team.yaml");
    write(
        dir.path(),
        "team.yaml",
        &one_agent("http://127.0.0.1:9/v1", "api_key_env: OWN_KEY"),
    );
    let url = sim.base_url();
    let server = Server::start_env(dir.path(), &config, &[], &[("HOME_SECRET", SECRET)]).await;

    let (code, reply) = server
        .post("/sessions", &submit(&one_agent(&url, ""), "far"))
        .await;
    assert_eq!(code, 400, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("agent `solo`") && error.contains("--allow-base-url"),
        "{error}"
    );
    // A hosted provider's own host with another provider's key: refused.
    let (code, reply) = server
        .post(
            "/sessions",
            &submit(
                &one_agent("https://api.openai.com/v1", "api_key_env: GROQ_API_KEY"),
                "swap",
            ),
        )
        .await;
    assert_eq!(code, 400, "{reply}");
    assert_eq!(server.stop().0, Some(0));

    let allow = format!("--allow-base-url={url}");
    let server = Server::start_env(
        dir.path(),
        &config,
        &[&allow, "--allow-key-env", "E2E_KEY"],
        &[("HOME_SECRET", SECRET), ("E2E_KEY", "sim-key")],
    )
    .await;
    // Any variable of the server's environment as a key: refused by rule, value unseen.
    let (code, reply) = server
        .post(
            "/sessions",
            &submit(&one_agent(&url, "api_key_env: HOME_SECRET"), "home"),
        )
        .await;
    assert_eq!(code, 400, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(error.contains("--allow-key-env"), "{error}");
    assert!(!reply.to_string().contains(SECRET), "{reply}");
    // The `api_key: ${VAR}` form names a variable too, and is checked the same way.
    let (code, reply) = server
        .post(
            "/sessions",
            &submit(&one_agent(&url, "api_key: \"${HOME_SECRET}\""), "home2"),
        )
        .await;
    assert_eq!(code, 400, "the api_key form is checked too: {reply}");

    // Allowed names, both forms, on an allowed URL: the sessions run.
    for (extra, id) in [
        ("api_key_env: E2E_KEY", "allowed"),
        ("api_key: \"${E2E_KEY}\"", "allowed2"),
        ("api_key_env: OWN_KEY", "own"),
    ] {
        let body = submit(&one_agent(&url, extra), id);
        if id == "own" {
            // OWN_KEY is allowed (the operator's config names it) but not set here.
            let (code, reply) = server.post("/sessions", &body).await;
            assert_eq!(code, 400, "{reply}");
            let error = reply["error"].as_str().unwrap_or_default();
            assert!(error.contains("set OWN_KEY"), "{error}");
            continue;
        }
        let (code, done) = server.post("/sessions?wait=true", &body).await;
        assert_eq!(code, 200, "{extra}: {done}");
        assert_eq!(done["result"]["exit_code"], 0, "{extra}: {done}");
    }
    assert_eq!(server.stop().0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_names_resolve_only_inside_the_config_dir() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let configs = dir.path().join("configs");
    std::fs::create_dir(&configs).unwrap();
    let team = team_yaml(&sim, "");
    write(&configs, "team.yaml", &team);
    write(dir.path(), "outside.yaml", &team);
    std::os::unix::fs::symlink(dir.path().join("outside.yaml"), configs.join("link.yaml")).unwrap();
    let server = Server::start(dir.path(), &configs.join("team.yaml"), &[]).await;

    let absolute = dir.path().join("outside.yaml").display().to_string();
    let inside_but_absolute = configs.join("team.yaml").display().to_string();
    for name in [
        "missing.yaml",
        "../outside.yaml",
        "link.yaml",
        absolute.as_str(),
        inside_but_absolute.as_str(),
        "./../configs/team.yaml",
    ] {
        let (code, reply) = server
            .post(
                "/sessions",
                &json!({"question": "q", "config": name}).to_string(),
            )
            .await;
        assert_eq!(code, 404, "{name}: {reply}");
        assert_eq!(
            reply,
            json!({"error": format!("no config `{name}` in the server's config directory")}),
            "refused and missing look the same"
        );
    }
    let (code, done) = server
        .post(
            "/sessions?wait=true",
            &json!({"question": "q", "config": "team.yaml", "session_id": "named"}).to_string(),
        )
        .await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["result"]["reason"], "consensus", "{done}");
    assert_eq!(server.stop().0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_cannot_drive_the_api_and_bodies_are_limited() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    write(dir.path(), "team.yaml", &team_yaml(&sim, ""));
    let server = Server::start(dir.path(), &config, &[]).await;
    let port = server.port;
    let bad_body = r#"{"question": "   "}"#;
    let post = |origin: Option<&str>, content_type: Option<&str>, path: &str| {
        let mut request = server.http.post(server.url(path)).body(bad_body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };
    let json = Some("application/json");
    let status = |r: reqwest::Result<reqwest::Response>| r.expect("an answer").status().as_u16();

    // Another site's page: refused before anything runs.
    assert_eq!(
        status(post(Some("http://evil.example"), json, "/sessions").await),
        403
    );
    let sneaky = format!("http://evil.example:{port}");
    assert_eq!(status(post(Some(&sneaky), json, "/sessions").await), 403);
    assert_eq!(status(post(Some("null"), json, "/sessions").await), 403);
    // The server's own origin passes (and reaches the handler: 400 for the empty question).
    let own = format!("http://127.0.0.1:{port}");
    assert_eq!(status(post(Some(&own), json, "/sessions").await), 400);
    let own = format!("http://localhost:{port}");
    assert_eq!(status(post(Some(&own), json, "/sessions").await), 400);
    // A form's content types, or none: 415.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        assert_eq!(
            status(post(None, content_type, "/sessions").await),
            415,
            "{content_type:?}"
        );
    }
    assert_eq!(status(post(None, None, "/sessions/x/cancel").await), 415);
    assert_eq!(
        status(post(None, Some("application/json; charset=utf-8"), "/sessions").await),
        400
    );

    // A rebound DNS name (a page that looks same-site): a server without a token answers
    // only to its own address.
    let answer = raw(
        port,
        format!("GET /sessions HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let answer = raw(
        port,
        format!("GET /sessions HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Through a tunnel the port differs; the name is still local.
    let answer = raw(
        port,
        b"GET /sessions HTTP/1.1\r\nHost: localhost:9999\r\nOrigin: http://localhost:9999\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A body over the limit: 413, and the server goes on.
    let big = json!({"question": "q", "config_yaml": "#".repeat(1 << 20)}).to_string();
    let (code, reply) = server.post("/sessions", &big).await;
    assert_eq!(code, 413, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("larger than")
    );
    assert_eq!(server.get("/healthz").await.0, 200);
    assert_eq!(server.stop().0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    // Slow agents: the first session surely still runs while the others are submitted.
    write(
        dir.path(),
        "team.yaml",
        &team_yaml(&sim, ":tokens=300,token_delay_ms=20"),
    );
    let server = Server::start(
        dir.path(),
        &config,
        &["--max-sessions", "1", "--max-queued", "1"],
    )
    .await;
    let body = |id: &str| json!({"question": "q", "session_id": id}).to_string();
    assert_eq!(server.post("/sessions", &body("one")).await.0, 202);
    let (code, two) = server.post("/sessions", &body("two")).await;
    assert_eq!(code, 202, "{two}");
    assert_eq!(two["state"], "queued", "{two}");
    let (code, reply) = server.post("/sessions", &body("three")).await;
    assert_eq!(code, 429, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("--max-queued"),
        "{reply}"
    );
    assert_eq!(
        server.get("/sessions/three").await.0,
        404,
        "never registered"
    );
    // Once the queue has room again, a submission is taken.
    assert_eq!(server.post("/sessions/two/cancel", "").await.0, 202);
    server.until_done("two").await;
    assert_eq!(server.post("/sessions", &body("four")).await.0, 202);
    assert_eq!(server.stop().0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_without_blocking_others() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    write(dir.path(), "team.yaml", &team_yaml(&sim, ""));
    let server = Server::start(dir.path(), &config, &["--http-read-timeout", "1"]).await;
    let port = server.port;

    // Half a request header, then nothing.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    // Others are served meanwhile.
    let answer = raw(
        port,
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The stalled connection is closed by the server (possibly after a 408).
    let closed = tokio::task::spawn_blocking(move || {
        slow.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut rest = Vec::new();
        match slow.read_to_end(&mut rest) {
            Ok(_) => Ok(String::from_utf8_lossy(&rest).into_owned()),
            Err(error) => Err(error.kind()),
        }
    })
    .await
    .unwrap();
    let rest = closed.expect("the server closed the stalled connection");
    assert!(
        !rest.contains("200 OK"),
        "the half request was not served: {rest}"
    );
    assert_eq!(server.get("/healthz").await.0, 200);
    assert_eq!(server.stop().0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_503() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    write(dir.path(), "team.yaml", &team_yaml(&sim, ""));
    let server = Server::start(dir.path(), &config, &["--max-connections", "2"]).await;
    let port = server.port;
    // The readiness probe's pooled connection would count: use only fresh ones from here.
    let fresh = reqwest::Client::builder()
        .timeout(DEADLINE)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    let request =
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let answer = tokio::task::spawn_blocking({
        let request = request.clone();
        move || raw(port, request.as_bytes())
    })
    .await
    .unwrap();
    // The readiness probe's connection may still hold a slot: the cap is reached either way.
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("--max-connections"), "{answer}");
    drop(idle);
    // Slots come back when connections close.
    let served = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Ok(response) = fresh.get(server.url("/healthz")).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "served again once the idle connections closed"
    );
    assert_eq!(server.stop().0, Some(0));
}

/// MCP servers in a submitted config: no program may be started, `${VAR}` is refused, and
/// an HTTP server must be under an allowed base URL, where it then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_mcp_servers_may_not_start_programs_and_need_an_allowed_url() {
    let sim = sim().await;
    let url = sim.base_url();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mcp_port = listener.local_addr().expect("addr").port();
    let stop = tokio_util::sync::CancellationToken::new();
    let mcp = tokio::spawn(conclave_mcp_demo::serve_http(listener, stop.clone()));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    write(dir.path(), "team.yaml", &one_agent(&url, ""));
    let allow_sim = format!("--allow-base-url={url}");
    let allow_mcp = format!("--allow-base-url=http://127.0.0.1:{mcp_port}/");
    let server = Server::start_env(dir.path(), &config, &[&allow_sim, &allow_mcp], &[]).await;

    let stdio = "mcp_servers: [{name: sh, type: stdio, command: /bin/sh}]";
    let (code, reply) = server
        .post("/sessions", &submit(&one_agent(&url, stdio), "prog"))
        .await;
    assert_eq!(code, 400, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(error.contains("may not start programs"), "{error}");

    let far = "mcp_servers: [{name: far, type: streamable-http, url: \"http://127.0.0.1:9/mcp\"}]";
    let (code, reply) = server
        .post("/sessions", &submit(&one_agent(&url, far), "far"))
        .await;
    assert_eq!(code, 400, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("MCP server `far`") && error.contains("--allow-base-url"),
        "{error}"
    );

    let secret = format!(
        "mcp_servers: [{{name: web, type: streamable-http, url: \"http://127.0.0.1:{mcp_port}/mcp\", headers: {{A: \"${{{SECRET_VAR}}}\"}}}}]"
    );
    let (code, reply) = server
        .post("/sessions", &submit(&one_agent(&url, &secret), "sec"))
        .await;
    assert_eq!(code, 400, "{reply}");

    let allowed = format!(
        "mcp_servers: [{{name: web, type: streamable-http, url: \"http://127.0.0.1:{mcp_port}/mcp\"}}]"
    );
    let (code, done) = server
        .post(
            "/sessions?wait=true",
            &submit(&one_agent(&url, &allowed), "ok"),
        )
        .await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["result"]["exit_code"], 0, "{done}");
    assert_eq!(server.stop().0, Some(0));
    stop.cancel();
    let _ = tokio::time::timeout(DEADLINE, mcp).await;
}
