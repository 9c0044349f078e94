//! `conclave batch` through the real binary against the simulated provider: a batch killed
//! with SIGKILL half way and run again finishes every task exactly once without paying for a
//! journaled turn twice; a second run of the same batch is refused while one runs; Ctrl-C
//! pauses once the calls in flight finish, and the next run sends none of them again; a
//! second signal stops at once; a failing task never stops the batch and is
//! listed with its error (and retried by the next run); CSV tasks; a batch token cap stops
//! starting tasks (exit 3).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use conclave_tests::{
    Running, SimAgent, events_of, poll_until, read_journal, run_with_deadline, sim_config_yaml,
    start_sim, workspace_bin,
};
use serde_json::Value;

fn agents() -> [SimAgent<'static>; 3] {
    [
        SimAgent {
            id: "alpha",
            model: "sim-a",
        },
        SimAgent {
            id: "beta",
            model: "sim-b",
        },
        SimAgent {
            id: "gamma",
            model: "sim-c",
        },
    ]
}

/// `team.yaml` in `dir`: the three sim agents under `restart_policy: finish`, so a turn is
/// never cancelled and every request a batch sends runs to its end unless the batch is cut.
fn write_team(dir: &Path, base_url: &str) {
    let yaml = sim_config_yaml(base_url, &agents(), "  restart_policy: finish\n", 120);
    std::fs::write(dir.join("team.yaml"), yaml).expect("config written");
}

fn write_tasks(path: &Path, count: usize) {
    let text: String = (1..=count)
        .map(|i| format!("{{\"id\": \"q{i}\", \"question\": \"What is {i} times {i}?\"}}\n"))
        .collect();
    std::fs::write(path, text).expect("tasks file written");
}

fn results(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a results line is JSON"))
        .collect()
}

fn batch(dir: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(workspace_bin("conclave").expect("conclave is built"));
    command
        .args(["batch", "tasks.jsonl", "--out", "results.jsonl"])
        .args(extra)
        .current_dir(dir);
    command
}

