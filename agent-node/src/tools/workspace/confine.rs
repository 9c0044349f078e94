//! Path confinement: which paths a file tool may touch, and how.
//!
//! An agent's allowed roots are its workspace (`cwd`, read and write), the peers' directory
//! (`peers_dir`, read only) and the context paths (read always; `write` ones writable only
//! during the final presentation; their `protected_paths` never writable). A path the model
//! gives is relative to `cwd`, or absolute inside a root.
//!
//! How a path is checked ([`Confinement::resolve`]), and why:
//! 1. **Lexically**: joined to `cwd`, then `.` and `..` are folded. A path whose folded form is
//!    outside every root is refused before the file system is touched; the message says that
//!    `..` escapes are refused when the path used `..`.
//! 2. **Physically**: the deepest part of the path that exists is canonicalised (every
//!    symbolic link along it followed, `..` after a link taken physically), the rest appended.
//!    The result must lie inside a root too, so a symlink (to a directory or a file) that
//!    points out is refused, however deep it sits. A dangling symlink is refused.
//! 3. **Permission**: a write must be allowed both where the path is written (its lexical root)
//!    and where it really lands (its physical root). The most specific root containing a path
//!    decides (a context path inside the workspace, or the peers' dir inside it, keeps its own
//!    rule); when two roots are the same directory the workspace wins.
//! 4. **Writes never go through a symlink**: a write whose last component is a symlink is
//!    refused, even one pointing inside (replace the link with a file by deleting it first).
//!    Deleting or moving a symlink acts on the link itself and is allowed.
//!
//! Hard links: a regular file with more than one link may have its other names anywhere on
//! the same file system, and nothing short of searching the whole file system tells where.
//! So the file tools refuse to read, write or edit a regular file whose link count is above 1
//! (module `ops` checks it on the opened file); deleting or moving such a name only changes
//! directory entries and is allowed. Writes also replace files by rename (write a new file
//! beside, rename over), so even a link that appeared between the check and the write cannot
//! carry data out.
//!
//! What is left to the operating system: a symlink swapped into a checked directory between
//! the check and the use (only the agent's own command tool could do that, in a directory the
//! agent may write anyway); reads open the checked path with `O_NOFOLLOW` on its last part.

use std::io;
use std::path::{Component, Path, PathBuf};

/// What a tool wants to do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// What kind of root a path is in, which decides what may be done there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    /// The agent's own `cwd`.
    Workspace,
    /// Where peers' answers are shown (read-only).
    Peers,
    /// A context path with `permission: read`.
    ContextRead,
    /// A context path with `permission: write`: writable in the final presentation only.
    ContextWrite,
    /// A `protected_paths` entry of a context path: read-only always.
    Protected,
}

/// One allowed root, canonicalised when the workspace started.
#[derive(Debug, Clone)]
pub struct Root {
    pub path: PathBuf,
    pub kind: RootKind,
    /// A file root (a context path that is a file) grants that file only.
    pub is_file: bool,
}

impl Root {
    fn contains(&self, path: &Path) -> bool {
        if self.is_file {
            path == self.path
        } else {
            path.starts_with(&self.path)
        }
    }
}

/// A path that passed the checks.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Where the path really is: canonical up to its deepest existing part. Use this one.
    pub physical: PathBuf,
    /// The path as the model meant it, folded (for messages).
    pub lexical: PathBuf,
    /// The most specific root containing [`Self::physical`].
    pub root: RootKind,
    /// Whether the last component exists and is a symlink (only possible for reads: it is
    /// then followed, and its target was checked).
    pub last_is_symlink: bool,
}

/// An agent's allowed roots.
#[derive(Debug, Clone)]
pub struct Confinement {
    cwd: PathBuf,
    roots: Vec<Root>,
}

impl Confinement {
    /// `roots` must be canonical; `cwd` is one of them (the workspace).
    pub fn new(cwd: PathBuf, roots: Vec<Root>) -> Self {
        Confinement { cwd, roots }
    }

    pub fn cwd(&self) -> &Path {
        &self.cwd
    }

    pub fn roots(&self) -> &[Root] {
        &self.roots
    }

    /// The most specific root containing `path` (the workspace on a tie).
    fn root_of(&self, path: &Path) -> Option<&Root> {
        self.roots
            .iter()
            .filter(|r| r.contains(path))
            .max_by_key(|r| {
                (
                    r.path.components().count(),
                    u8::from(r.kind == RootKind::Workspace),
                )
            })
    }

