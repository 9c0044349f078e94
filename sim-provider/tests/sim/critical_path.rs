//! `critical_path` on hand-made records: chains, overlaps, and requests that do not count.

use conclave_sim::{DecisionKind, RequestRecord, Wire, critical_path};

fn record(started_ms: f64, ended_ms: f64, completed: bool) -> RequestRecord {
    RequestRecord {
        id: 0,
        wire: Wire::OpenAiChat,
        model: "m".to_owned(),
        decision: DecisionKind::Text,
        vote_target: None,
        fingerprint: "0000000000000000".to_owned(),
        stream: true,
        started_ms,
        first_byte_ms: Some(started_ms),
        ended_ms: Some(ended_ms),
        completed,
        request_bytes: 100,
        prompt_tokens: 25,
        output_tokens: 40,
        fault: None,
        body: None,
    }
}

fn done(started_ms: f64, ended_ms: f64) -> RequestRecord {
    record(started_ms, ended_ms, true)
}

fn assert_path(records: &[RequestRecord], ms: f64, requests: usize) {
    let (got_ms, got_requests) = critical_path(records);
    assert!((got_ms - ms).abs() < 1e-9, "expected {ms} ms, got {got_ms}");
    assert_eq!(got_requests, requests);
}

#[test]
fn empty_log_has_an_empty_path() {
    assert_path(&[], 0.0, 0);
}

#[test]
fn a_sequential_chain_adds_up() {
    // Touching ends count: the next request may start the instant the previous one ended.
    let records = [done(0.0, 10.0), done(10.0, 25.0), done(30.0, 40.0)];
    assert_path(&records, 35.0, 3);
}

#[test]
fn overlapping_requests_count_once() {
    // Three agents at once, then one at a time: the parallel round costs its longest turn.
    let records = [
        done(0.0, 400.0),
        done(1.0, 410.0),
        done(2.0, 405.0),
        done(410.0, 810.0),
    ];
    assert_path(&records, 809.0, 2);
}

#[test]
fn picks_the_heaviest_chain_not_the_longest() {
    // Many short ones in a row (3 × 10 ms) lose to one long overlapping request (50 ms).
    let records = [
        done(0.0, 10.0),
        done(10.0, 20.0),
        done(20.0, 30.0),
        done(5.0, 55.0),
    ];
    assert_path(&records, 50.0, 1);
    // ... unless the long one can be chained too.
    let records = [
        done(0.0, 10.0),
        done(10.0, 20.0),
        done(20.0, 70.0),
        done(5.0, 55.0),
    ];
    assert_path(&records, 70.0, 3);
}

#[test]
fn incomplete_and_in_flight_requests_are_excluded() {
    let mut in_flight = done(0.0, 0.0);
    in_flight.ended_ms = None;
    in_flight.completed = false;
    let records = [
        done(0.0, 10.0),
        record(10.0, 1000.0, false), // cancelled: the session did not need it
        in_flight,
        done(20.0, 30.0),
    ];
    assert_path(&records, 20.0, 2);
}

#[test]
fn order_of_records_does_not_matter() {
    let mut records = vec![
        done(50.0, 60.0),
        done(0.0, 20.0),
        done(20.0, 50.0),
        done(15.0, 45.0),
    ];
    assert_path(&records, 60.0, 3);
    records.reverse();
    assert_path(&records, 60.0, 3);
}

#[test]
fn large_logs_are_fast() {
    // 100k requests in rounds of 10 parallel turns of 40 ms: 10k rounds chained.
    let records: Vec<RequestRecord> = (0..100_000)
        .map(|index| {
            let round = f64::from(index / 10);
            let start = round * 50.0 + f64::from(index % 10) * 0.1;
            done(
                start,
                round * 50.0 + 40.0 + f64::from(index % 10) * 0.1 + 1.0,
            )
        })
        .collect();
    let began = std::time::Instant::now();
    let (_, requests) = critical_path(&records);
    assert_eq!(requests, 10_000);
    assert!(began.elapsed() < std::time::Duration::from_secs(5));
}
