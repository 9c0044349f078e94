//! End-to-end tests of what strangers, impostors and orchestrator-written agent specs can do
//! to a cluster (real `conclave` and `conclave-agent` processes on loopback):
//!
//! * silent TCP connections (twenty of them) and a connection sending garbage on the cluster
//!   port do not stop an honest node from joining and a session from completing, with TLS
//!   and without; the orchestrator drops each of them at its handshake deadline and says so;
//! * mutual-TLS negatives: a node whose certificate comes from another CA, a client without a
//!   certificate, a plain node against a TLS orchestrator, a certificate issued for another
//!   name than the node's: each is refused, and the orchestrator's log names why;
//! * a second node under the name of a live node is refused (the live node stays);
//! * an agent node refuses an agent whose base URL its operator did not allow, before any
//!   provider call, and the orchestrator shows the refusal.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use conclave_tests::{NodeAgent, events_of, read_journal, sim_cluster_yaml, start_agent_node};

use super::cluster::{
    DEADLINE, FAST_RECONNECT, SECRET, Setup, as_strs, certificates, explain, stop_node, strip_ansi,
    wait,
};

/// Connects to the orchestrator's cluster port once it listens (at most 30 s).
fn connect_when_listening(port: u16) -> TcpStream {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => return stream,
            Err(error) if Instant::now() > until => {
                panic!("the orchestrator never listened on {port}: {error}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Whether the orchestrator closed `stream` (EOF or reset) within `deadline`.
fn closed_by_peer(mut stream: TcpStream, deadline: Duration) -> bool {
    let until = Instant::now() + deadline;
    let mut buffer = [0u8; 256];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            // A TLS alert or anything else the orchestrator sends before closing.
            Ok(_) => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn two_node_config(
    setup: &Setup,
    first: &str,
    second: &str,
    join_timeout: u64,
) -> std::path::PathBuf {
    let base = setup.sim.base_url();
    setup.write_config(&sim_cluster_yaml(
        &base,
        &[
            NodeAgent {
                id: "alpha",
                model: "sim-a",
                node: Some(first),
            },
            NodeAgent {
                id: "beta",
                model: "sim-b",
                node: Some(second),
            },
        ],
        "",
        60,
        join_timeout,
    ))
}

/// Twenty silent connections and one sending garbage, held open while an honest node joins;
/// then each must be closed by the orchestrator (its deadline), and the session completes
/// once a second node joins. Without the deadlines (and with TLS, without conclave's own
/// acceptor, whose handshakes run concurrently) the honest node could not join and the
/// strangers would stay connected forever.
async fn strangers_do_not_stall_the_cluster(tls: bool) {
    let setup = Setup::new().await;
    let certs = if tls {
        match certificates(setup.dir.path(), &["honest", "late"], &[]) {
            Some(certs) => Some(certs),
            None => return,
        }
    } else {
        None
    };
    let flags = |name: &str| certs.as_ref().map(|c| c.flags(name)).unwrap_or_default();
    let config = two_node_config(&setup, "honest", "late", 60);
    let session = if tls { "strangers-tls" } else { "strangers" };
    let orchestrator = setup.orchestrator(&config, session, &as_strs(&flags("orchestrator")));
    let port = setup.port;
    let strangers = tokio::task::spawn_blocking(move || {
        let mut strangers: Vec<TcpStream> = (0..20).map(|_| connect_when_listening(port)).collect();
        let mut garbage = connect_when_listening(port);
        // Not a TLS record, and as a ractor frame a length far over the frame limit.
        garbage
            .write_all(&[0xff, 0xff, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4])
            .expect("garbage sent");
        strangers.push(garbage);
        strangers
    })
    .await
    .unwrap();
    let honest = setup.node("honest", &as_strs(&flags("honest")));
    let all_closed = tokio::task::spawn_blocking(move || {
        strangers
            .into_iter()
            .map(|s| closed_by_peer(s, Duration::from_secs(30)))
            .filter(|closed| *closed)
            .count()
    })
    .await
    .unwrap();
    let late = setup.node("late", &as_strs(&flags("late")));
    let run = wait(orchestrator, DEADLINE).await;
    let honest = stop_node(honest).await;
    stop_node(late).await;
    assert_eq!(
        all_closed, 21,
        "every stranger is dropped by the orchestrator"
    );
    assert_eq!(run.code, Some(0), "{}", explain(&run));
    assert!(
        strip_ansi(&honest.stderr).contains("joined the orchestrator"),
        "{}",
        explain(&honest)
    );
    let stderr = strip_ansi(&run.stderr);
    if tls {
        assert!(
            stderr.matches("no TLS handshake within 5 s").count() >= 20,
            "stderr:\n{stderr}"
        );
        assert!(stderr.contains("not TLS"), "stderr:\n{stderr}");
    } else {
        assert!(
            stderr.matches("no cookie handshake within 5 s").count() >= 20,
            "stderr:\n{stderr}"
        );
        assert!(
            stderr.contains("it closed before authenticating"),
            "stderr:\n{stderr}"
        );
    }
    let journal = read_journal(&setup.session_dir(session)).unwrap();
    assert_eq!(
        events_of(&journal, "session_ended")[0]["reason"],
        "consensus"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_garbage_connections_do_not_stall_a_plain_cluster() {
    strangers_do_not_stall_the_cluster(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_garbage_connections_do_not_stall_a_tls_cluster() {
    strangers_do_not_stall_the_cluster(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_wrong_ca_no_certificate_plain_nodes_and_impostors() {
    let setup = Setup::new().await;
    let Some(certs) = certificates(setup.dir.path(), &["good", "other-name"], &["stranger"]) else {
        return;
    };
    // `absent` never comes: the orchestrator gives up after the join timeout, by then every
    // negative below has tried (agent nodes retry every 300 ms at most).
    let config = two_node_config(&setup, "good", "absent", 12);
    let orchestrator = setup.orchestrator(&config, "mtls", &as_strs(&certs.flags("orchestrator")));
    let good = setup.node("good", &as_strs(&certs.flags("good")));
    // Signed by another CA.
    let wrong_ca = setup.node("stranger", &as_strs(&certs.flags("stranger")));
    // No TLS at all.
    let plain = setup.node("plain", &[]);
    // A valid certificate, issued for another name.
    let impostor = setup.node("impostor", &as_strs(&certs.flags("other-name")));
    // A TLS client with no certificate.
    let port = setup.port;
    let ca = certs.path("ca.pem");
    let no_cert = tokio::task::spawn_blocking(move || {
        drop(connect_when_listening(port));
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-CAfile", &ca, "-tls1_3"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    });
    let run = wait(orchestrator, Duration::from_secs(60)).await;
    let _ = tokio::time::timeout(Duration::from_secs(20), no_cert).await;
    for node in [good, wrong_ca, plain, impostor] {
        stop_node(node).await;
    }
    let stderr = strip_ansi(&run.stderr);
    assert_eq!(run.code, Some(2), "{}", explain(&run));
    for expected in [
        "wrong CA: the peer's certificate is not signed by this cluster's CA",
        "no client certificate",
        "not TLS: the peer does not speak TLS",
        "certificate name mismatch: the node calls itself `impostor`",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("refused a node connection: TLS handshake failed"));
    assert_eq!(stderr.matches("agent node joined").count(), 1, "{stderr}");
    assert!(stderr.contains("`absent` did not join"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_under_a_live_nodes_name_is_refused() {
    let setup = Setup::new().await;
    let config = two_node_config(&setup, "twin", "absent", 10);
    let orchestrator = setup.orchestrator(&config, "twins", &[]);
    let first = setup.node("twin", &[]);
    let second = setup.node("twin", &[]);
    let run = wait(orchestrator, Duration::from_secs(60)).await;
    let first = stop_node(first).await;
    let second = stop_node(second).await;
    let stderr = strip_ansi(&run.stderr);
    assert_eq!(run.code, Some(2), "{}", explain(&run));
    assert!(
        stderr.contains("a node named `twin` is already joined"),
        "stderr:\n{stderr}"
    );
    // One of the two joined and was never evicted by the other.
    assert_eq!(stderr.matches("agent node joined").count(), 1, "{stderr}");
    assert!(!stderr.contains("agent node lost"), "{stderr}");
    let refused = [&first, &second]
        .iter()
        .filter(|n| strip_ansi(&n.stderr).contains("the orchestrator refused this node"))
        .count();
    assert_eq!(refused, 1, "{}\n{}", explain(&first), explain(&second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_node_refuses_a_base_url_its_operator_did_not_allow() {
    let setup = Setup::new().await;
    let config = two_node_config(&setup, "strict", "open", 30);
    let orchestrator = setup.orchestrator(&config, "allow", &[]);
    // No --allow-base-url: the simulator's loopback URL is not a hosted preset's.
    let strict = start_agent_node(
        &setup.join(),
        "strict",
        &setup.cookie,
        FAST_RECONNECT,
        &[("CONCLAVE_SIM_API_KEY", SECRET)],
    )
    .unwrap();
    let open = setup.node("open", &[]);
    let run = wait(orchestrator, DEADLINE).await;
    stop_node(strict).await;
    stop_node(open).await;
    let stderr = strip_ansi(&run.stderr);
    // Exit 1, as for a key missing on a node: the config cannot run on this cluster.
    assert_eq!(run.code, Some(1), "{}", explain(&run));
    assert!(
        stderr.contains("node `strict` does not allow this provider")
            && stderr.contains("--allow-base-url"),
        "stderr:\n{stderr}"
    );
    // The refused agent never called its provider.
    assert!(
        setup.sim.requests().iter().all(|r| r.model != "sim-a"),
        "the refused agent reached the provider"
    );
}
