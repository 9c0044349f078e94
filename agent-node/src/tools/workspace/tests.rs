//! Every escape the confinement refuses, the permissions of each root by phase, edit
//! uniqueness and the read cap, on a real file system (a scratch directory).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use conclave_protocol::TurnMode;
use conclave_protocol::tools::{ContextPath, ContextPermission, WorkspaceLimits, WorkspaceSpec};
use serde_json::{Map as JsonMap, Value as Json, json};

use super::Workspace;
use crate::tools::ToolOutput;

struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    workspace: Workspace,
}

impl Scratch {
    fn cwd(&self) -> PathBuf {
        self.root.join("cwd")
    }
    fn outside(&self) -> PathBuf {
        self.root.join("outside")
    }
    fn peers(&self) -> PathBuf {
        self.root.join("peers")
    }
    fn read_ctx(&self) -> PathBuf {
        self.root.join("ctx-read")
    }
    fn write_ctx(&self) -> PathBuf {
        self.root.join("ctx-write")
    }

    fn call(&self, tool: &str, arguments: Json, mode: TurnMode) -> ToolOutput {
        let arguments: JsonMap<String, Json> = arguments.as_object().cloned().unwrap_or_default();
        self.workspace.run(tool, &arguments, mode)
    }

    fn ok(&self, tool: &str, arguments: Json) -> String {
        let out = self.call(tool, arguments, TurnMode::Coordinate);
        assert!(!out.is_error, "{tool} failed: {}", out.text);
        out.text
    }

    /// The call fails with a text containing `needle`.
    fn refused(&self, tool: &str, arguments: Json, mode: TurnMode, needle: &str) -> String {
        let out = self.call(tool, arguments.clone(), mode);
        assert!(
            out.is_error,
            "{tool} {arguments} was not refused: {}",
            out.text
        );
        assert!(
            out.text.contains(needle),
            "{tool} {arguments}: {}",
            out.text
        );
        out.text
    }
}

fn scratch_with(limits: WorkspaceLimits) -> Scratch {
    let dir = tempfile::tempdir().expect("a scratch dir");
    let root = std::fs::canonicalize(dir.path()).expect("canonical scratch dir");
    for sub in ["outside", "ctx-read", "ctx-write/keep"] {
        std::fs::create_dir_all(root.join(sub)).expect("scratch layout");
    }
    std::fs::write(root.join("outside/secret.txt"), "top secret").expect("secret");
    std::fs::write(root.join("ctx-read/notes.md"), "read me").expect("notes");
    std::fs::write(root.join("ctx-write/app.css"), "body {}").expect("css");
    std::fs::write(root.join("ctx-write/keep/lock.txt"), "locked").expect("lock");
    let spec = WorkspaceSpec {
        cwd: root.join("cwd").display().to_string(),
        configured: true,
        peers_dir: root.join("peers").display().to_string(),
        context_paths: vec![
            ContextPath {
                path: root.join("ctx-read").display().to_string(),
                permission: ContextPermission::Read,
                protected_paths: Vec::new(),
            },
            ContextPath {
                path: root.join("ctx-write").display().to_string(),
                permission: ContextPermission::Write,
                protected_paths: vec!["keep".into()],
            },
        ],
        limits,
        allowed_tools: None,
        exclude_tools: Vec::new(),
    };
    let workspace = Workspace::open(&spec).expect("the workspace opens");
    Scratch {
        _dir: dir,
        root,
        workspace,
    }
}

fn scratch() -> Scratch {
    scratch_with(WorkspaceLimits::default())
}

const COORD: TurnMode = TurnMode::Coordinate;
const PRESENT: TurnMode = TurnMode::Present;

#[test]
fn open_creates_cwd_and_peers_and_refuses_a_missing_context_path() {
    let s = scratch();
    assert!(s.cwd().is_dir());
    assert!(s.peers().is_dir());
    let spec = WorkspaceSpec {
        cwd: s.root.join("cwd2").display().to_string(),
        configured: false,
        peers_dir: s.root.join("peers2").display().to_string(),
        context_paths: vec![ContextPath {
            path: s.root.join("nowhere").display().to_string(),
            permission: ContextPermission::Read,
            protected_paths: Vec::new(),
        }],
        limits: WorkspaceLimits::default(),
        allowed_tools: None,
        exclude_tools: Vec::new(),
    };
    let error = Workspace::open(&spec).unwrap_err().to_string();
    assert!(
        error.contains("nowhere") && error.contains("context_paths"),
        "{error}"
    );
}

