//! The command tool in docker mode against this machine's Docker engine, with the minimal
//! runner image (`deploy/runner-image/build.sh --flavour minimal`, built when missing, see
//! `conclave_tests::docker_ready`). Without a Docker engine the tests say they did not run,
//! except under `CI=true`, where that is a failure.

use std::time::Duration;

use conclave_agent::tools::ToolBox;
use conclave_protocol::tools::{CommandLineSpec, CommandMode};
use conclave_tests::{RUNNER_IMAGE as IMAGE, docker_ready, poll_until};

use super::WAIT;
use super::command::{command_tools, exec, spec, start_tools};

pub(crate) fn docker_mode(network: &str) -> CommandMode {
    CommandMode::Docker {
        image: IMAGE.to_owned(),
        network_mode: network.to_owned(),
        memory_limit: Some("64m".to_owned()),
        cpu_limit: Some("0.5".to_owned()),
    }
}

fn containers_of(session: &str) -> Vec<String> {
    conclave_tests::runner_containers(&format!("conclave.session={session}"))
}

fn unique(name: &str) -> String {
    format!("{name}-{}-{:x}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_mode_runs_in_the_agents_container_with_its_limits() {
    if !docker_ready() {
        return;
    }
    // SAFETY: no other test of this binary reads or writes this variable.
    unsafe { std::env::set_var("CONCLAVE_TEST_DOCKER_API_KEY", "sk-docker-must-not-leak") };
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    let session = unique("s-docker");
    let toolbox = start_tools(
        &session,
        &command_tools(&workspace, docker_mode("none"), spec()),
    )
    .await;
    assert_eq!(toolbox.starts()[0].transport, "docker");
    let containers = containers_of(&session);
    assert_eq!(
        containers.len(),
        1,
        "one container per agent: {containers:?}"
    );

    // The workspace is mounted at its own path; files written inside show on the host.
    let (record, result) = exec(
        &toolbox,
        serde_json::json!({"command": "pwd; echo from-container > made.txt; cat /etc/passwd | head -1; exit 4"}),
    )
    .await;
    assert!(record.error.is_none(), "{}", record.content);
    assert_eq!(result["exit_code"], 4, "{result}");
    let canonical = workspace.canonicalize().unwrap();
    let stdout = result["stdout"].as_str().unwrap();
    assert!(
        stdout.starts_with(&canonical.display().to_string()),
        "{stdout}"
    );
    assert!(
        stdout.contains("root:x:0:0"),
        "the image's own files: {stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(workspace.join("made.txt")).unwrap(),
        "from-container\n"
    );

    // Network none: only the loopback interface. No variable of this process inside.
    let (_, result) = exec(
        &toolbox,
        serde_json::json!({"command": "ls /sys/class/net; env"}),
    )
    .await;
    let stdout = result["stdout"].as_str().unwrap();
    let interfaces: Vec<&str> = stdout.lines().take_while(|l| !l.contains('=')).collect();
    assert_eq!(interfaces, ["lo"], "{stdout}");
    assert!(!stdout.contains("sk-docker-must-not-leak"), "{stdout}");
    assert!(!stdout.contains("CONCLAVE_TEST_DOCKER_API_KEY"), "{stdout}");

    // The memory limit reached the container's cgroup (v1 or v2).
    let (_, result) = exec(
        &toolbox,
        serde_json::json!({"command": "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"}),
    )
    .await;
    assert_eq!(
        result["stdout"].as_str().unwrap().trim(),
        (64 * 1024 * 1024).to_string(),
        "{result}"
    );

    // A command past its deadline is killed inside the container, children included.
    let (record, _) = exec(
        &toolbox,
        serde_json::json!({"command": "sleep 61 & sleep 62", "timeout": 1}),
    )
    .await;
    assert!(
        record.content.contains("timed out after 1 seconds"),
        "{}",
        record.content
    );
    let sleeping = || async {
        let (_, result) = exec(&toolbox, serde_json::json!({"command": "ps"})).await;
        let ps = result["stdout"].as_str().unwrap_or_default().to_owned();
        ps.contains("sleep 61") || ps.contains("sleep 62")
    };
    let mut gone = false;
    for _ in 0..20 {
        if !sleeping().await {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        gone,
        "the timed-out command's processes survived in the container"
    );

    // Shutdown (the session's end) removes the container.
    toolbox.shutdown().await;
    assert!(
        containers_of(&session).is_empty(),
        "{:?}",
        containers_of(&session)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_toolbox_removes_its_container_and_bridge_has_a_network() {
    if !docker_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let session = unique("s-drop");
    let toolbox = start_tools(
        &session,
        &command_tools(&dir.path().join("ws"), docker_mode("bridge"), spec()),
    )
    .await;
    let (_, result) = exec(
        &toolbox,
        serde_json::json!({"command": "ls /sys/class/net"}),
    )
    .await;
    assert!(
        result["stdout"]
            .as_str()
            .unwrap()
            .lines()
            .any(|l| l != "lo"),
        "bridge mode has an interface besides lo: {result}"
    );
    drop(toolbox);
    let removed = poll_until(WAIT, || containers_of(&session).is_empty().then_some(()));
    assert!(removed.is_some(), "{:?}", containers_of(&session));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_fails_the_start_saying_how_to_build_one() {
    if !docker_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mode = CommandMode::Docker {
        image: "conclave-runner:no-such-image".to_owned(),
        network_mode: "none".to_owned(),
        memory_limit: None,
        cpu_limit: None,
    };
    let tools = command_tools(&dir.path().join("ws"), mode, CommandLineSpec { ..spec() });
    let env = |_: &str| None;
    let error = tokio::time::timeout(WAIT, ToolBox::start("s-missing", "agent-a", &tools, &env))
        .await
        .expect("in time")
        .expect_err("a missing image fails the start");
    let text = error.to_string();
    assert!(text.contains("agent `agent-a`"), "{text}");
    assert!(text.contains("conclave-runner:no-such-image"), "{text}");
    assert!(text.contains("deploy/runner-image/build.sh"), "{text}");
    assert!(text.contains("never pulls"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_paths_are_mounted_read_only_in_the_container() {
    if !docker_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).expect("project dir");
    std::fs::write(project.join("data.txt"), "shared facts\n").expect("data file");
    let project = project.canonicalize().expect("canonical project");
    let mut tools = command_tools(&workspace, docker_mode("none"), spec());
    if let Some(ws) = tools.workspace.as_mut() {
        // A `write` path still cannot be written by a command (see the docker module's docs).
        ws.context_paths
            .push(conclave_protocol::tools::ContextPath {
                path: project.display().to_string(),
                permission: conclave_protocol::tools::ContextPermission::Write,
                protected_paths: Vec::new(),
            });
    }
    let session = unique("s-context");
    let toolbox = start_tools(&session, &tools).await;
    let shown = project.display();
    let (record, result) = exec(
        &toolbox,
        serde_json::json!({"command": format!("cat {shown}/data.txt && echo changed > {shown}/new.txt")}),
    )
    .await;
    assert!(record.error.is_none(), "{}", record.content);
    assert_eq!(
        result["stdout"].as_str().unwrap_or_default(),
        "shared facts\n",
        "{result}"
    );
    assert_ne!(
        result["exit_code"], 0,
        "a read-only mount was written: {result}"
    );
    assert!(
        !project.join("new.txt").exists(),
        "the command wrote into a context path"
    );
    toolbox.shutdown().await;
    assert!(
        containers_of(&session).is_empty(),
        "the container outlived its toolbox"
    );
}
