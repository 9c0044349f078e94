//! The parsed YAML as a plain value tree, and readers that walk it while tracking key paths.
//!
//! The `config` crate parses the text (so conclave and its users share one YAML parser), but
//! its typed deserialisation cannot say *which* key was wrong or warn about keys nobody read.
//! So the loader takes the crate's parsed values, keeps them in this small ordered tree and
//! reads each key itself: every read knows its full path (`agents[2].backend.temperature`),
//! and every mapping remembers which keys were read so the rest can be reported.
//!
//! Key case: the YAML format of `config` 0.15 keeps keys as written (only its environment
//! source lowercases), and the loader calls the format parser directly rather than going
//! through `Config::builder`, which would also split top-level keys containing dots into
//! nested paths. Both facts are pinned by tests.

use config::{Format, ValueKind};

use std::cell::RefCell;

use super::env::{expand, refuse_references};
use super::error::{ConfigError, ConfigWarning};

/// One YAML value. Mappings keep the file's key order (the `preserve_order` feature of
/// `config`), so warnings come out in the order a reader of the file expects.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    List(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    /// A short description for error messages: the kind, and the value when it is short.
    /// Never used for values that may be secrets.
    pub(crate) fn describe(&self) -> String {
        match self {
            Node::Null => "null".to_owned(),
            Node::Bool(b) => format!("a boolean ({b})"),
            Node::Int(i) => format!("an integer ({i})"),
            Node::Float(x) => format!("a number ({x})"),
            Node::Str(s) if s.chars().count() <= 40 => format!("a string (\"{s}\")"),
            Node::Str(_) => "a string".to_owned(),
            Node::List(_) => "a list".to_owned(),
            Node::Map(_) => "a mapping".to_owned(),
        }
    }

    fn from_config(value: config::Value) -> Node {
        match value.kind {
            ValueKind::Nil => Node::Null,
            ValueKind::Boolean(b) => Node::Bool(b),
            ValueKind::I64(i) => Node::Int(i128::from(i)),
            ValueKind::I128(i) => Node::Int(i),
            ValueKind::U64(u) => Node::Int(i128::from(u)),
            ValueKind::U128(u) => match i128::try_from(u) {
                Ok(i) => Node::Int(i),
                // Far beyond any limit the loader accepts; kept as a float so the range
                // check reports it instead of a silent wrap-around.
                Err(_) => Node::Float(u as f64),
            },
            ValueKind::Float(x) => Node::Float(x),
            ValueKind::String(s) => Node::Str(s),
            ValueKind::Table(map) => Node::Map(
                map.into_iter()
                    .map(|(k, v)| (k, Node::from_config(v)))
                    .collect(),
            ),
            ValueKind::Array(items) => {
                Node::List(items.into_iter().map(Node::from_config).collect())
            }
        }
    }
}

/// Deepest nesting of mappings and lists accepted. Real configs nest about eight levels
/// (`agents` → agent → `backend` → `mcp_servers` → server → `env` ...).
pub const MAX_NESTING: usize = 64;

/// Most values a document may hold once YAML aliases are expanded.
pub const MAX_VALUES: usize = 1_000_000;

/// Parses YAML text into a tree whose root is a mapping. An empty document is an empty
/// mapping (the caller then reports the missing `agents:`).
pub(crate) fn parse_yaml(text: &str, origin: &str) -> Result<Node, ConfigError> {
    check_shape(text).map_err(|message| ConfigError::Yaml {
        origin: origin.to_owned(),
        message,
    })?;
    let uri = origin.to_owned();
    let root = <config::FileFormat as Format>::parse(&config::FileFormat::Yaml, Some(&uri), text)
        .map_err(|err| ConfigError::Yaml {
        origin: origin.to_owned(),
        message: err.to_string(),
    })?;
    Ok(Node::Map(
        root.into_iter()
            .map(|(k, v)| (k, Node::from_config(v)))
            .collect(),
    ))
}

