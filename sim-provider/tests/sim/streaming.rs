//! The streaming wire format, per-model options, pacing, errors and cancellation.

use crate::common;

use std::time::{Duration, Instant};

use common::{chat, fast, new_answer_tool, post, start, stream, vote_tool};
use conclave_sim::SimConfig;
use futures::StreamExt as _;
use serde_json::{Value, json};

#[tokio::test]
async fn stream_has_openai_shape_usage_and_done() {
    let server = start(fast()).await;
    let tools = json!([vote_tool(&["agent1.1"])]);
    let response = post(&server.base_url(), &chat("alpha", Some(tools))).await;
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let reply = common::parse_sse(&response.text().await.expect("body"));

    assert!(reply.done_last, "data: [DONE] must close the stream");
    let id = reply.chunks[0]["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("chatcmpl-sim-"), "{id}");
    for chunk in &reply.chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id.as_str());
        assert_eq!(chunk["model"], "alpha");
    }
    // The first delta opens the call: index, id, type, name and empty arguments.
    let opening = &reply.chunks[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(opening["index"], 0);
    assert_eq!(opening["type"], "function");
    assert_eq!(opening["function"]["name"], "vote");
    assert_eq!(opening["function"]["arguments"], "");
    assert!(
        opening["id"]
            .as_str()
            .is_some_and(|call_id| call_id.starts_with("call_sim_"))
    );
    // Then one fragment per token.
    assert_eq!(reply.argument_pieces, 1 + 8);
    let arguments: Value = serde_json::from_str(&reply.arguments).expect("arguments are JSON");
    assert_eq!(arguments["agent_id"], "agent1.1");

    // The usage chunk comes last, with no choices.
    let last = reply.chunks.last().expect("chunks");
    assert_eq!(last["choices"], json!([]));
    let usage = reply.usage.expect("usage chunk");
    assert_eq!(usage["completion_tokens"], 8);
    let prompt_tokens = usage["prompt_tokens"].as_u64().expect("prompt tokens");
    assert!(prompt_tokens > 0);
    assert_eq!(usage["total_tokens"], prompt_tokens + 8);
    assert_eq!(server.requests()[0].prompt_tokens, prompt_tokens);
    server.shutdown().await;
}