    /// Checks `raw` (as the model wrote it) for `access`; `presenting` is true during the final
    /// presentation. `Err` is the text the model reads.
    pub fn resolve(&self, raw: &str, access: Access, presenting: bool) -> Result<Resolved, String> {
        let lexical = self.lexical(raw)?;
        let lexical_kind = self.root_of(&lexical).map_or(RootKind::Peers, |r| r.kind);
        let (physical, last_is_symlink) = physical(&lexical).map_err(|problem| match problem {
            Physical::Dangling(link) => format!(
                "`{raw}` goes through the symbolic link `{}`, which points nowhere",
                link.display()
            ),
            Physical::Io(error) => format!("cannot look at `{raw}`: {error}"),
        })?;
        let Some(root) = self.root_of(&physical) else {
            return Err(format!(
                "`{raw}` is or goes through a symbolic link that points outside your allowed \
                 directories; {}",
                self.allowed_note()
            ));
        };
        let kind = root.kind;
        if access == Access::Write {
            if last_is_symlink {
                return Err(format!(
                    "`{raw}` is a symbolic link; the file tools never write through one (delete \
                     the link first to put a file there)"
                ));
            }
            for kind in [lexical_kind, kind] {
                refuse_write(raw, kind, presenting)?;
            }
        }
        Ok(Resolved {
            physical,
            lexical,
            root: kind,
            last_is_symlink,
        })
    }

    /// `raw` joined to `cwd` and folded, refused when it is outside every root.
    pub fn lexical(&self, raw: &str) -> Result<PathBuf, String> {
        if raw.trim().is_empty() {
            return Err("the path is empty; give a path relative to your workspace".into());
        }
        if raw.contains('\0') {
            return Err("the path contains a NUL character".into());
        }
        let given = Path::new(raw);
        let joined = if given.is_absolute() {
            given.to_path_buf()
        } else {
            self.cwd.join(given)
        };
        let lexical = fold(&joined);
        if self.root_of(&lexical).is_none() {
            let used_parent = given.components().any(|c| c == Component::ParentDir);
            return Err(if used_parent {
                format!(
                    "`{raw}` leads outside your allowed directories (`..` escapes are refused); \
                     {}",
                    self.allowed_note()
                )
            } else {
                format!(
                    "`{raw}` is outside your allowed directories; {}",
                    self.allowed_note()
                )
            });
        }
        Ok(lexical)
    }

    /// Refuses writing at `path` (already physical) unless its root allows it.
    pub fn check_write(&self, raw: &str, path: &Path, presenting: bool) -> Result<(), String> {
        match self.root_of(path) {
            Some(root) => refuse_write(raw, root.kind, presenting),
            None => Err(format!(
                "`{raw}` is outside your allowed directories; {}",
                self.allowed_note()
            )),
        }
    }

    /// Whether `path` (canonical) is itself one of the roots (never deleted or moved).
    pub fn is_root(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| r.path == path)
    }

    /// "your workspace is X; ..." for error messages.
    fn allowed_note(&self) -> String {
        format!(
            "use a path inside your workspace `{}` (relative paths are relative to it), or an \
             absolute path inside a directory your instructions name",
            self.cwd.display()
        )
    }
}

/// Refuses a write into a root of `kind`, saying why and what to do instead.
fn refuse_write(raw: &str, kind: RootKind, presenting: bool) -> Result<(), String> {
    match kind {
        RootKind::Workspace => Ok(()),
        RootKind::ContextWrite if presenting => Ok(()),
        RootKind::ContextWrite => Err(format!(
            "`{raw}` is in a context path that becomes writable only during the final \
             presentation; while coordinating it is read-only: work on a copy in your workspace"
        )),
        RootKind::ContextRead => Err(format!(
            "`{raw}` is in a read-only context path; write in your workspace instead"
        )),
        RootKind::Protected => Err(format!(
            "`{raw}` is a protected path (`protected_paths`) and can never be written"
        )),
        RootKind::Peers => Err(format!(
            "`{raw}` is in the peers' directory, which is read-only (it shows other agents' \
             answers); copy what you need into your workspace"
        )),
    }
}

/// Folds `.` and `..` without touching the file system (`..` at the root stays at the root).
pub fn fold(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                if out.parent().is_some() {
                    out.pop();
                }
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

enum Physical {
    Dangling(PathBuf),
    Io(io::Error),
}

/// Where `lexical` really is: its deepest existing ancestor canonicalised, the missing rest
/// appended; and whether its last component is an existing symlink.
fn physical(lexical: &Path) -> Result<(PathBuf, bool), Physical> {
    let last_is_symlink = std::fs::symlink_metadata(lexical)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    let mut existing = lexical.to_path_buf();
    let mut missing: Vec<std::ffi::OsString> = Vec::new();
    loop {
        match std::fs::symlink_metadata(&existing) {
            Ok(_) => break,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name() else {
                    return Err(Physical::Io(error));
                };
                missing.push(name.to_owned());
                if !existing.pop() {
                    return Err(Physical::Io(error));
                }
            }
            Err(error) => return Err(Physical::Io(error)),
        }
    }
    let mut canonical = match std::fs::canonicalize(&existing) {
        Ok(path) => path,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(Physical::Dangling(existing));
        }
        Err(error) => return Err(Physical::Io(error)),
    };
    for name in missing.into_iter().rev() {
        canonical.push(name);
    }
    Ok((canonical, last_is_symlink))
}