#[test]
fn files_are_written_read_listed_moved_and_deleted_in_the_workspace() {
    let s = scratch();
    s.ok(
        "write_file",
        json!({"path": "src/main.py", "content": "print('hi')\n"}),
    );
    assert_eq!(
        std::fs::read_to_string(s.cwd().join("src/main.py")).unwrap(),
        "print('hi')\n"
    );
    assert_eq!(
        s.ok("read_text_file", json!({"path": "src/main.py"})),
        "print('hi')\n"
    );
    let absolute = s.cwd().join("src/main.py").display().to_string();
    assert_eq!(
        s.ok("read_text_file", json!({"path": absolute})),
        "print('hi')\n"
    );
    let listing = s.ok("list_directory", json!({"path": "src"}));
    assert!(listing.contains("[FILE] main.py (12 bytes)"), "{listing}");
    let found = s.ok(
        "search_files",
        json!({"pattern": "*.py", "content": "print"}),
    );
    assert!(found.contains("main.py:1: print('hi')"), "{found}");
    s.ok(
        "move_file",
        json!({"source": "src/main.py", "destination": "app/run.py"}),
    );
    assert!(s.cwd().join("app/run.py").is_file());
    assert!(!s.cwd().join("src/main.py").exists());
    s.refused(
        "delete_file",
        json!({"path": "app"}),
        COORD,
        "recursive: true",
    );
    s.ok("delete_file", json!({"path": "app", "recursive": true}));
    assert!(!s.cwd().join("app").exists());
    s.refused(
        "delete_file",
        json!({"path": "."}),
        COORD,
        "cannot be deleted",
    );
    // Reading peers and context paths is allowed.
    std::fs::create_dir_all(s.peers().join("agent1.1")).unwrap();
    std::fs::write(s.peers().join("agent1.1/x.txt"), "peer work").unwrap();
    let peer = s.peers().join("agent1.1/x.txt").display().to_string();
    assert_eq!(s.ok("read_text_file", json!({"path": peer})), "peer work");
    let notes = s.read_ctx().join("notes.md").display().to_string();
    assert_eq!(s.ok("read_text_file", json!({"path": notes})), "read me");
}

#[test]
fn dot_dot_escapes_and_absolute_paths_outside_are_refused() {
    let s = scratch();
    s.refused(
        "read_text_file",
        json!({"path": "../outside/secret.txt"}),
        COORD,
        "`..` escapes are refused",
    );
    s.refused(
        "write_file",
        json!({"path": "a/../../outside/new.txt", "content": "x"}),
        COORD,
        "`..` escapes are refused",
    );
    s.refused(
        "read_text_file",
        json!({"path": "/etc/passwd"}),
        COORD,
        "outside your allowed directories",
    );
    let secret = s.outside().join("secret.txt").display().to_string();
    s.refused("read_text_file", json!({"path": secret}), COORD, "outside");
    s.refused("delete_file", json!({"path": secret}), COORD, "outside");
    s.refused(
        "move_file",
        json!({"source": secret, "destination": "stolen.txt"}),
        COORD,
        "outside",
    );
    s.refused(
        "list_directory",
        json!({"path": s.root.display().to_string()}),
        COORD,
        "outside",
    );
    assert!(!s.outside().join("new.txt").exists());
    // `..` that stays inside is fine.
    s.ok(
        "write_file",
        json!({"path": "a/../inside.txt", "content": "ok"}),
    );
    assert!(s.cwd().join("inside.txt").is_file());
}

#[test]
fn symlinks_pointing_out_are_refused_for_directories_and_files() {
    let s = scratch();
    symlink(s.outside(), s.cwd().join("out-dir")).unwrap();
    symlink(s.outside().join("secret.txt"), s.cwd().join("out-file")).unwrap();
    symlink(s.outside().join("not-yet.txt"), s.cwd().join("dangling")).unwrap();
    s.refused(
        "read_text_file",
        json!({"path": "out-dir/secret.txt"}),
        COORD,
        "symbolic link",
    );
    s.refused(
        "list_directory",
        json!({"path": "out-dir"}),
        COORD,
        "symbolic link",
    );
    s.refused(
        "write_file",
        json!({"path": "out-dir/planted.txt", "content": "x"}),
        COORD,
        "symbolic link",
    );
    s.refused(
        "read_text_file",
        json!({"path": "out-file"}),
        COORD,
        "symbolic link",
    );
    s.refused(
        "write_file",
        json!({"path": "out-file", "content": "overwritten"}),
        COORD,
        "symbolic link",
    );
    s.refused(
        "write_file",
        json!({"path": "dangling", "content": "x"}),
        COORD,
        "points nowhere",
    );
    assert_eq!(
        std::fs::read_to_string(s.outside().join("secret.txt")).unwrap(),
        "top secret"
    );
    assert!(!s.outside().join("planted.txt").exists());
    assert!(!s.outside().join("not-yet.txt").exists());
    // Deleting a link removes the link, never its target.
    s.ok("delete_file", json!({"path": "out-file"}));
    assert!(s.outside().join("secret.txt").is_file());
    // A link that stays inside may be read, but never written through.
    std::fs::write(s.cwd().join("real.txt"), "real").unwrap();
    symlink(s.cwd().join("real.txt"), s.cwd().join("alias")).unwrap();
    assert_eq!(s.ok("read_text_file", json!({"path": "alias"})), "real");
    s.refused(
        "write_file",
        json!({"path": "alias", "content": "x"}),
        COORD,
        "never write through",
    );
    // A link into a read-only root does not make it writable.
    symlink(s.read_ctx(), s.cwd().join("ctx-alias")).unwrap();
    s.refused(
        "write_file",
        json!({"path": "ctx-alias/notes.md", "content": "x"}),
        COORD,
        "read-only context path",
    );
}

