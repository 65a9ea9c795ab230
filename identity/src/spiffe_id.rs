//! SPIFFE IDs and trust domains, parsed exactly as the SPIFFE ID specification
//! says (`standards/SPIFFE-ID.md`): `spiffe://<trust-domain>[/<segment>...]`.
//!
//! - scheme is `spiffe` (lowercase), followed by `://`;
//! - the trust domain is 1..=255 characters of `a-z 0-9 . - _` (so no
//!   uppercase, no port, no userinfo, no percent-encoding);
//! - the path is empty or a sequence of `/segment`, each segment 1+
//!   characters of `a-z A-Z 0-9 . - _`, never `.` or `..`, no trailing `/`
//!   (so no query and no fragment);
//! - the whole ID is at most 2048 bytes.

use std::fmt;
use std::str::FromStr;

const SCHEME_PREFIX: &str = "spiffe://";
/// Maximum length of a trust domain name, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Maximum length of a whole SPIFFE ID URI, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a string is not a SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The input was empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The input does not start with `spiffe://`.
    #[error("scheme is missing or invalid: a SPIFFE ID starts with \"spiffe://\"")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// A character outside `a-z 0-9 . - _` in the trust domain.
    #[error("trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores (found {0:?})")]
    BadTrustDomainChar(char),
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// `//` in the path.
    #[error("path cannot contain empty segments")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("path cannot contain dot segments")]
    DotSegment,
    /// The path ends with `/`.
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    /// A character outside `a-z A-Z 0-9 . - _` in a path segment.
    #[error("path segment characters are limited to letters, numbers, dots, dashes, and underscores (found {0:?})")]
    BadPathChar(char),
    /// A path that does not start with `/`.
    #[error("path must start with \"/\"")]
    PathNoLeadingSlash,
    /// The whole ID is longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("SPIFFE ID is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
}

fn is_trust_domain_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_')
}

fn validate_trust_domain(name: &str) -> Result<(), IdError> {
    if name.is_empty() {
        return Err(IdError::MissingTrustDomain);
    }
    if let Some(c) = name.chars().find(|c| !is_trust_domain_char(*c)) {
        return Err(IdError::BadTrustDomainChar(c));
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong);
    }
    Ok(())
}

/// Validates a SPIFFE ID path: empty, or `/seg(/seg)*` with valid segments.
pub fn validate_path(path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(IdError::PathNoLeadingSlash);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            return Err(if i == last {
                IdError::TrailingSlash
            } else {
                IdError::EmptySegment
            });
        }
        if *segment == "." || *segment == ".." {
            return Err(IdError::DotSegment);
        }
        if let Some(c) = segment.chars().find(|c| !is_path_char(*c)) {
            return Err(IdError::BadPathChar(c));
        }
    }
    Ok(())
}

