//! Identity-based authorization: policy is data, evaluated by a pure
//! function. Deny rules win over allow rules; nothing matched means deny.
//! The deciding rule comes back with the decision, so logs, metrics and
//! `signet policy eval` can all say why.
//!
//! A policy directory holds TOML files; each has `[[allow]]` and `[[deny]]`
//! tables with `to` (an ID or pattern), `from` (a list of patterns) and, for
//! HTTP listeners, optional `methods` and `paths`. A rule, or a whole file,
//! with `mode = "audit"` is a dry run: evaluated, logged and counted as
//! `would_deny`/`would_allow`, never enforced. `[[test]]` tables hold the
//! policy's own test cases, run by `signet policy test` (see [`cases`]).

pub mod cases;
mod http_target;
mod load;
pub mod watch;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use signet_identity::SpiffeId;

pub use cases::TestCase;
pub use http_target::{canonical_method, canonical_path, TargetError};
pub use load::{load_dir, parse_file, PolicyError};

/// Which SPIFFE IDs a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdPattern {
    /// Exactly this ID.
    Exact(SpiffeId),
    /// This ID's path and everything below it: `spiffe://td/ns/prod/*`.
    Prefix(SpiffeId),
    /// Any ID of a trust domain: `spiffe://td/*` or `spiffe://td`.
    TrustDomain(String),
}

impl IdPattern {
    /// Parses `spiffe://td/path`, `spiffe://td/path/*`, `spiffe://td/*` or `spiffe://td`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(base) = s.strip_suffix("/*") {
            let id = SpiffeId::parse(base).map_err(|e| format!("{s:?}: {e}"))?;
            return Ok(if id.is_root() {
                IdPattern::TrustDomain(id.trust_domain_name().to_owned())
            } else {
                IdPattern::Prefix(id)
            });
        }
        if s.contains('*') {
            return Err(format!(
                "{s:?}: '*' is only allowed as a final \"/*\" segment"
            ));
        }
        let id = SpiffeId::parse(s).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(if id.is_root() {
            IdPattern::TrustDomain(id.trust_domain_name().to_owned())
        } else {
            IdPattern::Exact(id)
        })
    }

    /// Whether `id` is named by this pattern.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            IdPattern::Exact(p) => p == id,
            IdPattern::Prefix(p) => id.is_under(p) && id != p,
            IdPattern::TrustDomain(td) => id.trust_domain_name() == td,
        }
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdPattern::Exact(id) => write!(f, "{id}"),
            IdPattern::Prefix(id) => write!(f, "{id}/*"),
            IdPattern::TrustDomain(td) => write!(f, "spiffe://{td}/*"),
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Lets matching traffic through (unless a deny also matches).
    Allow,
    /// Refuses matching traffic, whatever allows say.
    Deny,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        })
    }
}

/// Whether a rule is in force or only watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The rule decides.
    #[default]
    Enforce,
    /// Dry run: the rule is evaluated and what it would change is logged
    /// and counted (`would_deny`, `would_allow`), but it decides nothing.
    Audit,
}

/// One rule, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Allow or deny.
    pub effect: Effect,
    /// Enforced, or audit only (dry run).
    pub mode: Mode,
    /// The destination(s) it applies to.
    pub to: IdPattern,
    /// The callers it names.
    pub from: Vec<IdPattern>,
    /// HTTP methods (uppercase); empty means any. HTTP listeners only.
    pub methods: Vec<String>,
    /// HTTP path patterns (exact, or prefix ending in `*`); empty means any.
    pub paths: Vec<String>,
    /// The file it came from.
    pub file: PathBuf,
    /// Its line in that file.
    pub line: usize,
}

impl Rule {
    /// `file:line (allow)`: how logs and metrics name the rule (`(audit
    /// allow)` for a dry-run rule).
    pub fn name(&self) -> String {
        let file = self
            .file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        match self.mode {
            Mode::Enforce => format!("{file}:{} ({})", self.line, self.effect),
            Mode::Audit => format!("{file}:{} (audit {})", self.line, self.effect),
        }
    }

