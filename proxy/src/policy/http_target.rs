//! The one form of an HTTP request that policy sees and the app receives.
//!
//! Paths and methods arrive in many spellings that mean the same resource to
//! the app behind the proxy (`/public/../admin`, `//admin`, `/%61dmin`,
//! `delete`). Matching the raw text would let a caller pick a spelling that
//! policy does not recognise and the app does. So every request is first put
//! into one canonical form, policy decides on that form, and exactly that
//! form is forwarded. Spellings with no single safe meaning are refused.
//!
//! The rule for paths (RFC 3986 section 6.2.2, plus what Envoy's
//! `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action =
//! REJECT_REQUEST` do):
//! 1. the path must start with `/` (origin form);
//! 2. percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!    decoded; other escapes are kept with upper-case hex;
//! 3. escaped slashes and backslashes (`%2F`, `%5C`), raw backslashes,
//!    `%00`, control characters and malformed escapes are refused: servers
//!    disagree on what they mean;
//! 4. runs of `/` are merged into one;
//! 5. dot segments (`.` and `..`) are removed; `..` never climbs above `/`;
//! 6. a dot segment with path parameters (`..;x`, `.;x`, which some servers,
//!    Tomcat among them, treat as `..` and `.`) is refused.
//!
//! Methods are upper-cased (`delete` is `DELETE`) and must be HTTP tokens.

use std::fmt;

/// Why a request target or method cannot be put in canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// The path does not start with `/` (asterisk, authority or empty form).
    NotOriginForm,
    /// `%2F` or `%5C`: an escaped slash or backslash.
    EscapedSlash,
    /// A raw `\` in the path.
    Backslash,
    /// `%00`, or a control character.
    ControlCharacter,
    /// `%` not followed by two hexadecimal digits.
    MalformedEscape,
    /// `.;...` or `..;...`: a dot segment with parameters.
    DotSegmentWithParameters,
    /// The method is empty or has characters outside an HTTP token.
    BadMethod,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetError::NotOriginForm => "the path must start with '/'",
            TargetError::EscapedSlash => "escaped '/' or '\\' (%2F, %5C) is not accepted",
            TargetError::Backslash => "'\\' in a path is not accepted",
            TargetError::ControlCharacter => "control characters (or %00) in a path",
            TargetError::MalformedEscape => "'%' must be followed by two hexadecimal digits",
            TargetError::DotSegmentWithParameters => {
                "a '.' or '..' segment with ';' parameters is not accepted"
            }
            TargetError::BadMethod => "not an HTTP method",
        })
    }
}

impl std::error::Error for TargetError {}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Steps 2 and 3: decode what may be decoded, refuse what must be refused.
fn decode_unreserved(raw: &str) -> Result<String, TargetError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(TargetError::MalformedEscape);
                };
                let decoded = hi << 4 | lo;
                if decoded == b'/' || decoded == b'\\' {
                    return Err(TargetError::EscapedSlash);
                }
                if decoded.is_ascii_control() {
                    return Err(TargetError::ControlCharacter);
                }
                if is_unreserved(decoded) {
                    out.push(char::from(decoded));
                } else {
                    out.push('%');
                    out.push(char::from(HEX[usize::from(hi)]));
                    out.push(char::from(HEX[usize::from(lo)]));
                }
                i += 3;
            }
            b'\\' => return Err(TargetError::Backslash),
            _ if b.is_ascii_control() => return Err(TargetError::ControlCharacter),
            _ => {
                // Copy a run of ordinary characters (keeps multi-byte UTF-8 whole).
                let end = bytes[i..]
                    .iter()
                    .position(|&c| c == b'%' || c == b'\\' || c.is_ascii_control())
                    .map_or(bytes.len(), |p| i + p);
                out.push_str(&raw[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

/// The canonical form of a request path (without query), as described in
/// the module documentation.
pub fn canonical_path(raw: &str) -> Result<String, TargetError> {
    if !raw.starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    let decoded = decode_unreserved(raw)?;
    // Steps 4 and 5 over segments: empty segments (from "//") vanish, "."
    // vanishes, ".." drops the previous segment. A final "." or ".." or "/"
    // leaves a trailing slash, as RFC 3986's remove_dot_segments does.
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s if s.starts_with(".;") || s.starts_with("..;") => {
                return Err(TargetError::DotSegmentWithParameters)
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// The canonical form of a method: an HTTP token (RFC 9110 section 5.6.2),
/// upper-cased.
pub fn canonical_method(raw: &str) -> Result<String, TargetError> {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if raw.is_empty() || !raw.bytes().all(is_tchar) {
        return Err(TargetError::BadMethod);
    }
    Ok(raw.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_resource_become_one_path() {
        for (raw, want) in [
            ("/", "/"),
            ("/admin.txt", "/admin.txt"),
            ("/public/../admin.txt", "/admin.txt"),
            ("//admin", "/admin"),
            ("/./admin.txt", "/admin.txt"),
            ("/%61dmin", "/admin"),
            ("/%41%42c", "/ABc"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/a/b/../../../../admin", "/admin"),
            ("/..", "/"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a//b///c", "/a/b/c"),
            ("/a/b/", "/a/b/"),
            ("/a%20b", "/a%20b"),
            ("/a%3bb", "/a%3Bb"),
            ("/caf\u{e9}", "/caf\u{e9}"),
            ("/~user/x-y_z", "/~user/x-y_z"),
            ("/a;b/c", "/a;b/c"),
            ("/.well-known/x", "/.well-known/x"),
            ("/...", "/..."),
        ] {
            assert_eq!(canonical_path(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        for (raw, want) in [
            ("admin", TargetError::NotOriginForm),
            ("", TargetError::NotOriginForm),
            ("*", TargetError::NotOriginForm),
            ("/public%2F..%2Fadmin", TargetError::EscapedSlash),
            ("/public%2f..%2fadmin", TargetError::EscapedSlash),
            ("/public%5C..%5Cadmin", TargetError::EscapedSlash),
            ("/public%5c..", TargetError::EscapedSlash),
            ("/public\\..\\admin", TargetError::Backslash),
            ("/a%00b", TargetError::ControlCharacter),
            ("/a%0ab", TargetError::ControlCharacter),
            ("/a\tb", TargetError::ControlCharacter),
            ("/a%", TargetError::MalformedEscape),
            ("/a%4", TargetError::MalformedEscape),
            ("/a%zz", TargetError::MalformedEscape),
            ("/public/..;/admin", TargetError::DotSegmentWithParameters),
            ("/public/.;x/admin", TargetError::DotSegmentWithParameters),
            (
                "/public/%2e%2e;/admin",
                TargetError::DotSegmentWithParameters,
            ),
        ] {
            assert_eq!(canonical_path(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn canonical_paths_are_fixed_points() {
        for raw in ["/public/../a//b/./c/..", "/%7euser/%2e/x%3a", "/a/b/"] {
            let once = canonical_path(raw).unwrap();
            assert_eq!(canonical_path(&once).unwrap(), once, "{raw}");
        }
    }

    #[test]
    fn methods_are_upper_cased_tokens() {
        assert_eq!(canonical_method("delete").as_deref(), Ok("DELETE"));
        assert_eq!(canonical_method("GeT").as_deref(), Ok("GET"));
        assert_eq!(canonical_method("M-SEARCH").as_deref(), Ok("M-SEARCH"));
        assert_eq!(canonical_method(""), Err(TargetError::BadMethod));
        assert_eq!(canonical_method("GE T"), Err(TargetError::BadMethod));
        assert_eq!(canonical_method("GET\r\n"), Err(TargetError::BadMethod));
    }
}
