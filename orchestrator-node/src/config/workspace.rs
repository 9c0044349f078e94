//! Agent workspaces: MassGen's `backend.cwd`, `context_paths` and
//! `orchestrator.agent_temporary_workspace` / `snapshot_storage`, and conclave's limits on
//! them.
//!
//! Keys, and where they sit:
//! - `agents[i].backend.cwd`: the agent's working directory. Its file tools
//!   (`mcp__filesystem__read_text_file`, `write_file`, `edit_file`, ...) work there; the
//!   winner's final presentation leaves its files there, and `final.md` names it.
//! - `orchestrator.context_paths: [{path, permission: read|write, protected_paths: [...]}]`
//!   (and the same list under an agent's `backend:`, merged after the orchestrator's, which
//!   win on the same `path`, as in MassGen): shared project directories or single files.
//!   `read` (the default) is read-only; `write` is writable only during the final
//!   presentation. `protected_paths` inside a `write` path stay read-only. Each must exist
//!   when the agent starts.
//! - `orchestrator.agent_temporary_workspace`: the root under which each agent sees its peers'
//!   answer snapshots, read-only (`<root>/<agent id>/agent1.1/...`). Default:
//!   `<session dir>/peers/<agent id>`.
//! - `orchestrator.snapshot_storage`: where answer snapshots are stored; kept in
//!   `OrchestratorSettings::snapshot_storage` for the snapshot layer.
//! - Limits, under `orchestrator:` (they apply to every agent): `snapshot_max_bytes` (one
//!   answer's snapshot, default 64 MiB), `snapshot_max_files` (2000), `max_file_read_bytes`
//!   (what one file tool call reads into a prompt, 256 KiB). An agent's `backend:` may set its
//!   own `max_file_read_bytes`, beside `max_tool_result_bytes`.
//!
//! Who gets a workspace: an agent with `cwd`, an agent with the command tool
//! (`enable_mcp_command_line`, whose commands run there), or any agent when context paths
//! apply to it. An agent with none of these has no file tools. Without `cwd` the session chooses
//! `<session dir>/workspaces/<agent id>` (see `crate::session::place_workspaces`).
//!
//! Where relative paths point, and why: relative to the config file's directory (or the
//! current directory for a config that is not a file), like every other path in a config, so
//! a config means the same wherever it is run from. (MassGen resolves them against the current
//! directory and moves relative `cwd`s under `.massgen/workspaces/`; conclave does neither.)
//! For an agent placed on a node (`node:`) relative paths stay relative and the node resolves
//! them against its `--work-dir`: the orchestrator does not know the node's file system.
//! Two agents of the same machine may not share a `cwd` (MassGen refuses it too).
//!
//! A config submitted to `conclave server` (untrusted) may not name directories of the server:
//! these keys are refused there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use conclave_protocol::config::AgentSpec;
use conclave_protocol::tools::{
    ContextPath, ContextPermission, FILESYSTEM_TOOLS, WorkspaceLimits, WorkspaceSpec,
};

use super::error::ConfigError;
use super::tree::{Ctx, Expansion, Field, Fields, Node, optional};

/// The smallest and largest `max_file_read_bytes`.
const READ_BYTES: (u64, u64) = (256, 64 * 1024 * 1024);

/// The orchestrator-level workspace keys.
#[derive(Debug, Default)]
pub(crate) struct SharedWorkspace {
    pub context_paths: Vec<ContextPath>,
    pub temporary_root: Option<String>,
    pub limits: WorkspaceLimits,
}

fn refuse_untrusted(ctx: &Ctx<'_>, path: &str) -> Result<(), ConfigError> {
    if ctx.expansion == Expansion::Off {
        return Err(ctx.invalid(
            path,
            "a submitted config may not name directories of the server; remove the key (the \
             operator can set workspaces in a config file the server loads)",
        ));
    }
    Ok(())
}

fn directory(f: Field<'_, '_>, ctx: &Ctx<'_>) -> Result<String, ConfigError> {
    refuse_untrusted(ctx, f.path)?;
    f.non_empty_string(ctx, "a directory")
}

fn max_file_read_bytes(f: Field<'_, '_>, ctx: &Ctx<'_>) -> Result<u64, ConfigError> {
    f.integer_in(
        ctx,
        READ_BYTES.0,
        READ_BYTES.1,
        "a whole number of bytes from 256 to 67108864",
    )
}

