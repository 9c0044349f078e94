//! A lost node's snapshot in flight is lost with its answer, through the real binaries
//! (`conclave::snapshots`, module docs).
//!
//! Two agents on two agent nodes, each with a workspace (`cwd: work`). Alpha's holds one small
//! file; beta's holds one 8 MiB file of incompressible bytes, so its answer's snapshot crosses
//! the link as 8 chunks, followed by the answer's `Decided` report. Beta's node joins through a
//! loopback relay that forwards its first 3 MiB and then stops reading from it, holding both
//! connections open: a partition in the middle of the snapshot (no byte of the `Decided` report
//! can pass), after which the orchestrator hears no more heartbeats from the node and loses it
//! at the deadline. The relay accepts one connection only, so the node cannot come back.
//! Then: the orchestrator had begun unpacking the snapshot (its partial file under
//! `<session>/snapshots/.incoming/` held bytes), the journal has `agent_lost` and, on the next
//! line, `snapshot_dropped` for beta, beta's answer is never received nor accepted and its file
//! is stored under no label, nothing is left in `.incoming/`, and the session ends in consensus
//! on alpha's answer.
//!
//! Why a relay rather than freezing the node (SIGSTOP) when the first bytes land on disk: the
//! orchestrator reads a link eagerly and decodes frames afterwards, so by the time one chunk is
//! on disk the node may have handed the whole stream, `Decided` included, to the orchestrator
//! (seen in about 1 run in 25 with a 32 MiB snapshot on a debug build); the cut has to be made
//! on the wire. The deadline is 3 s so that a loaded debug build still sees the first chunks
//! land on disk before the loss.
//!
//! The second test is the other side: a live node sending a large snapshot is not lost. A
//! node's heartbeats leave from the actor that also sends its reports, so they wait behind the
//! snapshot's chunks (seconds for 48 MiB on a debug build); both ends therefore count any frame
//! from the other as a sign of life, not only a heartbeat. Before that, this test lost beta
//! with a 1 s deadline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conclave_tests::{events_of, read_journal, wait_for_event};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::cluster::{DEADLINE, Setup, explain, stop_node, wait};
use crate::snapshots::{node_in, two_workspace_nodes};

const ALPHA_FILE: &str = "hello.txt";
const ALPHA_TEXT: &[u8] = b"alpha was here\n";
const BETA_FILE: &str = "big.bin";
/// Beta's snapshot: 8 chunks of 1 MiB.
const BETA_BYTES: usize = 8 << 20;
/// Bytes of beta's node that reach the orchestrator: what it sent before its answer (a few KB),
/// the snapshot's manifest and about 3 of its 8 chunks. Its `Decided` report comes after all 8.
const CUT_AFTER: u64 = 3 << 20;

/// `len` pseudo-random bytes (xorshift64*): incompressible, and quick to make.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Relays the first connection on `listener` to `upstream` (retrying until the orchestrator
/// listens), then accepts no other. Orchestrator → node: everything. Node → orchestrator: the
/// first `cut_after` bytes; then the relay stops reading from the node and writes nothing more
/// upstream, holding both connections open. `forwarded` counts the node's bytes passed on.
async fn relay(
    listener: TcpListener,
    upstream: String,
    cut_after: u64,
    forwarded: watch::Sender<u64>,
) {
    let Ok(Ok((node, _))) = tokio::time::timeout(Duration::from_secs(30), listener.accept()).await
    else {
        return;
    };
    drop(listener);
    let started = Instant::now();
    let orchestrator = loop {
        match TcpStream::connect(&upstream).await {
            Ok(stream) => break stream,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => return,
        }
    };
    let _ = node.set_nodelay(true);
    let _ = orchestrator.set_nodelay(true);
    let (mut from_node, mut to_node) = node.into_split();
    let (mut from_orchestrator, mut to_orchestrator) = orchestrator.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_orchestrator, &mut to_node).await;
        let _ = to_node.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut passed = 0u64;
    while passed < cut_after {
        let n = match from_node.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let take = n.min(usize::try_from(cut_after - passed).unwrap_or(usize::MAX));
        if to_orchestrator.write_all(&buf[..take]).await.is_err() {
            return;
        }
        passed += take as u64;
        forwarded.send_replace(passed);
    }
    // The partition: both connections stay open, nothing more crosses towards the
    // orchestrator. Ends with the test's runtime.
    let _held = (from_node, to_orchestrator);
    std::future::pending::<()>().await;
}

