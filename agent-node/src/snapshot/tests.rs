use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use conclave_protocol::AnswerLabel;
use conclave_protocol::snapshot::{PeerSnapshot, SNAPSHOT_CHUNK_BYTES, sha256_hex};
use conclave_protocol::tools::WorkspaceLimits;

use super::capture::capture;
use super::peers::{Shown, sync_peers};
use super::unpack::{Unpacker, read_chunks, verify_dir};
use super::*;

fn limits(files: u32, bytes: u64) -> WorkspaceLimits {
    WorkspaceLimits {
        snapshot_max_files: files,
        snapshot_max_bytes: bytes,
        ..WorkspaceLimits::default()
    }
}

fn write(root: &Path, path: &str, data: &[u8]) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn capture_lists_every_file_with_its_hash_and_skips_symlinks_visibly() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.txt", b"bee");
    write(dir.path(), "src/main.rs", b"fn main() {}\n");
    write(dir.path(), "empty", b"");
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
    let captured = capture(dir.path(), &WorkspaceLimits::default()).unwrap();
    let manifest = &captured.manifest;
    let paths: Vec<_> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["b.txt", "empty", "src/main.rs"]);
    assert_eq!(manifest.files[0].sha256, sha256_hex(b"bee"));
    assert_eq!(manifest.files[2].size, 13);
    assert_eq!(manifest.total_bytes, 16);
    assert_eq!(captured.data, b"beefn main() {}\n");
    assert_eq!(manifest.skipped.len(), 1);
    assert_eq!(manifest.skipped[0].path, "link");
    assert!(manifest.skipped[0].reason.contains("not followed"));
    manifest.check().unwrap();
    // Same files, same digest; a changed byte changes it.
    let again = capture(dir.path(), &WorkspaceLimits::default()).unwrap();
    assert_eq!(again.manifest.digest, manifest.digest);
    write(dir.path(), "b.txt", b"bed");
    let changed = capture(dir.path(), &WorkspaceLimits::default()).unwrap();
    assert_ne!(changed.manifest.digest, manifest.digest);
}

#[test]
fn capture_over_a_limit_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..5 {
        write(dir.path(), &format!("f{i}"), &[b'x'; 10]);
    }
    let error = capture(dir.path(), &limits(4, 1_000)).unwrap_err();
    assert!(matches!(error, SnapshotError::TooManyFiles { limit: 4 }));
    assert!(
        error.to_string().contains("`snapshot_max_files`"),
        "{error}"
    );
    let error = capture(dir.path(), &limits(10, 49)).unwrap_err();
    assert!(matches!(error, SnapshotError::TooLarge { limit: 49, .. }));
    assert!(
        error.to_string().contains("`snapshot_max_bytes`"),
        "{error}"
    );
    // Exactly at the limits is fine.
    let captured = capture(dir.path(), &limits(5, 50)).unwrap();
    assert_eq!(captured.manifest.files.len(), 5);
}

#[test]
fn unpacking_checks_order_and_hashes() {
    let source = tempfile::tempdir().unwrap();
    write(
        source.path(),
        "a.txt",
        &vec![7u8; SNAPSHOT_CHUNK_BYTES + 10],
    );
    write(source.path(), "z/empty", b"");
    write(source.path(), "z/b.txt", b"hello");
    let captured = capture(source.path(), &WorkspaceLimits::default()).unwrap();
    let manifest = Arc::new(captured.manifest.clone());
    let out = tempfile::tempdir().unwrap();

    // Chunks from a stored copy arrive in order and rebuild it exactly.
    let mut chunks = Vec::new();
    read_chunks(source.path(), &manifest, |offset, data| {
        chunks.push((offset, data));
        true
    })
    .unwrap();
    assert_eq!(chunks.len(), 2);
    let mut unpacker = Unpacker::start(out.path().join("ok"), manifest.clone()).unwrap();
    for (offset, data) in &chunks {
        unpacker.push(*offset, data).unwrap();
    }
    let dir = unpacker.finish().unwrap();
    verify_dir(&dir, &manifest).unwrap();
    assert_eq!(fs::read(dir.join("z/b.txt")).unwrap(), b"hello");
    assert!(dir.join("z/empty").is_file());

    // A chunk out of order is refused.
    let mut unpacker = Unpacker::start(out.path().join("order"), manifest.clone()).unwrap();
    assert!(matches!(
        unpacker.push(5, &chunks[0].1),
        Err(SnapshotError::Stream(_))
    ));

    // A flipped byte is caught at the end of its file, naming it.
    let mut unpacker = Unpacker::start(out.path().join("flip"), manifest.clone()).unwrap();
    unpacker.push(0, &chunks[0].1).unwrap();
    let mut tail = chunks[1].1.clone();
    tail[0] ^= 1;
    match unpacker.push(chunks[1].0, &tail) {
        Err(SnapshotError::Altered { file, .. }) => assert_eq!(file, "a.txt"),
        other => panic!("a flipped byte was accepted: {other:?}"),
    }

    // A stream that stops early does not finish.
    let mut unpacker = Unpacker::start(out.path().join("short"), manifest.clone()).unwrap();
    unpacker.push(0, &chunks[0].1).unwrap();
    assert!(matches!(unpacker.finish(), Err(SnapshotError::Stream(_))));

    // An altered stored file is found by verification, naming it.
    fs::write(dir.join("z/b.txt"), b"hellO").unwrap();
    match verify_dir(&dir, &manifest) {
        Err(SnapshotError::Altered { file, .. }) => assert_eq!(file, "z/b.txt"),
        other => panic!("an altered file passed: {other:?}"),
    }
    fs::remove_file(dir.join("z/b.txt")).unwrap();
    let error = verify_dir(&dir, &manifest).unwrap_err();
    assert!(error.to_string().contains("missing"), "{error}");
}

