//! The deterministic policy, observed over HTTP: which tool is called, with what arguments,
//! and what the request log says about it.

use crate::common;

use common::{chat, fast, new_answer_tool, post, start, stream, vote_tool};
use conclave_sim::DecisionKind;
use serde_json::{Value, json};

#[tokio::test]
async fn votes_for_the_first_enum_label() {
    let server = start(fast()).await;
    let tools = json!([new_answer_tool(), vote_tool(&["agent2.1", "agent1.1"])]);
    let reply = stream(&server.base_url(), &chat("alpha", Some(tools))).await;

    assert_eq!(reply.tool_name.as_deref(), Some("vote"));
    assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
    let arguments: Value = serde_json::from_str(&reply.arguments).expect("arguments are JSON");
    assert_eq!(arguments["agent_id"], "agent2.1");
    assert!(!arguments["reason"].as_str().unwrap_or("").is_empty());
    assert!(reply.content.is_empty());

    let records = server.requests();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].decision, DecisionKind::Vote);
    assert_eq!(records[0].vote_target.as_deref(), Some("agent2.1"));
    server.shutdown().await;
}

#[tokio::test]
async fn offers_an_answer_when_only_new_answer_is_offered() {
    let server = start(fast()).await;
    let reply = stream(
        &server.base_url(),
        &chat("alpha:tokens=6", Some(json!([new_answer_tool()]))),
    )
    .await;

    assert_eq!(reply.tool_name.as_deref(), Some("new_answer"));
    assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
    let arguments: Value = serde_json::from_str(&reply.arguments).expect("arguments are JSON");
    let content = arguments["content"].as_str().expect("content is a string");
    assert!(content.starts_with("alpha answers:"), "{content}");
    // "alpha answers:" is one piece, then one word per piece.
    assert_eq!(content.split_whitespace().count(), 7);
    assert_eq!(server.requests()[0].decision, DecisionKind::NewAnswer);
    server.shutdown().await;
}

#[tokio::test]
async fn answers_in_text_without_tools() {
    let server = start(fast()).await;
    let reply = stream(&server.base_url(), &chat("gamma", None)).await;

    assert_eq!(reply.role.as_deref(), Some("assistant"));
    assert!(
        reply.content.starts_with("gamma answers:"),
        "{}",
        reply.content
    );
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    assert!(reply.tool_name.is_none());
    assert_eq!(server.requests()[0].decision, DecisionKind::Text);
    server.shutdown().await;
}