/// Beta's file being unpacked under `incoming`, and how many of its bytes are there, once
/// there are some.
fn partial_file(incoming: &Path) -> Option<(PathBuf, u64)> {
    std::fs::read_dir(incoming)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join(BETA_FILE))
        .find_map(|file| {
            let len = std::fs::metadata(&file).ok()?.len();
            (len > 0).then_some((file, len))
        })
}

/// Every file under `dir`, recursively (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lost_while_its_snapshot_is_in_flight_loses_the_answer_and_its_bytes() {
    let setup = Setup::new().await;
    let big = noise(BETA_BYTES);
    let (config, home_a, home_b) =
        two_workspace_nodes(&setup, [(ALPHA_FILE, ALPHA_TEXT), (BETA_FILE, &big)]);
    // See the module docs for why 3 s.
    let heartbeat = [
        "--heartbeat-interval-ms",
        "250",
        "--heartbeat-deadline-ms",
        "3000",
    ];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = listener.local_addr().unwrap().to_string();
    let (forwarded_tx, forwarded) = watch::channel(0u64);
    tokio::spawn(relay(listener, setup.join(), CUT_AFTER, forwarded_tx));

    let orchestrator = setup.orchestrator(&config, "lost-snap", &heartbeat);
    let node_a = node_in(&setup, "node-a", &home_a, &setup.join(), &heartbeat);
    let node_b = node_in(&setup, "node-b", &home_b, &relay_addr, &heartbeat);

    // Nothing below asserts until every process is stopped.
    let session = setup.session_dir("lost-snap");
    let incoming = session.join("snapshots").join(".incoming");
    let began = Instant::now();
    let (watched, dir) = (incoming.clone(), session.clone());
    let (partial, lost) = tokio::task::spawn_blocking(move || {
        // The partial snapshot exists from a moment after the cut until the loss, seconds.
        let deadline = Duration::from_secs(60);
        let started = Instant::now();
        let partial = loop {
            if let Some(found) = partial_file(&watched) {
                break Some((found, started.elapsed()));
            }
            if started.elapsed() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let lost = wait_for_event(&dir, "agent_lost", Duration::from_secs(20), |e| {
            e["agent"] == "beta"
        });
        (partial, lost)
    })
    .await
    .unwrap();
    let lost_at = began.elapsed();
    let run = wait(orchestrator, DEADLINE).await;
    let node_b_run = stop_node(node_b).await;
    let node_a_run = stop_node(node_a).await;
    let forwarded = *forwarded.borrow();

    let ((partial_path, partial_len), seen_at) = partial.unwrap_or_else(|| {
        panic!(
            "beta's snapshot never began to arrive ({forwarded} bytes of node-b relayed): {}\nnode-b: {}",
            explain(&run),
            explain(&node_b_run)
        )
    });
    eprintln!(
        "relayed {forwarded} bytes of node-b; {partial_len} of {BETA_BYTES} bytes in {} at \
         {seen_at:?}; beta lost by {lost_at:?}; orchestrator ran {:?}",
        partial_path.display(),
        run.elapsed
    );
    assert_eq!(forwarded, CUT_AFTER, "the relay did not cut the link");
    assert!(
        lost.is_some(),
        "beta was never lost: {}\nnode-b: {}",
        explain(&run),
        explain(&node_b_run)
    );
    assert_eq!(run.code, Some(0), "{}", explain(&run));
    assert_eq!(node_a_run.code, Some(0), "{}", explain(&node_a_run));

    let journal = read_journal(&session).unwrap();
    let of_beta = |kind: &str| -> Vec<&Value> {
        events_of(&journal, kind)
            .into_iter()
            .filter(|e| e["agent"] == "beta")
            .collect()
    };

    // 1. The session ends in consensus on alpha's answer.
    let last = journal.last().expect("an empty journal");
    assert_eq!(last["type"], "session_ended", "{last}");
    assert_eq!(last["reason"], "consensus", "{last}");
    let finals = events_of(&journal, "final_answer");
    assert_eq!(finals.len(), 1, "{finals:#?}");
    assert_eq!(finals[0]["winner"], "alpha", "{}", finals[0]);
    assert_eq!(finals[0]["presented_by"], "alpha", "{}", finals[0]);
    let accepted = events_of(&journal, "answer_accepted");
    let alpha_answer = accepted
        .iter()
        .find(|e| e["agent"] == "alpha" && e["label"] == finals[0]["label"])
        .unwrap_or_else(|| panic!("the final answer is no answer of alpha's: {journal:#?}"));

    // 2. Beta was lost, and its snapshot in flight was dropped for that reason, on the line
    //    after the loss.
    let lost = of_beta("agent_lost");
    assert_eq!(lost.len(), 1, "{lost:#?}");
    assert!(
        lost[0]["reason"].as_str().unwrap().contains("no heartbeat"),
        "{}",
        lost[0]
    );
    let dropped = of_beta("snapshot_dropped");
    assert_eq!(dropped.len(), 1, "{journal:#?}");
    let reason = dropped[0]["reason"].as_str().unwrap();
    eprintln!("journaled: {reason}");
    assert!(reason.contains("the agent was lost"), "{reason}");
    assert!(
        reason.contains(&format!("of {BETA_BYTES} bytes received")),
        "not the partial snapshot: {reason}"
    );
    let at = |event: &Value| journal.iter().position(|e| e == event).unwrap();
    assert_eq!(at(dropped[0]), at(lost[0]) + 1, "{journal:#?}");

    // 3. Beta's answer was never received nor accepted, and no stored snapshot holds its file.
    assert!(of_beta("answer_accepted").is_empty(), "{journal:#?}");
    let answers: Vec<_> = of_beta("decision_received")
        .into_iter()
        .filter(|e| e["decision"]["NewAnswer"].is_object())
        .collect();
    assert!(answers.is_empty(), "beta's answer arrived: {answers:#?}");
    assert_eq!(last["answers"], accepted.len(), "{last}");
    let stored = files_under(&session.join("snapshots"));
    assert!(
        stored.iter().all(|f| f.file_name().unwrap() != BETA_FILE),
        "beta's file is stored: {stored:?}"
    );
    // Alpha's is, under its label.
    assert_eq!(
        std::fs::read(
            session
                .join("snapshots")
                .join(alpha_answer["label"].as_str().unwrap())
                .join(ALPHA_FILE)
        )
        .unwrap(),
        ALPHA_TEXT
    );

    // 4. Nothing half-copied is left behind.
    assert!(
        files_under(&incoming).is_empty() && !partial_path.exists(),
        "left in {}: {:?}",
        incoming.display(),
        files_under(&incoming)
    );
    setup.sim.shutdown().await;
}

