//! Shutdown: in-flight streams may finish within the grace period, are cut off after it,
//! and a stopped server accepts nothing more.

use crate::common;

use std::time::{Duration, Instant};

use common::{chat, fast, post, start};
use conclave_sim::SimConfig;

/// Waits until the server has sent the first byte of request 1.
async fn first_byte_sent(server: &conclave_sim::SimServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server
        .requests()
        .first()
        .is_none_or(|record| record.first_byte_ms.is_none())
    {
        assert!(Instant::now() < deadline, "the stream never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn in_flight_stream_finishes_within_the_grace_period() {
    let server = start(SimConfig::default()).await;
    let base_url = server.base_url();
    let client = tokio::spawn({
        let base_url = base_url.clone();
        async move {
            let response = post(&base_url, &chat("alpha:tokens=20,token_delay_ms=10", None)).await;
            common::parse_sse(&response.text().await.expect("whole body"))
        }
    });
    first_byte_sent(&server).await;
    server.shutdown().await;

    let reply = client.await.expect("client task");
    assert!(
        reply.done_last,
        "the stream was cut despite the grace period"
    );
    assert_eq!(reply.content_pieces, 20);
    let refused = reqwest::get(format!("{base_url}/models")).await;
    assert!(refused.is_err(), "a stopped server must not answer");
}

#[tokio::test]
async fn streams_outliving_the_grace_period_are_cut_off() {
    let server = start(SimConfig::default()).await;
    let base_url = server.base_url();
    let client = tokio::spawn(async move {
        let response = post(&base_url, &chat("long:tokens=1000,token_delay_ms=10", None)).await;
        // Either the body errors or it ends early; it must not run for 10 s.
        response.text().await.unwrap_or_default()
    });
    first_byte_sent(&server).await;
    let began = Instant::now();
    server.shutdown_within(Duration::from_millis(50)).await;
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );

    let body = tokio::time::timeout(Duration::from_secs(5), client)
        .await
        .expect("the client is released promptly")
        .expect("client task");
    assert!(!body.contains("[DONE]"));
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let server = start(fast()).await;
    let base_url = server.base_url();
    assert!(reqwest::get(format!("{base_url}/models")).await.is_ok());
    drop(server);
    // The abort is asynchronous: give the runtime a moment to run it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while reqwest::Client::new()
        .get(format!("{base_url}/models"))
        .header("connection", "close")
        .send()
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "still serving after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
