//! An agent's tools: MassGen's `backend.mcp_servers`, `allowed_tools` / `exclude_tools`, the
//! tool-loop bounds, and the refusal of MassGen tool keys conclave does not run.
//!
//! Keys read from the `backend:` mapping:
//! - `mcp_servers`: a list of servers, each with `name`, or a mapping `{name: server}` (both
//!   forms appear in MassGen's examples). A server has `type: stdio` (`command`, `args`,
//!   `env`, `cwd`) or `type: streamable-http` (`url`, `headers`), and may have
//!   `allowed_tools`, `exclude_tools` (its tools' own names) and `optional: true` (a server
//!   that cannot start is left out instead of failing the session). MassGen's `security:` is
//!   read and ignored with a warning (conclave does not run MassGen's MCP security checks).
//! - `allowed_tools` / `exclude_tools` / `disallowed_tools`: MassGen's backend-level lists of
//!   full tool names (`mcp__{server}__{tool}`); `disallowed_tools` is another deny list, its
//!   `mcp__` names are excluded like `exclude_tools`. An allow list restricts MCP tools only
//!   when it names at least one `mcp__` tool (Claude Code configs list the CLI's own tools,
//!   `Read`, `Bash`, there; that backend passes both lists to the CLI).
//! - Bounds of the tool loop: `max_tool_rounds` (default 25), `tool_timeout_seconds` (60),
//!   `max_tool_result_bytes` (65536), `max_concurrent_tools` (4); MassGen's
//!   `concurrent_tool_execution: false` runs one call at a time.
//!
//! Choices, and why:
//! - **`${VAR}` is not expanded here** in any MCP value (command, args, env, cwd, url,
//!   headers): it is kept as text and expanded on the node that runs the agent, so a server's
//!   secrets never enter the resolved config, the journal or the cluster link. In a config
//!   submitted to `conclave server` (expansion off) a `${` there is refused like anywhere else,
//!   since the node would expand it from the server's environment.
//! - **A submitted config may not start programs**: `type: stdio` is refused when expansion
//!   is off (an untrusted config); its `streamable-http` URLs are checked by the server against
//!   its base-URL allow-list.
//! - **No MassGen key that changes what an agent can do loads with only a warning**:
//!   `custom_tools`, `enable_mcp_command_line`, `enable_*_generation`, `command_line_*`,
//!   `cwd` / `context_paths` (file-system tools), `mcp_servers` on `claude_code` (the CLI
//!   runs its own tool loop) are refused, naming the key, until conclave supports them. A key
//!   that is set to its "off" value (`false`, an empty list) is accepted.
//! - MassGen's legacy `type: sse` is refused with a hint to use `streamable-http`: rmcp, the
//!   official Rust SDK, no longer has an SSE client.

use conclave_protocol::config::WireFormat;
use conclave_protocol::tools::{
    AgentTools, McpServerSpec, McpTransport, ToolLimits, WorkspaceLimits, WorkspaceSpec,
};

use super::env::refuse_references;
use super::error::ConfigError;
use super::tree::{Ctx, Expansion, Field, Fields, Node, optional};

/// Backend keys that give an agent abilities conclave does not have yet, with the reason.
const REFUSED: &[(&str, &str)] = &[
    (
        "custom_tools",
        "MassGen's Python custom tools are not supported yet by conclave; use an MCP server \
         (`mcp_servers`) for the tool, or remove the key",
    ),
    (
        "enable_mcp_command_line",
        "MassGen's command-line MCP tool is not supported yet by conclave; remove the key or \
         set it to false",
    ),
    (
        "enable_image_generation",
        "image generation is not supported yet by conclave; remove the key or set it to false",
    ),
    (
        "enable_audio_generation",
        "audio generation is not supported yet by conclave; remove the key or set it to false",
    ),
    (
        "enable_video_generation",
        "video generation is not supported yet by conclave; remove the key or set it to false",
    ),
    (
        "enable_file_generation",
        "file generation is not supported yet by conclave; remove the key or set it to false",
    ),
    (
        "context_paths",
        "MassGen's file-system context paths are not supported yet by conclave; remove the key",
    ),
];

