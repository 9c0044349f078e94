//! Failure paths of the OpenAI Chat Completions backend over real HTTP: error statuses and
//! their retry hints, refused connections, connections broken mid-body, truncated and
//! malformed streams, and a missing API key.

use crate::common;

use std::time::Duration;

use common::{FakeServer, Scripted, client, hello, keyless_backend, run, spec};
use conclave_agent::providers::retry::RetryPolicy;
use conclave_agent::providers::{Backend, ProviderError};

const NOT_FOUND: &str = r#"{"error":{"message":"The model `llama-9000` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;

fn groq_backend(base_url: &str) -> Backend {
    Backend::new(
        &spec(base_url, "groq", Some("GROQ_API_KEY")),
        client(),
        &|_| Some("gsk-test".to_owned()),
    )
    .expect("backend")
}

#[tokio::test]
async fn not_found_with_a_json_envelope_is_a_readable_http_error() {
    // Served as text/event-stream, as some hosts do: the status must be checked first.
    let server = FakeServer::start(Scripted::new(404, "text/event-stream", NOT_FOUND)).await;
    let error = groq_backend(&server.base_url)
        .stream(&hello())
        .await
        .err()
        .expect("a 404 fails the call");
    let message = error.to_string();
    assert!(
        matches!(&error, ProviderError::Http { status: 404, body, .. } if body.contains("model_not_found")),
        "{error:?}"
    );
    assert!(
        message.starts_with(
            "HTTP 404 from groq: The model `llama-9000` does not exist or you do not have access to it."
        ),
        "{message}"
    );
    assert!(!message.contains("gsk-test"));
    assert_eq!(RetryPolicy::default().delay_for(0, &error), None);
}

#[tokio::test]
async fn rate_limits_carry_the_retry_headers() {
    let body = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
    let cases = [
        (
            Scripted::new(429, "application/json", body).header("retry-after", "2"),
            Some(Duration::from_secs(2)),
            None,
        ),
        (
            Scripted::new(429, "application/json", body)
                .header("retry-after-ms", "1500")
                .header("retry-after", "2"),
            Some(Duration::from_millis(1500)),
            None,
        ),
        (
            Scripted::new(503, "text/plain", "overloaded").header("x-should-retry", "false"),
            None,
            Some(false),
        ),
    ];
    for (script, want_delay, want_should_retry) in cases {
        let server = FakeServer::start(script).await;
        let error = keyless_backend(&server.base_url)
            .stream(&hello())
            .await
            .err()
            .expect("an error status fails the call");
        let ProviderError::Http {
            retry_after,
            should_retry,
            ..
        } = &error
        else {
            panic!("expected Http, got {error:?}");
        };
        assert_eq!(*retry_after, want_delay, "{error:?}");
        assert_eq!(*should_retry, want_should_retry, "{error:?}");
        let delay = RetryPolicy::default().delay_for(0, &error);
        match want_should_retry {
            Some(false) => assert_eq!(delay, None),
            _ => assert_eq!(delay, want_delay),
        }
    }
}

#[tokio::test]
async fn an_http_date_retry_after_is_parsed() {
    let in_ten = std::time::SystemTime::now() + Duration::from_secs(10);
    let script = Scripted::new(429, "application/json", "{}")
        .header("retry-after", &httpdate::fmt_http_date(in_ten));
    let server = FakeServer::start(script).await;
    let error = keyless_backend(&server.base_url)
        .stream(&hello())
        .await
        .err()
        .expect("429 fails the call");
    let Some(ProviderError::Http {
        retry_after: Some(delay),
        ..
    }) = Some(&error)
    else {
        panic!("expected a retry delay: {error:?}");
    };
    assert!(
        *delay > Duration::from_secs(7) && *delay <= Duration::from_secs(10),
        "{delay:?}"
    );
}

#[tokio::test]
async fn quota_exhaustion_is_not_retried() {
    let body = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    let server = FakeServer::start(Scripted::new(429, "application/json", body)).await;
    let error = keyless_backend(&server.base_url)
        .stream(&hello())
        .await
        .err()
        .expect("429 fails the call");
    assert_eq!(error.http_status(), Some(429));
    assert!(error.to_string().contains("billing"), "{error}");
    assert_eq!(RetryPolicy::default().delay_for(0, &error), None);
}

#[tokio::test]
async fn a_refused_connection_is_connect() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    let backend = keyless_backend(&format!("http://{address}/v1"));
    let error = backend
        .stream(&hello())
        .await
        .err()
        .expect("nobody listens");
    let ProviderError::Connect(message) = &error else {
        panic!("expected Connect, got {error:?}");
    };
    assert!(message.contains("could not reach"), "{message}");
    assert!(message.contains(&address.to_string()), "{message}");
    assert!(RetryPolicy::default().delay_for(0, &error).is_some());
}

#[tokio::test]
async fn a_connection_broken_mid_body_is_connect() {
    let mut script = Scripted::sse(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n".to_owned(),
    );
    script.break_after_body = true;
    let server = FakeServer::start(script).await;
    let (output, error) = run(&keyless_backend(&server.base_url), &hello())
        .await
        .expect("the stream starts");
    assert_eq!(output.text, "Hel");
    assert!(
        matches!(error, Some(ProviderError::Connect(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_stream_without_done_or_finish_reason_is_truncated() {
    let body = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"function\":{\"name\":\"f\",\"arguments\":\"{\"}}]}}]}\n\n",
    );
    let server = FakeServer::start(Scripted::sse(body)).await;
    let (output, error) = run(&keyless_backend(&server.base_url), &hello())
        .await
        .expect("the stream starts");
    assert_eq!(output.text, "Hello");
    assert!(
        output.tool_calls.is_empty(),
        "an unfinished call is never complete"
    );
    assert!(matches!(error, Some(ProviderError::Truncated)), "{error:?}");
}

#[tokio::test]
async fn a_data_line_that_is_not_json_is_malformed() {
    let body = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"never\"}}]}\n\n",
        "data: [DONE]\n\n",
    );
    let server = FakeServer::start(Scripted::sse(body)).await;
    let (output, error) = run(&keyless_backend(&server.base_url), &hello())
        .await
        .expect("the stream starts");
    assert_eq!(output.text, "ok");
    let Some(ProviderError::Malformed(message)) = &error else {
        panic!("expected Malformed, got {error:?}");
    };
    assert!(message.contains("delta"), "{message}");
}

#[tokio::test]
async fn json_instead_of_a_stream_is_reported() {
    let body =
        r#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]}"#;
    let server = FakeServer::start(Scripted::new(200, "application/json", body)).await;
    let error = keyless_backend(&server.base_url)
        .stream(&hello())
        .await
        .err()
        .expect("a non-streamed answer is not accepted silently");
    assert!(matches!(error, ProviderError::Malformed(_)), "{error:?}");
}

#[tokio::test]
async fn a_missing_api_key_fails_before_any_request() {
    let server = FakeServer::start(Scripted::sse("data: [DONE]\n\n")).await;
    let result = Backend::new(
        &spec(&server.base_url, "openai", Some("OPENAI_API_KEY")),
        client(),
        &|_| None,
    );
    let error = result.expect_err("the key is required");
    assert!(
        matches!(&error, ProviderError::MissingApiKey { env_var, .. } if env_var == "OPENAI_API_KEY"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("OPENAI_API_KEY"), "{message}");
    assert!(message.contains("export OPENAI_API_KEY="), "{message}");
    assert!(server.received().is_empty());
    assert_eq!(RetryPolicy::default().delay_for(0, &error), None);
}