/// A SPIFFE trust domain name such as `example.org`: the authority that
/// issues identities and the unit every SVID check is scoped to.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`, not a URI).
    pub fn new(name: &str) -> Result<Self, IdError> {
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<name>` (no path).
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            td_end: SCHEME_PREFIX.len() + self.0.len(),
            uri: format!("{SCHEME_PREFIX}{}", self.0),
        }
    }

    /// Builds `spiffe://<name><path>`, validating the path.
    pub fn spiffe_id(&self, path: &str) -> Result<SpiffeId, IdError> {
        validate_path(path)?;
        SpiffeId::parse(&format!("{SCHEME_PREFIX}{}{path}", self.0))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

/// A validated SPIFFE ID (`spiffe://example.org/ns/prod/sa/web`): the name
/// every workload, agent and policy rule in Signet is keyed by.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    /// Byte offset where the trust domain ends and the path begins.
    td_end: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID URI.
    pub fn parse(id: &str) -> Result<Self, IdError> {
        if id.is_empty() {
            return Err(IdError::Empty);
        }
        let Some(rest) = id.strip_prefix(SCHEME_PREFIX) else {
            return Err(IdError::WrongScheme);
        };
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        if id.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdError::TooLong);
        }
        Ok(Self {
            uri: id.to_owned(),
            td_end: SCHEME_PREFIX.len() + td.len(),
        })
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain name part, e.g. `example.org`.
    pub fn trust_domain_name(&self) -> &str {
        &self.uri[SCHEME_PREFIX.len()..self.td_end]
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The path, empty for a trust domain's own ID, else starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.td_end..]
    }

    /// Whether this is a trust domain ID (no path): never valid for a leaf SVID.
    pub fn is_root(&self) -> bool {
        self.path().is_empty()
    }

    /// Whether `self` is `prefix` itself or lies below it segment-wise
    /// (`spiffe://td/a` covers `spiffe://td/a/b`, not `spiffe://td/ab`).
    pub fn is_under(&self, prefix: &SpiffeId) -> bool {
        if self.trust_domain_name() != prefix.trust_domain_name() {
            return false;
        }
        let (p, q) = (self.path(), prefix.path());
        p == q || (p.starts_with(q) && p.as_bytes().get(q.len()) == Some(&b'/'))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_from_the_spec_parse() {
        let cases = [
            ("spiffe://trustdomain", "trustdomain", ""),
            ("spiffe://trustdomain/path", "trustdomain", "/path"),
            (
                "spiffe://trustdomain/path1/path2",
                "trustdomain",
                "/path1/path2",
            ),
            (
                "spiffe://example.org/ns/prod/sa/web",
                "example.org",
                "/ns/prod/sa/web",
            ),
            ("spiffe://a-b_c.d0/AZaz09.-_", "a-b_c.d0", "/AZaz09.-_"),
            ("spiffe://td/...", "td", "/..."),
            ("spiffe://td/.a/a./..a", "td", "/.a/a./..a"),
            ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
        ];
        for (input, td, path) in cases {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.trust_domain_name(), td, "{input}");
            assert_eq!(id.path(), path, "{input}");
            assert_eq!(id.as_str(), input);
            assert_eq!(id.is_root(), path.is_empty());
        }
    }

    #[test]
    fn invalid_ids_are_rejected_with_the_right_reason() {
        use IdError::*;
        let long_td = format!("spiffe://{}/p", "a".repeat(256));
        let long_id = format!("spiffe://td/{}", "a".repeat(2048));
        let cases: Vec<(&str, IdError)> = vec![
            ("", Empty),
            ("http://trustdomain/path", WrongScheme),
            ("SPIFFE://trustdomain/path", WrongScheme),
            ("spiffe:/trustdomain/path", WrongScheme),
            ("://trustdomain/path", WrongScheme),
            ("trustdomain/path", WrongScheme),
            ("spiffe://", MissingTrustDomain),
            ("spiffe:///path", MissingTrustDomain),
            ("spiffe://TrustDomain/path", BadTrustDomainChar('T')),
            ("spiffe://trustdomain:8080/path", BadTrustDomainChar(':')),
            (
                "spiffe://user:pass@trustdomain/path",
                BadTrustDomainChar(':'),
            ),
            ("spiffe://user@trustdomain/path", BadTrustDomainChar('@')),
            ("spiffe://trust%20domain/path", BadTrustDomainChar('%')),
            ("spiffe://trustdomain?q=1", BadTrustDomainChar('?')),
            ("spiffe://trustdomain#frag", BadTrustDomainChar('#')),
            ("spiffe://trustdomain/path?query=1", BadPathChar('?')),
            ("spiffe://trustdomain/path#fragment", BadPathChar('#')),
            ("spiffe://trustdomain/pa%20th", BadPathChar('%')),
            ("spiffe://trustdomain/pa th", BadPathChar(' ')),
            ("spiffe://trustdomain/pa*th", BadPathChar('*')),
            ("spiffe://trustdomain/", TrailingSlash),
            ("spiffe://trustdomain/path/", TrailingSlash),
            ("spiffe://trustdomain//path", EmptySegment),
            ("spiffe://trustdomain/path//other", EmptySegment),
            ("spiffe://trustdomain/./path", DotSegment),
            ("spiffe://trustdomain/path/..", DotSegment),
            ("spiffe://trustdomain/path/../other", DotSegment),
            (long_td.as_str(), TrustDomainTooLong),
            (long_id.as_str(), TooLong),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(want.clone()), "{input}");
        }
    }

    #[test]
    fn trust_domain_names_follow_the_same_rules() {
        assert!(TrustDomain::new("example.org").is_ok());
        assert_eq!(TrustDomain::new(""), Err(IdError::MissingTrustDomain));
        assert_eq!(
            TrustDomain::new("Example.org"),
            Err(IdError::BadTrustDomainChar('E'))
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org"),
            Err(IdError::BadTrustDomainChar(':'))
        );
        assert!(TrustDomain::new(&"a".repeat(255)).is_ok());
        assert_eq!(
            TrustDomain::new(&"a".repeat(256)),
            Err(IdError::TrustDomainTooLong)
        );
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(td.id().as_str(), "spiffe://example.org");
        assert!(td.id().is_root());
        assert_eq!(
            td.spiffe_id("/a/b").unwrap().as_str(),
            "spiffe://example.org/a/b"
        );
        assert_eq!(td.spiffe_id("a"), Err(IdError::PathNoLeadingSlash));
    }

    #[test]
    fn is_under_respects_segment_boundaries_and_trust_domain() {
        let p = SpiffeId::parse("spiffe://td/ns/ops").unwrap();
        assert!(SpiffeId::parse("spiffe://td/ns/ops").unwrap().is_under(&p));
        assert!(SpiffeId::parse("spiffe://td/ns/ops/x")
            .unwrap()
            .is_under(&p));
        assert!(!SpiffeId::parse("spiffe://td/ns/opsx").unwrap().is_under(&p));
        assert!(!SpiffeId::parse("spiffe://other/ns/ops/x")
            .unwrap()
            .is_under(&p));
        let root = SpiffeId::parse("spiffe://td").unwrap();
        assert!(SpiffeId::parse("spiffe://td/anything")
            .unwrap()
            .is_under(&root));
    }

    /// The independent `spiffe` crate agrees on every case but one: it folds
    /// an uppercase trust domain to lowercase, where Signet (like go-spiffe
    /// and SPIRE) refuses it so that one identity has exactly one spelling.
    #[test]
    fn agrees_with_the_spiffe_crate_except_on_uppercase_trust_domains() {
        assert!(spiffe::SpiffeId::new("spiffe://TD/a").is_ok());
        assert!(SpiffeId::parse("spiffe://TD/a").is_err());
        let inputs = [
            "spiffe://td/a",
            "spiffe://td/a/",
            "spiffe://td//a",
            "spiffe://td/./a",
            "spiffe://td:1/a",
            "spiffe://td/a?b",
            "spiffe://td",
            "https://td/a",
        ];
        for input in inputs {
            assert_eq!(
                SpiffeId::parse(input).is_ok(),
                spiffe::SpiffeId::new(input).is_ok(),
                "{input}"
            );
        }
    }
}
