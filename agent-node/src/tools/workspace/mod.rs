//! An agent's file workspace and its file tools (MassGen's `cwd` and `context_paths`).
//!
//! The [`Workspace`] is built when the agent starts ([`Workspace::open`]): its `cwd` and its
//! peers' directory are created if missing, every context path must exist, and all of them are
//! canonicalised into the roots of a [`confine::Confinement`]. It is a [`ToolKind`] named
//! `filesystem`, so its tools are offered as `mcp__filesystem__{tool}`, the names MassGen's
//! filesystem MCP server gives them and that MassGen configs filter on:
//! `read_text_file`, `write_file`, `edit_file`, `create_directory`, `list_directory`,
//! `search_files`, `move_file`, `delete_file` (MassGen's workspace tools) and
//! `list_allowed_directories`.
//!
//! Choices, and why:
//! - **Where paths are resolved**: the orchestrator sends absolute paths for agents it runs;
//!   an agent node resolves relative ones against its `--work-dir` ([`resolve_spec`]), so the
//!   orchestrator never needs the node's layout.
//! - **The phase comes with each call** ([`ToolKind::call_during`]): context paths with
//!   `permission: write` are writable only in a [`TurnMode::Present`] turn, as in MassGen. A
//!   flag set on the workspace between turns could be seen by a late call of the previous
//!   turn; a per-call mode cannot.
//! - **The final presentation works in the real `cwd`**: every turn of the agent, coordination
//!   and presentation alike, works in its configured `cwd`, so the files the winner leaves
//!   there at the end are the final result (the orchestrator's `final.md` names the
//!   directory).
//! - **Every problem is an error result** the model reads ([`ToolOutput::is_error`]), never a
//!   crash: a refused path, a missing file, an edit that does not match exactly once.
//! - The rules on paths (escapes, symlinks, hard links, read-only roots) are in module
//!   [`confine`]; the operations in module [`ops`].

pub mod confine;
pub mod ops;

#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use conclave_protocol::TurnMode;
use conclave_protocol::tools::{ContextPermission, FILESYSTEM_TOOLS, WorkspaceSpec};
use futures::future::BoxFuture;
use serde_json::{Map as JsonMap, Value as Json, json};

use self::confine::{Confinement, Root, RootKind};
use self::ops::{Edit, OpContext};
use super::{ToolDef, ToolError, ToolFilter, ToolKind, ToolOutput, mcp_tool_name};

/// Makes the relative paths of `spec` absolute against `base` (an agent node's work
/// directory): `cwd`, `peers_dir` and the context paths. Protected paths stay as written
/// (they are relative to their context path).
pub fn resolve_spec(spec: &mut WorkspaceSpec, base: &Path) {
    let absolute = |path: &mut String| {
        if !Path::new(path.as_str()).is_absolute() {
            *path = base.join(path.as_str()).display().to_string();
        }
    };
    absolute(&mut spec.cwd);
    absolute(&mut spec.peers_dir);
    for context in &mut spec.context_paths {
        absolute(&mut context.path);
    }
}

/// Why a workspace could not be set up (the agent does not start).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WorkspaceError(pub String);

struct Inner {
    confinement: Confinement,
    spec: WorkspaceSpec,
    filter: ToolFilter,
}

/// An agent's workspace: its roots and its file tools (see the module docs).
#[derive(Clone)]
pub struct Workspace {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("cwd", &self.inner.confinement.cwd())
            .finish()
    }
}

fn canonical_dir(what: &str, path: &str) -> Result<PathBuf, WorkspaceError> {
    if !Path::new(path).is_absolute() {
        return Err(WorkspaceError(format!(
            "the {what} `{path}` is not an absolute path (it should have been resolved before \
             the agent started)"
        )));
    }
    std::fs::create_dir_all(path)
        .and_then(|()| std::fs::canonicalize(path))
        .map_err(|error| WorkspaceError(format!("cannot create the {what} `{path}`: {error}")))
}

