//! `conclave-snapshot-bench`: what a workspace snapshot costs, for a workspace of `--files`
//! files (100) of `--file-bytes` bytes each (16 KiB), over `--runs` runs (median and max):
//!
//! * capture: walk the workspace, hash every file (SHA-256) and read its bytes, as the agent's
//!   node does when the agent submits `new_answer`;
//! * store: unpack the chunk stream into the orchestrator's store, checking every file's size
//!   and hash, and `fsync` it, as the coordinator does before journaling the answer;
//! * show: copy the stored snapshot into a peers directory, read-only, as a peer's node does
//!   at the start of its turn (a node fetching it over the cluster also unpacks it first, the
//!   cost of "store" again plus the link).
//!
//! It prints the snapshot's size (file bytes, manifest bytes as journaled JSON, and chunk
//! frames) with the times. Everything runs on the local disk under the system's temporary
//! directory; the figures include the page cache, not a cold disk.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use conclave_agent::snapshot::capture::capture;
use conclave_agent::snapshot::peers::{Shown, sync_peers};
use conclave_agent::snapshot::unpack::Unpacker;
use conclave_protocol::AnswerLabel;
use conclave_protocol::snapshot::{PeerSnapshot, SNAPSHOT_CHUNK_BYTES};
use conclave_protocol::tools::WorkspaceLimits;

#[derive(Debug, Parser)]
#[command(
    name = "conclave-snapshot-bench",
    about = "Workspace snapshot time and size: capture, store, show to a peer"
)]
struct Args {
    /// Files in the workspace.
    #[arg(long, default_value_t = 100)]
    files: usize,
    /// Bytes per file.
    #[arg(long, default_value_t = 16 * 1024)]
    file_bytes: usize,
    /// Measured runs (after one warm-up).
    #[arg(long, default_value_t = 20)]
    runs: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.files > 0 && args.runs > 0,
        "--files and --runs must be at least 1"
    );
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let workspace = dir.path().join("workspace");
    for i in 0..args.files {
        // Ten folders, varied content so no two files hash alike.
        let path = workspace.join(format!("dir{}/file{i:04}.txt", i % 10));
        std::fs::create_dir_all(path.parent().context("a parent")?)?;
        let data: Vec<u8> = (0..args.file_bytes)
            .map(|j| ((i * 31 + j * 7) % 251) as u8)
            .collect();
        std::fs::write(&path, data)?;
    }
    let limits = WorkspaceLimits {
        snapshot_max_files: u32::try_from(args.files).unwrap_or(u32::MAX),
        snapshot_max_bytes: (args.files * args.file_bytes) as u64,
        ..WorkspaceLimits::default()
    };

    let mut capture_times = Vec::new();
    let mut store_times = Vec::new();
    let mut show_times = Vec::new();
    let mut sizes = None;
    for run in 0..=args.runs {
        let started = Instant::now();
        let captured = capture(&workspace, &limits)?;
        let captured_in = started.elapsed();

        let manifest = Arc::new(captured.manifest.clone());
        let store = dir.path().join(format!("store{run}"));
        let started = Instant::now();
        let mut unpacker = Unpacker::start(store.join("agent1.1"), manifest.clone())?;
        let mut frames = 0;
        for (i, chunk) in captured.data.chunks(SNAPSHOT_CHUNK_BYTES).enumerate() {
            unpacker.push((i * SNAPSHOT_CHUNK_BYTES) as u64, chunk)?;
            frames += 1;
        }
        let stored = unpacker.finish()?;
        let stored_in = started.elapsed();

        let peers = dir.path().join(format!("peers{run}"));
        let snapshot = PeerSnapshot {
            label: AnswerLabel::new(1, 1),
            manifest: manifest.clone(),
        };
        let started = Instant::now();
        sync_peers(&peers, &mut Shown::default(), &[(snapshot, stored)])?;
        let shown_in = started.elapsed();

        if run > 0 {
            capture_times.push(captured_in);
            store_times.push(stored_in);
            show_times.push(shown_in);
        }
        sizes = Some((
            manifest.total_bytes,
            serde_json::to_vec(&*manifest)?.len(),
            frames,
        ));
        cleanup(&store);
        cleanup(&peers);
    }
    let (bytes, manifest_bytes, frames) = sizes.context("no run")?;
    println!(
        "workspace: {} files x {} bytes = {} bytes; manifest (journal JSON) {} bytes; {} chunk frame(s) of at most {} bytes",
        args.files, args.file_bytes, bytes, manifest_bytes, frames, SNAPSHOT_CHUNK_BYTES
    );
    for (what, times) in [
        ("capture (walk, hash, read)", &mut capture_times),
        ("store (unpack, check, fsync)", &mut store_times),
        ("show (copy read-only to peers)", &mut show_times),
    ] {
        times.sort();
        println!(
            "{what:32} median {:>8.2} ms   max {:>8.2} ms   ({} runs)",
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1]),
            times.len()
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn cleanup(dir: &Path) {
    let _ = conclave_agent::snapshot::unpack::remove_tree(dir);
}
