//! Moving snapshot bytes between a directory and a chunk stream, checked against the manifest.
//!
//! [`Unpacker`] writes a stream of chunks (the files' bytes concatenated in manifest order)
//! into a fresh directory, hashing as it goes: a chunk out of order, a byte past the manifest's
//! total or a file whose SHA-256 differs is an error that names the file, and the caller throws
//! the directory away. [`read_chunks`] is the sending side for a stored snapshot and
//! [`verify_dir`] checks a stored snapshot in place (resume, and before it is shown to peers).
//! Both the orchestrator (receiving answers) and agent nodes (receiving peers' snapshots) use
//! these, so the wire format has one implementation.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use conclave_protocol::snapshot::{SNAPSHOT_CHUNK_BYTES, SnapshotManifest, hex};
use sha2::{Digest, Sha256};

use super::SnapshotError;

/// Writes one snapshot's chunk stream into a directory (see the module docs).
pub struct Unpacker {
    dir: PathBuf,
    manifest: Arc<SnapshotManifest>,
    /// Bytes received so far (the next chunk's expected offset).
    offset: u64,
    /// The file being written, and how many of its bytes are written.
    file_index: usize,
    written: u64,
    open: Option<(File, Sha256)>,
}

impl std::fmt::Debug for Unpacker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unpacker")
            .field("dir", &self.dir)
            .field("offset", &self.offset)
            .field("total", &self.manifest.total_bytes)
            .finish()
    }
}

impl Unpacker {
    /// Starts unpacking into `dir`, which is removed first if it exists. The manifest is
    /// checked (paths, sizes, digest) before anything is written.
    pub fn start(dir: PathBuf, manifest: Arc<SnapshotManifest>) -> Result<Self, SnapshotError> {
        manifest.check()?;
        remove_tree(&dir)?;
        fs::create_dir_all(&dir).map_err(|e| SnapshotError::io("create", &dir, e))?;
        let mut unpacker = Unpacker {
            dir,
            manifest,
            offset: 0,
            file_index: 0,
            written: 0,
            open: None,
        };
        unpacker.settle()?;
        Ok(unpacker)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Arc<SnapshotManifest> {
        &self.manifest
    }

    /// Whether every byte has arrived (and every file checked).
    pub fn is_complete(&self) -> bool {
        self.file_index >= self.manifest.files.len()
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.offset
    }

    /// Writes one chunk; `offset` must be where the previous chunk ended.
    pub fn push(&mut self, offset: u64, mut data: &[u8]) -> Result<(), SnapshotError> {
        if offset != self.offset {
            return Err(SnapshotError::Stream(format!(
                "a chunk at byte {offset} arrived where byte {} was expected",
                self.offset
            )));
        }
        if data.len() > SNAPSHOT_CHUNK_BYTES {
            return Err(SnapshotError::Stream(format!(
                "a chunk of {} bytes is over the {SNAPSHOT_CHUNK_BYTES}-byte chunk limit",
                data.len()
            )));
        }
        let total = self.manifest.total_bytes;
        if offset + data.len() as u64 > total {
            return Err(SnapshotError::Stream(format!(
                "the data runs past the {total} bytes the manifest lists"
            )));
        }
        self.offset += data.len() as u64;
        while !data.is_empty() {
            let entry = &self.manifest.files[self.file_index];
            let want = usize::try_from(entry.size - self.written).unwrap_or(usize::MAX);
            let take = want.min(data.len());
            let path = self.dir.join(&entry.path);
            let (file, hasher) = match &mut self.open {
                Some(open) => open,
                None => {
                    let file = create_file(&path)?;
                    self.open.insert((file, Sha256::new()))
                }
            };
            file.write_all(&data[..take])
                .map_err(|e| SnapshotError::io("write", &path, e))?;
            hasher.update(&data[..take]);
            self.written += take as u64;
            data = &data[take..];
            self.settle()?;
        }
        Ok(())
    }

    /// Closes every file that is complete (checking its hash) and creates the empty files
    /// that come next.
    fn settle(&mut self) -> Result<(), SnapshotError> {
        while let Some(entry) = self.manifest.files.get(self.file_index) {
            if self.written < entry.size {
                return Ok(());
            }
            let path = self.dir.join(&entry.path);
            let (file, hasher) = match self.open.take() {
                Some(open) => open,
                None => (create_file(&path)?, Sha256::new()),
            };
            file.sync_all()
                .map_err(|e| SnapshotError::io("sync", &path, e))?;
            let sha256 = hex(&hasher.finalize());
            if sha256 != entry.sha256 {
                return Err(SnapshotError::Altered {
                    file: entry.path.clone(),
                    why: "its SHA-256 differs from the manifest's".into(),
                });
            }
            self.file_index += 1;
            self.written = 0;
        }
        Ok(())
    }

    /// Ends the stream: every byte must have arrived. Syncs the directories so the files'
    /// names are durable, and returns the directory.
    pub fn finish(self) -> Result<PathBuf, SnapshotError> {
        if !self.is_complete() {
            return Err(SnapshotError::Stream(format!(
                "only {} of {} bytes arrived",
                self.offset, self.manifest.total_bytes
            )));
        }
        sync_dirs(&self.dir, &self.manifest)?;
        Ok(self.dir)
    }
}

fn create_file(path: &Path) -> Result<File, SnapshotError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| SnapshotError::io("create", parent, e))?;
    }
    File::create(path).map_err(|e| SnapshotError::io("create", path, e))
}

