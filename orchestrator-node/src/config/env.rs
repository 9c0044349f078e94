//! Environment lookup: the process environment layered over an optional `.env` file, and
//! `${VAR}` expansion in config strings.
//!
//! The loader never reads the process environment directly; it takes a lookup function, so
//! tests are deterministic and a server can resolve configs against a different environment
//! than its own.
//!
//! `.env` format (the common subset of python-dotenv that MassGen users rely on):
//! `KEY=value`, optional `export ` prefix, blanks and `#` comments, `'single'` quotes (taken
//! literally), `"double"` quotes (with `\n`, `\t`, `\"`, `\\` escapes, may span lines), and
//! ` # comments` after unquoted values. A bare `KEY` line without `=` is skipped, like
//! python-dotenv does. Values are not interpolated. A malformed line is an error naming the
//! file and line: silently dropping an API key is worse than stopping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::ConfigError;

/// Resolves environment variables for a config: the real environment wins over `.env`, so a
/// key exported in the shell overrides a stale one in the file.
#[derive(Debug, Clone, Default)]
pub struct EnvLookup {
    vars: HashMap<String, String>,
    dotenv_path: Option<PathBuf>,
}

impl EnvLookup {
    /// The process environment over `dir/.env` (if that file exists). Variables whose name or
    /// value is not UTF-8 are skipped.
    pub fn from_process_and_dotenv(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join(".env");
        let mut vars = HashMap::new();
        let mut dotenv_path = None;
        if path.is_file() {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            vars.extend(parse_dotenv(&text, &path)?);
            dotenv_path = Some(path);
        }
        vars.extend(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        );
        Ok(EnvLookup { vars, dotenv_path })
    }

    /// A fixed set of variables (tests, or an environment assembled by the caller).
    pub fn from_map<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        EnvLookup {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            dotenv_path: None,
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<String> {
        self.vars.get(key).cloned()
    }

    /// The `.env` file that was read, if any (for a "loaded .env from ..." log line).
    pub fn dotenv_path(&self) -> Option<&Path> {
        self.dotenv_path.as_deref()
    }

    /// This lookup as the function the loader takes.
    pub fn as_fn(&self) -> impl Fn(&str) -> Option<String> + '_ {
        move |key| self.get(key)
    }
}

/// Parses the text of a `.env` file into `(key, value)` pairs in file order; `path` is only
/// used in error messages.
pub fn parse_dotenv(text: &str, path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let error = |line: usize, problem: &str| ConfigError::Dotenv {
        path: path.to_path_buf(),
        line,
        problem: problem.to_owned(),
    };
    let mut pairs = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, raw)) = lines.next() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let Some((key, rest)) = line.split_once('=') else {
            // python-dotenv accepts a bare name (value unset); nothing to store.
            if is_var_name(line) {
                continue;
            }
            return Err(error(line_no, "expected KEY=value"));
        };
        let key = key.trim();
        if !is_var_name(key) {
            return Err(error(
                line_no,
                "the name before `=` must be letters, digits and `_`, not starting with a digit",
            ));
        }
        let rest = rest.trim_start();
        let value = if let Some(body) = rest.strip_prefix('\'') {
            match body.find('\'') {
                Some(end) => body[..end].to_owned(),
                None => return Err(error(line_no, "unterminated single quote")),
            }
        } else if let Some(body) = rest.strip_prefix('"') {
            let mut quoted = DoubleQuoted::default();
            let mut closed = quoted.feed(body);
            while !closed {
                match lines.next() {
                    Some((_, next)) => closed = quoted.feed("\n") || quoted.feed(next),
                    None => return Err(error(line_no, "unterminated double quote")),
                }
            }
            quoted.value
        } else {
            let value = match rest.find(" #") {
                Some(comment) => &rest[..comment],
                None => rest,
            };
            value.trim_end().to_owned()
        };
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

/// A double-quoted value being read, fed the text after the opening `"` one line at a time:
/// each character is scanned once. (Rescanning the whole value for every added line made an
/// unterminated quote followed by many lines quadratic: a 400 KB `.env` hung the loader;
/// found by fuzzing.)
#[derive(Default)]
struct DoubleQuoted {
    /// The unescaped value so far.
    value: String,
    /// Whether the last character was an unconsumed `\`.
    escaped: bool,
}

impl DoubleQuoted {
    /// Reads `text`; true when it holds the closing quote (the rest of it is ignored).
    fn feed(&mut self, text: &str) -> bool {
        for c in text.chars() {
            if self.escaped {
                self.escaped = false;
                self.value.push(match c {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => other,
                });
            } else if c == '"' {
                return true;
            } else if c == '\\' {
                self.escaped = true;
            } else {
                self.value.push(c);
            }
        }
        false
    }
}

/// Whether `name` is a portable environment variable name.
pub(crate) fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Expands `${VAR}` and `${VAR:-default}` in `text`. `$${` stands for a literal `${`; a `$`
/// not followed by `{` is kept as it is. `:-` uses the default when the variable is unset or
/// empty (as in the shell); the default may itself contain `${...}`, up to
/// [`MAX_DEFAULT_NESTING`] levels deep. An unset variable without a default is an error
/// naming it and the key path.
pub(crate) fn expand(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    origin: &str,
    path: &str,
) -> Result<String, ConfigError> {
    expand_nested(text, env, origin, path, 0)
}

