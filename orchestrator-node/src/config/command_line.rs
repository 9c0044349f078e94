//! The command tool: MassGen's `enable_mcp_command_line` and its `command_line_*` backend keys.
//!
//! Keys read from the `backend:` mapping (MassGen's names and defaults, except where noted):
//! - `enable_mcp_command_line: true` gives the agent `mcp__command_line__execute_command`
//!   (agent-node module `tools::command`).
//! - `command_line_execution_mode`: `local` (default) or `docker`.
//! - `command_line_allowed_commands` / `command_line_blocked_commands`: regular expressions
//!   (a list, or one string), matched at the start of the command as MassGen's `re.match`
//!   does. Each is compiled here, so a pattern conclave's regex engine cannot take (Python's
//!   look-arounds, back-references) fails the load naming it, not the first command.
//! - Docker mode: `command_line_docker_image` (default `conclave-runner:full`, built by
//!   `deploy/runner-image/build.sh`; MassGen's `massgen/mcp-runtime` cannot be pulled),
//!   `command_line_docker_network_mode` (`none` by default, `bridge` or `host`),
//!   `command_line_docker_memory_limit` (`512m`, `2g`), `command_line_docker_cpu_limit` (a
//!   number of CPUs).
//! - conclave's own bounds (MassGen fixes them in its server: 60 s, 1 MB per stream):
//!   `command_line_timeout_seconds` (default 120; the model's `timeout` argument may only lower
//!   it) and `command_line_max_output_bytes` (default 65536, stdout and stderr together).
//!
//! Refused, naming the key: `command_line_docker_enable_sudo: true`,
//! `command_line_docker_credentials`, `command_line_docker_packages` (they change what a
//! container can reach or holds, and conclave does not implement them), any other
//! `command_line_*` key, the command tool on a `claude_code` backend (the CLI has its own Bash
//! tool, restricted with `allowed_tools` / `disallowed_tools`), and local mode in a config
//! submitted to `conclave server` (it would run the model's commands on the server's machine
//! unconfined; docker mode with network `none` or `bridge` is accepted there).
//! `command_line_*` keys without `enable_mcp_command_line: true` do nothing, as in MassGen,
//! and are reported with a warning.

use conclave_agent::tools::command::compile_pattern;
use conclave_protocol::config::WireFormat;
use conclave_protocol::tools::{
    CommandLineSpec, CommandMode, DEFAULT_COMMAND_MAX_OUTPUT_BYTES, DEFAULT_COMMAND_TIMEOUT_SECONDS,
};

use super::error::ConfigError;
use super::tree::{Ctx, Expansion, Field, Fields, Node, optional};

/// The switch.
const ENABLE: &str = "enable_mcp_command_line";
/// Prefix of the settings.
const PREFIX: &str = "command_line_";
/// The image used when the config names none.
pub const DEFAULT_DOCKER_IMAGE: &str = "conclave-runner:full";
/// The network mode used when the config names none.
const DEFAULT_NETWORK_MODE: &str = "none";

/// MassGen keys conclave refuses when set, with the reason.
const REFUSED: &[(&str, &str)] = &[
    (
        "command_line_docker_enable_sudo",
        "sudo in the runner container is not supported by conclave; remove the key or set it \
         to false (install what the commands need into the image instead, see \
         deploy/runner-image/build.sh)",
    ),
    (
        "command_line_docker_credentials",
        "passing credentials into the runner container is not supported by conclave (the \
         command tool never sees the node's secrets); remove the key",
    ),
    (
        "command_line_docker_packages",
        "installing packages into the runner container at start is not supported by conclave \
         (no registry is reachable); build them into the image (deploy/runner-image/build.sh) \
         and remove the key",
    ),
];

/// The keys this module reads.
const KNOWN: &[&str] = &[
    "command_line_execution_mode",
    "command_line_allowed_commands",
    "command_line_blocked_commands",
    "command_line_docker_image",
    "command_line_docker_network_mode",
    "command_line_docker_memory_limit",
    "command_line_docker_cpu_limit",
    "command_line_timeout_seconds",
    "command_line_max_output_bytes",
];

