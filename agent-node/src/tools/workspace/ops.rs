//! The file operations behind the file tools, on paths checked by module `confine`.
//!
//! Each returns the text the model reads: `Ok` a result, `Err` an error result. They are
//! blocking (std::fs) and run on tokio's blocking pool (see the parent module).
//!
//! Choices, and why:
//! - **Reads are capped** at `max_file_read_bytes`: the first bytes (cut at a character
//!   boundary) and a note that says how much was shown and how to read on (`offset`). A file
//!   that is not UTF-8 text is refused with a clear message rather than shown garbled.
//! - **Writes replace by rename**: the new content goes to a fresh file beside the target
//!   (created exclusively, so it can be no one's link) and is renamed over it. A reader never
//!   sees half a file, and a write never changes an inode another name shares.
//! - **Edits are exact**: each `oldText` must occur exactly once in the file as it is when
//!   that edit applies (after the earlier edits); zero or several matches fail the whole call
//!   and nothing is written.
//! - **Listings and searches are bounded** ([`MAX_ENTRIES`]) and never follow symlinks.

use std::fmt::Write as _;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::confine::{Access, Confinement, Resolved};

/// The most entries one listing or search returns.
pub const MAX_ENTRIES: usize = 1000;

/// What an operation needs besides its arguments.
pub struct OpContext<'a> {
    pub confinement: &'a Confinement,
    pub presenting: bool,
    pub max_read_bytes: u64,
}

impl OpContext<'_> {
    fn resolve(&self, raw: &str, access: Access) -> Result<Resolved, String> {
        self.confinement.resolve(raw, access, self.presenting)
    }
}

fn io_error(action: &str, raw: &str, error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => format!("cannot {action} `{raw}`: it does not exist"),
        io::ErrorKind::PermissionDenied => {
            format!("cannot {action} `{raw}`: the operating system denied access")
        }
        _ => format!("cannot {action} `{raw}`: {error}"),
    }
}

/// Refuses a regular file with more than one hard link (see module `confine`).
fn refuse_hard_link(raw: &str, metadata: &Metadata) -> Result<(), String> {
    if metadata.is_file() && metadata.nlink() > 1 {
        return Err(format!(
            "`{raw}` has {} hard links; the file tools do not read or write a file with more \
             than one link, since its other names may lie outside your allowed directories",
            metadata.nlink()
        ));
    }
    Ok(())
}

/// Opens a checked path for reading, without following a symlink at its last part.
fn open_for_read(raw: &str, path: &Path) -> Result<(File, Metadata), String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| io_error("read", raw, &e))?;
    let metadata = file.metadata().map_err(|e| io_error("read", raw, &e))?;
    if metadata.is_dir() {
        return Err(format!(
            "`{raw}` is a directory; use list_directory to see what it holds"
        ));
    }
    if !metadata.is_file() {
        return Err(format!("`{raw}` is not a regular file"));
    }
    refuse_hard_link(raw, &metadata)?;
    Ok((file, metadata))
}

/// `read_text_file {path, offset?}`.
pub fn read(ctx: &OpContext<'_>, raw: &str, offset: u64) -> Result<String, String> {
    let resolved = ctx.resolve(raw, Access::Read)?;
    let (mut file, metadata) = open_for_read(raw, &resolved.physical)?;
    let total = metadata.len();
    if offset > total {
        return Err(format!(
            "offset {offset} is past the end of `{raw}` ({total} bytes)"
        ));
    }
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| io_error("read", raw, &e))?;
    let mut bytes = Vec::new();
    file.take(ctx.max_read_bytes)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error("read", raw, &e))?;
    let shown_end = offset + bytes.len() as u64;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text.to_owned(),
        // Cut inside a character at the cap: keep the whole characters.
        Err(error) if error.error_len().is_none() && shown_end < total => {
            String::from_utf8_lossy(&bytes[..error.valid_up_to()]).into_owned()
        }
        Err(_) => {
            return Err(format!(
                "`{raw}` is not UTF-8 text (a binary file?); the file tools read text only"
            ));
        }
    };
    let end = offset + text.len() as u64;
    if end < total {
        Ok(format!(
            "{text}\n[conclave: showing bytes {offset}..{end} of {total} \
             (max_file_read_bytes is {}); call read_text_file again with offset {end} for more]",
            ctx.max_read_bytes
        ))
    } else {
        Ok(text)
    }
}

