//! MassGen's own example configs, as shipped in the `massgen` wheel on PyPI, through conclave's
//! loader: every one either loads or is refused with an error that says what to change. No
//! panic, no error without a file name, no Rust debug text in front of a user.
//!
//! The configs are not part of this repository (they are MassGen's). `.ci/run` downloads the
//! `massgen==0.1.97` wheel with `pip download --no-deps`, unpacks its `configs/` folder and
//! points `CONCLAVE_MASSGEN_CONFIGS` at it. Without that variable the test says so and passes,
//! except under `CI=true`, where a missing corpus is a failure: CI must never pass by skipping.
//!
//! `${VAR}` references resolve to a placeholder, as on a machine where the user has set every
//! key: the test is about what conclave makes of the configs, not about the environment.

use std::path::{Path, PathBuf};

use conclave::config::load_file;

/// The variable naming the unpacked `massgen/configs` folder.
const CORPUS_ENV: &str = "CONCLAVE_MASSGEN_CONFIGS";

/// What every `${VAR}` resolves to; no error may repeat it (errors never echo a value from the
/// environment).
const PLACEHOLDER: &str = "placeholder-value-from-env";

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Rust debug formatting that must never reach a person: `Foo { x: .. }`, `Some("…")`, `Err(`.
fn looks_like_debug_text(message: &str) -> bool {
    message.contains("Some(\"")
        || message.contains("Err(")
        || message.contains("Ok(")
        || message.contains(": None")
        || message
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| {
                w[1] == "{"
                    && w[0].chars().next().is_some_and(char::is_uppercase)
                    && w[0].chars().all(|c| c.is_alphanumeric() || c == ':')
            })
}

#[test]
fn every_massgen_example_config_loads_or_is_refused_clearly() {
    let Some(dir) = std::env::var_os(CORPUS_ENV).map(PathBuf::from) else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{CORPUS_ENV} is not set under CI=true: .ci/run must unpack MassGen's example configs"
        );
        eprintln!(
            "massgen_configs: {CORPUS_ENV} not set; not run (`bash .ci/run` sets it up, or unpack the massgen wheel's configs/ and point {CORPUS_ENV} at it)"
        );
        return;
    };
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    files.sort();
    assert!(
        files.len() >= 200,
        "{CORPUS_ENV}={} holds {} YAML files; MassGen 0.1.97 ships 276",
        dir.display(),
        files.len()
    );

    let placeholder = |_: &str| Some(PLACEHOLDER.to_owned());
    let (mut loaded, mut warned, mut refused) = (0usize, 0usize, 0usize);
    let mut problems = Vec::new();
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for path in &files {
        let shown = path
            .strip_prefix(&dir)
            .unwrap_or(path)
            .display()
            .to_string();
        let result = std::panic::catch_unwind(|| load_file(path, &placeholder));
        match result {
            Err(_) => problems.push(format!("{shown}: the loader panicked")),
            Ok(Ok(config)) => {
                loaded += 1;
                if !config.warnings.is_empty() {
                    warned += 1;
                }
            }
            Ok(Err(error)) => {
                refused += 1;
                let message = error.to_string();
                let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if message.trim().is_empty() {
                    problems.push(format!("{shown}: refused with an empty message"));
                } else if !message.contains(file_name) {
                    problems.push(format!(
                        "{shown}: the error does not name the file: {message}"
                    ));
                } else if message.contains(PLACEHOLDER) {
                    problems.push(format!(
                        "{shown}: the error echoes a value from the environment: {message}"
                    ));
                } else if looks_like_debug_text(&message) {
                    problems.push(format!("{shown}: debug text in the error: {message}"));
                }
                // Group the reasons by their first words after the location, for the summary.
                let reason = message
                    .split_once(": ")
                    .map(|(_, rest)| rest)
                    .unwrap_or(&message)
                    .chars()
                    .take(70)
                    .collect::<String>();
                *reasons.entry(reason).or_default() += 1;
            }
        }
    }
    eprintln!(
        "massgen_configs: {} files: {loaded} load ({warned} with warnings about ignored keys), {refused} refused",
        files.len()
    );
    for (reason, count) in &reasons {
        eprintln!("massgen_configs:   refused ×{count}: {reason}");
    }
    assert!(
        problems.is_empty(),
        "{} of {} MassGen configs were not handled cleanly:\n{}",
        problems.len(),
        files.len(),
        problems.join("\n")
    );
    assert_eq!(loaded + refused, files.len());
}