/// How deep `${A:-${B:-...}}` defaults may nest. Expansion recurses once per level, so an
/// unbounded depth let a few kilobytes of config overflow the stack (found by fuzzing).
const MAX_DEFAULT_NESTING: usize = 32;

fn expand_nested(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    origin: &str,
    path: &str,
    depth: usize,
) -> Result<String, ConfigError> {
    let invalid = |problem: String| ConfigError::Invalid {
        origin: origin.to_owned(),
        path: path.to_owned(),
        problem,
    };
    if depth > MAX_DEFAULT_NESTING {
        return Err(invalid(format!(
            "`${{VAR:-default}}` defaults are nested more than {MAX_DEFAULT_NESTING} levels deep"
        )));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let close = matching_brace(tail).ok_or_else(|| {
                invalid("unterminated `${`; write `${VAR}`, or `$${` for a literal `${`".into())
            })?;
            let inner = &tail[..close];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if !is_var_name(name) {
                return Err(invalid(format!(
                    "`${{{inner}}}`: `{name}` is not a variable name (letters, digits and `_`); \
                     write `$${{` for a literal `${{`"
                )));
            }
            match (env(name), default) {
                (Some(value), Some(_)) if !value.is_empty() => out.push_str(&value),
                (_, Some(default)) => {
                    out.push_str(&expand_nested(default, env, origin, path, depth + 1)?)
                }
                (Some(value), None) => out.push_str(&value),
                (None, None) => {
                    return Err(ConfigError::UnsetVariable {
                        origin: origin.to_owned(),
                        path: path.to_owned(),
                        var: name.to_owned(),
                    });
                }
            }
            rest = &tail[close + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// For a config someone else submitted (expansion off): `$${` still writes a literal `${`, but
/// any `${...}` reference is an error. Refusing is clearer than passing `${VAR}` through as
/// text, which would look like it worked and then reach the provider verbatim.
pub(crate) fn refuse_references(
    text: &str,
    origin: &str,
    path: &str,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if after.starts_with("${") {
            return Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                path: path.to_owned(),
                problem: "`${...}` is not expanded in a config submitted to the server \
                          (environment expansion is off for submitted configs); write the \
                          value itself, name an API key with `api_key_env: VAR_NAME`, or write \
                          `$${` for a literal `${`"
                    .to_owned(),
            });
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The index of the `}` closing a `${` whose body starts `text`, counting nested `${`.
fn matching_brace(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 2;
                continue;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(key: &str) -> Option<String> {
        match key {
            "HOST" => Some("example.org".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, ConfigError> {
        expand(text, &env, "t.yaml", "a.b")
    }

    #[test]
    fn expands_variables_and_defaults() {
        assert_eq!(run("http://${HOST}/v1").unwrap(), "http://example.org/v1");
        assert_eq!(run("${NOPE:-fallback}").unwrap(), "fallback");
        assert_eq!(run("${EMPTY:-fallback}").unwrap(), "fallback");
        assert_eq!(run("${EMPTY}").unwrap(), "");
        assert_eq!(run("${NOPE:-${HOST}}").unwrap(), "example.org");
        assert_eq!(run("${NOPE:-}").unwrap(), "");
        assert_eq!(
            run("cost $5 and $${literal}").unwrap(),
            "cost $5 and ${literal}"
        );
        assert_eq!(run("trailing $").unwrap(), "trailing $");
    }

    #[test]
    fn reports_unset_and_malformed_references() {
        let err = run("${NOPE}").unwrap_err().to_string();
        assert!(
            err.contains("NOPE") && err.contains("a.b") && err.contains("t.yaml"),
            "{err}"
        );
        let err = run("${HOST").unwrap_err().to_string();
        assert!(err.contains("unterminated"), "{err}");
        let err = run("${not a name}").unwrap_err().to_string();
        assert!(err.contains("not a variable name"), "{err}");
    }

    #[test]
    fn parses_dotenv_lines() {
        let text = "# comment\n\nexport A=1\nB = two words # note\nC='lit ${X} \\n'\n\
                    D=\"line\\nnext \\\"q\\\"\"\nE=\"multi\nline\"\nBARE\nF=\n";
        let pairs = parse_dotenv(text, Path::new(".env")).unwrap();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("B"), Some("two words"));
        assert_eq!(get("C"), Some("lit ${X} \\n"));
        assert_eq!(get("D"), Some("line\nnext \"q\""));
        assert_eq!(get("E"), Some("multi\nline"));
        assert_eq!(get("F"), Some(""));
        assert_eq!(get("BARE"), None);
    }

    #[test]
    fn rejects_malformed_dotenv_lines_with_line_numbers() {
        let err = parse_dotenv("A=1\n9X=2\n", Path::new("/p/.env")).unwrap_err();
        assert_eq!(err.to_string().split(':').nth(1), Some("2"), "{err}");
        assert!(parse_dotenv("A=\"open\n", Path::new(".env")).is_err());
        assert!(parse_dotenv("not a line\n", Path::new(".env")).is_err());
    }
}