/// Keys that only matter in docker mode.
const DOCKER_ONLY: &[&str] = &[
    "command_line_docker_image",
    "command_line_docker_network_mode",
    "command_line_docker_memory_limit",
    "command_line_docker_cpu_limit",
];

/// Reads the command tool's keys of one `backend:` mapping; `None` when it is not enabled.
pub(crate) fn resolve(
    fields: &mut Fields<'_>,
    wire: WireFormat,
    ctx: &mut Ctx<'_>,
) -> Result<Option<CommandLineSpec>, ConfigError> {
    let enable_path = fields.child_path(ENABLE);
    let enabled = optional(fields, ENABLE, |f| f.bool(ctx))?.unwrap_or(false);
    super::tools::refuse_keys(fields, REFUSED, ctx)?;
    let refused = |key: &str| REFUSED.iter().any(|(k, _)| *k == key);
    for key in fields.keys_with_prefix(PREFIX) {
        if !KNOWN.contains(&key.as_str()) && !refused(&key) {
            return Err(ctx.invalid(
                &fields.child_path(&key),
                format!(
                    "`{key}` is not a command-line setting conclave supports (it reads {}); \
                     remove the key",
                    KNOWN.join(", ")
                ),
            ));
        }
    }
    if !enabled {
        for key in fields.keys_with_prefix(PREFIX) {
            if refused(&key) {
                continue;
            }
            let path = fields.child_path(&key);
            fields.take(&key);
            ctx.warn(
                path,
                "ignored: the command tool is off (set `enable_mcp_command_line: true` to use it)",
            );
        }
        return Ok(None);
    }
    if wire == WireFormat::ClaudeCode {
        return Err(ctx.invalid(
            &enable_path,
            "the command tool of a `claude_code` backend is not supported by conclave (the \
             Claude Code CLI runs commands with its own Bash tool; restrict it with \
             `allowed_tools` / `disallowed_tools`); remove the key or use another backend type",
        ));
    }

    let mode_path = fields.child_path("command_line_execution_mode");
    let docker = match optional(fields, "command_line_execution_mode", |f| {
        f.non_empty_string(ctx, "`command_line_execution_mode`")
    })? {
        None => false,
        Some(mode) => match mode.to_ascii_lowercase().as_str() {
            "local" => false,
            "docker" => true,
            _ => return Err(ctx.invalid_value(&mode_path, mode, "`local` or `docker`")),
        },
    };
    let allowed = patterns(fields, "command_line_allowed_commands", ctx)?;
    let blocked = patterns(fields, "command_line_blocked_commands", ctx)?;
    let timeout_seconds = optional(fields, "command_line_timeout_seconds", |f| {
        f.integer_in(ctx, 1, 86_400, "a whole number of seconds from 1 to 86400")
    })?
    .unwrap_or(DEFAULT_COMMAND_TIMEOUT_SECONDS);
    let max_output_bytes = optional(fields, "command_line_max_output_bytes", |f| {
        f.integer_in(
            ctx,
            256,
            64 * 1024 * 1024,
            "a whole number of bytes from 256 to 67108864",
        )
    })?
    .unwrap_or(DEFAULT_COMMAND_MAX_OUTPUT_BYTES);

    let mode = if docker {
        docker_mode(fields, ctx)?
    } else {
        if ctx.expansion == Expansion::Off {
            return Err(ctx.invalid(
                &enable_path,
                "a submitted config may not run commands on the server's machine: the command \
                 tool is refused in local mode in configs submitted to the server; use \
                 `command_line_execution_mode: docker`",
            ));
        }
        for key in DOCKER_ONLY {
            if fields.take(key).is_some() {
                ctx.warn(
                    fields.child_path(key),
                    "ignored: it only applies with `command_line_execution_mode: docker`",
                );
            }
        }
        CommandMode::Local
    };
    Ok(Some(CommandLineSpec {
        mode,
        allowed_commands: allowed,
        blocked_commands: blocked,
        timeout_seconds,
        max_output_bytes,
    }))
}

