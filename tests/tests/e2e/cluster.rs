//! End-to-end cluster tests: a real `conclave` orchestrator (`--listen` on loopback) and real
//! `conclave-agent` processes, against the simulated provider. Each test has its own port,
//! cookie, session directory and simulator, and every process runs under a deadline.
//!
//! * three agents in three agent processes complete a session; the provider key lives only
//!   in the agent processes' environment and never reaches the orchestrator;
//! * `kill -9` of one agent process mid-session: the session completes with the other two,
//!   and the journal records the loss;
//! * a node with the wrong cookie is refused: the orchestrator logs the refusal with the peer
//!   address, and the session fails after the join timeout naming the node;
//! * a node frozen past the heartbeat deadline (SIGSTOP, a half-open link) is lost, then comes
//!   back (SIGCONT), rejoins the running session, and no answer is applied twice;
//! * the same session over mutual TLS, each node's certificate issued for its name (openssl
//!   makes the certificates; without it the test is skipped, except under `CI=true`).
//!
//! Strangers, impostors and allow-lists: see `cluster_hardening`.
//!
//! Build first (`cargo test --workspace` does it):
//! `cargo build -p conclave -p conclave-agent && cargo test -p conclave-tests --test e2e cluster::`

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use conclave_sim::SimServer;
use conclave_tests::start_sim;
use conclave_tests::{
    Finished, NodeAgent, Running, events_of, free_port, read_journal, sim_cluster_yaml,
    start_agent_node, wait_for_event, workspace_bin,
};
use serde_json::Value;

pub(crate) const COOKIE: &str = "conclave-e2e-cluster-cookie";
pub(crate) const SECRET: &str = "sk-conclave-cluster-secret-7777";
/// Every process is killed past this.
pub(crate) const DEADLINE: Duration = Duration::from_secs(90);
/// Agent nodes retry quickly: the orchestrator may start listening a moment after them.
pub(crate) const FAST_RECONNECT: &[&str] = &["--reconnect-max-ms", "300"];

pub(crate) struct Setup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) port: u16,
    pub(crate) cookie: PathBuf,
    pub(crate) sim: SimServer,
}

impl Setup {
    pub(crate) async fn new() -> Setup {
        let sim = start_sim(8, 5).await.expect("sim provider starts");
        let dir = tempfile::tempdir().unwrap();
        let cookie = dir.path().join("cookie");
        std::fs::write(&cookie, format!("{COOKIE}\n")).unwrap();
        Setup {
            dir,
            port: free_port().unwrap(),
            cookie,
            sim,
        }
    }