impl Workspace {
    /// Sets the workspace up from its resolved spec (absolute paths): creates `cwd` and
    /// `peers_dir`, checks that every context path exists.
    pub fn open(spec: &WorkspaceSpec) -> Result<Workspace, WorkspaceError> {
        let cwd = canonical_dir("workspace directory (`cwd`)", &spec.cwd)?;
        let peers = canonical_dir(
            "peers' directory (`agent_temporary_workspace`)",
            &spec.peers_dir,
        )?;
        let mut roots = vec![
            Root {
                path: cwd.clone(),
                kind: RootKind::Workspace,
                is_file: false,
            },
            Root {
                path: peers,
                kind: RootKind::Peers,
                is_file: false,
            },
        ];
        for context in &spec.context_paths {
            let path = std::fs::canonicalize(&context.path).map_err(|error| {
                WorkspaceError(format!(
                    "the context path `{}` cannot be used: {error} (`context_paths` must name \
                     existing directories or files)",
                    context.path
                ))
            })?;
            let is_file = path.is_file();
            roots.push(Root {
                path: path.clone(),
                kind: match context.permission {
                    ContextPermission::Read => RootKind::ContextRead,
                    ContextPermission::Write => RootKind::ContextWrite,
                },
                is_file,
            });
            let base = if is_file {
                path.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                path.clone()
            };
            for protected in &context.protected_paths {
                let joined = confine::fold(&base.join(protected));
                let joined = std::fs::canonicalize(&joined).unwrap_or(joined);
                if !joined.starts_with(&base) {
                    return Err(WorkspaceError(format!(
                        "the protected path `{protected}` is not inside its context path `{}`",
                        context.path
                    )));
                }
                roots.push(Root {
                    is_file: joined.is_file(),
                    path: joined,
                    kind: RootKind::Protected,
                });
            }
        }
        Ok(Workspace {
            inner: Arc::new(Inner {
                confinement: Confinement::new(cwd, roots),
                filter: ToolFilter {
                    allowed: spec.allowed_tools.clone(),
                    exclude: spec.exclude_tools.clone(),
                },
                spec: spec.clone(),
            }),
        })
    }

    /// The agent's working directory (canonical).
    pub fn cwd(&self) -> &Path {
        self.inner.confinement.cwd()
    }

    /// Which file tools are offered (MassGen's `allowed_tools` / `exclude_tools`).
    pub fn filter(&self) -> ToolFilter {
        self.inner.filter.clone()
    }

    /// What the model is told about where it works, for a turn of `mode`.
    pub fn prompt_note(&self, mode: TurnMode) -> String {
        let spec = &self.inner.spec;
        let mut note = String::new();
        let _ = writeln!(
            note,
            "You have a file workspace. Your working directory (read and write) is `{}`; \
             relative paths in the file tools (`{}`) are relative to it.",
            self.cwd().display(),
            mcp_tool_name(FILESYSTEM_TOOLS, "*"),
        );
        let _ = writeln!(
            note,
            "Other agents' answers come with their files, read-only, under `{}` (one \
             directory per answer: agent1.1/, agent2.1/, ...).",
            spec.peers_dir
        );
        let presenting = mode == TurnMode::Present;
        for context in &spec.context_paths {
            let access = match (context.permission, presenting) {
                (ContextPermission::Read, _) => "read-only",
                (ContextPermission::Write, true) => "writable now",
                (ContextPermission::Write, false) => {
                    "read-only now; writable in the final presentation"
                }
            };
            let _ = writeln!(note, "Context path `{}`: {access}.", context.path);
            for protected in &context.protected_paths {
                let _ = writeln!(note, "  `{protected}` inside it is protected (read-only).");
            }
        }
        if presenting {
            let _ = writeln!(
                note,
                "This is the final presentation: the files you leave in `{}` are the final \
                 result; make sure they are complete.",
                self.cwd().display()
            );
        }
        note
    }

    /// Runs tool `tool` in a turn of `mode` (blocking file-system work).
    fn run(&self, tool: &str, arguments: &JsonMap<String, Json>, mode: TurnMode) -> ToolOutput {
        let ctx = OpContext {
            confinement: &self.inner.confinement,
            presenting: mode == TurnMode::Present,
            max_read_bytes: self.inner.spec.limits.max_file_read_bytes.max(1),
        };
        let text = |key: &str| {
            arguments
                .get(key)
                .and_then(Json::as_str)
                .unwrap_or_default()
        };
        let path_or_cwd = || {
            let path = text("path");
            if path.trim().is_empty() { "." } else { path }
        };
        let result = match tool {
            "read_text_file" => {
                let offset = arguments.get("offset").and_then(Json::as_u64).unwrap_or(0);
                ops::read(&ctx, text("path"), offset)
            }
            "write_file" => ops::write(&ctx, text("path"), text("content")),
            "edit_file" => edits(arguments).and_then(|edits| ops::edit(&ctx, text("path"), &edits)),
            "create_directory" => ops::create_directory(&ctx, text("path")),
            "list_directory" => ops::list(&ctx, path_or_cwd()),
            "search_files" => ops::search(
                &ctx,
                path_or_cwd(),
                text("pattern"),
                arguments.get("content").and_then(Json::as_str),
            ),
            "move_file" => ops::rename(&ctx, text("source"), text("destination")),
            "delete_file" => ops::delete(
                &ctx,
                text("path"),
                arguments
                    .get("recursive")
                    .and_then(Json::as_bool)
                    .unwrap_or(false),
            ),
            "list_allowed_directories" => Ok(self.prompt_note(mode)),
            other => Err(format!("the file tools have no tool `{other}`")),
        };
        match result {
            Ok(text) => ToolOutput {
                text,
                is_error: false,
            },
            Err(text) => ToolOutput {
                text,
                is_error: true,
            },
        }
    }
}