/// The docker settings.
fn docker_mode(fields: &mut Fields<'_>, ctx: &mut Ctx<'_>) -> Result<CommandMode, ConfigError> {
    let image = optional(fields, "command_line_docker_image", |f| {
        f.non_empty_string(ctx, "`command_line_docker_image`")
    })?
    .unwrap_or_else(|| DEFAULT_DOCKER_IMAGE.to_owned());
    if image.starts_with('-') || image.chars().any(char::is_whitespace) {
        return Err(ctx.invalid(
            &fields.child_path("command_line_docker_image"),
            "must be an image name such as `conclave-runner:full`",
        ));
    }
    let network_path = fields.child_path("command_line_docker_network_mode");
    let network_mode = optional(fields, "command_line_docker_network_mode", |f| {
        f.non_empty_string(ctx, "`command_line_docker_network_mode`")
    })?
    .map(|m| m.to_ascii_lowercase())
    .unwrap_or_else(|| DEFAULT_NETWORK_MODE.to_owned());
    if !["none", "bridge", "host"].contains(&network_mode.as_str()) {
        return Err(ctx.invalid_value(&network_path, network_mode, "`none`, `bridge` or `host`"));
    }
    if network_mode == "host" && ctx.expansion == Expansion::Off {
        return Err(ctx.invalid(
            &network_path,
            "a submitted config may not give its commands the server's network: `host` is \
             refused in configs submitted to the server; use `none` or `bridge`",
        ));
    }
    let memory_path = fields.child_path("command_line_docker_memory_limit");
    let memory_limit = optional(fields, "command_line_docker_memory_limit", |f| {
        match f.node {
            Node::Int(n) => Ok(n.to_string()),
            _ => f.non_empty_string(ctx, "`command_line_docker_memory_limit`"),
        }
    })?;
    if let Some(memory) = &memory_limit
        && !is_memory_size(memory)
    {
        return Err(ctx.invalid_value(
            &memory_path,
            memory,
            "a size as docker takes it: a number with an optional unit b, k, m or g (`512m`, \
             `2g`)",
        ));
    }
    let cpu_limit = optional(fields, "command_line_docker_cpu_limit", |f| {
        f.number_in(ctx, 0.01, 1024.0)
    })?
    .map(|cpus| cpus.to_string());
    Ok(CommandMode::Docker {
        image,
        network_mode,
        memory_limit,
        cpu_limit,
    })
}

/// `512m`, `2g`, `1024`: digits with an optional decimal part and unit.
fn is_memory_size(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    let number = lower.trim_end_matches(['b', 'k', 'm', 'g']);
    let unit_len = lower.len() - number.len();
    unit_len <= 1
        && !number.is_empty()
        && number
            .parse::<f64>()
            .is_ok_and(|x| x > 0.0 && x.is_finite())
}

/// A list of regular expressions (one string counts as a list of one), each compiled.
fn patterns(fields: &mut Fields<'_>, key: &str, ctx: &Ctx<'_>) -> Result<Vec<String>, ConfigError> {
    optional(fields, key, |f: Field<'_, '_>| {
        let items: Vec<&Node> = match f.node {
            Node::Null => Vec::new(),
            Node::List(items) => items.iter().collect(),
            Node::Str(_) => vec![f.node],
            other => return Err(ctx.wrong_type(f.path, "a list of regular expressions", other)),
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, node)| {
                let path = format!("{}[{i}]", f.path);
                let pattern = Field { node, path: &path }.string(ctx)?;
                compile_pattern(&pattern).map_err(|problem| ctx.invalid(&path, problem))?;
                Ok(pattern)
            })
            .collect()
    })
    .map(Option::unwrap_or_default)
}
