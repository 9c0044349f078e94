//! End-to-end: conversations through `conclave server --http`, and the sessions on disk it
//! lists, through the real binary and real HTTP against the simulated provider.
//!
//! * A follow-up (`POST /sessions/{id}/continue`) runs as the conversation's next session, and
//!   the provider requests of its agents carry the earlier question and final answer as
//!   messages (the simulator keeps the request bodies: `record_body=true`).
//! * After a restart the new server lists the earlier sessions from its session directory
//!   (newest first, paged; a foreign folder, a journal that is not one and a symlink leading
//!   out are skipped) and continues the conversation from disk.
//! * A conversation with a turn still running refuses a follow-up; a follow-up may not pick
//!   its own session id; an unknown conversation is a 404.

use std::path::Path;

use conclave_tests::{events_of, read_journal};
use serde_json::{Value, json};

use crate::server::{Server, sim, team_yaml};

/// The (role, text) messages of every recorded provider request whose last user message is
/// `question`.
fn requests_for(sim: &conclave_sim::SimServer, question: &str) -> Vec<Vec<(String, String)>> {
    sim.requests()
        .iter()
        .filter_map(|record| {
            let body: Value = serde_json::from_str(record.body.as_deref()?).ok()?;
            let messages: Vec<(String, String)> = body["messages"]
                .as_array()?
                .iter()
                .map(|m| {
                    let text = match &m["content"] {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    (m["role"].as_str().unwrap_or("").to_owned(), text)
                })
                .collect();
            let asked = messages
                .iter()
                .any(|(role, text)| role == "user" && text.contains(question));
            asked.then_some(messages)
        })
        .collect()
}

/// Whether `messages` hold `question` as a user message followed by `answer` from the
/// assistant: an earlier turn given as history.
fn has_turn(messages: &[(String, String)], question: &str, answer: &str) -> bool {
    messages.windows(2).any(|pair| {
        pair[0] == ("user".to_owned(), question.to_owned())
            && pair[1] == ("assistant".to_owned(), answer.to_owned())
    })
}

fn final_answer(status: &Value) -> String {
    status["result"]["final_answer"]
        .as_str()
        .unwrap_or_else(|| panic!("a final answer: {status}"))
        .to_owned()
}

fn conversation_turns(dir: &Path, id: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join("sessions").join(id).join("conversation.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a conversation line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_continues_over_http_and_after_a_restart_from_disk() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("team.yaml");
    std::fs::write(&config, team_yaml(&sim, ":record_body=true")).unwrap();
    let (q1, q2, q3) = ("What is 2+2?", "And times 3?", "Minus 1?");

    let first = Server::start(dir.path(), &config, &[]).await;
    let (code, one) = first
        .post(
            "/sessions?wait=true",
            &json!({"question": q1, "session_id": "talk"}).to_string(),
        )
        .await;
    assert_eq!(code, 200, "{one}");
    assert_eq!(one["conversation"], "talk", "{one}");
    let a1 = final_answer(&one);
    assert_eq!(conversation_turns(dir.path(), "talk").len(), 1);
    let before = sim.requests().len();

    // What a follow-up may not do.
    let (code, reply) = first
        .post(
            "/sessions/nope/continue",
            &json!({"question": q2}).to_string(),
        )
        .await;
    assert_eq!(code, 404, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("no conversation with a session `nope`"),
        "{reply}"
    );
    let (code, reply) = first
        .post(
            "/sessions/talk/continue",
            &json!({"question": q2, "session_id": "mine"}).to_string(),
        )
        .await;
    assert_eq!(code, 400, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("session_id"),
        "{reply}"
    );
    assert_eq!(
        first
            .post(
                "/sessions/..%2Fx/continue",
                &json!({"question": q2}).to_string()
            )
            .await
            .0,
        400,
        "a name that could be a path is refused"
    );

    // The follow-up: session talk-2, whose agents get turn 1 as history.
    let (code, two) = first
        .post(
            "/sessions/talk/continue?wait=true",
            &json!({"question": q2}).to_string(),
        )
        .await;
    assert_eq!(code, 200, "{two}");
    assert_eq!(two["session"], "talk-2");
    assert_eq!(two["conversation"], "talk");
    let a2 = final_answer(&two);
    let asked = requests_for(&sim, q2);
    assert!(!asked.is_empty(), "the provider saw the follow-up");
    for messages in &asked {
        assert!(
            has_turn(messages, q1, &a1),
            "every request of the follow-up carries the first question and its final answer: {messages:?}"
        );
    }
    assert_eq!(
        asked.len(),
        sim.requests().len() - before,
        "every provider request since the follow-up was one of its turns"
    );
    assert_eq!(first.stop().0, Some(0));

    // Things in the session directory that are not sessions of this server.
    let sessions = dir.path().join("sessions");
    std::fs::create_dir_all(sessions.join("photos")).unwrap();
    std::fs::create_dir_all(sessions.join("broken")).unwrap();
    std::fs::write(
        sessions.join("broken/events.jsonl"),
        "this is not a journal\n",
    )
    .unwrap();
    std::fs::write(sessions.join("notes.txt"), "hello").unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(
        sessions.join("talk/events.jsonl"),
        outside.join("events.jsonl"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, sessions.join("elsewhere")).unwrap();

    // A new server lists both turns from disk, newest first, and nothing else.
    let second = Server::start(dir.path(), &config, &[]).await;
    let (code, listed) = second.get("/sessions").await;
    assert_eq!(code, 200, "{listed}");
    let ids: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["session"].as_str())
        .collect();
    assert_eq!(ids, ["talk-2", "talk"], "{listed}");
    // `total` counts what looked like a session before it was opened: `broken/` too.
    assert_eq!(listed["total"], 3, "{listed}");
    for row in listed["sessions"].as_array().unwrap() {
        assert_eq!(row["source"], "disk", "{row}");
        assert_eq!(row["state"], "done", "{row}");
        assert_eq!(row["result"]["reason"], "consensus", "{row}");
    }
    assert_eq!(listed["sessions"][0]["question"], q2);
    assert_eq!(listed["sessions"][0]["history"], 1);
    // Pages: `broken/` is the newest entry (made last) and is skipped where it falls.
    let (code, page) = second.get("/sessions?limit=1&offset=2").await;
    assert_eq!(code, 200);
    assert_eq!(page["sessions"][0]["session"], "talk", "{page}");
    assert_eq!(page["next_offset"], Value::Null, "{page}");
    let (code, page) = second.get("/sessions?limit=2").await;
    assert_eq!(code, 200);
    assert_eq!(page["sessions"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["next_offset"], 2, "{page}");
    for bad in [
        "/sessions?limit=0",
        "/sessions?limit=501",
        "/sessions?offset=-1",
    ] {
        let (code, reply) = second.get(bad).await;
        assert_eq!(code, 400, "{bad}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains("limit"),
            "{reply}"
        );
    }
    assert_eq!(
        second.get("/sessions/elsewhere").await.0,
        404,
        "a symlink out is not followed"
    );

    // Continued from disk by the new server, naming the latest turn.
    let (code, three) = second
        .post(
            "/sessions/talk-2/continue?wait=true",
            &json!({"question": q3}).to_string(),
        )
        .await;
    assert_eq!(code, 200, "{three}");
    assert_eq!(three["session"], "talk-3");
    let asked = requests_for(&sim, q3);
    assert!(!asked.is_empty());
    for messages in &asked {
        assert!(
            has_turn(messages, q1, &a1) && has_turn(messages, q2, &a2),
            "{messages:?}"
        );
    }
    let journal = read_journal(&sessions.join("talk-3")).unwrap();
    assert_eq!(
        events_of(&journal, "session_started")[0]["history"],
        json!([[q1, a1], [q2, a2]])
    );
    let turns = conversation_turns(dir.path(), "talk");
    let recorded: Vec<&str> = turns.iter().filter_map(|t| t["session"].as_str()).collect();
    assert_eq!(recorded, ["talk", "talk-2", "talk-3"]);

    // One turn at a time: a follow-up while the last one runs is refused, naming it.
    let (code, four) = second
        .post(
            "/sessions/talk/continue",
            &json!({"question": "Plus 10?"}).to_string(),
        )
        .await;
    assert_eq!(code, 202, "{four}");
    assert_eq!(four["session"], "talk-4");
    let (code, refused) = second
        .post(
            "/sessions/talk-3/continue",
            &json!({"question": "Too soon?"}).to_string(),
        )
        .await;
    assert_eq!(code, 409, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("talk-4"),
        "{refused}"
    );
    second.until_done("talk-4").await;
    assert_eq!(conversation_turns(dir.path(), "talk").len(), 4);
    assert_eq!(second.stop().0, Some(0));
}