#[test]
fn hard_links_to_outside_files_are_neither_read_nor_written() {
    let s = scratch();
    std::fs::hard_link(s.outside().join("secret.txt"), s.cwd().join("linked.txt")).unwrap();
    s.refused(
        "read_text_file",
        json!({"path": "linked.txt"}),
        COORD,
        "hard links",
    );
    s.refused(
        "write_file",
        json!({"path": "linked.txt", "content": "changed"}),
        COORD,
        "hard links",
    );
    s.refused(
        "edit_file",
        json!({"path": "linked.txt", "edits": [{"oldText": "top", "newText": "no"}]}),
        COORD,
        "hard links",
    );
    let found = s.ok("search_files", json!({"pattern": "*", "content": "secret"}));
    assert!(found.starts_with("no matches"), "{found}");
    assert_eq!(
        std::fs::read_to_string(s.outside().join("secret.txt")).unwrap(),
        "top secret"
    );
}

#[test]
fn the_peers_dir_is_read_only() {
    let s = scratch();
    std::fs::create_dir_all(s.peers().join("agent1.1")).unwrap();
    std::fs::write(s.peers().join("agent1.1/x.txt"), "peer").unwrap();
    let in_peers = |p: &str| s.peers().join(p).display().to_string();
    for (tool, arguments) in [
        (
            "write_file",
            json!({"path": in_peers("agent1.1/x.txt"), "content": "mine"}),
        ),
        (
            "write_file",
            json!({"path": in_peers("new.txt"), "content": "mine"}),
        ),
        (
            "edit_file",
            json!({"path": in_peers("agent1.1/x.txt"), "edits": [{"oldText": "peer", "newText": "m"}]}),
        ),
        ("delete_file", json!({"path": in_peers("agent1.1/x.txt")})),
        ("create_directory", json!({"path": in_peers("d")})),
        (
            "move_file",
            json!({"source": in_peers("agent1.1/x.txt"), "destination": "x.txt"}),
        ),
    ] {
        for mode in [COORD, PRESENT] {
            s.refused(tool, arguments.clone(), mode, "peers' directory");
        }
    }
    assert_eq!(
        std::fs::read_to_string(s.peers().join("agent1.1/x.txt")).unwrap(),
        "peer"
    );
}

#[test]
fn context_paths_are_writable_only_as_configured_and_only_in_the_presentation() {
    let s = scratch();
    let read_only = s.read_ctx().join("notes.md").display().to_string();
    let writable = s.write_ctx().join("app.css").display().to_string();
    let protected = s.write_ctx().join("keep/lock.txt").display().to_string();
    for mode in [COORD, PRESENT] {
        s.refused(
            "write_file",
            json!({"path": read_only, "content": "x"}),
            mode,
            "read-only context path",
        );
        s.refused(
            "write_file",
            json!({"path": protected, "content": "x"}),
            mode,
            "protected",
        );
    }
    s.refused(
        "write_file",
        json!({"path": writable, "content": "x"}),
        COORD,
        "only during the final presentation",
    );
    assert_eq!(
        std::fs::read_to_string(s.write_ctx().join("app.css")).unwrap(),
        "body {}"
    );
    let out = s.call(
        "edit_file",
        json!({"path": writable, "edits": [{"oldText": "{}", "newText": "{ margin: 0 }"}]}),
        PRESENT,
    );
    assert!(!out.is_error, "{}", out.text);
    assert_eq!(
        std::fs::read_to_string(s.write_ctx().join("app.css")).unwrap(),
        "body { margin: 0 }"
    );
    assert_eq!(
        std::fs::read_to_string(s.read_ctx().join("notes.md")).unwrap(),
        "read me"
    );
    let note = s.workspace.prompt_note(COORD);
    assert!(note.contains(&s.cwd().display().to_string()), "{note}");
    assert!(note.contains(&s.peers().display().to_string()), "{note}");
    assert!(
        note.contains("writable in the final presentation"),
        "{note}"
    );
    assert!(s.workspace.prompt_note(PRESENT).contains("writable now"));
}