/// Beta's snapshot in the second test: 48 chunks of 1 MiB, under the 64 MiB default cap.
const LARGE_BYTES: usize = 48 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_node_sending_a_large_snapshot_is_not_lost() {
    let setup = Setup::new().await;
    let big = noise(LARGE_BYTES);
    let (config, home_a, home_b) =
        two_workspace_nodes(&setup, [(ALPHA_FILE, ALPHA_TEXT), (BETA_FILE, &big)]);
    // A deadline far shorter than the time the snapshot takes to cross, far longer than the
    // time one 1 MiB chunk takes.
    let heartbeat = [
        "--heartbeat-interval-ms",
        "100",
        "--heartbeat-deadline-ms",
        "1000",
    ];
    let orchestrator = setup.orchestrator(&config, "large-snap", &heartbeat);
    let node_a = node_in(&setup, "node-a", &home_a, &setup.join(), &heartbeat);
    let node_b = node_in(&setup, "node-b", &home_b, &setup.join(), &heartbeat);
    let run = wait(orchestrator, DEADLINE).await;
    let node_b_run = stop_node(node_b).await;
    let node_a_run = stop_node(node_a).await;
    assert_eq!(
        run.code,
        Some(0),
        "{}\nnode-b: {}",
        explain(&run),
        explain(&node_b_run)
    );
    assert_eq!(node_a_run.code, Some(0), "{}", explain(&node_a_run));
    assert_eq!(node_b_run.code, Some(0), "{}", explain(&node_b_run));

    let session = setup.session_dir("large-snap");
    let journal = read_journal(&session).unwrap();
    let lost = events_of(&journal, "agent_lost");
    assert!(
        lost.is_empty(),
        "a live node was lost: {lost:#?}\norchestrator: {}\nnode-b: {}",
        explain(&run),
        explain(&node_b_run)
    );
    assert!(
        events_of(&journal, "snapshot_dropped").is_empty(),
        "{journal:#?}"
    );
    // Beta's answer arrived with its whole snapshot, stored under its label.
    let beta_answer = events_of(&journal, "answer_accepted")
        .into_iter()
        .find(|e| e["agent"] == "beta")
        .unwrap_or_else(|| panic!("beta's answer was not accepted: {journal:#?}"));
    let stored = session
        .join("snapshots")
        .join(beta_answer["label"].as_str().unwrap())
        .join(BETA_FILE);
    let bytes =
        std::fs::read(&stored).unwrap_or_else(|e| panic!("cannot read {}: {e}", stored.display()));
    assert!(bytes == big, "the stored snapshot differs from beta's file");
    setup.sim.shutdown().await;
}
