//! Workload selectors, `type:value`: what an entry requires of a workload
//! and what the agent's attestor observes of a caller. One grammar for
//! both sides: the CA validates entries with [`Selector::parse`], the agent
//! builds callers' selectors with [`unix`], so the two cannot drift apart.

use std::fmt;

use serde::Serialize;

/// Why a selector was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// What was given.
    pub selector: String,
    /// Why it is invalid.
    pub reason: String,
}

/// Selector types the agent's Unix workload attestor can check.
const UNIX_SELECTORS: &[&str] = &["uid", "gid", "user", "group", "path", "sha256"];

/// A workload selector, `type:value` (`unix:uid:1000` is type `unix`, value
/// `uid:1000`). A workload matches an entry when all its selectors match.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Selector {
    /// The attestor, e.g. `unix`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What that attestor must observe, e.g. `uid:1000`.
    pub value: String,
}

impl Selector {
    /// Parses and validates `type:value`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let bad = |reason: &str| SelectorError {
            selector: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| bad("expected type:value, e.g. unix:uid:1000"))?;
        if kind != "unix" {
            return Err(bad(&format!(
                "unknown selector type {kind:?}; supported: unix"
            )));
        }
        let (sub, arg) = value
            .split_once(':')
            .ok_or_else(|| bad("expected unix:<uid|gid|user|group|path|sha256>:<value>"))?;
        match sub {
            "uid" | "gid" => {
                arg.parse::<u32>()
                    .map_err(|_| bad(&format!("{sub} must be a non-negative integer")))?;
            }
            "user" | "group" => {
                if arg.is_empty() || arg.contains(char::is_whitespace) {
                    return Err(bad(&format!("{sub} must be a non-empty name")));
                }
            }
            "path" => {
                if !arg.starts_with('/') {
                    return Err(bad("path must be absolute, e.g. unix:path:/usr/bin/app"));
                }
            }
            "sha256" => {
                if arg.len() != 64 || !arg.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(bad("sha256 must be 64 lowercase hex digits"));
                }
            }
            other => {
                return Err(bad(&format!(
                    "unknown unix selector {other:?}; supported: {}",
                    UNIX_SELECTORS.join(", ")
                )))
            }
        }
        Ok(Self {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// What the Unix attestor observes of a caller, as selectors.
pub mod unix {
    use super::Selector;

    fn unix(value: String) -> Selector {
        Selector {
            kind: "unix".into(),
            value,
        }
    }

    /// `unix:uid:<uid>`, the caller's effective uid.
    pub fn uid(uid: u32) -> Selector {
        unix(format!("uid:{uid}"))
    }
    /// `unix:gid:<gid>`, the caller's effective gid.
    pub fn gid(gid: u32) -> Selector {
        unix(format!("gid:{gid}"))
    }
    /// `unix:user:<name>`, the name of the caller's uid.
    pub fn user(name: &str) -> Selector {
        unix(format!("user:{name}"))
    }
    /// `unix:group:<name>`, the name of the caller's gid.
    pub fn group(name: &str) -> Selector {
        unix(format!("group:{name}"))
    }
    /// `unix:path:<path>`, the caller's binary.
    pub fn path(path: &std::path::Path) -> Selector {
        unix(format!("path:{}", path.display()))
    }
    /// `unix:sha256:<hex>`, the SHA-256 of the caller's binary.
    pub fn sha256(hex: &str) -> Selector {
        unix(format!("{SHA256_VALUE_PREFIX}{hex}"))
    }
    /// The start of a binary-hash selector's value: entries with one make
    /// the agent hash callers' binaries.
    const SHA256_VALUE_PREFIX: &str = "sha256:";

    /// Whether `selector` asks for the binary's hash.
    pub fn is_sha256(selector: &Selector) -> bool {
        selector.kind == "unix" && selector.value.starts_with(SHA256_VALUE_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_attestor_builds_is_what_entries_may_ask_for() {
        for s in [
            unix::uid(0),
            unix::gid(1000),
            unix::user("www-data"),
            unix::group("staff"),
            unix::path(std::path::Path::new("/usr/bin/app")),
            unix::sha256(&"ab".repeat(32)),
        ] {
            assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
        }
        assert!(unix::is_sha256(&unix::sha256(&"ab".repeat(32))));
        assert!(!unix::is_sha256(&unix::uid(1)));
    }
}
