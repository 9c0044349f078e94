//! The Anthropic Messages, OpenAI Responses and Gemini formats: event shapes, the policy
//! through each format's tool declarations, non-streaming bodies, error envelopes, and one
//! request log across formats.

use crate::common;

use common::{
    QUESTION, anthropic, anthropic_new_answer_tool, anthropic_vote_tool, body_of, chat, events,
    fast, flat_tool, gemini, gemini_stream_url, gemini_tools, new_answer_tool, post_to, responses,
    start, stream, vote_tool,
};
use conclave_sim::{DecisionKind, Wire};
use serde_json::{Value, json};

#[tokio::test]
async fn anthropic_streams_a_vote_as_one_tool_use_block() {
    let server = start(fast()).await;
    let tools = json!([
        anthropic_new_answer_tool(),
        anthropic_vote_tool(&["agent2.1", "agent1.1"])
    ]);
    let url = format!("{}/messages", server.base_url());
    let body = body_of(&url, &anthropic("claude-sim", Some(tools), true)).await;
    let events = events(&body);

    let names: Vec<&str> = events.iter().filter_map(|e| e.name.as_deref()).collect();
    assert_eq!(names.len(), events.len(), "every event is named");
    assert_eq!(
        names[..3],
        ["message_start", "content_block_start", "ping"],
        "{names:?}"
    );
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    for event in &events {
        assert_eq!(
            Some(event.json()["type"].as_str().unwrap_or("")),
            event.name.as_deref()
        );
    }
    let start = events[0].json();
    assert_eq!(start["message"]["id"], "msg_sim_1");
    assert_eq!(start["message"]["role"], "assistant");
    let input_tokens = start["message"]["usage"]["input_tokens"]
        .as_u64()
        .expect("input");
    assert!(input_tokens > 0);
    let block = &events[1].json()["content_block"];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "vote");
    assert_eq!(block["id"], "toolu_sim_1");

    let deltas: Vec<Value> = events
        .iter()
        .filter(|e| e.name.as_deref() == Some("content_block_delta"))
        .map(|e| e.json())
        .collect();
    assert_eq!(deltas.len(), 8);
    let arguments: String = deltas
        .iter()
        .map(|d| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"]
                .as_str()
                .expect("partial json")
                .to_owned()
        })
        .collect();
    let arguments: Value = serde_json::from_str(&arguments).expect("arguments are JSON");
    assert_eq!(arguments["agent_id"], "agent2.1");

    let delta = events[events.len() - 2].json();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["output_tokens"], 8);

    let record = &server.requests()[0];
    assert_eq!(record.wire, Wire::Anthropic);
    assert_eq!(record.decision, DecisionKind::Vote);
    assert_eq!(record.vote_target.as_deref(), Some("agent2.1"));
    assert_eq!(record.prompt_tokens, input_tokens);
    assert!(record.completed);
    server.shutdown().await;
}

