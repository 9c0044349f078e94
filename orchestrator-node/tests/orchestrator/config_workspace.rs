//! MassGen's workspace keys through the loader: `backend.cwd`, `context_paths`,
//! `agent_temporary_workspace`, `snapshot_storage` and the workspace limits, where relative
//! paths point, and what is refused.

use conclave::config::{ConfigError, LoadedConfig, load_file, load_str, load_str_untrusted};
use conclave::session::place_workspaces;
use conclave_protocol::SessionId;
use conclave_protocol::tools::{ContextPath, ContextPermission, WorkspaceLimits};

fn no_env(_: &str) -> Option<String> {
    None
}

/// Writes `yaml` as `conf/session.yaml` under a scratch dir and loads it.
fn load_in_dir(yaml: &str) -> (tempfile::TempDir, std::path::PathBuf, LoadedConfig) {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    std::fs::create_dir_all(root.join("conf")).unwrap();
    let file = root.join("conf/session.yaml");
    std::fs::write(&file, yaml).unwrap();
    let loaded = load_file(&file, &no_env).unwrap_or_else(|e| panic!("does not load: {e}"));
    (dir, root, loaded)
}

fn load_err(yaml: &str) -> ConfigError {
    match load_str(yaml, "ws.yaml", &no_env) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

const TWO_AGENTS: &str = "\
agents:
  - id: a1
    backend: {type: openai, model: m, cwd: ws1, max_file_read_bytes: 4096}
  - id: a2
    backend: {type: openai, model: m, cwd: /abs/ws2, exclude_tools: [mcp__filesystem__delete_file]}
  - id: far
    node: gpu-1
    backend: {type: openai, model: m, cwd: remote/ws}
  - id: plain
    backend: {type: openai, model: m}
orchestrator:
  snapshot_storage: snaps
  agent_temporary_workspace: ../temp
  snapshot_max_bytes: 1048576
  snapshot_max_files: 50
  max_file_read_bytes: 8192
  context_paths:
    - path: project
      permission: write
      protected_paths: [Cargo.lock]
    - docs
";

#[test]
fn workspaces_resolve_against_the_config_directory_and_merge_the_orchestrator_keys() {
    let (_dir, root, loaded) = load_in_dir(TWO_AGENTS);
    let config = &loaded.config;
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    let conf = root.join("conf");
    let shown = |p: std::path::PathBuf| p.display().to_string();

    let a1 = config.agents[0]
        .tools
        .workspace
        .as_ref()
        .expect("a1 has a workspace");
    assert!(a1.configured);
    assert_eq!(a1.cwd, shown(conf.join("ws1")));
    assert_eq!(a1.peers_dir, shown(root.join("temp/a1")));
    assert_eq!(
        a1.context_paths,
        vec![
            ContextPath {
                path: shown(conf.join("project")),
                permission: ContextPermission::Write,
                protected_paths: vec!["Cargo.lock".into()],
            },
            ContextPath {
                path: shown(conf.join("docs")),
                permission: ContextPermission::Read,
                protected_paths: Vec::new(),
            },
        ]
    );
    assert_eq!(
        a1.limits,
        WorkspaceLimits {
            snapshot_max_bytes: 1_048_576,
            snapshot_max_files: 50,
            // The agent's own value wins over the orchestrator's.
            max_file_read_bytes: 4096,
        }
    );
    assert_eq!(a1.allowed_tools, None);

    let a2 = config.agents[1].tools.workspace.as_ref().unwrap();
    assert_eq!(a2.cwd, "/abs/ws2");
    assert_eq!(a2.limits.max_file_read_bytes, 8192);
    assert_eq!(
        a2.exclude_tools,
        vec!["mcp__filesystem__delete_file".to_owned()]
    );

    // On a node: relative paths stay relative, for the node's --work-dir.
    let far = config.agents[2].tools.workspace.as_ref().unwrap();
    assert_eq!(far.cwd, "remote/ws");
    assert_eq!(far.peers_dir, "../temp/far");
    assert_eq!(far.context_paths[0].path, "project");

    // Context paths alone give a workspace whose directory the session chooses.
    let plain = config.agents[3].tools.workspace.as_ref().unwrap();
    assert!(!plain.configured);
    assert_eq!(plain.cwd, "");
    assert_eq!(
        config.orchestrator.snapshot_storage.as_deref(),
        Some(shown(conf.join("snaps")).as_str())
    );
}

#[test]
fn the_session_places_the_directories_the_config_left_open() {
    let mut config = load_str(
        "agents:\n  - id: a\n    backend: {type: openai, model: m}\n  - id: b\n    node: n1\n    \
         backend: {type: openai, model: m}\n  - id: c\n    backend: {type: openai, model: m, cwd: /w/c}\n\
         orchestrator:\n  context_paths: [/srv/project]\n",
        "ws.yaml",
        &no_env,
    )
    .unwrap()
    .config;
    let session = SessionId("20250101-000000-abcdef".into());
    place_workspaces(
        &mut config,
        &session,
        std::path::Path::new("/var/sessions/s1"),
    );
    let ws = |i: usize| config.agents[i].tools.workspace.clone().unwrap();
    assert_eq!(ws(0).cwd, "/var/sessions/s1/workspaces/a");
    assert_eq!(ws(0).peers_dir, "/var/sessions/s1/peers/a");
    assert_eq!(ws(1).cwd, "workspaces/20250101-000000-abcdef/b");
    assert_eq!(ws(1).peers_dir, "peers/20250101-000000-abcdef/b");
    assert_eq!(ws(2).cwd, "/w/c");
    assert!(ws(2).configured && !ws(0).configured);
}

#[test]
fn file_tool_names_in_allowed_tools_filter_the_file_tools() {
    let config = load_str(
        "agent:\n  backend: {type: openai, model: m, cwd: /w, allowed_tools: \
         [mcp__filesystem__read_text_file, mcp__other__x]}\n",
        "ws.yaml",
        &no_env,
    )
    .unwrap()
    .config;
    let ws = config.agents[0].tools.workspace.as_ref().unwrap();
    assert_eq!(
        ws.allowed_tools,
        Some(vec!["mcp__filesystem__read_text_file".to_owned()])
    );
}

#[test]
fn bad_workspace_keys_get_errors_that_say_what_to_write() {
    let agents = "agents:\n  - id: a\n    backend: {type: openai, model: m, cwd: /w/same}\n  \
                  - id: b\n    backend: {type: openai, model: m, cwd: /w/x/../same}\n";
    let err = load_err(agents);
    assert_eq!(err.key_path(), Some("agents[1].backend.cwd"), "{err}");
    assert!(
        err.to_string().contains("already the `cwd` of agent `a`"),
        "{err}"
    );

    let one = "agent:\n  backend: {type: openai, model: m}\n";
    for (yaml, path, fragment) in [
        (
            format!("{one}orchestrator:\n  context_paths: [{{path: /p, permission: rw}}]\n"),
            "orchestrator.context_paths[0].permission",
            "`read` (read-only) or `write`",
        ),
        (
            format!("{one}orchestrator:\n  context_paths: [{{permission: read}}]\n"),
            "orchestrator.context_paths[0].path",
            "needs `path:`",
        ),
        (
            format!("{one}orchestrator:\n  context_paths: /p\n"),
            "orchestrator.context_paths",
            "a list",
        ),
        (
            format!("{one}orchestrator:\n  max_file_read_bytes: 10\n"),
            "orchestrator.max_file_read_bytes",
            "from 256",
        ),
    ] {
        let err = load_err(&yaml);
        assert_eq!(err.key_path(), Some(path), "{err}");
        assert!(err.to_string().contains(fragment), "{path}: {err}");
    }
}

#[test]
fn a_submitted_config_may_not_name_server_directories() {
    for (yaml, path) in [
        (
            "agent:\n  backend: {type: openai, model: m, cwd: /etc}\n",
            "agent.backend.cwd",
        ),
        (
            "agent:\n  backend: {type: openai, model: m}\norchestrator:\n  context_paths: [/]\n",
            "orchestrator.context_paths",
        ),
        (
            "agent:\n  backend: {type: openai, model: m}\norchestrator:\n  \
             agent_temporary_workspace: /tmp/x\n",
            "orchestrator.agent_temporary_workspace",
        ),
    ] {
        let err = load_str_untrusted(yaml, "request body").unwrap_err();
        assert_eq!(err.key_path(), Some(path), "{err}");
        assert!(
            err.to_string().contains("may not name directories"),
            "{err}"
        );
    }
}