    /// Whether the rule restricts HTTP methods or paths.
    pub fn is_http_only(&self) -> bool {
        !self.methods.is_empty() || !self.paths.is_empty()
    }

    fn matches(&self, req: &Request<'_>) -> bool {
        self.to.matches(req.to)
            && self.from.iter().any(|p| p.matches(req.from))
            && (self.methods.is_empty()
                || req
                    .method
                    .is_some_and(|m| self.methods.iter().any(|x| x == m)))
            && (self.paths.is_empty()
                || req
                    .path
                    .is_some_and(|p| self.paths.iter().any(|x| path_matches(x, p))))
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

/// A whole policy: every rule of a directory, and its test cases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Rules in file order.
    pub rules: Vec<Rule>,
    /// `[[test]]` cases, for `signet policy test`; proxies ignore them.
    pub tests: Vec<TestCase>,
}

/// What is being asked.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The authenticated caller.
    pub from: &'a SpiffeId,
    /// The destination (the inbound proxy's own identity).
    pub to: &'a SpiffeId,
    /// HTTP method, for HTTP listeners, in [`canonical_method`] form.
    pub method: Option<&'a str>,
    /// HTTP path (no query), for HTTP listeners, in [`canonical_path`] form.
    pub path: Option<&'a str>,
}

/// The answer, with the rule that gave it (`None`: nothing matched, default
/// deny), and what audit rules would have made of it.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The deciding rule.
    pub rule: Option<Arc<Rule>>,
    /// Set when audit (dry-run) rules, were they enforced, would decide
    /// otherwise: that decision and its rule.
    pub audit: Option<AuditDecision>,
}

/// What the policy would decide with its audit rules enforced.
#[derive(Debug, Clone)]
pub struct AuditDecision {
    /// Whether the request would proceed.
    pub allowed: bool,
    /// The rule that would decide (`None`: default deny).
    pub rule: Option<Arc<Rule>>,
}

fn rule_name(rule: &Option<Arc<Rule>>) -> String {
    rule.as_ref()
        .map(|r| r.name())
        .unwrap_or_else(|| "default-deny".into())
}

impl Decision {
    /// How logs and metrics name the deciding rule.
    pub fn rule_name(&self) -> String {
        rule_name(&self.rule)
    }
}

impl AuditDecision {
    /// `would_allow` or `would_deny`, as metrics and logs say it.
    pub fn label(&self) -> &'static str {
        if self.allowed {
            "would_allow"
        } else {
            "would_deny"
        }
    }

    /// How logs and metrics name the rule that would decide.
    pub fn rule_name(&self) -> String {
        rule_name(&self.rule)
    }
}

/// Where each rule can be found quickly: most rules name their callers by
/// exact ID, so a request only looks at the rules that name its caller, the
/// rules whose callers are patterns but whose destination is its
/// destination, and the few rules with patterns on both sides. Indices are
/// positions in file order, so the first matching rule is the one written
/// first.
#[derive(Debug, Clone, Default)]
struct RuleIndex {
    by_from: HashMap<SpiffeId, Vec<usize>>,
    by_to: HashMap<SpiffeId, Vec<usize>>,
    rest: Vec<usize>,
}

impl RuleIndex {
    fn build(rules: &[Arc<Rule>]) -> Self {
        let mut index = RuleIndex::default();
        for (i, r) in rules.iter().enumerate() {
            let exact_from: Option<Vec<&SpiffeId>> = r
                .from
                .iter()
                .map(|p| match p {
                    IdPattern::Exact(id) => Some(id),
                    _ => None,
                })
                .collect();
            match (exact_from, &r.to) {
                (Some(ids), _) => {
                    for id in ids {
                        let v = index.by_from.entry(id.clone()).or_default();
                        if v.last() != Some(&i) {
                            v.push(i);
                        }
                    }
                }
                (None, IdPattern::Exact(to)) => index.by_to.entry(to.clone()).or_default().push(i),
                (None, _) => index.rest.push(i),
            }
        }
        index
    }