#[tokio::test]
async fn no_usage_chunk_unless_asked() {
    let server = start(fast()).await;
    let mut body = chat("alpha", None);
    body.as_object_mut()
        .expect("object")
        .remove("stream_options");
    let reply = stream(&server.base_url(), &body).await;
    assert!(reply.usage.is_none());
    assert!(reply.done_last);
    assert!(
        reply
            .chunks
            .iter()
            .all(|chunk| chunk["choices"].as_array().is_some_and(|c| c.len() == 1))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn model_options_change_the_token_count() {
    let server = start(fast()).await;
    let short = stream(&server.base_url(), &chat("alpha:tokens=3", None)).await;
    assert_eq!(short.content_pieces, 3);
    assert_eq!(short.content.split_whitespace().count(), 4);
    assert_eq!(short.usage.expect("usage")["completion_tokens"], 3);

    let long = stream(
        &server.base_url(),
        &chat("alpha:tokens=25", Some(json!([new_answer_tool()]))),
    )
    .await;
    assert_eq!(long.argument_pieces, 1 + 25);
    assert_eq!(long.usage.expect("usage")["completion_tokens"], 25);

    let records = server.requests();
    assert_eq!(records[0].output_tokens, 3);
    assert_eq!(records[1].output_tokens, 25);
    assert_eq!(records[1].model, "alpha:tokens=25");
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_model_option_is_a_400_naming_it() {
    let server = start(fast()).await;
    let response = post(&server.base_url(), &chat("alpha:tokenz=3", None)).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("error envelope");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["code"].is_null());
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("tokenz"), "{message}");

    let bad_value = post(&server.base_url(), &chat("alpha:policy=maybe", None)).await;
    assert_eq!(bad_value.status(), 400);
    assert!(server.requests().is_empty());
    assert_eq!(server.stats().rejected, 2);
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_json_is_a_400_envelope() {
    let server = start(fast()).await;
    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", server.base_url()))
        .header("content-type", "application/json")
        .body("{\"model\": \"alpha\", \"messages\": [")
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("error envelope");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );

    let missing_model = post(&server.base_url(), &json!({"messages": []})).await;
    assert_eq!(missing_model.status(), 400);
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_route_is_an_openai_404() {
    let server = start(fast()).await;
    let response = reqwest::get(format!("{}/completions-typo", server.base_url()))
        .await
        .expect("request sent");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("error envelope");
    assert_eq!(body["error"]["code"], "unknown_url");

    let health: Value = reqwest::get(format!("http://{}/health", server.addr()))
        .await
        .expect("health")
        .json()
        .await
        .expect("health JSON");
    assert_eq!(health["status"], "ok");
    server.shutdown().await;
}

#[tokio::test]
async fn pacing_spreads_tokens_over_time() {
    let server = start(SimConfig::default()).await;
    let began = Instant::now();
    let reply = stream(
        &server.base_url(),
        &chat("slow:tokens=5,token_delay_ms=20", None),
    )
    .await;
    let elapsed = began.elapsed();
    assert_eq!(reply.content_pieces, 5);
    // Pieces at 0, 20, 40, 60, 80 ms.
    assert!(elapsed >= Duration::from_millis(80), "{elapsed:?}");

    let began = Instant::now();
    stream(
        &server.base_url(),
        &chat("late:tokens=2,token_delay_ms=10,first_byte_ms=100", None),
    )
    .await;
    let elapsed = began.elapsed();
    assert!(elapsed >= Duration::from_millis(110), "{elapsed:?}");

    let records = server.requests();
    let late = &records[1];
    let first_byte = late.first_byte_ms.expect("first byte") - late.started_ms;
    assert!(first_byte >= 100.0, "{first_byte}");
    server.shutdown().await;
}

#[tokio::test]
async fn server_defaults_apply_without_options() {
    let server = start(SimConfig {
        tokens: 4,
        token_delay: Duration::from_millis(15),
        first_byte_delay: Duration::ZERO,
    })
    .await;
    let began = Instant::now();
    let reply = stream(&server.base_url(), &chat("plain", None)).await;
    assert_eq!(reply.content_pieces, 4);
    assert!(began.elapsed() >= Duration::from_millis(45));
    server.shutdown().await;
}

#[tokio::test]
async fn client_leaving_mid_stream_is_recorded_as_not_completed() {
    let server = start(SimConfig::default()).await;
    let response = post(
        &server.base_url(),
        &chat("quitter:tokens=200,token_delay_ms=20", None),
    )
    .await;
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a first frame").expect("bytes");
    assert!(first.starts_with(b"data: "));
    drop(body);

    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let record = server.requests().remove(0);
        if record.ended_ms.is_some() {
            break record;
        }
        assert!(
            Instant::now() < deadline,
            "the disconnect was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!record.completed);
    assert!(record.first_byte_ms.is_some());
    assert!(record.output_tokens < 200, "{}", record.output_tokens);
    let stats = server.stats();
    assert_eq!((stats.cancelled, stats.completed), (1, 0));
    assert_eq!(stats.critical_path_requests, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn client_giving_up_on_a_non_streaming_request_is_recorded_as_not_completed() {
    let server = start(SimConfig::default()).await;
    let mut body = chat("patient:tokens=50,token_delay_ms=20", None);
    body["stream"] = json!(false);
    let gave_up = reqwest::Client::new()
        .post(format!("{}/chat/completions", server.base_url()))
        .timeout(Duration::from_millis(100))
        .json(&body)
        .send()
        .await;
    assert!(
        gave_up.is_err(),
        "the reply takes ~1 s, the client waits 0.1 s"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let record = server.requests().remove(0);
        if record.ended_ms.is_some() {
            break record;
        }
        assert!(
            Instant::now() < deadline,
            "the disconnect was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!record.completed);
    assert!(record.first_byte_ms.is_none());
    assert_eq!(record.output_tokens, 0);
    // Noticed at the disconnect, not when the reply would have been ready.
    let duration = record.duration_ms().expect("ended");
    assert!(duration < 900.0, "{duration}");
    server.shutdown().await;
}

#[tokio::test]
async fn many_concurrent_streams_all_complete() {
    let server = start(SimConfig {
        tokens: 10,
        token_delay: Duration::from_millis(5),
        first_byte_delay: Duration::ZERO,
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", server.base_url());
    let streams = (0..200).map(|index| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let body = chat(&format!("agent{index}"), Some(json!([new_answer_tool()])));
            let response = client.post(url).json(&body).send().await.expect("sent");
            common::parse_sse(&response.text().await.expect("body"))
        }
    });
    let replies = futures::future::join_all(streams).await;
    assert!(replies.iter().all(|reply| reply.done_last));
    let stats = server.stats();
    assert_eq!(
        (stats.requests, stats.completed, stats.in_flight),
        (200, 200, 0)
    );
    server.shutdown().await;
}
