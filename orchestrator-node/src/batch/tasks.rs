//! The tasks file of a batch: JSON lines (`{"id", "question", "config"?, "history"?}`) or CSV
//! with a header naming at least `id` and `question` (RFC 4180 quoting: fields in double
//! quotes may hold commas, newlines and doubled quotes). The format is chosen by the file's
//! extension (`.csv`), else by its first non-blank character (`{` for JSON lines).
//!
//! Every problem is reported with its line number and what to fix; ids must be unique,
//! because the batch journal and the results file key everything by id.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// One task of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub question: String,
    /// A config file for this task (relative paths are relative to the tasks file).
    pub config: Option<PathBuf>,
    /// Earlier (question, answer) turns of the conversation.
    pub history: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TasksError {
    #[error("cannot read the tasks file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {detail}")]
    Line {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("{0} holds no tasks")]
    Empty(PathBuf),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskLine {
    id: Value,
    question: String,
    #[serde(default)]
    config: Option<PathBuf>,
    #[serde(default)]
    history: Vec<(String, String)>,
}

/// Reads and checks a tasks file.
pub fn read_tasks(path: &Path) -> Result<Vec<Task>, TasksError> {
    let text = std::fs::read_to_string(path).map_err(|source| TasksError::Read {
        path: path.to_owned(),
        source,
    })?;
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        || !text.trim_start().starts_with('{');
    let tasks = if csv {
        parse_csv(&text, path)?
    } else {
        parse_jsonl(&text, path)?
    };
    if tasks.is_empty() {
        return Err(TasksError::Empty(path.to_owned()));
    }
    Ok(tasks)
}

fn line_error(path: &Path, line: usize, detail: impl Into<String>) -> TasksError {
    TasksError::Line {
        path: path.to_owned(),
        line,
        detail: detail.into(),
    }
}

/// Parses JSON lines; blank lines are skipped.
pub fn parse_jsonl(text: &str, path: &Path) -> Result<Vec<Task>, TasksError> {
    let mut tasks = Vec::new();
    let mut seen = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: TaskLine = serde_json::from_str(line).map_err(|e| {
            line_error(
                path,
                number,
                format!(
                    "not a task ({e}); each line is {{\"id\", \"question\", \"config\"?, \"history\"?}}"
                ),
            )
        })?;
        let id = match parsed.id {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            _ => {
                return Err(line_error(
                    path,
                    number,
                    "\"id\" must be a string or a number",
                ));
            }
        };
        tasks.push(check(
            Task {
                id,
                question: parsed.question,
                config: parsed.config,
                history: parsed.history,
            },
            path,
            number,
            &mut seen,
        )?);
    }
    Ok(tasks)
}

fn check(
    task: Task,
    path: &Path,
    line: usize,
    seen: &mut HashSet<String>,
) -> Result<Task, TasksError> {
    if task.id.trim().is_empty() {
        return Err(line_error(path, line, "the task id is empty"));
    }
    if task.question.trim().is_empty() {
        return Err(line_error(
            path,
            line,
            format!("task `{}` has an empty question", task.id),
        ));
    }
    if !seen.insert(task.id.clone()) {
        return Err(line_error(
            path,
            line,
            format!(
                "task id `{}` appears twice; ids must be unique (the results are keyed by id)",
                task.id
            ),
        ));
    }
    Ok(task)
}

/// Parses CSV with a header row naming `id` and `question` (other columns are ignored).
pub fn parse_csv(text: &str, path: &Path) -> Result<Vec<Task>, TasksError> {
    let records = csv_records(text).map_err(|line| {
        line_error(
            path,
            line,
            "a quoted field is not closed (a field starting with \" must end with \")",
        )
    })?;
    let mut records = records
        .into_iter()
        .filter(|(_, fields)| !(fields.len() == 1 && fields[0].trim().is_empty()));
    let Some((_, header)) = records.next() else {
        return Ok(Vec::new());
    };
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let (Some(id_col), Some(question_col)) = (column("id"), column("question")) else {
        return Err(line_error(
            path,
            1,
            "the CSV header must name the columns `id` and `question` (e.g. `id,question`)",
        ));
    };
    let mut tasks = Vec::new();
    let mut seen = HashSet::new();
    for (line, fields) in records {
        let field = |i: usize| fields.get(i).cloned().unwrap_or_default();
        if fields.len() < header.len() {
            return Err(line_error(
                path,
                line,
                format!(
                    "{} field(s) where the header has {}",
                    fields.len(),
                    header.len()
                ),
            ));
        }
        tasks.push(check(
            Task {
                id: field(id_col).trim().to_owned(),
                question: field(question_col),
                config: None,
                history: Vec::new(),
            },
            path,
            line,
            &mut seen,
        )?);
    }
    Ok(tasks)
}

/// Splits CSV text into records, each with the line it starts on. `Err(line)`: a quoted field
/// starting on that line never closes.
fn csv_records(text: &str) -> Result<Vec<(usize, Vec<String>)>, usize> {
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut start_line) = (1usize, 1usize);
    let mut quoted = false;
    let mut quote_line = 0;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => {
                quoted = true;
                quote_line = line;
            }
            ',' => fields.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                records.push((start_line, std::mem::take(&mut fields)));
                line += 1;
                start_line = line;
            }
            c => field.push(c),
        }
    }
    if quoted {
        return Err(quote_line);
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        records.push((start_line, fields));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_tasks_parse_with_optional_fields() {
        let text = "{\"id\": 1, \"question\": \"a?\"}\n\n{\"id\": \"b\", \"question\": \"b?\", \"config\": \"x.yaml\", \"history\": [[\"q\", \"a\"]]}\n";
        let tasks = parse_jsonl(text, Path::new("t.jsonl")).expect("parses");
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].id, "1");
        assert_eq!(tasks[1].config.as_deref(), Some(Path::new("x.yaml")));
        assert_eq!(tasks[1].history, vec![("q".to_owned(), "a".to_owned())]);
    }

    #[test]
    fn duplicate_ids_and_bad_lines_name_the_line() {
        let text = "{\"id\": 1, \"question\": \"a\"}\n{\"id\": 1, \"question\": \"b\"}\n";
        let error = parse_jsonl(text, Path::new("t.jsonl")).expect_err("duplicate");
        assert!(error.to_string().contains("line 2"), "{error}");
        assert!(error.to_string().contains("twice"), "{error}");
        let error = parse_jsonl("{\"id\": 1}\n", Path::new("t.jsonl")).expect_err("no question");
        assert!(error.to_string().contains("line 1"), "{error}");
    }

    #[test]
    fn csv_handles_quotes_commas_and_newlines() {
        let text = "id,question\r\n1,\"two, three\"\n2,\"say \"\"hi\"\"\nthen go\"\n";
        let tasks = parse_csv(text, Path::new("t.csv")).expect("parses");
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].question, "two, three");
        assert_eq!(tasks[1].question, "say \"hi\"\nthen go");
        let error = parse_csv("id,question\n1,\"open\n", Path::new("t.csv")).expect_err("open");
        assert!(error.to_string().contains("line 2"), "{error}");
        let error = parse_csv("name,text\n1,x\n", Path::new("t.csv")).expect_err("header");
        assert!(error.to_string().contains("`id` and `question`"), "{error}");
    }
}