/// The `edits` argument of `edit_file`.
fn edits(arguments: &JsonMap<String, Json>) -> Result<Vec<Edit>, String> {
    let list = arguments
        .get("edits")
        .and_then(Json::as_array)
        .ok_or("`edits` must be a list of {oldText, newText}")?;
    list.iter()
        .enumerate()
        .map(|(index, item)| {
            let field = |key: &str| item.get(key).and_then(Json::as_str).map(str::to_owned);
            match (field("oldText"), field("newText")) {
                (Some(old_text), Some(new_text)) => Ok(Edit { old_text, new_text }),
                _ => Err(format!(
                    "edit {} must be an object with the strings `oldText` and `newText`",
                    index + 1
                )),
            }
        })
        .collect()
}

fn path_property(what: &str) -> Json {
    json!({"type": "string", "description": what})
}

/// The file tools, MassGen's names and argument names.
fn definitions() -> Vec<ToolDef> {
    let def = |name: &str, description: &str, schema: Json| ToolDef {
        name: name.to_owned(),
        description: description.to_owned(),
        schema,
    };
    let path = path_property(
        "A path relative to your workspace, or absolute inside an allowed directory.",
    );
    vec![
        def(
            "read_text_file",
            "Read a UTF-8 text file. Long files are shown in parts: pass `offset` (bytes) to read on.",
            json!({"type": "object", "properties": {"path": path,
                "offset": {"type": "integer", "description": "Byte offset to start at (default 0)."}},
                "required": ["path"]}),
        ),
        def(
            "write_file",
            "Create a file or replace its whole content. Missing parent directories are created.",
            json!({"type": "object", "properties": {"path": path,
                "content": {"type": "string"}}, "required": ["path", "content"]}),
        ),
        def(
            "edit_file",
            "Replace text in a file. Each oldText must occur exactly once (after the earlier edits); otherwise nothing is changed.",
            json!({"type": "object", "properties": {"path": path,
                "edits": {"type": "array", "items": {"type": "object", "properties": {
                    "oldText": {"type": "string"}, "newText": {"type": "string"}},
                    "required": ["oldText", "newText"]}}},
                "required": ["path", "edits"]}),
        ),
        def(
            "create_directory",
            "Create a directory (and its missing parents).",
            json!({"type": "object", "properties": {"path": path}, "required": ["path"]}),
        ),
        def(
            "list_directory",
            "List a directory (default: your workspace).",
            json!({"type": "object", "properties": {"path": path}}),
        ),
        def(
            "search_files",
            "Find files under a directory (default: your workspace) whose name matches `pattern` (a glob with * and ?, or a substring); with `content`, list the lines of those files that contain it.",
            json!({"type": "object", "properties": {"path": path,
                "pattern": {"type": "string"}, "content": {"type": "string"}},
                "required": ["pattern"]}),
        ),
        def(
            "move_file",
            "Move or rename a file or directory; the destination must not exist.",
            json!({"type": "object", "properties": {"source": path.clone(),
                "destination": path.clone()}, "required": ["source", "destination"]}),
        ),
        def(
            "delete_file",
            "Delete a file, or a directory (non-empty ones need recursive: true).",
            json!({"type": "object", "properties": {"path": path,
                "recursive": {"type": "boolean"}}, "required": ["path"]}),
        ),
        def(
            "list_allowed_directories",
            "Show where you may read and write.",
            json!({"type": "object", "properties": {}}),
        ),
    ]
}

impl ToolKind for Workspace {
    fn name(&self) -> &str {
        FILESYSTEM_TOOLS
    }

    fn list(&self) -> Vec<ToolDef> {
        definitions()
    }

    fn call(
        &self,
        tool: &str,
        arguments: JsonMap<String, Json>,
    ) -> BoxFuture<'_, Result<ToolOutput, ToolError>> {
        self.call_during(TurnMode::Coordinate, tool, arguments)
    }

    fn call_during(
        &self,
        mode: TurnMode,
        tool: &str,
        arguments: JsonMap<String, Json>,
    ) -> BoxFuture<'_, Result<ToolOutput, ToolError>> {
        let workspace = self.clone();
        let tool = tool.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || workspace.run(&tool, &arguments, mode))
                .await
                .map_err(|error| ToolError::Failed(format!("the file operation failed: {error}")))
        })
    }

    fn prompt_note(&self, mode: TurnMode) -> Option<String> {
        Some(Workspace::prompt_note(self, mode))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
