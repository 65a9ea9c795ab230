//! Identity-based authorization: policy is data, evaluated by a pure
//! function. Deny rules win over allow rules; nothing matched means deny.
//! The deciding rule comes back with the decision, so logs, metrics and
//! `signet policy eval` can all say why.
//!
//! A policy directory holds TOML files; each has `[[allow]]` and `[[deny]]`
//! tables with `to` (an ID or pattern), `from` (a list of patterns) and, for
//! HTTP listeners, optional `methods` and `paths`.

mod http_target;
mod load;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use signet_identity::SpiffeId;

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

/// One rule, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Allow or deny.
    pub effect: Effect,
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
    /// `file:line (allow)`: how logs and metrics name the rule.
    pub fn name(&self) -> String {
        let file = self
            .file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{file}:{} ({})", self.line, self.effect)
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

/// A whole policy: every rule of a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Rules in file order.
    pub rules: Vec<Rule>,
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

/// The answer, with the rule that gave it (`None`: nothing matched, default deny).
#[derive(Debug, Clone)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The deciding rule.
    pub rule: Option<Arc<Rule>>,
}

impl Decision {
    /// How logs and metrics name the deciding rule.
    pub fn rule_name(&self) -> String {
        self.rule
            .as_ref()
            .map(|r| r.name())
            .unwrap_or_else(|| "default-deny".into())
    }
}

/// The policy a proxy applies: only the rules whose `to` matches its own ID,
/// deny rules first.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicy {
    deny: Vec<Arc<Rule>>,
    allow: Vec<Arc<Rule>>,
}

impl CompiledPolicy {
    /// Keeps the rules that can apply to destination `own` (all rules when `None`).
    pub fn for_destination(policy: &Policy, own: Option<&SpiffeId>) -> Self {
        let mut c = CompiledPolicy::default();
        for r in &policy.rules {
            if own.is_none_or(|id| r.to.matches(id)) {
                match r.effect {
                    Effect::Deny => c.deny.push(Arc::new(r.clone())),
                    Effect::Allow => c.allow.push(Arc::new(r.clone())),
                }
            }
        }
        c
    }

    /// Deny first, then allow, otherwise deny.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        if let Some(r) = self.deny.iter().find(|r| r.matches(req)) {
            return Decision {
                allowed: false,
                rule: Some(r.clone()),
            };
        }
        if let Some(r) = self.allow.iter().find(|r| r.matches(req)) {
            return Decision {
                allowed: true,
                rule: Some(r.clone()),
            };
        }
        Decision {
            allowed: false,
            rule: None,
        }
    }

    /// Rules that restrict methods/paths (which a TCP listener cannot honour).
    pub fn http_only_rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.deny
            .iter()
            .chain(&self.allow)
            .filter(|r| r.is_http_only())
    }

    /// Number of rules in force.
    pub fn len(&self) -> usize {
        self.deny.len() + self.allow.len()
    }

    /// Whether no rule applies (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