#[tokio::test]
async fn model_policies_override_the_default() {
    let server = start(fast()).await;
    let tools = json!([new_answer_tool(), vote_tool(&["agent1.1"])]);
    let answer = stream(
        &server.base_url(),
        &chat("a:policy=answer", Some(tools.clone())),
    )
    .await;
    assert_eq!(answer.tool_name.as_deref(), Some("new_answer"));
    let text = stream(&server.base_url(), &chat("a:policy=text", Some(tools))).await;
    assert!(text.tool_name.is_none());
    assert!(!text.content.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn same_question_same_answer() {
    let server = start(fast()).await;
    let first = stream(&server.base_url(), &chat("beta", None)).await;
    let second = stream(&server.base_url(), &chat("beta", None)).await;
    let other = stream(&server.base_url(), &chat("delta", None)).await;
    assert_eq!(first.content, second.content);
    assert_ne!(first.content, other.content);

    let records = server.requests();
    assert_eq!(records[0].fingerprint, records[1].fingerprint);
    // The model is not part of the fingerprint: same conversation, same turn.
    assert_eq!(records[0].fingerprint, records[2].fingerprint);
    server.shutdown().await;
}

#[tokio::test]
async fn non_streaming_request_gets_one_completion_object() {
    let server = start(fast()).await;
    let mut body = chat("alpha", Some(json!([vote_tool(&["agent3.2"])])));
    body["stream"] = json!(false);
    let response = post(&server.base_url(), &body).await;
    assert_eq!(response.status(), 200);
    let completion: Value = response.json().await.expect("completion JSON");

    assert_eq!(completion["object"], "chat.completion");
    assert!(
        completion["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-sim-"))
    );
    let choice = &completion["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "vote");
    assert!(
        call["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("call_sim_"))
    );
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().expect("string"))
            .expect("arguments are JSON");
    assert_eq!(arguments["agent_id"], "agent3.2");
    assert_eq!(completion["usage"]["completion_tokens"], 8);

    let record = &server.requests()[0];
    assert!(record.completed);
    assert!(!record.stream);
    assert_eq!(record.output_tokens, 8);
    server.shutdown().await;
}

/// The same chat request with `user` as its last user message.
fn chat_saying(model: &str, tools: Option<Value>, user: &str) -> Value {
    let mut body = chat(model, tools);
    body["messages"][1]["content"] = json!(user);
    body
}

#[tokio::test]
async fn marked_policy_writes_a_decision_line_instead_of_calling_tools() {
    let server = start(fast()).await;
    let tools = json!([new_answer_tool(), vote_tool(&["agent1.1"])]);
    // No answers in the prompt: a marked new answer, even though tools are offered.
    let first = stream(
        &server.base_url(),
        &chat_saying(
            "m:policy=marked",
            Some(tools),
            "<CURRENT ANSWERS>\n(no answers yet)\n</CURRENT ANSWERS>",
        ),
    )
    .await;
    assert!(first.tool_name.is_none());
    assert!(
        first.content.contains("\nNEW ANSWER:\nm answers:"),
        "{}",
        first.content
    );
    // Answers in the prompt: a vote line for the first label shown.
    let second = stream(
        &server.base_url(),
        &chat_saying(
            "m:policy=marked",
            None,
            "<CURRENT ANSWERS>\n<agent3.2>\nx\n</agent3.2>\n<agent1.1>\ny\n</agent1.1>\n</CURRENT ANSWERS>",
        ),
    )
    .await;
    assert!(second.tool_name.is_none());
    let last_line = second.content.lines().last().unwrap_or_default();
    assert!(last_line.starts_with("VOTE: agent3.2 — "), "{last_line}");
    assert_eq!(server.requests()[1].decision, DecisionKind::Text);
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_label_policy_votes_for_a_label_not_offered_until_corrected() {
    let server = start(fast()).await;
    let tools = json!([new_answer_tool(), vote_tool(&["agent1.1"])]);
    let wrong = stream(
        &server.base_url(),
        &chat("w:policy=wrong_label", Some(tools.clone())),
    )
    .await;
    let arguments: Value = serde_json::from_str(&wrong.arguments).expect("arguments are JSON");
    assert_eq!(arguments["agent_id"], "agent99.1");
    let corrected = stream(
        &server.base_url(),
        &chat_saying(
            "w:policy=wrong_label",
            Some(tools),
            "Your turn was not accepted: `agent99.1` is not one of the current answers (agent1.1).",
        ),
    )
    .await;
    let arguments: Value = serde_json::from_str(&corrected.arguments).expect("arguments are JSON");
    assert_eq!(arguments["agent_id"], "agent1.1");
    server.shutdown().await;
}

#[tokio::test]
async fn broken_json_policy_sends_invalid_arguments_until_corrected() {
    let server = start(fast()).await;
    let tools = json!([new_answer_tool()]);
    let broken = stream(
        &server.base_url(),
        &chat("b:policy=broken_json", Some(tools.clone())),
    )
    .await;
    assert_eq!(broken.tool_name.as_deref(), Some("new_answer"));
    assert!(
        serde_json::from_str::<Value>(&broken.arguments).is_err(),
        "{}",
        broken.arguments
    );
    let corrected = stream(
        &server.base_url(),
        &chat_saying(
            "b:policy=broken_json",
            Some(tools),
            "Your turn was not accepted: the arguments of `new_answer` are not valid JSON.",
        ),
    )
    .await;
    let arguments: Value = serde_json::from_str(&corrected.arguments).expect("arguments are JSON");
    assert!(arguments["content"].as_str().is_some_and(|c| !c.is_empty()));
    server.shutdown().await;
}
