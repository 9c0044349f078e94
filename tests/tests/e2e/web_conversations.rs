//! End-to-end: the web page continues a conversation, in a real browser (headless Chromium,
//! driven as in [`crate::web`]).
//!
//! A session runs on one server, which then stops. A new server on the same session directory
//! lists it from disk on the page; the test opens it (it replays from its journal), types a
//! follow-up into the box under the final answer and sends it. The page moves to the new
//! session, which shows the earlier question and answer as its conversation's history and
//! ends with its own final answer; the server's API and the journal agree (the follow-up's
//! agents got the first question and its final answer). A screenshot is saved under the
//! test's temp dir (with `CONCLAVE_UPDATE_SCREENSHOTS=1` also as `docs/web-conversation.png`).
//!
//! Without Chromium the test says it did not run; under `CI=true` that is a failure.

use std::path::Path;
use std::time::{Duration, Instant};

use conclave_tests::{events_of, read_journal};
use serde_json::{Value, json};

use crate::server::{DEADLINE, Server, sim, team_yaml};
use crate::web::{Browser, ONE_BROWSER, base64_decode, chromium, squash, tail};

const FIRST: &str = "Name a prime number and say why.";
const FOLLOW_UP: &str = "And the next prime after it?";

/// What the test reads from the page.
const READ_DOM: &str = r#"JSON.stringify({
  listed: [...document.querySelectorAll('#sessions li')].map(li => li.dataset.session),
  hash: location.hash,
  finalShown: !document.getElementById('final').hidden,
  finalAnswer: document.getElementById('final-answer').textContent,
  followUpShown: !document.getElementById('follow-up-form').hidden,
  followUpError: document.getElementById('follow-up-error').textContent,
  history: [...document.querySelectorAll('#history-turns li')].map(li => li.textContent),
  historyShown: !document.getElementById('history').hidden,
  state: document.getElementById('session-state').textContent,
})"#;

/// Polls the page until `done` holds for what it shows, for at most [`DEADLINE`].
fn wait_for(browser: &mut Browser, log: &Path, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let seen: Value = browser
            .eval(READ_DOM)
            .as_str()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null);
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "the page showed {what} in time; it shows {seen}; browser log: {}",
            tail(&std::fs::read_to_string(log).unwrap_or_default())
        );
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_sessions_from_disk_and_continues_a_conversation() {
    let Some(binary) = chromium() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Chromium is missing (install Debian's `chromium`, or set CONCLAVE_CHROMIUM); under CI=true the web UI test must run"
        );
        eprintln!(
            "web_conversations: DID NOT RUN: no Chromium on PATH (install `chromium` or set CONCLAVE_CHROMIUM)"
        );
        return;
    };
    let _one = ONE_BROWSER.lock().await;
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    std::fs::write(&config, team_yaml(&sim, "")).unwrap();

    let first = Server::start(dir.path(), &config, &[]).await;
    let (code, before) = first
        .post(
            "/sessions?wait=true",
            &json!({"question": FIRST, "session_id": "before"}).to_string(),
        )
        .await;
    assert_eq!(code, 200, "{before}");
    let first_answer = before["result"]["final_answer"]
        .as_str()
        .expect("a final answer")
        .to_owned();
    assert_eq!(first.stop().0, Some(0));

    let server = Server::start(dir.path(), &config, &[]).await;
    let shots = dir.path().join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let profile = dir.path().join("chromium-profile");
    let log = dir.path().join("chromium.log");
    let base = server.base.clone();
    let shot_dir = shots.clone();
    let answer = first_answer.clone();
    let seen = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::start(&binary, &profile, &log);
        browser.open_page();
        browser.call("Page.navigate", json!({"url": format!("{base}/")}));
        // The session of the earlier server is listed, read from disk.
        wait_for(&mut browser, &log, "the session from disk in the list", |seen| {
            seen["listed"]
                .as_array()
                .is_some_and(|l| l.iter().any(|s| s == "before"))
        });
        browser.eval(r#"document.querySelector('#sessions li[data-session="before"]').click()"#);
        let replayed = wait_for(&mut browser, &log, "the replayed session and the follow-up box", |seen| {
            seen["finalShown"] == true && seen["followUpShown"] == true
        });
        assert_eq!(squash(replayed["finalAnswer"].as_str().unwrap()), squash(&answer));
        assert_eq!(replayed["historyShown"], false, "a first turn has no history");
        browser.eval(&format!(
            "document.getElementById('follow-up').value = {}; document.querySelector('#follow-up-form button').click()",
            json!(FOLLOW_UP)
        ));
        let seen = wait_for(&mut browser, &log, "the follow-up's session to its end", |seen| {
            seen["hash"] == "#/s/before-2"
                && seen["finalShown"] == true
                && seen["state"].as_str().is_some_and(|s| s.starts_with("ended"))
        });
        let shot = browser.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        std::fs::write(shot_dir.join("web-conversation.png"), &png).unwrap();
        seen
    })
    .await
    .expect("the browser task ends");

    // The page showed the earlier turn as history, and the new session's own answer.
    let history = seen["history"].as_array().expect("history items");
    assert_eq!(history.len(), 1, "{seen}");
    let shown = squash(history[0].as_str().unwrap());
    assert!(
        shown.contains(FIRST) && shown.contains(&squash(&first_answer)),
        "{seen}"
    );
    assert_eq!(seen["followUpError"], "", "{seen}");
    let (code, status) = server.get("/sessions/before-2").await;
    assert_eq!(code, 200);
    assert_eq!(status["conversation"], "before", "{status}");
    assert_eq!(status["question"], FOLLOW_UP);
    assert_eq!(
        squash(seen["finalAnswer"].as_str().unwrap()),
        squash(status["result"]["final_answer"].as_str().unwrap())
    );
    let journal = read_journal(&dir.path().join("sessions/before-2")).unwrap();
    assert_eq!(
        events_of(&journal, "session_started")[0]["history"],
        json!([[FIRST, first_answer]]),
        "the follow-up's agents got the first question and its final answer"
    );

    let png = std::fs::read(shots.join("web-conversation.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a real screenshot was saved ({} bytes)",
        png.len()
    );
    eprintln!(
        "web_conversations: screenshot at {}",
        shots.join("web-conversation.png").display()
    );
    if std::env::var("CONCLAVE_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("web-conversation.png"), &png).unwrap();
    }
    assert_eq!(server.stop().0, Some(0));
}