/// Refuses documents the tree builders cannot take safely, before they are built: the YAML
/// tree, `config`'s values and [`Node`] are recursive structures, so a document nested
/// thousands of levels deep would overflow the stack while being built or dropped, and a
/// few nested aliases (`*a`) can expand to billions of values. This walks the parser's event
/// stream (iterative, no tree) counting depth and alias-expanded size. Syntax errors surface
/// here too, with their line and column.
fn check_shape(text: &str) -> Result<(), String> {
    use std::collections::HashMap;
    use yaml_rust2::parser::{Event, Parser};

    let mut parser = Parser::new_from_str(text);
    // Open collections: (anchor id, value count when it started).
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut anchored_sizes: HashMap<usize, usize> = HashMap::new();
    let mut values = 0usize;
    loop {
        let (event, mark) = parser.next_token().map_err(|err| err.to_string())?;
        match event {
            Event::StreamEnd => return Ok(()),
            Event::SequenceStart(..) | Event::Scalar(..) if open.is_empty() => {
                return Err(format!(
                    "the top level must be a mapping with `agents:` or `agent:`, found {} at \
                     line {}",
                    if matches!(event, Event::Scalar(..)) {
                        "a single value"
                    } else {
                        "a list"
                    },
                    mark.line()
                ));
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                values += 1;
                open.push((anchor, values));
                if open.len() > MAX_NESTING {
                    return Err(format!(
                        "nested deeper than {MAX_NESTING} levels at line {} column {}",
                        mark.line(),
                        mark.col() + 1
                    ));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((anchor, started)) = open.pop()
                    && anchor != 0
                {
                    anchored_sizes.insert(anchor, values - started + 1);
                }
            }
            Event::Scalar(_, _, anchor, _) => {
                values += 1;
                if anchor != 0 {
                    anchored_sizes.insert(anchor, 1);
                }
            }
            Event::Alias(anchor) => {
                values = values.saturating_add(anchored_sizes.get(&anchor).copied().unwrap_or(1));
            }
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => {}
        }
        if values > MAX_VALUES {
            return Err(format!(
                "more than {MAX_VALUES} values once aliases are expanded (line {})",
                mark.line()
            ));
        }
    }
}

/// Shared state of one load: where the text came from, how `${VAR}` resolves, and the
/// warnings collected so far.
pub(crate) struct Ctx<'e> {
    pub origin: String,
    pub env: &'e dyn Fn(&str) -> Option<String>,
    pub warnings: Vec<ConfigWarning>,
    /// Whether `${VAR}` is expanded (a config the operator wrote) or refused (a submitted,
    /// untrusted one, whose `env` then answers nothing).
    pub expansion: Expansion,
    /// Key paths whose value was taken from the environment, with the variables: an error
    /// about such a key names them instead of the value (see `super::redact`).
    pub from_env: RefCell<Vec<(String, Vec<String>)>>,
    /// What relative paths in the config are relative to: the config file's directory, or
    /// `None` for text that is no file (then the current directory).
    pub base_dir: Option<std::path::PathBuf>,
}

/// Whether a load expands `${VAR}` references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expansion {
    /// The operator's own config: `${VAR}` is expanded from the lookup function.
    On,
    /// A config someone else submitted: a `${` reference is an error; nothing is read from
    /// the environment.
    Off,
}

impl<'e> Ctx<'e> {
    pub(crate) fn new(
        origin: impl Into<String>,
        env: &'e dyn Fn(&str) -> Option<String>,
        expansion: Expansion,
    ) -> Self {
        Ctx {
            origin: origin.into(),
            env,
            warnings: Vec::new(),
            expansion,
            from_env: RefCell::new(Vec::new()),
            base_dir: None,
        }
    }
}