/// Prefix of MassGen's command-line execution keys (`command_line_execution_mode`, ...).
const COMMAND_LINE_PREFIX: &str = "command_line_";

/// Whether a value turns a feature on: anything but null, `false`, `""`, `[]` or `{}`.
pub(crate) fn is_on(node: &Node) -> bool {
    match node {
        Node::Null | Node::Bool(false) => false,
        Node::Str(s) => !s.trim().is_empty() && !s.trim().eq_ignore_ascii_case("false"),
        Node::List(items) => !items.is_empty(),
        Node::Map(entries) => !entries.is_empty(),
        _ => true,
    }
}

/// Refuses the first key of `refused` that `fields` sets to an "on" value (see [`is_on`]),
/// with its reason; an "off" value is read and accepted.
pub(crate) fn refuse_keys(
    fields: &mut Fields<'_>,
    refused: &[(&str, &str)],
    ctx: &Ctx<'_>,
) -> Result<(), ConfigError> {
    for (key, why) in refused {
        let path = fields.child_path(key);
        if let Some(node) = fields.take(key)
            && is_on(node)
        {
            return Err(ctx.invalid(&path, *why));
        }
    }
    Ok(())
}

/// Reads the tool keys of one `backend:` mapping (before its unknown keys are reported).
pub(crate) fn resolve(
    fields: &mut Fields<'_>,
    wire: WireFormat,
    ctx: &mut Ctx<'_>,
) -> Result<AgentTools, ConfigError> {
    let workspace = snapshot_workspace(fields, wire, ctx)?;
    refuse_keys(fields, REFUSED, ctx)?;
    refuse_keys(fields, super::massgen::BACKEND_REFUSED, ctx)?;
    for key in fields.keys_with_prefix(COMMAND_LINE_PREFIX) {
        let path = fields.child_path(&key);
        if let Some(node) = fields.take(&key)
            && is_on(node)
        {
            return Err(ctx.invalid(
                &path,
                "MassGen's command-line execution is not supported yet by conclave; remove \
                 the `command_line_*` keys",
            ));
        }
    }

    let limits = limits(fields, ctx)?;
    let allowed = optional(fields, "allowed_tools", |f| name_list(f, ctx))?;
    let mut excluded =
        optional(fields, "exclude_tools", |f| name_list(f, ctx))?.unwrap_or_default();
    // MassGen's `disallowed_tools` (written for Claude Code) is a deny list too: its `mcp__`
    // names keep MCP tools from being offered; the others name tools only the Claude Code CLI
    // has, which that backend passes to the CLI (`--disallowedTools`, module `backend`).
    if let Some(disallowed) = optional(fields, "disallowed_tools", |f| name_list(f, ctx))? {
        excluded.extend(disallowed.into_iter().filter(|n| n.starts_with("mcp__")));
    }

    let servers_path = fields.child_path("mcp_servers");
    let mut servers = match fields.take("mcp_servers") {
        None => Vec::new(),
        Some(node) => {
            if wire == WireFormat::ClaudeCode && is_on(node) {
                return Err(ctx.invalid(
                    &servers_path,
                    "MCP servers of a `claude_code` backend are not supported yet by conclave \
                     (the Claude Code CLI runs its own tools); remove `mcp_servers` or use \
                     another backend type",
                ));
            }
            mcp_servers(node, &servers_path, ctx)?
        }
    };

    // MassGen's backend-level lists name tools in full (`mcp__server__tool`).
    let allow_mcp: Option<Vec<String>> = allowed
        .filter(|names| names.iter().any(|n| n.starts_with("mcp__")))
        .map(|names| {
            names
                .into_iter()
                .filter(|n| n.starts_with("mcp__"))
                .collect()
        });
    for server in &mut servers {
        if let Some(allow) = &allow_mcp {
            let prefix = format!("mcp__{}__", server.name);
            let mine: Vec<String> = allow
                .iter()
                .filter(|n| n.starts_with(&prefix))
                .cloned()
                .collect();
            server
                .allowed_tools
                .get_or_insert_with(Vec::new)
                .extend(mine);
        }
        server.exclude_tools.extend(excluded.iter().cloned());
    }
    Ok(AgentTools {
        mcp_servers: servers,
        limits,
        workspace,
        ..AgentTools::default()
    })
}