#[tokio::test]
async fn the_same_question_gets_the_same_words_in_every_format() {
    let server = start(fast()).await;
    let base = server.base_url();
    let chat_text = stream(&base, &chat("alpha", None)).await.content;
    assert!(chat_text.starts_with("alpha answers:"), "{chat_text}");

    let anthropic_body =
        body_of(&format!("{base}/messages"), &anthropic("alpha", None, true)).await;
    let anthropic_events = events(&anthropic_body);
    let anthropic_text: String = anthropic_events
        .iter()
        .filter(|e| e.name.as_deref() == Some("content_block_delta"))
        .map(|e| {
            e.json()["delta"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(anthropic_text, chat_text);
    let stop = anthropic_events[anthropic_events.len() - 2].json();
    assert_eq!(stop["delta"]["stop_reason"], "end_turn");

    let responses_body = body_of(
        &format!("{base}/responses"),
        &responses("alpha", None, true),
    )
    .await;
    let responses_events = events(&responses_body);
    let responses_text: String = responses_events
        .iter()
        .filter(|e| e.name.as_deref() == Some("response.output_text.delta"))
        .map(|e| e.json()["delta"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(responses_text, chat_text);
    let completed = responses_events.last().expect("events").json();
    assert_eq!(completed["type"], "response.completed");
    assert_eq!(
        completed["response"]["output"][0]["content"][0]["text"],
        chat_text.as_str()
    );

    let gemini_body = body_of(
        &gemini_stream_url(&server.gemini_base_url(), "alpha"),
        &gemini(None),
    )
    .await;
    let gemini_text: String = events(&gemini_body)
        .iter()
        .map(|e| {
            e.json()["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(gemini_text, chat_text);

    let wires: Vec<Wire> = server.requests().iter().map(|r| r.wire).collect();
    assert_eq!(
        wires,
        [
            Wire::OpenAiChat,
            Wire::Anthropic,
            Wire::OpenAiResponses,
            Wire::Gemini
        ]
    );
    assert!(QUESTION.ends_with('?'));
    server.shutdown().await;
}

#[tokio::test]
async fn responses_streams_a_function_call_with_sequence_numbers() {
    let server = start(fast()).await;
    let tools = json!([
        flat_tool(&new_answer_tool()),
        flat_tool(&vote_tool(&["agent1.1"]))
    ]);
    let url = format!("{}/responses", server.base_url());
    let body = body_of(&url, &responses("gpt-sim:policy=answer", Some(tools), true)).await;
    let events = events(&body);

    let names: Vec<&str> = events.iter().filter_map(|e| e.name.as_deref()).collect();
    assert_eq!(
        names[..3],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added"
        ]
    );
    assert_eq!(
        names[names.len() - 3..],
        [
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let sequence: Vec<u64> = events
        .iter()
        .map(|e| {
            e.json()["sequence_number"]
                .as_u64()
                .expect("sequence number")
        })
        .collect();
    assert_eq!(sequence, (0..events.len() as u64).collect::<Vec<_>>());

    let created = events[0].json();
    assert_eq!(created["response"]["id"], "resp_sim_1");
    assert_eq!(created["response"]["status"], "in_progress");
    let added = &events[2].json()["item"];
    assert_eq!(added["type"], "function_call");
    assert_eq!(added["name"], "new_answer");
    assert_eq!(added["call_id"], "call_sim_1");
    let item_id = added["id"].as_str().expect("item id").to_owned();

    let arguments: String = events
        .iter()
        .filter(|e| e.name.as_deref() == Some("response.function_call_arguments.delta"))
        .map(|e| {
            let delta = e.json();
            assert_eq!(delta["item_id"], item_id.as_str());
            delta["delta"].as_str().expect("delta").to_owned()
        })
        .collect();
    let parsed: Value = serde_json::from_str(&arguments).expect("arguments are JSON");
    assert!(
        parsed["content"]
            .as_str()
            .is_some_and(|c| c.starts_with("gpt-sim answers:"))
    );

    let completed = events.last().expect("events").json();
    let response = &completed["response"];
    assert_eq!(response["status"], "completed");
    assert_eq!(response["output"][0]["arguments"], arguments.as_str());
    assert_eq!(response["usage"]["output_tokens"], 8);
    assert!(
        response["usage"]["input_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );

    let record = &server.requests()[0];
    assert_eq!(record.wire, Wire::OpenAiResponses);
    assert_eq!(record.decision, DecisionKind::NewAnswer);
    server.shutdown().await;
}

#[tokio::test]
async fn gemini_reads_options_from_the_url_and_sends_a_whole_function_call() {
    let server = start(fast()).await;
    let tools = gemini_tools(&[new_answer_tool(), vote_tool(&["agent3.1", "agent1.1"])]);
    let url = gemini_stream_url(&server.gemini_base_url(), "gemini-sim:tokens=5");
    let response = post_to(&url, &gemini(Some(tools))).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("body");
    assert!(body.contains("\r\n\r\n"), "Gemini frames records with CRLF");
    let chunks: Vec<Value> = events(&body).iter().map(common::Event::json).collect();
    assert_eq!(chunks.len(), 2, "the call, then the finish");

    let call = &chunks[0]["candidates"][0]["content"]["parts"][0]["functionCall"];
    assert_eq!(call["name"], "vote");
    assert_eq!(call["args"]["agent_id"], "agent3.1");
    assert_eq!(chunks[0]["candidates"][0]["content"]["role"], "model");
    let last = &chunks[1];
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 5);
    let prompt = last["usageMetadata"]["promptTokenCount"]
        .as_u64()
        .expect("prompt");
    assert_eq!(chunks[0]["usageMetadata"]["promptTokenCount"], prompt);

    let record = &server.requests()[0];
    assert_eq!(record.wire, Wire::Gemini);
    assert_eq!(record.model, "gemini-sim:tokens=5");
    assert_eq!(record.output_tokens, 5);
    assert!(record.completed && record.stream);
    server.shutdown().await;
}

#[tokio::test]
async fn gemini_is_served_under_the_openai_style_base_url_too() {
    let server = start(fast()).await;
    let url = gemini_stream_url(&server.base_url(), "g:tokens=3");
    let body = body_of(&url, &gemini(None)).await;
    let chunks = events(&body);
    // Three text pieces and the finish record.
    assert_eq!(chunks.len(), 4);
    assert_eq!(server.requests()[0].wire, Wire::Gemini);
    server.shutdown().await;
}

#[tokio::test]
async fn non_streaming_bodies_in_each_format() {
    let server = start(fast()).await;
    let base = server.base_url();

    let message: Value = post_to(
        &format!("{base}/messages"),
        &anthropic(
            "c",
            Some(json!([anthropic_vote_tool(&["agent1.1"])])),
            false,
        ),
    )
    .await
    .json()
    .await
    .expect("message JSON");
    assert_eq!(message["type"], "message");
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(message["content"][0]["type"], "tool_use");
    assert_eq!(message["content"][0]["input"]["agent_id"], "agent1.1");

    let response: Value = post_to(&format!("{base}/responses"), &responses("r", None, false))
        .await
        .json()
        .await
        .expect("response JSON");
    assert_eq!(response["object"], "response");
    assert_eq!(response["status"], "completed");
    assert_eq!(response["output"][0]["type"], "message");

    let generated: Value = post_to(
        &format!("{}/models/g:generateContent", server.gemini_base_url()),
        &gemini(Some(gemini_tools(&[new_answer_tool()]))),
    )
    .await
    .json()
    .await
    .expect("generateContent JSON");
    let part = &generated["candidates"][0]["content"]["parts"][0];
    assert_eq!(part["functionCall"]["name"], "new_answer");
    assert_eq!(generated["usageMetadata"]["candidatesTokenCount"], 8);

    let records = server.requests();
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r.completed && !r.stream));
    server.shutdown().await;
}

#[tokio::test]
async fn client_mistakes_get_each_formats_error_envelope() {
    let server = start(fast()).await;
    let base = server.base_url();
    let client = reqwest::Client::new();

    let bad_json = client
        .post(format!("{base}/messages"))
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .expect("sent");
    assert_eq!(bad_json.status(), 400);
    let body: Value = bad_json.json().await.expect("envelope");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let unknown_option = post_to(
        &gemini_stream_url(&server.gemini_base_url(), "g:tokenz=3"),
        &gemini(None),
    )
    .await;
    assert_eq!(unknown_option.status(), 400);
    let body: Value = unknown_option.json().await.expect("envelope");
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(body["error"]["code"], 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("tokenz")
    );

    let no_sse = post_to(
        &format!(
            "{}/models/g:streamGenerateContent",
            server.gemini_base_url()
        ),
        &gemini(None),
    )
    .await;
    assert_eq!(no_sse.status(), 400);

    let responses_bad = post_to(&format!("{base}/responses"), &json!({"input": "hi"})).await;
    assert_eq!(responses_bad.status(), 400);
    let body: Value = responses_bad.json().await.expect("envelope");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    assert!(server.requests().is_empty());
    assert_eq!(server.stats().rejected, 4);
    server.shutdown().await;
}

#[tokio::test]
async fn a_session_mixing_formats_has_one_critical_path() {
    let server = start(fast()).await;
    let base = server.base_url();
    // Three agents answer at once in three formats, then one votes: two rounds.
    let (chat_url, messages_url, gemini_url) = (
        format!("{base}/chat/completions"),
        format!("{base}/messages"),
        gemini_stream_url(&base, "c"),
    );
    let chat_body = chat("a", Some(json!([new_answer_tool()])));
    let messages_body = anthropic("b", Some(json!([anthropic_new_answer_tool()])), true);
    let gemini_body = gemini(Some(gemini_tools(&[new_answer_tool()])));
    let (a, b, c) = tokio::join!(
        body_of(&chat_url, &chat_body),
        body_of(&messages_url, &messages_body),
        body_of(&gemini_url, &gemini_body),
    );
    assert!(a.ends_with("data: [DONE]\n\n"));
    assert!(b.contains("message_stop"));
    assert!(c.contains("STOP"));
    body_of(
        &format!("{base}/responses"),
        &responses(
            "d",
            Some(json!([flat_tool(&vote_tool(&["agent1.1"]))])),
            true,
        ),
    )
    .await;

    let stats = server.stats();
    assert_eq!((stats.requests, stats.completed), (4, 4));
    assert_eq!(stats.critical_path_requests, 2);
    let decisions: Vec<DecisionKind> = server.requests().iter().map(|r| r.decision).collect();
    assert_eq!(
        decisions
            .iter()
            .filter(|d| **d == DecisionKind::NewAnswer)
            .count(),
        3
    );
    assert_eq!(decisions[3], DecisionKind::Vote);
    server.shutdown().await;
}