/// Turns journaled as decided, per session directory: (agent, turn).
fn decided(sessions: &Path) -> HashMap<String, Vec<(String, u64)>> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(sessions) else {
        return out;
    };
    for entry in entries.flatten() {
        let journal = read_journal(&entry.path()).unwrap_or_default();
        let turns = journal
            .iter()
            .filter(|e| e["type"] == "decision_received" || e["type"] == "presentation_received")
            .map(|e| {
                (
                    e["agent"].as_str().unwrap_or_default().to_owned(),
                    e["turn"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        out.insert(entry.file_name().to_string_lossy().into_owned(), turns);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_killed_half_way_resumes_and_finishes_every_task_once_without_paying_twice() {
    // 10 pieces x 20 ms: every turn streams ~200 ms, so the kill lands with sessions mid-way.
    let sim = start_sim(10, 20).await.expect("sim provider starts");
    let dir = tempfile::tempdir().expect("tempdir");
    write_team(dir.path(), &sim.base_url());
    let total = 24;
    write_tasks(&dir.path().join("tasks.jsonl"), total);
    let out = dir.path().join("results.jsonl");

    let first = Running::start(&mut batch(
        dir.path(),
        &["--config", "team.yaml", "--concurrency", "4"],
    ))
    .expect("batch starts");
    let half = poll_until(Duration::from_secs(60), || {
        (results(&out).len() >= total / 2).then_some(())
    });
    assert!(half.is_some(), "half the batch did not finish within 60 s");

    // A second run of the same batch meanwhile is refused, naming the holder.
    let second = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            run_with_deadline(
                &mut batch(&dir, &["--config", "team.yaml"]),
                Duration::from_secs(30),
            )
        }
    })
    .await
    .expect("joins")
    .expect("second run finishes");
    assert_eq!(second.code, Some(1), "stderr:\n{}", second.stderr);
    assert!(
        second.stderr.contains("is being run by process"),
        "stderr:\n{}",
        second.stderr
    );

    first.signal(libc::SIGKILL).expect("kill -9");
    let killed = first.wait(Duration::from_secs(10)).expect("reaped");
    assert_eq!(killed.code, None, "the first run was killed by a signal");
    let killed_at = sim.now_ms();
    let done_before = results(&out).len();
    assert!(
        done_before < total,
        "the whole batch finished before the kill"
    );
    let sessions = dir.path().join("results.batch/sessions");
    let decided_before = decided(&sessions);

    let rerun = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            run_with_deadline(
                &mut batch(&dir, &["--config", "team.yaml", "--concurrency", "4"]),
                Duration::from_secs(120),
            )
        }
    })
    .await
    .expect("joins")
    .expect("the rerun finishes");
    assert_eq!(rerun.code, Some(0), "stderr:\n{}", rerun.stderr);
    assert!(
        rerun
            .stderr
            .contains(&format!("{done_before} done already")),
        "stderr:\n{}",
        rerun.stderr
    );

    // Every task exactly once, with an answer and its session.
    let lines = results(&out);
    let ids: Vec<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
    let distinct: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), total, "{ids:?}");
    assert_eq!(
        distinct.len(),
        total,
        "a task is in the results twice: {ids:?}"
    );
    for line in &lines {
        assert!(line["final_answer"].as_str().is_some_and(|a| !a.is_empty()));
        assert!(line["winner"].is_string(), "{line}");
        assert!(line["tokens"]["total"].as_u64().unwrap_or(0) > 0, "{line}");
        let session = line["session"].as_str().expect("session path");
        assert!(dir.path().join(session).join("events.jsonl").is_file());
    }

    // Sessions cut by the kill were resumed from their journals, not started over.
    let after = decided(&sessions);
    let mut resumed = 0;
    for (session, before) in &decided_before {
        let now = &after[session];
        let distinct: HashSet<_> = now.iter().collect();
        assert_eq!(
            distinct.len(),
            now.len(),
            "{session}: a turn was decided twice"
        );
        assert!(before.iter().all(|t| distinct.contains(t)), "{session}");
        let journal = read_journal(&sessions.join(session)).expect("journal");
        resumed += events_of(&journal, "session_resumed").len();
    }
    assert!(resumed > 0, "no session was resumed");

    // What the provider saw: no request that completed before the kill and whose decision
    // was journaled was sent again (a request can finish just before the kill with its
    // decision unjournaled; re-running that turn is by design).
    let requests = sim.requests();
    let key = |r: &conclave_sim::RequestRecord| (r.model.clone(), r.fingerprint.clone());
    let completed_before: Vec<_> = requests
        .iter()
        .filter(|r| r.started_ms <= killed_at && r.completed)
        .collect();
    let journaled_before: usize = decided_before.values().map(Vec::len).sum();
    let unjournaled = completed_before.len().saturating_sub(journaled_before);
    let paid: HashSet<_> = completed_before.iter().map(|r| key(r)).collect();
    let resent = requests
        .iter()
        .filter(|r| r.started_ms > killed_at && paid.contains(&key(r)))
        .count();
    assert!(
        resent <= unjournaled,
        "{resent} paid request(s) sent again, {unjournaled} allowed"
    );

    // A third run has nothing to do and sends nothing.
    let before = sim.requests().len();
    let again = run_with_deadline(
        &mut batch(dir.path(), &["--config", "team.yaml"]),
        Duration::from_secs(30),
    )
    .expect("third run");
    assert_eq!(again.code, Some(0), "stderr:\n{}", again.stderr);
    assert_eq!(sim.requests().len(), before);
    assert_eq!(results(&out).len(), total);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_pauses_once_the_calls_in_flight_finish_and_the_next_run_sends_nothing_twice() {
    let sim = start_sim(10, 30).await.expect("sim provider starts");
    let dir = tempfile::tempdir().expect("tempdir");
    write_team(dir.path(), &sim.base_url());
    let total = 8;
    write_tasks(&dir.path().join("tasks.jsonl"), total);
    let out = dir.path().join("results.jsonl");
    let journal = dir.path().join("results.batch/batch.jsonl");
    let run = Running::start(&mut batch(
        dir.path(),
        &["--config", "team.yaml", "--concurrency", "4"],
    ))
    .expect("batch starts");
    // Once a session has a decision journaled, interrupt.
    let sessions = dir.path().join("results.batch/sessions");
    let mid = poll_until(Duration::from_secs(60), || {
        decided(&sessions)
            .values()
            .any(|d| !d.is_empty())
            .then_some(())
    });
    assert!(mid.is_some(), "no decision was journaled within 60 s");
    run.signal(libc::SIGINT).expect("SIGINT");
    let stopped = run.wait(Duration::from_secs(60)).expect("stops");
    assert_eq!(stopped.code, Some(130), "stderr:\n{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("pausing:") && stopped.stderr.contains("batch paused"),
        "stderr:\n{}",
        stopped.stderr
    );
    assert!(stopped.stderr.contains("run the same command again"));
    let text = std::fs::read_to_string(&journal).expect("batch journal");
    assert!(text.contains("\"started\""));
    assert!(
        results(&out).len() < total,
        "everything finished before Ctrl-C"
    );

    // Nothing was cut: every request the provider saw ran to its end and was journaled.
    let first_run = sim.requests();
    assert!(
        first_run.iter().all(|r| r.completed),
        "{} request(s) were cut",
        first_run.iter().filter(|r| !r.completed).count()
    );
    let journaled: usize = decided(&sessions).values().map(Vec::len).sum();
    assert_eq!(
        journaled,
        first_run.len(),
        "every completed request's decision is in a journal"
    );
    // The running sessions paused with their journals open and said which turns wait.
    let mut paused = HashMap::new();
    for entry in std::fs::read_dir(&sessions).expect("sessions").flatten() {
        let events = read_journal(&entry.path()).unwrap_or_default();
        if let Some(line) = events_of(&events, "session_paused").first() {
            assert!(
                events_of(&events, "session_ended").is_empty(),
                "a paused session has no end line"
            );
            let waiting = line["agents_waiting"].as_array().map_or(0, Vec::len);
            paused.insert(entry.file_name().to_string_lossy().into_owned(), waiting);
        }
    }
    assert!(!paused.is_empty(), "no session paused");

    let rerun = run_with_deadline(
        &mut batch(dir.path(), &["--config", "team.yaml", "--concurrency", "4"]),
        Duration::from_secs(120),
    )
    .expect("rerun");
    assert_eq!(rerun.code, Some(0), "stderr:\n{}", rerun.stderr);
    let ids: HashSet<String> = results(&out)
        .iter()
        .filter_map(|l| l["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!((ids.len(), results(&out).len()), (total, total));
    // Each paused session resumed and sent exactly the turns it held back.
    for (session, waiting) in &paused {
        let events = read_journal(&sessions.join(session)).expect("journal");
        let resumed = events_of(&events, "session_resumed");
        assert_eq!(resumed.len(), 1, "{session}");
        let resent = resumed[0]["resent_turns"].as_array().map_or(0, Vec::len);
        assert_eq!(resent, *waiting, "{session}");
    }
    // No request of the first run was sent again.
    let key = |r: &conclave_sim::RequestRecord| (r.model.clone(), r.fingerprint.clone());
    let paid: HashSet<_> = first_run.iter().map(key).collect();
    let again = sim.requests()[first_run.len()..]
        .iter()
        .filter(|r| paid.contains(&key(r)))
        .count();
    assert_eq!(
        again, 0,
        "requests paid for in the first run were sent again"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_stops_at_once_and_the_cut_sessions_resume() {
    // 40 pieces x 50 ms: a reply streams for 2 s, so the pause is still waiting.
    let sim = start_sim(40, 50).await.expect("sim provider starts");
    let dir = tempfile::tempdir().expect("tempdir");
    write_team(dir.path(), &sim.base_url());
    write_tasks(&dir.path().join("tasks.jsonl"), 4);
    let run = Running::start(&mut batch(
        dir.path(),
        &["--config", "team.yaml", "--concurrency", "2"],
    ))
    .expect("batch starts");
    let streaming = poll_until(Duration::from_secs(60), || {
        (sim.requests().len() >= 6).then_some(())
    });
    assert!(
        streaming.is_some(),
        "the sessions did not start within 60 s"
    );
    run.signal(libc::SIGTERM).expect("SIGTERM");
    let pausing = poll_until(Duration::from_secs(30), || {
        run.stderr_so_far().contains("pausing:").then_some(())
    });
    assert!(pausing.is_some(), "the first SIGTERM did not pause");
    run.signal(libc::SIGINT).expect("SIGINT");
    let stopped = run.wait(Duration::from_secs(30)).expect("stops");
    assert_eq!(stopped.code, Some(130), "stderr:\n{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("batch interrupted") && !stopped.stderr.contains("batch paused"),
        "stderr:\n{}",
        stopped.stderr
    );
    assert!(
        sim.requests().iter().any(|r| !r.completed),
        "the second signal cut no call"
    );
    let rerun = run_with_deadline(
        &mut batch(dir.path(), &["--config", "team.yaml", "--concurrency", "2"]),
        Duration::from_secs(120),
    )
    .expect("rerun");
    assert_eq!(rerun.code, Some(0), "stderr:\n{}", rerun.stderr);
    assert_eq!(results(&dir.path().join("results.jsonl")).len(), 4);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_is_listed_with_its_error_and_the_rest_of_the_batch_runs() {
    let sim = start_sim(3, 1).await.expect("sim provider starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let good = sim_config_yaml(&sim.base_url(), &agents(), "", 60);
    std::fs::write(dir.path().join("team.yaml"), good).expect("config written");
    // Every agent of this config hits an exhausted quota, which is never retried.
    let bad = sim_config_yaml(
        &sim.base_url(),
        &[
            SimAgent {
                id: "broke",
                model: "sim-x:fault=quota",
            },
            SimAgent {
                id: "poor",
                model: "sim-y:fault=quota",
            },
        ],
        "",
        60,
    );
    std::fs::write(dir.path().join("bad.yaml"), bad).expect("config written");
    std::fs::write(
        dir.path().join("tasks.jsonl"),
        "{\"id\": \"ok1\", \"question\": \"One?\"}\n\
         {\"id\": \"doomed\", \"question\": \"Two?\", \"config\": \"bad.yaml\"}\n\
         {\"id\": \"ok2\", \"question\": \"Three?\", \"history\": [[\"Zero?\", \"Nothing.\"]]}\n",
    )
    .expect("tasks written");
    let first = run_with_deadline(
        &mut batch(dir.path(), &["--config", "team.yaml", "--concurrency", "1"]),
        Duration::from_secs(60),
    )
    .expect("batch runs");
    assert_eq!(first.code, Some(2), "stderr:\n{}", first.stderr);
    assert!(
        first.stderr.contains("failed: doomed"),
        "stderr:\n{}",
        first.stderr
    );
    let out = dir.path().join("results.jsonl");
    let ids: Vec<String> = results(&out)
        .iter()
        .filter_map(|l| l["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, ["ok1", "ok2"]);
    let failed = std::fs::read_to_string(dir.path().join("results.batch/failed.jsonl"))
        .expect("failed.jsonl");
    let failed: Value = serde_json::from_str(failed.trim()).expect("one failed line");
    assert_eq!(failed["id"], "doomed");
    assert!(failed["error"].as_str().is_some_and(|e| !e.is_empty()));

    // The next run retries only the failed task, in a new session.
    let before = sim.requests().len();
    let second = run_with_deadline(
        &mut batch(dir.path(), &["--config", "team.yaml"]),
        Duration::from_secs(60),
    )
    .expect("batch runs again");
    assert_eq!(second.code, Some(2), "stderr:\n{}", second.stderr);
    assert!(
        second.stderr.contains("2 done already"),
        "{}",
        second.stderr
    );
    let retried = &sim.requests()[before..];
    assert!(!retried.is_empty());
    assert!(
        retried.iter().all(|r| r.model.contains("fault=quota")),
        "a done task was sent again"
    );
    assert!(dir.path().join("results.batch/sessions/doomed.2").is_dir());
    assert_eq!(results(&out).len(), 2);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_tasks_run_and_a_batch_token_cap_stops_starting_tasks() {
    let sim = start_sim(5, 1).await.expect("sim provider starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = sim_config_yaml(&sim.base_url(), &agents(), "", 60);
    std::fs::write(dir.path().join("team.yaml"), yaml).expect("config written");
    std::fs::write(
        dir.path().join("tasks.csv"),
        "id,question\n1,\"Add 2, 3 and 4.\"\n2,\"Say \"\"hi\"\".\"\n3,Three?\n4,Four?\n",
    )
    .expect("csv written");
    let bin = workspace_bin("conclave").expect("conclave is built");
    let csv = run_with_deadline(
        Command::new(&bin)
            .args([
                "batch",
                "tasks.csv",
                "--config",
                "team.yaml",
                "--out",
                "csv.jsonl",
            ])
            .current_dir(dir.path()),
        Duration::from_secs(60),
    )
    .expect("csv batch");
    assert_eq!(csv.code, Some(0), "stderr:\n{}", csv.stderr);
    let lines = results(&dir.path().join("csv.jsonl"));
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().any(|l| l["question"] == "Add 2, 3 and 4."));
    assert!(lines.iter().any(|l| l["question"] == "Say \"hi\"."));

    // One session uses far more than 10 tokens: after the first, no task starts.
    let capped = run_with_deadline(
        Command::new(&bin)
            .args([
                "batch",
                "tasks.csv",
                "--config",
                "team.yaml",
                "--out",
                "capped.jsonl",
                "--concurrency",
                "1",
                "--max-tokens",
                "10",
            ])
            .current_dir(dir.path()),
        Duration::from_secs(60),
    )
    .expect("capped batch");
    assert_eq!(capped.code, Some(3), "stderr:\n{}", capped.stderr);
    assert!(
        capped.stderr.contains("--max-tokens 10 reached"),
        "stderr:\n{}",
        capped.stderr
    );
    assert!(
        capped.stderr.contains("3 task(s) did not run"),
        "stderr:\n{}",
        capped.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_journal_left_empty_by_a_crash_starts_afresh() {
    let sim = start_sim(3, 1).await.expect("sim provider starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = sim_config_yaml(&sim.base_url(), &agents(), "", 60);
    std::fs::write(dir.path().join("team.yaml"), yaml).expect("config written");
    write_tasks(&dir.path().join("tasks.jsonl"), 2);
    // A run that crashed right after creating q1's journal, before its first line.
    let batch_dir = dir.path().join("results.batch");
    std::fs::create_dir_all(batch_dir.join("sessions/q1")).expect("dirs");
    std::fs::write(batch_dir.join("sessions/q1/events.jsonl"), "").expect("empty journal");
    std::fs::write(
        batch_dir.join("batch.jsonl"),
        "{\"event\":\"started\",\"id\":\"q1\",\"session\":\"q1\",\"attempt\":1}\n",
    )
    .expect("batch journal");
    let run = run_with_deadline(
        &mut batch(dir.path(), &["--config", "team.yaml"]),
        Duration::from_secs(60),
    )
    .expect("batch runs");
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let lines = results(&dir.path().join("results.jsonl"));
    assert_eq!(lines.len(), 2);
    let journal = read_journal(&batch_dir.join("sessions/q1")).expect("journal");
    assert_eq!(events_of(&journal, "session_ended").len(), 1);
    sim.shutdown().await;
}