/// Replaces `target` with `content`: a fresh file beside it, renamed over it.
fn replace_file(raw: &str, target: &Path, content: &[u8]) -> Result<(), String> {
    let parent = target
        .parent()
        .ok_or_else(|| format!("cannot write `{raw}`: it has no parent directory"))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = parent.join(format!(
        ".{name}.conclave-{:016x}.tmp",
        rand::random::<u64>()
    ));
    let written = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)?;
        file.write_all(content)?;
        file.sync_data()?;
        std::fs::rename(&temporary, target)
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(io_error("write", raw, &error));
    }
    Ok(())
}

/// Checks an existing write target: a regular file with one link (or nothing there yet).
fn check_write_target(raw: &str, resolved: &Resolved) -> Result<Option<Metadata>, String> {
    match std::fs::symlink_metadata(&resolved.physical) {
        Ok(metadata) if metadata.is_dir() => Err(format!(
            "`{raw}` is a directory; give a file path inside it"
        )),
        Ok(metadata) if !metadata.is_file() => Err(format!("`{raw}` is not a regular file")),
        Ok(metadata) => {
            refuse_hard_link(raw, &metadata)?;
            Ok(Some(metadata))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error("write", raw, &error)),
    }
}

/// `write_file {path, content}`: creates missing parent directories.
pub fn write(ctx: &OpContext<'_>, raw: &str, content: &str) -> Result<String, String> {
    let resolved = ctx.resolve(raw, Access::Write)?;
    let existed = check_write_target(raw, &resolved)?.is_some();
    if let Some(parent) = resolved.physical.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| io_error("create the directory of", raw, &e))?;
    }
    replace_file(raw, &resolved.physical, content.as_bytes())?;
    Ok(format!(
        "{} `{}` ({} bytes)",
        if existed { "replaced" } else { "created" },
        resolved.physical.display(),
        content.len()
    ))
}

/// One replacement of `edit_file`.
pub struct Edit {
    pub old_text: String,
    pub new_text: String,
}

/// `edit_file {path, edits: [{oldText, newText}]}`.
pub fn edit(ctx: &OpContext<'_>, raw: &str, edits: &[Edit]) -> Result<String, String> {
    if edits.is_empty() {
        return Err("`edits` is empty; give at least one {oldText, newText}".into());
    }
    let resolved = ctx.resolve(raw, Access::Write)?;
    if check_write_target(raw, &resolved)?.is_none() {
        return Err(format!(
            "cannot edit `{raw}`: it does not exist (use write_file to create it)"
        ));
    }
    let (mut file, metadata) = open_for_read(raw, &resolved.physical)?;
    if metadata.len() > ctx.max_read_bytes {
        return Err(format!(
            "`{raw}` is {} bytes, more than max_file_read_bytes ({}); the file tools edit \
             only files they can read whole",
            metadata.len(),
            ctx.max_read_bytes
        ));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|_| {
        format!("`{raw}` is not UTF-8 text (a binary file?); the file tools edit text only")
    })?;
    for (index, edit) in edits.iter().enumerate() {
        if edit.old_text.is_empty() {
            return Err(format!(
                "edit {} has an empty oldText; give text that occurs exactly once",
                index + 1
            ));
        }
        let count = text.matches(edit.old_text.as_str()).count();
        if count != 1 {
            return Err(format!(
                "edit {} of `{raw}`: oldText occurs {count} times, it must occur exactly once \
                 (give more surrounding text to make it unique); nothing was changed",
                index + 1
            ));
        }
        text = text.replacen(edit.old_text.as_str(), &edit.new_text, 1);
    }
    replace_file(raw, &resolved.physical, text.as_bytes())?;
    Ok(format!(
        "edited `{}`: {} replacement{} ({} bytes now)",
        resolved.physical.display(),
        edits.len(),
        if edits.len() == 1 { "" } else { "s" },
        text.len()
    ))
}