    /// Indices of the rules that may match, ascending: a merge of three
    /// sorted buckets (a rule sits in only one kind of bucket), without
    /// allocating — this runs for every HTTP request.
    fn candidates<'a>(&'a self, req: &Request<'_>) -> impl Iterator<Item = usize> + 'a {
        let none: &[usize] = &[];
        let a = self.by_from.get(req.from).map_or(none, |v| v.as_slice());
        let b = self.by_to.get(req.to).map_or(none, |v| v.as_slice());
        let mut heads = [a, b, self.rest.as_slice()];
        std::iter::from_fn(move || {
            let next = heads
                .iter_mut()
                .filter(|h| !h.is_empty())
                .min_by_key(|h| h[0])?;
            let i = next[0];
            *next = &next[1..];
            Some(i)
        })
    }
}

/// The policy a proxy applies, indexed for evaluation.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicy {
    rules: Vec<Arc<Rule>>,
    index: RuleIndex,
    has_audit: bool,
}

impl CompiledPolicy {
    /// Keeps the rules that can apply to destination `own` (all rules when `None`).
    pub fn for_destination(policy: &Policy, own: Option<&SpiffeId>) -> Self {
        let rules: Vec<Arc<Rule>> = policy
            .rules
            .iter()
            .filter(|r| own.is_none_or(|id| r.to.matches(id)))
            .map(|r| Arc::new(r.clone()))
            .collect();
        CompiledPolicy {
            index: RuleIndex::build(&rules),
            has_audit: rules.iter().any(|r| r.mode == Mode::Audit),
            rules,
        }
    }

    /// Deny first, then allow, otherwise deny; audit rules are weighed the
    /// same way on the side, and reported only where they would differ.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        // First matching rule of each kind, in file order.
        let (mut deny, mut allow, mut audit_deny, mut audit_allow) = (None, None, None, None);
        for i in self.index.candidates(req) {
            let r = &self.rules[i];
            let slot = match (r.mode, r.effect) {
                (Mode::Enforce, Effect::Deny) => &mut deny,
                (Mode::Enforce, Effect::Allow) => &mut allow,
                (Mode::Audit, Effect::Deny) => &mut audit_deny,
                (Mode::Audit, Effect::Allow) => &mut audit_allow,
            };
            if slot.is_none() && r.matches(req) {
                *slot = Some(i);
                if deny.is_some() && !self.has_audit {
                    break;
                }
            }
        }
        let decide = |deny: Option<usize>, allow: Option<usize>| match (deny, allow) {
            (Some(d), _) => (false, Some(d)),
            (None, Some(a)) => (true, Some(a)),
            (None, None) => (false, None),
        };
        let (allowed, rule) = decide(deny, allow);
        // With audit rules enforced too: the earliest deny, else the
        // earliest allow, of either mode.
        let earliest = |a: Option<usize>, b: Option<usize>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        let audit = if self.has_audit {
            let (would, would_rule) =
                decide(earliest(deny, audit_deny), earliest(allow, audit_allow));
            (would != allowed).then(|| AuditDecision {
                allowed: would,
                rule: would_rule.map(|i| self.rules[i].clone()),
            })
        } else {
            None
        };
        Decision {
            allowed,
            rule: rule.map(|i| self.rules[i].clone()),
            audit,
        }
    }

    /// Whether any request from `from` to `to` can still be allowed (some
    /// enforced allow rule names them, and no enforced deny rule refuses
    /// them whatever the method and path). A connection for which this is
    /// false is closed when policy changes.
    pub fn may_allow(&self, from: &SpiffeId, to: &SpiffeId) -> bool {
        let req = Request {
            from,
            to,
            method: None,
            path: None,
        };
        let mut allowed = false;
        for i in self.index.candidates(&req) {
            let r = &self.rules[i];
            if r.mode != Mode::Enforce
                || !r.to.matches(to)
                || !r.from.iter().any(|p| p.matches(from))
            {
                continue;
            }
            match r.effect {
                Effect::Deny if !r.is_http_only() => return false,
                Effect::Deny => {}
                Effect::Allow => allowed = true,
            }
        }
        allowed
    }

    /// Rules that restrict methods/paths (which a TCP listener cannot honour).
    pub fn http_only_rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.rules.iter().filter(|r| r.is_http_only())
    }

    /// Number of rules in force (audit rules included).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether no rule applies (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests;