/// A MINIMAL reading of `backend.cwd` into a [`WorkspaceSpec`], so workspace snapshots can be
/// exercised end to end before the full workspace loader (file tools, `context_paths`,
/// `agent_temporary_workspace`, snapshot limits as keys) lands; that loader replaces this
/// function. `cwd` is kept as written (the session resolves it, see
/// `crate::snapshots::resolve_workspaces`); `peers_dir` is left empty for the session's default.
/// A config submitted to the server (expansion off) may not name directories of the
/// orchestrator's machine; `claude_code` keeps refusing it (its CLI has its own `cwd`).
fn snapshot_workspace(
    fields: &mut Fields<'_>,
    wire: WireFormat,
    ctx: &Ctx<'_>,
) -> Result<Option<WorkspaceSpec>, ConfigError> {
    let path = fields.child_path("cwd");
    let Some(node) = fields.take("cwd") else {
        return Ok(None);
    };
    if !is_on(node) {
        return Ok(None);
    }
    if wire == WireFormat::ClaudeCode {
        return Err(ctx.invalid(
            &path,
            "`cwd` of a `claude_code` backend is not supported yet by conclave; pass the CLI's \
             working directory as `extra_body: {cwd: ...}`",
        ));
    }
    if ctx.expansion == Expansion::Off {
        return Err(ctx.invalid(
            &path,
            "a config submitted to the server may not name a workspace directory; remove `cwd`",
        ));
    }
    let cwd = raw_string(Field { node, path: &path }, ctx, "a directory")?;
    Ok(Some(WorkspaceSpec {
        cwd,
        configured: true,
        peers_dir: String::new(),
        context_paths: Vec::new(),
        limits: WorkspaceLimits::default(),
    }))
}

fn limits(fields: &mut Fields<'_>, ctx: &Ctx<'_>) -> Result<ToolLimits, ConfigError> {
    let mut limits = ToolLimits::default();
    if let Some(n) = optional(fields, "max_tool_rounds", |f| {
        f.integer_in(ctx, 0, 10_000, "a whole number from 0 to 10000")
    })? {
        limits.max_tool_rounds = u32::try_from(n).unwrap_or(10_000);
    }
    if let Some(n) = optional(fields, "tool_timeout_seconds", |f| {
        f.integer_in(ctx, 1, 86_400, "a whole number of seconds from 1 to 86400")
    })? {
        limits.tool_timeout_seconds = n;
    }
    if let Some(n) = optional(fields, "max_tool_result_bytes", |f| {
        f.integer_in(
            ctx,
            256,
            64 * 1024 * 1024,
            "a whole number of bytes from 256 to 67108864",
        )
    })? {
        limits.max_tool_result_bytes = n;
    }
    if let Some(n) = optional(fields, "max_concurrent_tools", |f| {
        f.integer_in(ctx, 1, 64, "a whole number from 1 to 64")
    })? {
        limits.max_concurrent_tools = u32::try_from(n).unwrap_or(64);
    }
    if optional(fields, "concurrent_tool_execution", |f| f.bool(ctx))? == Some(false) {
        limits.max_concurrent_tools = 1;
    }
    Ok(limits)
}

/// A list of tool names (a single string counts as a list of one).
fn name_list(f: Field<'_, '_>, ctx: &Ctx<'_>) -> Result<Vec<String>, ConfigError> {
    let items: Vec<&Node> = match f.node {
        Node::List(items) => items.iter().collect(),
        Node::Str(_) => vec![f.node],
        other => return Err(ctx.wrong_type(f.path, "a list of tool names", other)),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, node)| {
            let path = format!("{}[{i}]", f.path);
            match node {
                Node::Str(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
                other => Err(ctx.wrong_type(&path, "a tool name", other)),
            }
        })
        .collect()
}