/// `create_directory {path}`.
pub fn create_directory(ctx: &OpContext<'_>, raw: &str) -> Result<String, String> {
    let resolved = ctx.resolve(raw, Access::Write)?;
    std::fs::create_dir_all(&resolved.physical)
        .map_err(|e| io_error("create the directory", raw, &e))?;
    Ok(format!(
        "directory `{}` exists",
        resolved.physical.display()
    ))
}

fn entry_line(out: &mut String, name: &str, metadata: &Metadata) {
    let file_type = metadata.file_type();
    if file_type.is_symlink() {
        let _ = writeln!(out, "[LINK] {name}");
    } else if file_type.is_dir() {
        let _ = writeln!(out, "[DIR]  {name}/");
    } else {
        let _ = writeln!(out, "[FILE] {name} ({} bytes)", metadata.len());
    }
}

/// `list_directory {path?}` (default: the workspace).
pub fn list(ctx: &OpContext<'_>, raw: &str) -> Result<String, String> {
    let resolved = ctx.resolve(raw, Access::Read)?;
    let entries = std::fs::read_dir(&resolved.physical).map_err(|e| io_error("list", raw, &e))?;
    let mut named: Vec<(String, Metadata)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", raw, &e))?;
        let path = entry.path();
        if let Ok(metadata) = std::fs::symlink_metadata(&path) {
            named.push((entry.file_name().to_string_lossy().into_owned(), metadata));
        }
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = format!("{}:\n", resolved.physical.display());
    if named.is_empty() {
        out.push_str("(empty)\n");
    }
    for (name, metadata) in named.iter().take(MAX_ENTRIES) {
        entry_line(&mut out, name, metadata);
    }
    if named.len() > MAX_ENTRIES {
        let _ = writeln!(
            out,
            "[conclave: {} more entries not shown]",
            named.len() - MAX_ENTRIES
        );
    }
    Ok(out)
}

/// Whether `name` matches `pattern`: a glob with `*` and `?` when it has one, else a
/// case-insensitive substring.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return name.to_lowercase().contains(&pattern.to_lowercase());
    }
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Iterative glob match with one backtrack point (the last `*`).
    let (mut p, mut n, mut star, mut mark) = (0, 0, None, 0);
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// `search_files {path?, pattern, content?}`: files and directories under `path` whose name
/// matches `pattern`; with `content`, the lines of matching files that contain it.
pub fn search(
    ctx: &OpContext<'_>,
    raw: &str,
    pattern: &str,
    content: Option<&str>,
) -> Result<String, String> {
    let resolved = ctx.resolve(raw, Access::Read)?;
    let mut stack: Vec<PathBuf> = vec![resolved.physical.clone()];
    let mut hits: Vec<String> = Vec::new();
    let mut more = false;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Ok(metadata) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if metadata.is_dir() {
                stack.push(path.clone());
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name_matches(pattern, &name) {
                continue;
            }
            if hits.len() >= MAX_ENTRIES {
                more = true;
                break;
            }
            match content {
                None => hits.push(path.display().to_string()),
                Some(needle) if metadata.is_file() && metadata.nlink() == 1 => {
                    let Ok(file) = File::open(&path) else {
                        continue;
                    };
                    let mut text = String::new();
                    if file
                        .take(ctx.max_read_bytes)
                        .read_to_string(&mut text)
                        .is_err()
                    {
                        continue;
                    }
                    for (number, line) in text.lines().enumerate() {
                        if line.contains(needle) && hits.len() < MAX_ENTRIES {
                            hits.push(format!("{}:{}: {line}", path.display(), number + 1));
                        }
                    }
                }
                Some(_) => {}
            }
        }
    }
    if hits.is_empty() {
        return Ok(format!(
            "no matches for `{pattern}` under `{}`",
            resolved.physical.display()
        ));
    }
    let mut out = hits.join("\n");
    if more {
        let _ = write!(
            out,
            "\n[conclave: more than {MAX_ENTRIES} matches; narrow the search]"
        );
    }
    Ok(out)
}