#[test]
fn an_edit_must_match_exactly_once() {
    let s = scratch();
    s.ok("write_file", json!({"path": "f.txt", "content": "a b a c"}));
    let twice = s.refused(
        "edit_file",
        json!({"path": "f.txt", "edits": [{"oldText": "a", "newText": "x"}]}),
        COORD,
        "occurs 2 times",
    );
    assert!(twice.contains("nothing was changed"), "{twice}");
    s.refused(
        "edit_file",
        json!({"path": "f.txt", "edits": [{"oldText": "b", "newText": "B"}, {"oldText": "zz", "newText": "y"}]}),
        COORD,
        "edit 2 of `f.txt`: oldText occurs 0 times",
    );
    assert_eq!(
        std::fs::read_to_string(s.cwd().join("f.txt")).unwrap(),
        "a b a c"
    );
    s.ok(
        "edit_file",
        json!({"path": "f.txt", "edits": [{"oldText": "a b", "newText": "A"}, {"oldText": "a", "newText": "Z"}]}),
    );
    assert_eq!(
        std::fs::read_to_string(s.cwd().join("f.txt")).unwrap(),
        "A Z c"
    );
    s.refused(
        "edit_file",
        json!({"path": "missing.txt", "edits": [{"oldText": "a", "newText": "b"}]}),
        COORD,
        "does not exist",
    );
}

#[test]
fn reads_are_capped_with_a_note_and_can_go_on_from_an_offset() {
    let s = scratch_with(WorkspaceLimits {
        max_file_read_bytes: 10,
        ..WorkspaceLimits::default()
    });
    std::fs::create_dir_all(s.cwd()).unwrap();
    std::fs::write(s.cwd().join("big.txt"), "0123456789abcdefghij").unwrap();
    let first = s.ok("read_text_file", json!({"path": "big.txt"}));
    assert!(first.starts_with("0123456789\n"), "{first}");
    assert!(first.contains("max_file_read_bytes is 10"), "{first}");
    assert!(first.contains("offset 10"), "{first}");
    assert_eq!(
        s.ok("read_text_file", json!({"path": "big.txt", "offset": 10})),
        "abcdefghij"
    );
    // A cut inside a multi-byte character keeps whole characters.
    std::fs::write(s.cwd().join("utf.txt"), "abcdefghié-rest").unwrap();
    let cut = s.ok("read_text_file", json!({"path": "utf.txt"}));
    assert!(cut.starts_with("abcdefghi\n"), "{cut}");
    std::fs::write(s.cwd().join("bin"), [0xff, 0xfe, 0x00]).unwrap();
    s.refused("read_text_file", json!({"path": "bin"}), COORD, "not UTF-8");
    s.refused(
        "edit_file",
        json!({"path": "big.txt", "edits": [{"oldText": "0", "newText": "1"}]}),
        COORD,
        "max_file_read_bytes",
    );
}

#[test]
fn glob_patterns_match_names() {
    use super::ops::name_matches;
    assert!(name_matches("*.py", "main.py"));
    assert!(!name_matches("*.py", "main.rs"));
    assert!(name_matches("ma?n.*", "main.rs"));
    assert!(name_matches("MAIN", "main.rs"));
    assert!(name_matches("*a*b*", "xxaYYb"));
    assert!(!name_matches("*a*b", "xxaYYbc"));
}

#[test]
fn relative_specs_resolve_against_the_node_work_dir() {
    let mut spec = WorkspaceSpec {
        cwd: "ws/a".into(),
        configured: true,
        peers_dir: "/abs/peers".into(),
        context_paths: vec![ContextPath {
            path: "project".into(),
            permission: ContextPermission::Read,
            protected_paths: vec!["x".into()],
        }],
        limits: WorkspaceLimits::default(),
        allowed_tools: None,
        exclude_tools: Vec::new(),
    };
    super::resolve_spec(&mut spec, Path::new("/node/work"));
    assert_eq!(spec.cwd, "/node/work/ws/a");
    assert_eq!(spec.peers_dir, "/abs/peers");
    assert_eq!(spec.context_paths[0].path, "/node/work/project");
    assert_eq!(spec.context_paths[0].protected_paths, vec!["x".to_owned()]);
}