/// `mcp_servers`: a list of mappings with `name`, or a mapping from name to server.
fn mcp_servers(
    node: &Node,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Vec<McpServerSpec>, ConfigError> {
    let mut servers: Vec<McpServerSpec> = Vec::new();
    match node {
        Node::List(items) => {
            for (i, item) in items.iter().enumerate() {
                servers.push(server(item, &format!("{path}[{i}]"), None, ctx)?);
            }
        }
        Node::Map(entries) => {
            // A single server written as a mapping with `type` (MassGen accepts it too).
            if entries.iter().any(|(k, _)| k == "type") {
                servers.push(server(node, path, None, ctx)?);
            } else {
                for (name, item) in entries {
                    servers.push(server(item, &format!("{path}.{name}"), Some(name), ctx)?);
                }
            }
        }
        other => {
            return Err(ctx.wrong_type(
                path,
                "a list of MCP servers (each with `name` and `type`) or a mapping from server \
                 name to server",
                other,
            ));
        }
    }
    for (i, a) in servers.iter().enumerate() {
        if servers[..i].iter().any(|b| b.name == a.name) {
            return Err(ctx.invalid(
                path,
                format!(
                    "two MCP servers are named `{}`; tool names must be unique",
                    a.name
                ),
            ));
        }
    }
    Ok(servers)
}

/// A string kept as written (`${VAR}` unexpanded, for the node that runs the agent); in an
/// untrusted config a `${` reference is refused.
fn raw_string(f: Field<'_, '_>, ctx: &Ctx<'_>, what: &str) -> Result<String, ConfigError> {
    let text = match f.node {
        Node::Str(s) => s.clone(),
        Node::Int(i) => i.to_string(),
        Node::Float(x) => x.to_string(),
        Node::Bool(b) => b.to_string(),
        other => return Err(ctx.wrong_type(f.path, what, other)),
    };
    if ctx.expansion == Expansion::Off {
        refuse_references(&text, &ctx.origin, f.path)?;
    }
    Ok(text)
}

fn raw_pairs(f: Field<'_, '_>, ctx: &Ctx<'_>) -> Result<Vec<(String, String)>, ConfigError> {
    let Node::Map(entries) = f.node else {
        return Err(ctx.wrong_type(f.path, "a mapping of names to values", f.node));
    };
    entries
        .iter()
        .filter(|(_, v)| *v != Node::Null)
        .map(|(k, v)| {
            let path = format!("{}.{k}", f.path);
            let value = raw_string(
                Field {
                    node: v,
                    path: &path,
                },
                ctx,
                "a string value",
            )?;
            Ok((k.clone(), value))
        })
        .collect()
}

/// A server name: it becomes part of tool names, so letters, digits, `_` and `-` only.
fn check_name(name: &str, path: &str, ctx: &Ctx<'_>) -> Result<String, ConfigError> {
    let name = name.trim();
    if name.is_empty()
        || name.len() > 40
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ctx.invalid(
            path,
            "an MCP server name must be 1 to 40 letters, digits, `_` or `-` (it becomes part \
             of the tool names, `mcp__{server}__{tool}`)",
        ));
    }
    Ok(name.to_owned())
}