/// `fsync`s `dir` and every directory of the snapshot's files.
fn sync_dirs(dir: &Path, manifest: &SnapshotManifest) -> Result<(), SnapshotError> {
    let mut dirs: Vec<PathBuf> = manifest
        .files
        .iter()
        .filter_map(|f| dir.join(&f.path).parent().map(Path::to_path_buf))
        .collect();
    dirs.push(dir.to_path_buf());
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        sync_dir(&d)?;
    }
    Ok(())
}

/// `fsync`s one directory.
pub fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SnapshotError::io("sync", dir, e))
}

/// Removes a directory tree, making read-only directories writable first (peers' snapshots
/// are shown read-only). A missing directory is fine.
pub fn remove_tree(dir: &Path) -> Result<(), SnapshotError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SnapshotError::io("inspect", dir, e)),
        Ok(meta) if !meta.is_dir() => {
            return fs::remove_file(dir).map_err(|e| SnapshotError::io("remove", dir, e));
        }
        Ok(_) => {}
    }
    make_writable(dir);
    fs::remove_dir_all(dir).map_err(|e| SnapshotError::io("remove", dir, e))
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&entry.path());
            }
        }
    }
}

/// Reads a stored snapshot in manifest order and hands it over in chunks of at most
/// [`SNAPSHOT_CHUNK_BYTES`] (`offset`, bytes). `send` returning false stops early. A file that
/// is missing or shorter than listed is an error; its hash is checked by the receiver.
pub fn read_chunks(
    dir: &Path,
    manifest: &SnapshotManifest,
    mut send: impl FnMut(u64, Vec<u8>) -> bool,
) -> Result<(), SnapshotError> {
    let mut buffer = Vec::with_capacity(SNAPSHOT_CHUNK_BYTES);
    let mut offset = 0u64;
    for entry in &manifest.files {
        let path = dir.join(&entry.path);
        let mut file = File::open(&path).map_err(|e| missing(&entry.path, e))?;
        let mut left = entry.size;
        while left > 0 {
            let room = (SNAPSHOT_CHUNK_BYTES - buffer.len()) as u64;
            let take = left.min(room);
            let start = buffer.len();
            buffer.resize(start + take as usize, 0);
            file.read_exact(&mut buffer[start..])
                .map_err(|e| missing(&entry.path, e))?;
            left -= take;
            if buffer.len() == SNAPSHOT_CHUNK_BYTES {
                let full = std::mem::replace(&mut buffer, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES));
                let len = full.len() as u64;
                if !send(offset, full) {
                    return Ok(());
                }
                offset += len;
            }
        }
    }
    if !buffer.is_empty() {
        send(offset, buffer);
    }
    Ok(())
}

fn missing(file: &str, error: std::io::Error) -> SnapshotError {
    SnapshotError::Altered {
        file: file.to_owned(),
        why: if error.kind() == std::io::ErrorKind::UnexpectedEof {
            "it is shorter than the manifest says".into()
        } else {
            format!("it cannot be read: {error}")
        },
    }
}

/// Checks a stored snapshot in place: every listed file exists with its size and SHA-256.
/// Files that are not listed are ignored.
pub fn verify_dir(dir: &Path, manifest: &SnapshotManifest) -> Result<(), SnapshotError> {
    for entry in &manifest.files {
        let path = dir.join(&entry.path);
        let meta = fs::symlink_metadata(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SnapshotError::Altered {
                    file: entry.path.clone(),
                    why: "it is missing".into(),
                }
            } else {
                missing(&entry.path, e)
            }
        })?;
        if !meta.is_file() || meta.len() != entry.size {
            return Err(SnapshotError::Altered {
                file: entry.path.clone(),
                why: format!(
                    "it is {} bytes, the manifest says {}",
                    meta.len(),
                    entry.size
                ),
            });
        }
        let mut hasher = Sha256::new();
        let mut file = File::open(&path).map_err(|e| missing(&entry.path, e))?;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = file
                .read(&mut buffer)
                .map_err(|e| missing(&entry.path, e))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        if hex(&hasher.finalize()) != entry.sha256 {
            return Err(SnapshotError::Altered {
                file: entry.path.clone(),
                why: "its SHA-256 differs from the manifest's (the file was altered)".into(),
            });
        }
    }
    Ok(())
}
