use conclave_agent::snapshot::capture::capture;
use conclave_protocol::config::SessionConfig;
use conclave_protocol::snapshot::SNAPSHOT_CHUNK_BYTES;

use super::*;

/// A config of two agents: the first with a workspace (limits as given), the second without.
fn config(max_files: u32, max_bytes: u64) -> SessionConfig {
    let yaml = "agents:\n  - id: a\n    backend: {type: openai, model: m, cwd: ws}\n  - id: b\n    backend: {type: openai, model: m}\n";
    let mut config = crate::config::load_str(yaml, "test", &|_| None)
        .expect("config loads")
        .config;
    let limits = &mut config.agents[0]
        .tools
        .workspace
        .as_mut()
        .expect("a workspace")
        .limits;
    limits.snapshot_max_files = max_files;
    limits.snapshot_max_bytes = max_bytes;
    config
}

/// A workspace with two files, captured.
fn captured(dir: &Path) -> conclave_agent::snapshot::Captured {
    let ws = dir.join("ws");
    fs::create_dir_all(ws.join("src")).unwrap();
    fs::write(ws.join("src/lib.rs"), vec![b'x'; SNAPSHOT_CHUNK_BYTES + 3]).unwrap();
    fs::write(ws.join("README"), b"read me").unwrap();
    capture(&ws, &WorkspaceLimits::default()).unwrap()
}

fn send(intake: &mut SnapshotIntake, agent: AgentIndex, turn: TurnId, data: &[u8]) {
    for (i, chunk) in data.chunks(SNAPSHOT_CHUNK_BYTES).enumerate() {
        intake.chunk(agent, turn, (i * SNAPSHOT_CHUNK_BYTES) as u64, chunk);
    }
}

#[test]
fn an_answer_snapshot_is_checked_stored_under_its_label_and_named_in_turns() {
    let dir = tempfile::tempdir().unwrap();
    let snap = captured(dir.path());
    let mut intake = SnapshotIntake::new(&config(10, 10_000_000), dir.path().join("store"));
    let turn = TurnId(3);
    intake.begin(0, turn, snap.manifest.clone()).unwrap();
    send(&mut intake, 0, turn, &snap.data);
    let manifest = intake.complete(0, turn).unwrap().expect("a snapshot");
    assert_eq!(*manifest, snap.manifest);
    let label = AnswerLabel::new(1, 1);
    let stored = intake.accept(0, turn, label).unwrap().expect("stored");
    assert_eq!(stored, dir.path().join("store/agent1.1"));
    assert_eq!(fs::read(stored.join("README")).unwrap(), b"read me");
    assert!(!dir.path().join("store/.incoming/0-3").exists());

    // Turns name it by label; an answer without a snapshot is left out.
    let answers = [
        LabeledAnswer {
            label,
            content: "x".into(),
        },
        LabeledAnswer {
            label: AnswerLabel::new(2, 1),
            content: "y".into(),
        },
    ];
    let named = intake.store().peer_snapshots(&answers);
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].label, label);

    // The gateway serves exactly the stored bytes, and only for the right digest.
    let mut served = Vec::new();
    serve(intake.store(), "agent1.1", &manifest.digest, |_, data| {
        served.extend(data);
        true
    })
    .unwrap();
    assert_eq!(served, snap.data);
    assert!(serve(intake.store(), "agent1.1", "0000", |_, _| true).is_err());
    assert!(serve(intake.store(), "../etc", &manifest.digest, |_, _| true).is_err());
}

