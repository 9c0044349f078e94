//! The `/__sim/*` endpoints: the request log, the stats and the reset, read over HTTP the
//! way the bench and other processes read them.

use crate::common;

use common::{chat, fast, start, stream, vote_tool};
use conclave_sim::{DecisionKind, RequestRecord, SimStats};
use serde_json::json;

async fn get_json<T: serde::de::DeserializeOwned>(url: String) -> T {
    reqwest::get(url)
        .await
        .expect("request sent")
        .json()
        .await
        .expect("JSON body")
}

#[tokio::test]
async fn request_log_stats_and_reset_over_http() {
    let server = start(fast()).await;
    let root = format!("http://{}", server.addr());

    // Two turns one after the other: a chain of two on the critical path.
    stream(&server.base_url(), &chat("alpha", None)).await;
    stream(
        &server.base_url(),
        &chat("beta", Some(json!([vote_tool(&["agent1.1"])]))),
    )
    .await;

    let records: Vec<RequestRecord> = get_json(format!("{root}/__sim/requests")).await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].id, 1);
    assert_eq!(records[1].id, 2);
    assert_eq!(records[0].model, "alpha");
    assert_eq!(records[1].decision, DecisionKind::Vote);
    assert_eq!(records[1].vote_target.as_deref(), Some("agent1.1"));
    for record in &records {
        assert!(record.completed);
        assert!(record.stream);
        assert_eq!(record.fingerprint.len(), 16);
        assert!(record.request_bytes > 0);
        let first_byte = record.first_byte_ms.expect("first byte");
        let ended = record.ended_ms.expect("ended");
        assert!(record.started_ms <= first_byte && first_byte <= ended);
    }
    assert!(records[1].started_ms >= records[0].ended_ms.expect("ended"));
    assert_ne!(records[0].fingerprint, records[1].fingerprint);
    // The same log in-process, up to JSON's float rounding.
    let local = server.requests();
    assert_eq!(local.len(), records.len());
    for (remote, local) in records.iter().zip(&local) {
        assert_eq!(
            (remote.id, &remote.fingerprint),
            (local.id, &local.fingerprint)
        );
        assert!((remote.started_ms - local.started_ms).abs() < 1e-6);
    }

    let stats: SimStats = get_json(format!("{root}/__sim/stats")).await;
    assert_eq!(
        (stats.requests, stats.completed, stats.cancelled),
        (2, 2, 0)
    );
    assert_eq!(stats.critical_path_requests, 2);
    let durations: f64 = records.iter().filter_map(RequestRecord::duration_ms).sum();
    assert!((stats.critical_path_ms - durations).abs() < 1e-6);
    assert_eq!(stats.first_request_ms, Some(records[0].started_ms));
    assert_eq!(stats.last_end_ms, records[1].ended_ms);

    let reset = reqwest::Client::new()
        .post(format!("{root}/__sim/reset"))
        .send()
        .await
        .expect("reset sent");
    assert!(reset.status().is_success());
    assert!(server.requests().is_empty());
    assert_eq!(server.stats().requests, 0);

    // Ids are not reused after a reset: chatcmpl-sim-3 names one request only.
    let reply = stream(&server.base_url(), &chat("gamma", None)).await;
    assert_eq!(reply.chunks[0]["id"], "chatcmpl-sim-3");
    assert_eq!(server.requests()[0].id, 3);
    server.shutdown().await;
}