    pub(crate) fn join(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn write_config(&self, yaml: &str) -> PathBuf {
        let path = self.dir.path().join("cluster.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    pub(crate) fn session_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("sessions").join(id)
    }

    /// Starts the orchestrator for one session.
    pub(crate) fn orchestrator(&self, config: &Path, session: &str, extra: &[&str]) -> Running {
        let bin = workspace_bin("conclave").expect("conclave binary");
        let mut command = Command::new(bin);
        command
            .args(["--config"])
            .arg(config)
            .args(["--listen", &self.join(), "--cookie-file"])
            .arg(&self.cookie)
            .args([
                "--session-dir",
                "sessions",
                "--session-id",
                session,
                "--display",
                "quiet",
                "-v",
            ])
            .args(extra)
            .arg("Why is the sky blue?")
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("CONCLAVE_COOKIE")
            .env_remove("CONCLAVE_SIM_API_KEY");
        Running::start(&mut command).expect("orchestrator starts")
    }

    /// An agent node whose operator allows the simulator's URL (the only provider here).
    pub(crate) fn node(&self, name: &str, extra: &[&str]) -> Running {
        let base = self.sim.base_url();
        let mut flags = FAST_RECONNECT.to_vec();
        flags.extend_from_slice(&["--allow-base-url", &base]);
        flags.extend_from_slice(extra);
        start_agent_node(
            &self.join(),
            name,
            &self.cookie,
            &flags,
            &[("CONCLAVE_SIM_API_KEY", SECRET)],
        )
        .expect("agent node starts")
    }
}

/// Waits for a process off the async runtime.
pub(crate) async fn wait(running: Running, deadline: Duration) -> Finished {
    tokio::task::spawn_blocking(move || running.wait(deadline))
        .await
        .expect("waiter thread")
        .expect("process ends in time")
}

/// Stops an agent node with SIGTERM: it must exit cleanly (0) and promptly.
pub(crate) async fn stop_node(node: Running) -> Finished {
    node.signal(libc::SIGTERM).expect("SIGTERM delivered");
    let deadline = node.elapsed() + Duration::from_secs(10);
    wait(node, deadline).await
}

pub(crate) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn agents_of(events: &[&Value]) -> HashSet<String> {
    events
        .iter()
        .filter_map(|e| e["agent"].as_str().map(str::to_owned))
        .collect()
}

fn set(items: &[&str]) -> HashSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Accepted answers have distinct labels: none was applied twice.
fn assert_no_duplicate_answers(journal: &[Value]) {
    let labels: Vec<&str> = events_of(journal, "answer_accepted")
        .iter()
        .filter_map(|e| e["label"].as_str())
        .collect();
    let unique: HashSet<&&str> = labels.iter().collect();
    assert_eq!(unique.len(), labels.len(), "duplicate answers: {labels:?}");
}

pub(crate) fn explain(run: &Finished) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        run.code,
        run.stdout,
        strip_ansi(&run.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_in_three_agent_processes_complete_a_session() {
    let setup = Setup::new().await;
    let base = setup.sim.base_url();
    let config = setup.write_config(&sim_cluster_yaml(
        &base,
        &[
            NodeAgent {
                id: "alpha",
                model: "sim-a",
                node: Some("node-a"),
            },
            NodeAgent {
                id: "beta",
                model: "sim-b",
                node: Some("node-b"),
            },
            NodeAgent {
                id: "gamma",
                model: "sim-c",
                node: Some("node-c"),
            },
        ],
        "  restart_policy: finish\n",
        60,
        30,
    ));
    let orchestrator = setup.orchestrator(&config, "remote3", &[]);
    let nodes: Vec<Running> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|name| setup.node(name, &[]))
        .collect();
    let run = wait(orchestrator, DEADLINE).await;
    let mut node_runs = Vec::new();
    for node in nodes {
        node_runs.push(stop_node(node).await);
    }
    let stderr = strip_ansi(&run.stderr);
    assert_eq!(run.code, Some(0), "{}", explain(&run));
    for node in &node_runs {
        assert_eq!(
            node.code,
            Some(0),
            "agent node did not stop cleanly:\n{}",
            explain(node)
        );
        assert!(strip_ansi(&node.stderr).contains("joined the orchestrator"));
    }

    // Keys: read on the agent nodes, announced by name only, never seen by the orchestrator.
    assert_eq!(
        stderr.matches("agent node joined").count(),
        3,
        "stderr:\n{stderr}"
    );
    assert!(stderr.contains("CONCLAVE_SIM_API_KEY"), "stderr:\n{stderr}");
    let journal_text =
        std::fs::read_to_string(setup.session_dir("remote3").join("events.jsonl")).unwrap();
    for text in [&run.stdout, &run.stderr, &journal_text] {
        assert!(!text.contains(SECRET), "the API key leaked");
    }

    let journal = read_journal(&setup.session_dir("remote3")).unwrap();
    let started = events_of(&journal, "session_started");
    let nodes_in_journal: Vec<&str> = started[0]["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["node"].as_str())
        .collect();
    assert_eq!(nodes_in_journal, ["node-a", "node-b", "node-c"]);
    let all = set(&["alpha", "beta", "gamma"]);
    assert_eq!(agents_of(&events_of(&journal, "decision_received")), all);
    assert_eq!(agents_of(&events_of(&journal, "vote_accepted")), all);
    assert!(!events_of(&journal, "answer_accepted").is_empty());
    assert_eq!(events_of(&journal, "consensus_reached").len(), 1);
    assert_eq!(
        events_of(&journal, "session_ended")[0]["reason"],
        "consensus"
    );
    assert!(events_of(&journal, "agent_lost").is_empty());
    assert_no_duplicate_answers(&journal);

    // The agent processes' provider calls hit the simulator, for every agent.
    let models: HashSet<String> = setup
        .sim
        .requests()
        .iter()
        .map(|r| r.model.clone())
        .collect();
    assert_eq!(models, set(&["sim-a", "sim-b", "sim-c"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_agent_process_mid_session_still_completes() {
    let setup = Setup::new().await;
    let base = setup.sim.base_url();
    // beta's turns take ~3 s, so the kill lands inside its first turn.
    let config = setup.write_config(&sim_cluster_yaml(
        &base,
        &[
            NodeAgent {
                id: "alpha",
                model: "sim-a",
                node: Some("node-a"),
            },
            NodeAgent {
                id: "beta",
                model: "sim-b:tokens=60,token_delay_ms=50",
                node: Some("node-b"),
            },
            NodeAgent {
                id: "gamma",
                model: "sim-c",
                node: Some("node-c"),
            },
        ],
        "  restart_policy: finish\n",
        60,
        30,
    ));
    let orchestrator = setup.orchestrator(&config, "kill9", &[]);
    let node_a = setup.node("node-a", &[]);
    let node_b = setup.node("node-b", &[]);
    let node_c = setup.node("node-c", &[]);
    let session = setup.session_dir("kill9");
    let started = tokio::task::spawn_blocking(move || {
        wait_for_event(&session, "turn_started", Duration::from_secs(40), |e| {
            e["agent"] == "beta"
        })
    })
    .await
    .unwrap();
    assert!(started.is_some(), "beta's turn never started");
    node_b.signal(libc::SIGKILL).unwrap();
    let killed = wait(node_b, DEADLINE).await;
    assert_eq!(killed.code, None, "killed by a signal");

    let run = wait(orchestrator, DEADLINE).await;
    stop_node(node_a).await;
    stop_node(node_c).await;
    assert_eq!(run.code, Some(0), "{}", explain(&run));
    let journal = read_journal(&setup.session_dir("kill9")).unwrap();
    let lost = events_of(&journal, "agent_lost");
    assert_eq!(agents_of(&lost), set(&["beta"]), "{lost:?}");
    assert!(
        lost[0]["reason"].as_str().unwrap().contains("node-b"),
        "{lost:?}"
    );
    assert_eq!(
        agents_of(&events_of(&journal, "agent_failed")),
        set(&["beta"])
    );
    assert_eq!(
        events_of(&journal, "session_ended")[0]["reason"],
        "consensus"
    );
    let voters = agents_of(&events_of(&journal, "vote_accepted"));
    assert_eq!(voters, set(&["alpha", "gamma"]));
    assert_no_duplicate_answers(&journal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_cookie_is_refused_and_the_session_names_it() {
    let setup = Setup::new().await;
    let base = setup.sim.base_url();
    let config = setup.write_config(&sim_cluster_yaml(
        &base,
        &[
            NodeAgent {
                id: "alpha",
                model: "sim-a",
                node: None,
            },
            NodeAgent {
                id: "beta",
                model: "sim-b",
                node: Some("intruder"),
            },
        ],
        "",
        60,
        3,
    ));
    let orchestrator = setup.orchestrator(&config, "refused", &[]);
    let wrong = setup.dir.path().join("wrong-cookie");
    std::fs::write(&wrong, "not-the-cluster-cookie").unwrap();
    let intruder = start_agent_node(
        &setup.join(),
        "intruder",
        &wrong,
        FAST_RECONNECT,
        &[("CONCLAVE_SIM_API_KEY", SECRET)],
    )
    .unwrap();
    let run = wait(orchestrator, Duration::from_secs(30)).await;
    let node = stop_node(intruder).await;
    let stderr = strip_ansi(&run.stderr);
    assert_eq!(run.code, Some(2), "{}", explain(&run));
    assert!(
        stderr.contains("refused a node connection: authentication failed (wrong cookie)")
            && stderr.contains("peer=127.0.0.1:"),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("`intruder` did not join within 3 s"),
        "stderr:\n{stderr}"
    );
    assert!(
        strip_ansi(&node.stderr).contains("cookie handshake"),
        "{}",
        explain(&node)
    );
    // Nothing ran: no journal, no provider call.
    assert!(!setup.session_dir("refused").join("events.jsonl").exists());
    assert!(setup.sim.requests().is_empty());
    assert!(!stderr.contains(COOKIE) && !node.stderr.contains("not-the-cluster-cookie"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_is_lost_at_the_heartbeat_deadline_and_rejoins() {
    let setup = Setup::new().await;
    let base = setup.sim.base_url();
    // Short enough to keep the test quick, long enough that a busy test machine does not
    // lose a node that is merely slow.
    let heartbeat = [
        "--heartbeat-interval-ms",
        "250",
        "--heartbeat-deadline-ms",
        "1500",
    ];
    // Slow turns everywhere, so the session is still running when beta comes back. Beta has
    // an MCP server: it starts again on the node with the new incarnation, and the journal
    // says so.
    let demo = workspace_bin("conclave-mcp-demo").expect("demo server built");
    let beta_model = "      model: \"sim-b:tokens=40,token_delay_ms=60\"\n";
    let yaml = sim_cluster_yaml(
        &base,
        &[
            NodeAgent {
                id: "alpha",
                model: "sim-a:tokens=40,token_delay_ms=60",
                node: Some("node-a"),
            },
            NodeAgent {
                id: "beta",
                model: "sim-b:tokens=40,token_delay_ms=60",
                node: Some("node-b"),
            },
            NodeAgent {
                id: "gamma",
                model: "sim-c:tokens=40,token_delay_ms=60",
                node: Some("node-c"),
            },
        ],
        "  restart_policy: finish\n",
        60,
        30,
    )
    .replacen(
        beta_model,
        &format!(
            "{beta_model}      mcp_servers:\n        - name: demo\n          type: stdio\n          command: \"{}\"\n",
            demo.display()
        ),
        1,
    );
    assert!(yaml.contains("mcp_servers"), "{yaml}");
    let config = setup.write_config(&yaml);
    let orchestrator = setup.orchestrator(&config, "rejoin", &heartbeat);
    let node_a = setup.node("node-a", &heartbeat);
    let node_b = setup.node("node-b", &heartbeat);
    let node_c = setup.node("node-c", &heartbeat);
    let session = setup.session_dir("rejoin");
    let dir = session.clone();
    let started = tokio::task::spawn_blocking(move || {
        wait_for_event(&dir, "turn_started", Duration::from_secs(40), |e| {
            e["agent"] == "beta"
        })
    })
    .await
    .unwrap();
    assert!(started.is_some(), "beta's turn never started");
    // Freeze beta's node: its TCP link stays open, only the heartbeats stop.
    node_b.signal(libc::SIGSTOP).unwrap();
    let dir = session.clone();
    let lost = tokio::task::spawn_blocking(move || {
        wait_for_event(&dir, "agent_lost", Duration::from_secs(10), |e| {
            e["agent"] == "beta"
        })
    })
    .await
    .unwrap();
    node_b.signal(libc::SIGCONT).unwrap();
    let run = wait(orchestrator, DEADLINE).await;
    for node in [node_a, node_b, node_c] {
        stop_node(node).await;
    }
    assert!(lost.is_some(), "beta was never lost: {}", explain(&run));
    let lost = lost.unwrap();
    assert!(
        lost["reason"].as_str().unwrap().contains("no heartbeat"),
        "{lost}"
    );
    assert_eq!(run.code, Some(0), "{}", explain(&run));
    let journal = read_journal(&session).unwrap();
    let rejoined = events_of(&journal, "agent_rejoined");
    let beta_back = rejoined
        .iter()
        .find(|e| e["agent"] == "beta")
        .unwrap_or_else(|| panic!("beta never rejoined: {}", explain(&run)));
    // After rejoining, beta got a fresh turn.
    let rejoin_at = beta_back["t_ms"].as_u64().unwrap();
    // Its MCP server started twice on its node, once per incarnation, both journaled.
    let starts: Vec<_> = events_of(&journal, "tool_server_started")
        .into_iter()
        .filter(|e| e["agent"] == "beta")
        .collect();
    assert_eq!(starts.len(), 2, "{starts:#?}");
    for start in &starts {
        assert_eq!(start["node"], "node-b", "{start}");
        assert_eq!(start["server"], "demo", "{start}");
        assert!(start["error"].is_null(), "{start}");
    }
    assert!(
        events_of(&journal, "turn_started")
            .iter()
            .any(|e| e["agent"] == "beta" && e["t_ms"].as_u64().unwrap() >= rejoin_at),
        "beta got no turn after rejoining"
    );
    assert_eq!(
        events_of(&journal, "session_ended")[0]["reason"],
        "consensus"
    );
    assert_no_duplicate_answers(&journal);
}

/// Test certificates made with `openssl` in one directory: the cluster CA (`ca.pem`), a
/// second CA that is not the cluster's (`wrong-ca.pem`), and leaf certificates for server
/// and client use. The orchestrator's is issued for 127.0.0.1 (the host of `--join`); a
/// node's for its name (a DNS subject alternative name), as the orchestrator requires.
pub(crate) struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// Makes the CAs, `orchestrator` and one certificate per name in `nodes` (signed by the
    /// cluster CA) and per name in `wrong_ca_nodes` (signed by the other CA). `None` when
    /// openssl is missing: see [`certificates`].
    fn make(dir: &Path, nodes: &[&str], wrong_ca_nodes: &[&str]) -> Option<Certs> {
        let run = |args: &[&str]| -> Option<()> {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .ok()?;
            status.success().then_some(())
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "wrong-ca"] {
            let (key, pem, subject) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN=conclave-test-{ca}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend_from_slice(&ec);
            args.extend_from_slice(&[
                "-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subject,
            ]);
            run(&args)?;
        }
        let leaf = |name: &str, san: &str, ca: &str| -> Option<()> {
            let ext = format!("{name}.cnf");
            std::fs::write(
                dir.join(&ext),
                format!(
                    "subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"
                ),
            )
            .ok()?;
            let (key, csr, pem, subject) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("/CN={name}"),
            );
            let mut args = vec!["req"];
            args.extend_from_slice(&ec);
            args.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", &subject]);
            run(&args)?;
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ])
        };
        leaf("orchestrator", "IP:127.0.0.1,DNS:localhost", "ca")?;
        for name in nodes {
            leaf(name, &format!("DNS:{name}"), "ca")?;
        }
        for name in wrong_ca_nodes {
            leaf(name, &format!("DNS:{name}"), "wrong-ca")?;
        }
        Some(Certs {
            dir: dir.to_owned(),
        })
    }

    pub(crate) fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    /// `--tls-cert`, `--tls-key`, `--tls-ca` for the certificate `name` and the cluster CA.
    pub(crate) fn flags(&self, name: &str) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path(&format!("{name}.pem")),
            "--tls-key".into(),
            self.path(&format!("{name}.key")),
            "--tls-ca".into(),
            self.path("ca.pem"),
        ]
    }
}

/// The test certificates, or `None` (the test is skipped, saying so) when openssl is not
/// installed. Under `CI=true` a missing openssl fails the test instead: CI must run it.
pub(crate) fn certificates(dir: &Path, nodes: &[&str], wrong_ca_nodes: &[&str]) -> Option<Certs> {
    match Certs::make(dir, nodes, wrong_ca_nodes) {
        Some(certs) => Some(certs),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("openssl could not make the test certificates, and CI=true: install openssl")
        }
        None => {
            eprintln!("skipped: openssl is not available to make test certificates");
            None
        }
    }
}

pub(crate) fn as_strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_mutual_tls() {
    let setup = Setup::new().await;
    let Some(certs) = certificates(setup.dir.path(), &["tls-a", "tls-b"], &[]) else {
        return;
    };
    let base = setup.sim.base_url();
    let config = setup.write_config(&sim_cluster_yaml(
        &base,
        &[
            NodeAgent {
                id: "alpha",
                model: "sim-a",
                node: Some("tls-a"),
            },
            NodeAgent {
                id: "beta",
                model: "sim-b",
                node: Some("tls-b"),
            },
        ],
        "",
        60,
        30,
    ));
    let orchestrator = setup.orchestrator(&config, "tls", &as_strs(&certs.flags("orchestrator")));
    let a = setup.node("tls-a", &as_strs(&certs.flags("tls-a")));
    let b = setup.node("tls-b", &as_strs(&certs.flags("tls-b")));
    let run = wait(orchestrator, DEADLINE).await;
    stop_node(a).await;
    stop_node(b).await;
    assert_eq!(run.code, Some(0), "{}", explain(&run));
    assert!(strip_ansi(&run.stderr).contains("tls=true"));
    let journal = read_journal(&setup.session_dir("tls")).unwrap();
    assert_eq!(
        agents_of(&events_of(&journal, "decision_received")),
        set(&["alpha", "beta"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_nodes_between_sessions_submitted_on_stdin() {
    use std::io::{BufRead, BufReader, Write};
    let setup = Setup::new().await;
    let base = setup.sim.base_url();
    let config = setup.write_config(&sim_cluster_yaml(
        &base,
        &[
            NodeAgent {
                id: "alpha",
                model: "sim-a",
                node: Some("srv-a"),
            },
            NodeAgent {
                id: "beta",
                model: "sim-b",
                node: Some("srv-b"),
            },
        ],
        "",
        60,
        30,
    ));
    let bin = workspace_bin("conclave").unwrap();
    let mut server = Command::new(bin)
        .args(["server", "--listen", &setup.join(), "--cookie-file"])
        .arg(&setup.cookie)
        .arg("--config")
        .arg(&config)
        .args(["--session-dir", "sessions"])
        .current_dir(setup.dir.path())
        .env_remove("RUST_LOG")
        .env_remove("CONCLAVE_COOKIE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let a = setup.node("srv-a", &[]);
    let b = setup.node("srv-b", &[]);
    let mut stdin = server.stdin.take().unwrap();
    let stdout = server.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        writeln!(stdin, "What is 2+2?").unwrap();
        writeln!(
            stdin,
            r#"{{"question": "Name a prime", "session_id": "second"}}"#
        )
        .unwrap();
        stdin.flush().unwrap();
        // Closing stdin does not stop the server: it keeps serving until SIGTERM.
        drop(stdin);
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().take(2) {
            lines.push(line.unwrap());
        }
        lines
    });
    let lines = tokio::time::timeout(DEADLINE, lines)
        .await
        .expect("two session results in time")
        .unwrap();
    assert!(
        server.try_wait().unwrap().is_none(),
        "the server kept running"
    );
    // SAFETY: kill(2) on the child this test spawned and has not reaped.
    unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap()
        .unwrap();
    stop_node(a).await;
    stop_node(b).await;
    assert_eq!(status.code(), Some(0));
    let results: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for result in &results {
        assert_eq!(result["exit_code"], 0, "{result}");
        assert_eq!(result["reason"], "consensus", "{result}");
    }
    assert!(results.iter().any(|r| r["session"] == "second"));
    let journal = read_journal(&setup.session_dir("second")).unwrap();
    assert_eq!(
        agents_of(&events_of(&journal, "decision_received")),
        set(&["alpha", "beta"])
    );
}

/// An agent on a node starts its MCP servers on that node, with that node's environment:
/// the command is `${DEMO_MCP_BIN}`, set only on the node. A server that cannot start there
/// fails the session at start, naming the node, the agent, the server and its stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_servers_of_a_remote_agent_start_on_its_node() {
    let demo = workspace_bin("conclave-mcp-demo").expect("demo server built");
    let demo = demo.display().to_string();
    for (session, args, works) in [
        ("mcp-ok", "[]", true),
        (
            "mcp-fail",
            "[\"--fail-start\", \"demo: the node lacks WEATHER_TOKEN\"]",
            false,
        ),
    ] {
        let setup = Setup::new().await;
        let base = setup.sim.base_url();
        let marker = format!("{session}-{}", std::process::id());
        let yaml = sim_cluster_yaml(
            &base,
            &[NodeAgent {
                id: "alpha",
                model: "sim-a",
                node: Some("node-a"),
            }],
            "",
            60,
            30,
        )
        .replace(
            &format!("      base_url: \"{base}\"\n"),
            &format!(
                "      base_url: \"{base}\"\n      mcp_servers:\n        - name: demo\n          type: stdio\n          command: \"${{DEMO_MCP_BIN}}\"\n          args: {args}\n          env:\n            CONCLAVE_TEST_MARKER: \"{marker}\"\n"
            ),
        );
        let config = setup.write_config(&yaml);
        let orchestrator = setup.orchestrator(&config, session, &[]);
        let base = setup.sim.base_url();
        let mut flags = FAST_RECONNECT.to_vec();
        flags.extend_from_slice(&["--allow-base-url", &base]);
        let node = start_agent_node(
            &setup.join(),
            "node-a",
            &setup.cookie,
            &flags,
            &[("CONCLAVE_SIM_API_KEY", SECRET), ("DEMO_MCP_BIN", &demo)],
        )
        .expect("agent node starts");
        let run = wait(orchestrator, DEADLINE).await;
        // The session is over but the node keeps running: its MCP server must be gone.
        let gone = tokio::task::spawn_blocking({
            let marker = marker.clone();
            move || {
                conclave_tests::poll_until(DEADLINE, || {
                    super::tools::processes_with(&marker)
                        .is_empty()
                        .then_some(())
                })
            }
        })
        .await
        .expect("poll thread");
        let node_run = stop_node(node).await;
        assert!(
            gone.is_some(),
            "the node kept the session's MCP server running"
        );
        if works {
            assert_eq!(
                run.code,
                Some(0),
                "{}\nnode:\n{}",
                explain(&run),
                explain(&node_run)
            );
        } else {
            assert_ne!(run.code, Some(0), "{}", explain(&run));
            let shown = strip_ansi(&format!("{}{}", run.stdout, run.stderr));
            for fragment in [
                "node `node-a`",
                "agent `alpha`",
                "MCP server `demo` could not start",
                "demo: the node lacks WEATHER_TOKEN",
            ] {
                assert!(shown.contains(fragment), "no {fragment:?} in:\n{shown}");
            }
        }
    }
}

/// An MCP server that takes seconds to start on a node does not stall the node: its host keeps
/// answering heartbeats (a deadline far shorter than the start) and spawns the node's other
/// agent meanwhile. The session runs to consensus with no agent lost, and the journal records
/// the slow server's start as the node reported it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_mcp_server_on_a_node_does_not_stall_its_host() {
    const DELAY_MS: u64 = 4000;
    let demo = workspace_bin("conclave-mcp-demo").expect("demo server built");
    let setup = Setup::new().await;
    let base = setup.sim.base_url();
    let heartbeat = [
        "--heartbeat-interval-ms",
        "250",
        "--heartbeat-deadline-ms",
        "1500",
    ];
    let yaml = sim_cluster_yaml(
        &base,
        &[
            NodeAgent {
                id: "alpha",
                model: "sim-a",
                node: Some("node-a"),
            },
            NodeAgent {
                id: "beta",
                model: "sim-b",
                node: Some("node-a"),
            },
        ],
        "",
        60,
        30,
    );
    // Only alpha (the first agent) gets the slow server.
    let yaml = yaml.replacen(
        &format!("      base_url: \"{base}\"\n"),
        &format!(
            "      base_url: \"{base}\"\n      mcp_servers:\n        - name: slow\n          type: stdio\n          command: \"{}\"\n          args: [\"--start-delay-ms\", \"{DELAY_MS}\"]\n",
            demo.display()
        ),
        1,
    );
    let config = setup.write_config(&yaml);
    let orchestrator = setup.orchestrator(&config, "slow-mcp", &heartbeat);
    let node = setup.node("node-a", &heartbeat);
    let run = wait(orchestrator, DEADLINE).await;
    let node_run = stop_node(node).await;
    assert_eq!(
        run.code,
        Some(0),
        "{}\nnode:\n{}",
        explain(&run),
        explain(&node_run)
    );
    assert!(
        !node_run
            .stderr
            .contains("no heartbeat from the orchestrator"),
        "node:\n{}",
        explain(&node_run)
    );
    let journal = read_journal(&setup.session_dir("slow-mcp")).unwrap();
    assert!(events_of(&journal, "agent_lost").is_empty(), "{journal:#?}");
    let starts = events_of(&journal, "tool_server_started");
    assert_eq!(starts.len(), 1, "{starts:#?}");
    let start = &starts[0];
    assert_eq!(start["agent"], "alpha");
    assert_eq!(start["node"], "node-a");
    assert_eq!(start["server"], "slow");
    assert_eq!(start["transport"], "stdio");
    assert_eq!(start["optional"], false);
    assert!(start["error"].is_null(), "{start}");
    assert!(start["tools"].as_u64().unwrap_or(0) > 0, "{start}");
    // The server really was slow: what the node measured includes its delay.
    assert!(
        start["duration_ms"].as_u64().unwrap_or(0) >= DELAY_MS,
        "{start}"
    );
    assert_eq!(
        agents_of(&events_of(&journal, "decision_received")),
        set(&["alpha", "beta"])
    );
}
