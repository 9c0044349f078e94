//! Fault injection: status faults with their envelopes and retry headers, `fault_times`
//! counting per model string, mid-stream faults in every format, and how the request log
//! records them.

use crate::common;

use std::time::{Duration, Instant, SystemTime};

use common::{
    anthropic, body_of, chat, events, fast, gemini, gemini_stream_url, post, post_to, responses,
    start,
};
use conclave_sim::{Fault, Wire};
use serde_json::Value;

fn header<'r>(response: &'r reqwest::Response, name: &str) -> Option<&'r str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn rate_limit_with_retry_after_ms_then_recovery() {
    let server = start(fast()).await;
    let model = "alpha:fault=429,fault_times=2,retry_after_ms=50";
    for attempt in 0..2 {
        let response = post(&server.base_url(), &chat(model, None)).await;
        assert_eq!(response.status(), 429, "attempt {attempt}");
        assert_eq!(header(&response, "retry-after-ms"), Some("50"));
        assert_eq!(header(&response, "retry-after"), None);
        let body: Value = response.json().await.expect("envelope");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    }
    let third = common::stream(&server.base_url(), &chat(model, None)).await;
    assert!(third.done_last);

    let records = server.requests();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].fault, Some(Fault::RateLimited));
    assert!(!records[0].completed && records[0].ended_ms.is_some());
    assert_eq!(records[2].fault, None);
    assert!(records[2].completed);
    let stats = server.stats();
    assert_eq!((stats.faulted, stats.cancelled, stats.completed), (2, 0, 1));
    assert_eq!(stats.critical_path_requests, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn retry_after_seconds_and_http_date() {
    let server = start(fast()).await;
    let seconds = post(&server.base_url(), &chat("a:fault=503,retry_after=3", None)).await;
    assert_eq!(seconds.status(), 503);
    assert_eq!(header(&seconds, "retry-after"), Some("3"));

    let dated = post(
        &server.base_url(),
        &chat("a:fault=429,retry_after_date=2", None),
    )
    .await;
    assert_eq!(dated.status(), 429);
    let date = header(&dated, "retry-after").expect("retry-after date");
    let at = httpdate::parse_http_date(date).expect("an HTTP date");
    let wait = at
        .duration_since(SystemTime::now())
        .expect("the date is in the future");
    assert!(
        wait > Duration::from_millis(1500) && wait <= Duration::from_secs(3),
        "{wait:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn status_faults_use_each_formats_envelope() {
    let server = start(fast()).await;
    let base = server.base_url();

    let overloaded = post_to(
        &format!("{base}/messages"),
        &anthropic("c:fault=529", None, true),
    )
    .await;
    assert_eq!(overloaded.status(), 529);
    let body: Value = overloaded.json().await.expect("envelope");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error");

    let unavailable = post_to(
        &gemini_stream_url(&base, "g:fault=503,retry_after=1"),
        &gemini(None),
    )
    .await;
    assert_eq!(unavailable.status(), 503);
    assert_eq!(header(&unavailable, "retry-after"), Some("1"));
    let body: Value = unavailable.json().await.expect("envelope");
    assert_eq!(body["error"]["status"], "UNAVAILABLE");
    assert_eq!(body["error"]["code"], 503);

    let quota = post_to(
        &format!("{base}/responses"),
        &responses("r:fault=quota", None, true),
    )
    .await;
    assert_eq!(quota.status(), 429);
    let body: Value = quota.json().await.expect("envelope");
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert_eq!(body["error"]["type"], "insufficient_quota");

    let internal = post(&base, &chat("o:fault=500", None)).await;
    assert_eq!(internal.status(), 500);
    let body: Value = internal.json().await.expect("envelope");
    assert_eq!(body["error"]["type"], "server_error");

    let faults: Vec<Option<Fault>> = server.requests().iter().map(|r| r.fault).collect();
    assert_eq!(
        faults,
        [
            Some(Fault::Overloaded),
            Some(Fault::Unavailable),
            Some(Fault::QuotaExhausted),
            Some(Fault::ServerError)
        ]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn fault_counts_are_per_model_string_across_formats_and_reset() {
    let server = start(fast()).await;
    let base = server.base_url();
    let model = "shared:fault=500,fault_times=1";
    assert_eq!(post(&base, &chat(model, None)).await.status(), 500);
    // The same model string through another format: the one fault is spent.
    assert_eq!(
        post_to(&format!("{base}/messages"), &anthropic(model, None, true))
            .await
            .status(),
        200
    );
    // Another model string has its own count.
    assert_eq!(
        post(&base, &chat("other:fault=500,fault_times=1", None))
            .await
            .status(),
        500
    );
    server.reset();
    assert_eq!(post(&base, &chat(model, None)).await.status(), 500);
    server.shutdown().await;
}

#[tokio::test]
async fn fault_companions_without_a_fault_are_refused() {
    let server = start(fast()).await;
    let response = post(&server.base_url(), &chat("a:fault_times=2", None)).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("envelope");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("fault_times"), "{message}");
    server.shutdown().await;
}

/// The error event of a `stream_error` after two pieces, in each format.
#[tokio::test]
async fn stream_error_in_every_format() {
    let server = start(fast()).await;
    let base = server.base_url();
    let model = "e:tokens=6,fault=stream_error,stall_after=2";

    let chat_events =
        events(&body_of(&format!("{base}/chat/completions"), &chat(model, None)).await);
    assert_eq!(chat_events.len(), 3);
    let error = chat_events[2].json();
    assert_eq!(error["error"]["type"], "server_error");
    assert!(chat_events.iter().all(|e| e.data != "[DONE]"));

    let anthropic_events =
        events(&body_of(&format!("{base}/messages"), &anthropic(model, None, true)).await);
    let last = anthropic_events.last().expect("events");
    assert_eq!(last.name.as_deref(), Some("error"));
    assert_eq!(last.json()["error"]["type"], "overloaded_error");
    let deltas = anthropic_events
        .iter()
        .filter(|e| e.name.as_deref() == Some("content_block_delta"))
        .count();
    assert_eq!(deltas, 2);

    let responses_events =
        events(&body_of(&format!("{base}/responses"), &responses(model, None, true)).await);
    let names: Vec<&str> = responses_events
        .iter()
        .filter_map(|e| e.name.as_deref())
        .collect();
    assert_eq!(names[names.len() - 2..], ["error", "response.failed"]);
    assert_eq!(
        responses_events[names.len() - 2].json()["code"],
        "server_error"
    );

    let gemini_events = events(&body_of(&gemini_stream_url(&base, model), &gemini(None)).await);
    assert_eq!(gemini_events.len(), 3);
    assert_eq!(gemini_events[2].json()["error"]["code"], 503);

    let records = server.requests();
    assert_eq!(records.len(), 4);
    for record in &records {
        assert_eq!(record.fault, Some(Fault::StreamError));
        assert!(!record.completed);
        assert_eq!(record.output_tokens, 2);
        assert!(record.first_byte_ms.is_some());
    }
    assert_eq!(server.stats().cancelled, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn truncate_ends_without_the_terminal_event() {
    let server = start(fast()).await;
    let base = server.base_url();
    let model = "t:tokens=6,fault=truncate,stall_after=6";

    let body = body_of(&format!("{base}/chat/completions"), &chat(model, None)).await;
    let chat_events = events(&body);
    // Every piece, then nothing: no finish reason, no usage, no [DONE].
    assert_eq!(chat_events.len(), 6);
    assert!(chat_events.iter().all(|e| e.data != "[DONE]"));
    assert!(
        chat_events
            .iter()
            .all(|e| e.json()["choices"][0]["finish_reason"].is_null())
    );

    let anthropic_body = body_of(&format!("{base}/messages"), &anthropic(model, None, true)).await;
    assert!(!anthropic_body.contains("message_stop"));
    assert!(!anthropic_body.contains("message_delta"));

    let gemini_body = body_of(&gemini_stream_url(&base, model), &gemini(None)).await;
    assert!(!gemini_body.contains("finishReason"));

    assert!(
        server
            .requests()
            .iter()
            .all(|r| !r.completed && r.output_tokens == 6)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_sends_one_bad_line_and_goes_on() {
    let server = start(fast()).await;
    let base = server.base_url();
    let body = body_of(
        &format!("{base}/chat/completions"),
        &chat("m:tokens=4,fault=malformed,stall_after=1", None),
    )
    .await;
    let chat_events = events(&body);
    let bad: Vec<usize> = chat_events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.data != "[DONE]" && serde_json::from_str::<Value>(&e.data).is_err())
        .map(|(index, _)| index)
        .collect();
    assert_eq!(bad, [1], "exactly the second event is not JSON");
    assert_eq!(chat_events.last().map(|e| e.data.as_str()), Some("[DONE]"));

    let gemini_body = body_of(
        &gemini_stream_url(&base, "m:tokens=4,fault=malformed"),
        &gemini(None),
    )
    .await;
    assert!(gemini_body.contains("this is not JSON\r\n\r\n"));
    assert!(gemini_body.contains("finishReason"));

    let records = server.requests();
    assert!(
        records
            .iter()
            .all(|r| r.completed && r.fault == Some(Fault::Malformed))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn reset_aborts_the_connection_mid_body() {
    let server = start(fast()).await;
    for (url, body) in [
        (
            format!("{}/chat/completions", server.base_url()),
            chat("r:tokens=6,fault=reset,stall_after=3", None),
        ),
        (
            format!("{}/messages", server.base_url()),
            anthropic("r:tokens=6,fault=reset,stall_after=3", None, true),
        ),
    ] {
        let response = post_to(&url, &body).await;
        assert_eq!(response.status(), 200);
        let error = response.text().await.expect_err("the body must break");
        assert!(error.is_body() || error.is_decode(), "{error:?}");
    }
    let records = server.requests();
    assert!(
        records
            .iter()
            .all(|r| !r.completed && r.fault == Some(Fault::Reset))
    );
    assert!(records.iter().all(|r| r.output_tokens == 3));
    // A non-streaming request is reset too (before or after its headers left: either way
    // the client sees a broken connection, never a body).
    let mut plain = chat("r:fault=reset", None);
    plain["stream"] = Value::Bool(false);
    let outcome = reqwest::Client::new()
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&plain)
        .send()
        .await;
    match outcome {
        Ok(response) => assert!(response.text().await.is_err()),
        Err(error) => assert!(error.is_request() || error.is_connect(), "{error:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn stall_goes_quiet_until_the_client_leaves() {
    let server = start(fast()).await;
    let mut response = post(
        &server.base_url(),
        &chat("s:tokens=6,fault=stall,stall_after=2", None),
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut received = String::new();
    let quiet = loop {
        match tokio::time::timeout(Duration::from_millis(300), response.chunk()).await {
            Ok(Ok(Some(bytes))) => received.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(other) => panic!("the stream must stay open, got {other:?}"),
            Err(_) => break true,
        }
    };
    assert!(quiet);
    assert_eq!(events(&received).len(), 2, "two pieces, then silence");
    drop(response);
    // The guard records the departure once hyper notices it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.requests()[0].ended_ms.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let record = &server.requests()[0];
    assert_eq!(record.fault, Some(Fault::Stall));
    assert!(record.ended_ms.is_some() && !record.completed);
    assert_eq!(server.stats().cancelled, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn slow_first_byte_holds_the_headers() {
    let server = start(fast()).await;
    let started = Instant::now();
    let response = post_to(
        &format!("{}/responses", server.base_url()),
        &responses("slow:fault=slow_first_byte,first_byte_ms=200", None, true),
    )
    .await;
    let headers_after = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(
        headers_after >= Duration::from_millis(200),
        "{headers_after:?}"
    );
    let body = response.text().await.expect("body");
    assert!(body.contains("response.completed"));
    let record = &server.requests()[0];
    assert!(record.completed);
    assert_eq!(record.fault, Some(Fault::SlowFirstByte));
    assert_eq!(record.wire, Wire::OpenAiResponses);
    server.shutdown().await;
}

#[tokio::test]
async fn non_streaming_requests_meet_mid_stream_faults_on_the_whole_body() {
    let server = start(fast()).await;
    let mut truncated = chat("n:fault=truncate", None);
    truncated["stream"] = Value::Bool(false);
    let response = post(&server.base_url(), &truncated).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    assert!(text.starts_with('{'));

    let response = post_to(
        &format!("{}/messages", server.base_url()),
        &anthropic("n:fault=stream_error", None, false),
    )
    .await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.expect("envelope");
    assert_eq!(body["error"]["type"], "api_error");
    server.shutdown().await;
}