/// `delete_file {path, recursive?}`.
pub fn delete(ctx: &OpContext<'_>, raw: &str, recursive: bool) -> Result<String, String> {
    let resolved = ctx.resolve_entry(raw)?;
    let metadata = std::fs::symlink_metadata(&resolved).map_err(|e| io_error("delete", raw, &e))?;
    if metadata.is_dir() {
        if recursive {
            std::fs::remove_dir_all(&resolved)
        } else {
            std::fs::remove_dir(&resolved).map_err(|error| {
                if error.kind() == io::ErrorKind::DirectoryNotEmpty {
                    io::Error::other("the directory is not empty; pass recursive: true")
                } else {
                    error
                }
            })
        }
    } else {
        std::fs::remove_file(&resolved)
    }
    .map_err(|e| io_error("delete", raw, &e))?;
    Ok(format!("deleted `{}`", resolved.display()))
}

/// `move_file {source, destination}`: the destination must not exist.
pub fn rename(ctx: &OpContext<'_>, source: &str, destination: &str) -> Result<String, String> {
    let from = ctx.resolve_entry(source)?;
    std::fs::symlink_metadata(&from).map_err(|e| io_error("move", source, &e))?;
    let to = ctx.resolve(destination, Access::Write)?;
    if std::fs::symlink_metadata(&to.physical).is_ok() {
        return Err(format!(
            "cannot move to `{destination}`: it exists already (delete it first, or pick \
             another name)"
        ));
    }
    if to.physical.starts_with(&from) {
        return Err(format!(
            "cannot move `{source}` into itself (`{destination}`)"
        ));
    }
    if let Some(parent) = to.physical.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| io_error("create the directory of", destination, &e))?;
    }
    std::fs::rename(&from, &to.physical).map_err(|e| io_error("move", source, &e))?;
    Ok(format!(
        "moved `{}` to `{}`",
        from.display(),
        to.physical.display()
    ))
}

impl OpContext<'_> {
    /// A directory entry to delete or move: the entry itself, never what a symlink there
    /// points to (removing a link that points out is harmless). The directory holding it must
    /// be writable, the entry itself must sit in a writable root (the peers' dir inside the
    /// workspace stays read-only), and it must not be one of the roots.
    fn resolve_entry(&self, raw: &str) -> Result<PathBuf, String> {
        let lexical = self.confinement.lexical(raw)?;
        let (Some(name), Some(parent)) = (lexical.file_name(), lexical.parent()) else {
            return Err(format!("`{raw}` names no file"));
        };
        let is_root = |path: &Path| {
            self.confinement.is_root(path)
                || std::fs::canonicalize(path).is_ok_and(|p| self.confinement.is_root(&p))
        };
        if is_root(&lexical) {
            return Err(format!(
                "`{raw}` is one of your allowed directories itself and cannot be deleted or \
                 moved; act on what is inside it"
            ));
        }
        let parent = self.resolve(&parent.to_string_lossy(), Access::Write)?;
        let entry = parent.physical.join(name);
        if self.confinement.is_root(&entry) {
            return Err(format!(
                "`{raw}` is one of your allowed directories itself and cannot be deleted or \
                 moved; act on what is inside it"
            ));
        }
        self.confinement.check_write(raw, &entry, self.presenting)?;
        Ok(entry)
    }
}