fn server(
    node: &Node,
    path: &str,
    key_name: Option<&str>,
    ctx: &mut Ctx<'_>,
) -> Result<McpServerSpec, ConfigError> {
    let mut fields = Fields::new(node, path, "an MCP server mapping with `type`", ctx)?;
    let name_path = fields.child_path("name");
    let named = optional(&mut fields, "name", |f| raw_string(f, ctx, "a server name"))?;
    let name = match (named, key_name) {
        (Some(name), _) => check_name(&name, &name_path, ctx)?,
        (None, Some(key)) => check_name(key, path, ctx)?,
        (None, None) => {
            return Err(ctx.missing(
                &name_path,
                "every MCP server needs a `name`, e.g. `name: weather`",
            ));
        }
    };
    let type_path = fields.child_path("type");
    let kind = optional(&mut fields, "type", |f| f.non_empty_string(ctx, "`type`"))?;
    let kind = match kind {
        Some(kind) => kind.to_ascii_lowercase().replace('_', "-"),
        // MassGen infers the transport from `command` / `url`.
        None if fields.has("command") => "stdio".to_owned(),
        None if fields.has("url") => "streamable-http".to_owned(),
        None => {
            return Err(ctx.missing(
                &type_path,
                "an MCP server needs `type: stdio` (with `command`) or `type: streamable-http` \
                 (with `url`)",
            ));
        }
    };
    let transport = match kind.as_str() {
        "stdio" => {
            if ctx.expansion == Expansion::Off {
                return Err(ctx.invalid(
                    &type_path,
                    "a submitted config may not start programs: MCP servers of `type: stdio` \
                     are refused in configs submitted to the server; use a `streamable-http` \
                     server under an allowed base URL",
                ));
            }
            let command_path = fields.child_path("command");
            let command = optional(&mut fields, "command", |f| raw_string(f, ctx, "a command"))?
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| {
                    ctx.missing(
                        &command_path,
                        "a stdio MCP server needs `command`, e.g. `command: npx`",
                    )
                })?;
            let args = optional(&mut fields, "args", |f| match f.node {
                Node::List(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let path = format!("{}[{i}]", f.path);
                        raw_string(
                            Field {
                                node: item,
                                path: &path,
                            },
                            ctx,
                            "a string argument",
                        )
                    })
                    .collect::<Result<Vec<_>, _>>(),
                Node::Str(_) => raw_string(f, ctx, "a list of arguments").map(|a| vec![a]),
                other => Err(ctx.wrong_type(f.path, "a list of arguments", other)),
            })?
            .unwrap_or_default();
            let env = optional(&mut fields, "env", |f| raw_pairs(f, ctx))?.unwrap_or_default();
            let cwd = optional(&mut fields, "cwd", |f| raw_string(f, ctx, "a directory"))?;
            McpTransport::Stdio {
                command: command.trim().to_owned(),
                args,
                env,
                cwd,
            }
        }
        "streamable-http" | "http" => {
            let url_path = fields.child_path("url");
            let url = optional(&mut fields, "url", |f| raw_string(f, ctx, "a URL"))?
                .ok_or_else(|| {
                    ctx.missing(
                        &url_path,
                        "a streamable-http MCP server needs `url`, e.g. `url: http://localhost:8000/mcp`",
                    )
                })?;
            let url = url.trim().to_owned();
            let expanded_later = url.contains("${");
            if !(expanded_later || url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ctx.invalid(
                    &url_path,
                    "must be an http(s) URL, e.g. `http://localhost:8000/mcp`",
                ));
            }
            let headers =
                optional(&mut fields, "headers", |f| raw_pairs(f, ctx))?.unwrap_or_default();
            McpTransport::StreamableHttp { url, headers }
        }
        "sse" => {
            return Err(ctx.invalid(
                &type_path,
                "MCP's legacy SSE transport is not supported by conclave (the official Rust SDK \
                 dropped it); most servers also speak `type: streamable-http` at their `/mcp` URL",
            ));
        }
        other => {
            return Err(ctx.invalid_value(&type_path, other, "`stdio` or `streamable-http`"));
        }
    };
    let allowed = optional(&mut fields, "allowed_tools", |f| name_list(f, ctx))?;
    let excluded =
        optional(&mut fields, "exclude_tools", |f| name_list(f, ctx))?.unwrap_or_default();
    let optional_server = optional(&mut fields, "optional", |f| f.bool(ctx))?.unwrap_or(false);
    if fields.take("security").is_some() {
        ctx.warn(
            fields.child_path("security"),
            "MassGen's MCP security checks are not run by conclave, ignored",
        );
    }
    fields.finish(&[], ctx);
    Ok(McpServerSpec {
        name,
        transport,
        allowed_tools: allowed,
        exclude_tools: excluded,
        optional: optional_server,
    })
}