/// `orchestrator:` keys: `context_paths`, `agent_temporary_workspace`, `snapshot_storage`
/// (returned apart) and the limits.
pub(crate) fn orchestrator_keys(
    fields: &mut Fields<'_>,
    ctx: &mut Ctx<'_>,
) -> Result<(SharedWorkspace, Option<String>), ConfigError> {
    let mut shared = SharedWorkspace::default();
    let path = fields.child_path("context_paths");
    if let Some(node) = fields.take("context_paths") {
        shared.context_paths = context_paths(node, &path, ctx)?;
    }
    shared.temporary_root = optional(fields, "agent_temporary_workspace", |f| directory(f, ctx))?;
    let storage = optional(fields, "snapshot_storage", |f| directory(f, ctx))?;
    if let Some(n) = optional(fields, "snapshot_max_bytes", |f| {
        f.integer_in(
            ctx,
            1024,
            1 << 40,
            "a whole number of bytes from 1024 to 2^40",
        )
    })? {
        shared.limits.snapshot_max_bytes = n;
    }
    if let Some(n) = optional(fields, "snapshot_max_files", |f| {
        f.integer_in(ctx, 1, 1_000_000, "a whole number from 1 to 1000000")
    })? {
        shared.limits.snapshot_max_files = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(n) = optional(fields, "max_file_read_bytes", |f| {
        max_file_read_bytes(f, ctx)
    })? {
        shared.limits.max_file_read_bytes = n;
    }
    Ok((shared, storage))
}

/// `backend:` keys: `cwd`, `context_paths`, `max_file_read_bytes`. `allowed` / `excluded` are
/// the backend's tool lists (full names); their `mcp__filesystem__` names filter the file
/// tools. Always a draft (see [`finish`]): an empty `cwd` means "not configured".
pub(crate) fn backend_keys(
    fields: &mut Fields<'_>,
    ctx: &mut Ctx<'_>,
    allowed: Option<&[String]>,
    excluded: &[String],
) -> Result<WorkspaceSpec, ConfigError> {
    let cwd = optional(fields, "cwd", |f| directory(f, ctx))?;
    let path = fields.child_path("context_paths");
    let context_paths = match fields.take("context_paths") {
        Some(node) => context_paths(node, &path, ctx)?,
        None => Vec::new(),
    };
    let read_bytes = optional(fields, "max_file_read_bytes", |f| {
        max_file_read_bytes(f, ctx)
    })?;
    let prefix = format!("mcp__{FILESYSTEM_TOOLS}__");
    let allowed_tools = allowed
        .map(|names| {
            names
                .iter()
                .filter(|n| n.starts_with(&prefix))
                .cloned()
                .collect::<Vec<_>>()
        })
        .filter(|names| !names.is_empty());
    Ok(WorkspaceSpec {
        configured: cwd.is_some(),
        cwd: cwd.unwrap_or_default(),
        peers_dir: String::new(),
        context_paths,
        limits: WorkspaceLimits {
            // `u64::MAX` marks "not set here" until `finish` applies the orchestrator's.
            max_file_read_bytes: read_bytes.unwrap_or(u64::MAX),
            ..WorkspaceLimits::default()
        },
        allowed_tools,
        exclude_tools: excluded.to_vec(),
    })
}

/// A `context_paths` list: mappings `{path, permission, protected_paths}`, or bare strings
/// (read-only, as MassGen reads them).
fn context_paths(
    node: &Node,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Vec<ContextPath>, ConfigError> {
    refuse_untrusted(ctx, path)?;
    let Node::List(items) = node else {
        return Err(ctx.wrong_type(
            path,
            "a list of `{path: ..., permission: read|write}`",
            node,
        ));
    };
    let mut list = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{index}]");
        if let Node::Str(_) = item {
            let path = Field {
                node: item,
                path: &item_path,
            }
            .non_empty_string(ctx, "a context path")?;
            list.push(ContextPath {
                path,
                permission: ContextPermission::Read,
                protected_paths: Vec::new(),
            });
            continue;
        }
        let mut fields = Fields::new(item, &item_path, "a mapping `{path, permission}`", ctx)?;
        let Some(path) = optional(&mut fields, "path", |f| f.non_empty_string(ctx, "`path`"))?
        else {
            return Err(ctx.missing(
                &fields.child_path("path"),
                "each context path needs `path:` (a directory or a file)",
            ));
        };
        let permission = optional(&mut fields, "permission", |f| {
            let text = f.string(ctx)?;
            match text.trim().to_ascii_lowercase().as_str() {
                "read" => Ok(ContextPermission::Read),
                "write" => Ok(ContextPermission::Write),
                _ => Err(ctx.invalid_value(
                    f.path,
                    text,
                    "`read` (read-only) or `write` (writable in the final presentation)",
                )),
            }
        })?
        .unwrap_or(ContextPermission::Read);
        let protected_path = fields.child_path("protected_paths");
        let protected_paths = match fields.take("protected_paths") {
            None => Vec::new(),
            Some(Node::List(entries)) => entries
                .iter()
                .enumerate()
                .map(|(i, node)| {
                    Field {
                        node,
                        path: &format!("{protected_path}[{i}]"),
                    }
                    .non_empty_string(ctx, "a protected path")
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(ctx.wrong_type(&protected_path, "a list of paths", other));
            }
        };
        fields.finish(&[], ctx);
        list.push(ContextPath {
            path,
            permission,
            protected_paths,
        });
    }
    Ok(list)
}

/// A file-system-safe directory name for agent `id` (ids may hold `/` or be `..`): letters,
/// digits, `.`, `_` and `-` kept, anything else `_`; `.` and `..` become `_`.
pub fn agent_dir_name(id: &str) -> String {
    let name: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.chars().all(|c| c == '.') {
        "_".repeat(name.len().max(1))
    } else {
        name
    }
}

/// `path` against `base` when relative, with `.` and `..` folded.
fn absolute(base: &Path, path: &str) -> String {
    let joined = base.join(path);
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out.display().to_string()
}

/// Completes every agent's workspace (see the module docs): the orchestrator's context paths
/// first, then the agent's own (an own entry with the same `path` is dropped); the
/// orchestrator's limits unless the agent set `max_file_read_bytes`; the peers' dir under
/// `agent_temporary_workspace`; no workspace for an agent with neither `cwd` nor context
/// paths. Relative paths of agents run here are resolved against `base`; two of them may not
/// share a `cwd`.
pub(crate) fn finish(
    agents: &mut [AgentSpec],
    shared: &SharedWorkspace,
    base: &Path,
    ctx: &Ctx<'_>,
) -> Result<(), ConfigError> {
    let mut cwds: HashMap<String, String> = HashMap::new();
    for (index, agent) in agents.iter_mut().enumerate() {
        let Some(mut spec) = agent.tools.workspace.take() else {
            continue;
        };
        let mut paths = shared.context_paths.clone();
        for own in spec.context_paths.drain(..) {
            if !paths.iter().any(|p| p.path == own.path) {
                paths.push(own);
            }
        }
        spec.context_paths = paths;
        // The command tool runs in the agent's workspace: it keeps one even without `cwd`
        // (the session places it under its directory, `session::place_workspaces`).
        if !spec.configured && spec.context_paths.is_empty() && agent.tools.command_line.is_none() {
            continue;
        }
        let read_bytes = spec.limits.max_file_read_bytes;
        spec.limits = shared.limits;
        if read_bytes != u64::MAX {
            spec.limits.max_file_read_bytes = read_bytes;
        }
        if let Some(root) = &shared.temporary_root {
            spec.peers_dir = Path::new(root)
                .join(agent_dir_name(&agent.id))
                .display()
                .to_string();
        }
        if agent.node.is_none() {
            if spec.configured {
                spec.cwd = absolute(base, &spec.cwd);
                if let Some(first) = cwds.insert(spec.cwd.clone(), agent.id.clone()) {
                    return Err(ctx.invalid(
                        &format!("agents[{index}].backend.cwd"),
                        format!(
                            "`{}` is already the `cwd` of agent `{first}`; each agent needs its \
                             own working directory",
                            spec.cwd
                        ),
                    ));
                }
            }
            if !spec.peers_dir.is_empty() {
                spec.peers_dir = absolute(base, &spec.peers_dir);
            }
            for context in &mut spec.context_paths {
                context.path = absolute(base, &context.path);
            }
        }
        agent.tools.workspace = Some(spec);
    }
    Ok(())
}

/// The snapshot storage directory, resolved against `base`.
pub(crate) fn storage_dir(storage: Option<String>, base: &Path) -> Option<String> {
    storage.map(|dir| absolute(base, &dir))
}