#[test]
fn broken_or_oversized_snapshots_fail_the_answer_instead_of_half_copying() {
    let dir = tempfile::tempdir().unwrap();
    let snap = captured(dir.path());

    // Over the agent's own caps (the receiver enforces them too).
    let mut intake = SnapshotIntake::new(&config(1, 10_000_000), dir.path().join("s1"));
    let refused = intake
        .begin(0, TurnId(1), snap.manifest.clone())
        .unwrap_err();
    assert!(refused.contains("`snapshot_max_files`"), "{refused}");
    assert!(intake.complete(0, TurnId(1)).is_err());
    let mut intake = SnapshotIntake::new(&config(10, 100), dir.path().join("s2"));
    let refused = intake
        .begin(0, TurnId(1), snap.manifest.clone())
        .unwrap_err();
    assert!(refused.contains("`snapshot_max_bytes`"), "{refused}");
    // An agent without a workspace sends none.
    assert!(intake.begin(1, TurnId(1), snap.manifest.clone()).is_err());

    // A corrupted byte or a missing chunk: the answer fails, nothing is stored.
    let mut intake = SnapshotIntake::new(&config(10, 10_000_000), dir.path().join("s3"));
    let mut bad = snap.data.clone();
    bad[5] ^= 0xff;
    intake.begin(0, TurnId(2), snap.manifest.clone()).unwrap();
    send(&mut intake, 0, TurnId(2), &bad);
    let reason = intake.complete(0, TurnId(2)).unwrap_err();
    assert!(reason.contains("README"), "{reason}");
    intake.begin(0, TurnId(4), snap.manifest.clone()).unwrap();
    intake.chunk(0, TurnId(4), 0, &snap.data[..SNAPSHOT_CHUNK_BYTES]);
    let reason = intake.complete(0, TurnId(4)).unwrap_err();
    assert!(reason.contains("arrived"), "{reason}");
    assert!(intake.store().get(AnswerLabel::new(1, 1)).is_none());
}

#[test]
fn a_lost_agents_snapshot_in_flight_is_dropped_and_described() {
    let dir = tempfile::tempdir().unwrap();
    let snap = captured(dir.path());
    let mut intake = SnapshotIntake::new(&config(10, 10_000_000), dir.path().join("store"));
    intake.begin(0, TurnId(7), snap.manifest.clone()).unwrap();
    intake.chunk(0, TurnId(7), 0, &snap.data[..SNAPSHOT_CHUNK_BYTES]);
    let dropped = intake.drop_incoming(0).expect("something was on its way");
    assert!(
        dropped.contains(&format!("{SNAPSHOT_CHUNK_BYTES} of")),
        "{dropped}"
    );
    assert!(!dir.path().join("store/.incoming/0-7").exists());
    // Its answer, should it still come, has no snapshot to claim.
    assert!(matches!(intake.complete(0, TurnId(7)), Ok(None)));
    assert!(intake.drop_incoming(0).is_none());
}

#[test]
fn restore_checks_current_snapshots_and_names_the_altered_file() {
    let dir = tempfile::tempdir().unwrap();
    let snap = captured(dir.path());
    let root = dir.path().join("store");
    let cfg = config(10, 10_000_000);
    let mut intake = SnapshotIntake::new(&cfg, root.clone());
    let label = AnswerLabel::new(1, 1);
    intake.begin(0, TurnId(1), snap.manifest.clone()).unwrap();
    send(&mut intake, 0, TurnId(1), &snap.data);
    intake.complete(0, TurnId(1)).unwrap();
    intake.accept(0, TurnId(1), label).unwrap();

    let accepted = vec![(label, 0, TurnId(1), snap.manifest.clone())];
    let mut fresh = SnapshotIntake::new(&cfg, root.clone());
    fresh.restore(&accepted, &[label]).unwrap();
    assert!(fresh.store().get(label).is_some());

    fs::write(root.join("agent1.1/README"), b"read ME").unwrap();
    let error = SnapshotIntake::new(&cfg, root.clone())
        .restore(&accepted, &[label])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("agent1.1") && error.contains("README"),
        "{error}"
    );
    // A superseded answer's snapshot is not checked (it is never shown again).
    SnapshotIntake::new(&cfg, root.clone())
        .restore(&accepted, &[])
        .unwrap();
    fs::remove_file(root.join("agent1.1/README")).unwrap();
    let error = SnapshotIntake::new(&cfg, root)
        .restore(&accepted, &[label])
        .unwrap_err()
        .to_string();
    assert!(error.contains("missing"), "{error}");
}