impl Ctx<'_> {
    /// Records that the value at `path` came from the environment variables `vars`.
    pub(crate) fn note_env(&self, path: &str, vars: Vec<String>) {
        if !vars.is_empty() {
            self.from_env.borrow_mut().push((path.to_owned(), vars));
        }
    }

    /// Looks a variable up for a value the loader reads directly (not through `${VAR}`),
    /// recording it against `path`. Always `None` when expansion is off.
    pub(crate) fn lookup(&self, var: &str, path: &str) -> Option<String> {
        if self.expansion == Expansion::Off {
            return None;
        }
        let value = (self.env)(var);
        if value.is_some() {
            self.note_env(path, vec![var.to_owned()]);
        }
        value
    }

    pub(crate) fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(crate) fn wrong_type(&self, path: &str, expected: &str, found: &Node) -> ConfigError {
        ConfigError::WrongType {
            origin: self.origin.clone(),
            path: path.to_owned(),
            expected: expected.to_owned(),
            found: found.describe(),
        }
    }

    pub(crate) fn invalid(&self, path: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            path: path.to_owned(),
            problem: problem.into(),
        }
    }

    pub(crate) fn missing(&self, path: &str, hint: impl Into<String>) -> ConfigError {
        ConfigError::Missing {
            origin: self.origin.clone(),
            path: path.to_owned(),
            hint: hint.into(),
        }
    }

    pub(crate) fn out_of_range(
        &self,
        path: &str,
        value: impl ToString,
        allowed: impl Into<String>,
    ) -> ConfigError {
        ConfigError::OutOfRange {
            origin: self.origin.clone(),
            path: path.to_owned(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }

    pub(crate) fn invalid_value(
        &self,
        path: &str,
        value: impl Into<String>,
        allowed: impl Into<String>,
    ) -> ConfigError {
        ConfigError::InvalidValue {
            origin: self.origin.clone(),
            path: path.to_owned(),
            value: value.into(),
            allowed: allowed.into(),
        }
    }
}

/// Why a key is not read, for keys that are known but ignored.
pub(crate) struct KnownKey {
    /// The key name, or a prefix when it ends with `*` (`command_line_*`).
    pub name: &'static str,
    /// The warning text.
    pub note: &'static str,
}

/// A mapping being read: hands out its values by key and, at the end, warns about every key
/// that was never asked for.
pub(crate) struct Fields<'n> {
    path: String,
    entries: &'n [(String, Node)],
    used: Vec<bool>,
}

/// One value of a mapping together with its full key path.
#[derive(Clone, Copy)]
pub(crate) struct Field<'n, 'p> {
    pub node: &'n Node,
    pub path: &'p str,
}

impl<'n> Fields<'n> {
    /// Starts reading `node`, which must be a mapping.
    pub(crate) fn new(
        node: &'n Node,
        path: &str,
        expected: &str,
        ctx: &Ctx<'_>,
    ) -> Result<Self, ConfigError> {
        match node {
            Node::Map(entries) => Ok(Fields {
                path: path.to_owned(),
                entries,
                used: vec![false; entries.len()],
            }),
            other => Err(ctx.wrong_type(path, expected, other)),
        }
    }

    /// The path of a child key.
    pub(crate) fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Whether the key is present with a non-null value (does not mark it read).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.entries
            .iter()
            .any(|(k, v)| k == key && *v != Node::Null)
    }

    /// The value of `key`, marking it read. A null value counts as absent: in YAML `key:` with
    /// nothing after it means "not set", which is how MassGen configs use it too.
    pub(crate) fn take(&mut self, key: &str) -> Option<&'n Node> {
        let index = self.entries.iter().position(|(k, _)| k == key)?;
        self.used[index] = true;
        match &self.entries[index].1 {
            Node::Null => None,
            node => Some(node),
        }
    }

    /// The keys (read or not) that start with `prefix`.
    pub(crate) fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Warns about every key that was not read: known-but-ignored keys with their note,
    /// everything else as unknown.
    pub(crate) fn finish(self, known: &[KnownKey], ctx: &mut Ctx<'_>) {
        for ((key, _), &used) in self.entries.iter().zip(&self.used) {
            if used {
                continue;
            }
            let path = self.child_path(key);
            let note = known.iter().find(|k| match k.name.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix),
                None => k.name == key,
            });
            match note {
                Some(k) => ctx.warn(path, k.note),
                None => ctx.warn(path, "unknown key, ignored"),
            }
        }
    }
}

impl Field<'_, '_> {
    /// A string, with `${VAR}` / `${VAR:-default}` expanded from the environment (or, with
    /// expansion off, refused).
    pub(crate) fn string(&self, ctx: &Ctx<'_>) -> Result<String, ConfigError> {
        match self.node {
            Node::Str(s) => match ctx.expansion {
                Expansion::Off => refuse_references(s, &ctx.origin, self.path),
                Expansion::On => {
                    let used = RefCell::new(Vec::new());
                    let recording = |var: &str| {
                        let value = (ctx.env)(var);
                        used.borrow_mut().push(var.to_owned());
                        value
                    };
                    // Errors of the expansion itself name the variable, never a value.
                    let expanded = expand(s, &recording, &ctx.origin, self.path)?;
                    ctx.note_env(self.path, used.into_inner());
                    Ok(expanded)
                }
            },
            other => Err(ctx.wrong_type(self.path, "a string", other)),
        }
    }

