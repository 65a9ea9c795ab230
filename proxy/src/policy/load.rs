//! Reading a policy directory: every `*.toml` file, in name order. Any error
//! is reported with file, line and reason, and the whole directory is
//! refused (the caller keeps its last good policy).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use signet_identity::SpiffeId;

use super::{canonical_method, canonical_path, Effect, IdPattern, Mode, Policy, Rule, TestCase};

/// A problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file (or directory).
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
        } else {
            write!(f, "{}: {}", self.file.display(), self.reason)
        }
    }
}

impl std::error::Error for PolicyError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    /// `"audit"` makes every rule of the file a dry run.
    #[serde(default)]
    mode: Option<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<RawRule>>,
    #[serde(default)]
    deny: Vec<Spanned<RawRule>>,
    #[serde(default)]
    test: Vec<Spanned<RawTest>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    to: Spanned<String>,
    from: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    methods: Vec<Spanned<String>>,
    #[serde(default)]
    paths: Vec<Spanned<String>>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    from: Spanned<String>,
    to: Spanned<String>,
    #[serde(default)]
    method: Option<Spanned<String>>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    expect: Spanned<String>,
}

/// Line numbers from byte offsets in one pass over the text (a file of
/// 10,000 rules must load in linear time).
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        Lines(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        )
    }

    /// 1-based line of byte `offset`.
    fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

fn parse_mode(m: &Option<Spanned<String>>, default: Mode) -> Result<Mode, (usize, String)> {
    match m {
        None => Ok(default),
        Some(v) => match v.get_ref().as_str() {
            "enforce" => Ok(Mode::Enforce),
            "audit" => Ok(Mode::Audit),
            other => Err((
                v.span().start,
                format!("`mode`: {other:?} is not \"enforce\" or \"audit\""),
            )),
        },
    }
}

/// Parses one policy file's text: its rules and its test cases.
pub fn parse_file(file: &Path, text: &str) -> Result<Policy, PolicyError> {
    let lines = Lines::new(text);
    let err = |line: usize, reason: String| PolicyError {
        file: file.to_owned(),
        line,
        reason,
    };
    let at = |s: &Spanned<String>| lines.of(s.span().start);
    let doc: FileDoc = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| lines.of(s.start)).unwrap_or(0);
        err(line, e.message().to_owned())
    })?;
    let file_mode =
        parse_mode(&doc.mode, Mode::Enforce).map_err(|(o, reason)| err(lines.of(o), reason))?;
    let mut policy = Policy::default();
    let tagged = doc
        .allow
        .into_iter()
        .map(|r| (Effect::Allow, r))
        .chain(doc.deny.into_iter().map(|r| (Effect::Deny, r)));
    for (effect, raw) in tagged {
        let line = lines.of(raw.span().start);
        let raw = raw.into_inner();
        let mode =
            parse_mode(&raw.mode, file_mode).map_err(|(o, reason)| err(lines.of(o), reason))?;
        let to = IdPattern::parse(raw.to.get_ref())
            .map_err(|e| err(at(&raw.to), format!("`to`: {e}")))?;
        let from_line = lines.of(raw.from.span().start);
        let from_list = raw.from.into_inner();
        if from_list.is_empty() {
            return Err(err(from_line, "`from` is empty: name at least one caller (an ID, a \"spiffe://td/path/*\" prefix, or \"spiffe://td\")".into()));
        }
        let from = from_list
            .iter()
            .map(|s| IdPattern::parse(s.get_ref()).map_err(|e| err(at(s), format!("`from`: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let mut methods = Vec::new();
        for m in &raw.methods {
            let v = m.get_ref();
            let canonical = canonical_method(v)
                .map_err(|_| err(at(m), format!("`methods`: {v:?} is not an HTTP method")))?;
            methods.push(canonical);
        }
        let mut paths = Vec::new();
        for p in &raw.paths {
            let v = p.get_ref();
            let prefix = v.strip_suffix('*').unwrap_or(v);
            if prefix.contains('*') {
                return Err(err(
                    at(p),
                    format!("`paths`: {v:?}: '*' is only allowed at the end"),
                ));
            }
            // Requests are matched in canonical form, so a pattern in any
            // other form could never match what it seems to name.
            match canonical_path(prefix) {
                Ok(c) if c == prefix => {}
                Ok(c) => {
                    return Err(err(
                        at(p),
                        format!("`paths`: {v:?} is not in canonical form; requests are matched after normalisation, write {:?}", format!("{c}{}", &v[prefix.len()..])),
                    ))
                }
                Err(e) => return Err(err(at(p), format!("`paths`: {v:?}: {e}"))),
            }
            paths.push(v.clone());
        }
        policy.rules.push(Rule {
            effect,
            mode,
            to,
            from,
            methods,
            paths,
            file: file.to_owned(),
            line,
        });
    }
    // Keep rules in file order whatever their kind.
    policy.rules.sort_by_key(|r| r.line);
    for raw in doc.test {
        let line = lines.of(raw.span().start);
        let raw = raw.into_inner();
        let id = |s: &Spanned<String>, what: &str| {
            SpiffeId::parse(s.get_ref()).map_err(|e| err(at(s), format!("test `{what}`: {e}")))
        };
        let expect = match raw.expect.get_ref().as_str() {
            "allow" => Effect::Allow,
            "deny" => Effect::Deny,
            other => {
                return Err(err(
                    at(&raw.expect),
                    format!("test `expect`: {other:?} is not \"allow\" or \"deny\""),
                ))
            }
        };
        let method = raw
            .method
            .as_ref()
            .map(|m| {
                canonical_method(m.get_ref()).map_err(|e| err(at(m), format!("test `method`: {e}")))
            })
            .transpose()?;
        let path = raw
            .path
            .as_ref()
            .map(|p| {
                canonical_path(p.get_ref()).map_err(|e| err(at(p), format!("test `path`: {e}")))
            })
            .transpose()?;
        policy.tests.push(TestCase {
            from: id(&raw.from, "from")?,
            to: id(&raw.to, "to")?,
            method,
            path,
            expect,
            file: file.to_owned(),
            line,
        });
    }
    Ok(policy)
}

/// Loads every `*.toml` file of `dir` (not hidden, not in subdirectories).
pub fn load_dir(dir: &Path) -> Result<Policy, PolicyError> {
    let dir_err = |reason: String| PolicyError {
        file: dir.to_owned(),
        line: 0,
        reason,
    };
    // Resolved once: a deploy that swaps a symlink to a new directory while
    // this runs is read wholly before or wholly after the swap, never half
    // of each.
    let dir = &std::fs::canonicalize(dir)
        .map_err(|e| dir_err(format!("cannot read policy directory: {e}")))?;
    let entries = std::fs::read_dir(dir)
        .map_err(|e| dir_err(format!("cannot read policy directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    let mut policy = Policy::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| PolicyError {
            file: file.clone(),
            line: 0,
            reason: format!("cannot read: {e}"),
        })?;
        let one = parse_file(&file, &text)?;
        policy.rules.extend(one.rules);
        policy.tests.extend(one.tests);
    }
    Ok(policy)
}