/// Stores a captured workspace under `store/<label>` as the orchestrator does.
fn store(store: &Path, label: AnswerLabel, workspace: &Path) -> PeerSnapshot {
    let captured = capture(workspace, &WorkspaceLimits::default()).unwrap();
    let manifest = Arc::new(captured.manifest);
    let mut unpacker = Unpacker::start(store.join(label.to_string()), manifest.clone()).unwrap();
    for (i, chunk) in captured.data.chunks(SNAPSHOT_CHUNK_BYTES).enumerate() {
        unpacker
            .push((i * SNAPSHOT_CHUNK_BYTES) as u64, chunk)
            .unwrap();
    }
    unpacker.finish().unwrap();
    PeerSnapshot { label, manifest }
}

#[test]
fn peers_dir_shows_current_snapshots_read_only_and_drops_superseded_ones() {
    let root = tempfile::tempdir().unwrap();
    let (store_dir, peers) = (root.path().join("store"), root.path().join("peers"));
    let ws1 = root.path().join("ws1");
    write(&ws1, "notes/plan.md", b"plan v1");
    let first = store(&store_dir, AnswerLabel::new(1, 1), &ws1);
    let ws2 = root.path().join("ws2");
    write(&ws2, "app.py", b"print('hi')");
    let second = store(&store_dir, AnswerLabel::new(2, 1), &ws2);
    // Leftovers of an earlier session go at the first sync.
    write(&peers, "agent9.9/old.txt", b"stale");

    let mut shown = Shown::default();
    let located = |snaps: &[&PeerSnapshot]| -> Vec<(PeerSnapshot, PathBuf)> {
        snaps
            .iter()
            .map(|s| ((*s).clone(), store_dir.join(s.label.to_string())))
            .collect()
    };
    sync_peers(&peers, &mut shown, &located(&[&first, &second])).unwrap();
    assert_eq!(
        fs::read(peers.join("agent1.1/notes/plan.md")).unwrap(),
        b"plan v1"
    );
    assert_eq!(
        fs::read(peers.join("agent2.1/app.py")).unwrap(),
        b"print('hi')"
    );
    assert!(!peers.join("agent9.9").exists());
    assert_eq!(mode(&peers.join("agent1.1/notes/plan.md")), 0o444);
    assert_eq!(mode(&peers.join("agent1.1/notes")), 0o555);
    assert_eq!(mode(&peers.join("agent1.1")), 0o555);
    let names: Vec<_> = fs::read_dir(&peers)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "only the labels are shown: {names:?}");

    // Agent 1 answers again: agent1.2 replaces agent1.1.
    write(&ws1, "notes/plan.md", b"plan v2");
    let third = store(&store_dir, AnswerLabel::new(1, 2), &ws1);
    sync_peers(&peers, &mut shown, &located(&[&third, &second])).unwrap();
    assert!(!peers.join("agent1.1").exists(), "superseded snapshot kept");
    assert_eq!(
        fs::read(peers.join("agent1.2/notes/plan.md")).unwrap(),
        b"plan v2"
    );
    assert!(peers.join("agent2.1/app.py").is_file());

    // No answers: nothing shown.
    sync_peers(&peers, &mut shown, &[]).unwrap();
    assert_eq!(fs::read_dir(&peers).unwrap().count(), 0);
}