    /// A string that must not be empty after expansion and trimming.
    pub(crate) fn non_empty_string(
        &self,
        ctx: &Ctx<'_>,
        what: &str,
    ) -> Result<String, ConfigError> {
        let value = self.string(ctx)?;
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(ctx.invalid(self.path, format!("{what} must not be empty")));
        }
        Ok(trimmed.to_owned())
    }

    /// A boolean. A string is accepted after expansion when it reads `true` or `false`, so
    /// `${FLAG:-false}` works.
    pub(crate) fn bool(&self, ctx: &Ctx<'_>) -> Result<bool, ConfigError> {
        match self.node {
            Node::Bool(b) => Ok(*b),
            Node::Str(_) => {
                let text = self.string(ctx)?;
                match text.trim().to_ascii_lowercase().as_str() {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    _ => Err(ctx.wrong_type(self.path, "true or false", &Node::Str(text))),
                }
            }
            other => Err(ctx.wrong_type(self.path, "true or false", other)),
        }
    }

    /// A number (integer or float), for sampling parameters. A string is accepted after
    /// expansion when it parses as a number, so `${TEMPERATURE:-0.7}` works.
    pub(crate) fn number(&self, ctx: &Ctx<'_>) -> Result<f64, ConfigError> {
        match self.node {
            Node::Int(i) => Ok(*i as f64),
            Node::Float(x) => Ok(*x),
            Node::Str(_) => {
                let text = self.string(ctx)?;
                text.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| ctx.wrong_type(self.path, "a number", &Node::Str(text)))
            }
            other => Err(ctx.wrong_type(self.path, "a number", other)),
        }
    }

    /// A number within `min..=max`.
    pub(crate) fn number_in(&self, ctx: &Ctx<'_>, min: f64, max: f64) -> Result<f64, ConfigError> {
        let x = self.number(ctx)?;
        if (min..=max).contains(&x) {
            Ok(x)
        } else {
            Err(ctx.out_of_range(self.path, x, format!("a number from {min} to {max}")))
        }
    }

    /// A whole number within `min..=max`. A float with no fractional part (`1800.0`) counts
    /// as whole; a string is accepted after expansion when it parses as one.
    pub(crate) fn integer_in(
        &self,
        ctx: &Ctx<'_>,
        min: u64,
        max: u64,
        allowed: &str,
    ) -> Result<u64, ConfigError> {
        let value = self.integer(ctx, allowed)?;
        if value < i128::from(min) || value > i128::from(max) {
            return Err(ctx.out_of_range(self.path, value, allowed));
        }
        u64::try_from(value).map_err(|_| ctx.out_of_range(self.path, value, allowed))
    }

    /// A whole number, negative ones included, with the same leniency as [`Self::integer_in`];
    /// `allowed` describes the accepted range for the error about a fractional number.
    pub(crate) fn integer(&self, ctx: &Ctx<'_>, allowed: &str) -> Result<i128, ConfigError> {
        let expected = "a whole number";
        match self.node {
            Node::Int(i) => Ok(*i),
            Node::Float(x) if x.fract() == 0.0 && x.abs() < 1e30 => Ok(*x as i128),
            Node::Float(x) => Err(ctx.out_of_range(self.path, x, allowed)),
            Node::Str(_) => {
                let text = self.string(ctx)?;
                text.trim()
                    .parse::<i128>()
                    .map_err(|_| ctx.wrong_type(self.path, expected, &Node::Str(text.clone())))
            }
            other => Err(ctx.wrong_type(self.path, expected, other)),
        }
    }
}

/// Reads an optional key with `read`, giving it its full path.
pub(crate) fn optional<'n, T>(
    fields: &mut Fields<'n>,
    key: &str,
    read: impl FnOnce(Field<'n, '_>) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    let path = fields.child_path(key);
    match fields.take(key) {
        Some(node) => read(Field { node, path: &path }).map(Some),
        None => Ok(None),
    }
}
