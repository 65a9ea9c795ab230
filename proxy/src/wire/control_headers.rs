//! Signet's control headers: what one proxy tells another in an HTTP
//! answer, and why an app can forge none of it.
//!
//! An inbound proxy that answers a request itself (its app unreachable, a
//! caller whose SVID lost its standing) says so with [`ERROR`] (the reason)
//! and, when the request never reached the app, [`NOT_FORWARDED`]; the
//! caller's proxy then retries any method, and counts the answer against
//! the endpoint. Both are verdicts, so neither may come from an app:
//!
//! - the caller's proxy sends a fresh random [`ANSWER_TOKEN`] with every
//!   attempt; the inbound proxy removes it before the app sees the
//!   request, and echoes it only on the answers it makes itself;
//! - the inbound proxy removes every header of the `x-signet-` namespace,
//!   in any spelling, from the app's answers ([`strip_namespace`]);
//! - the caller's proxy takes [`ERROR`] and [`NOT_FORWARDED`] from an answer
//!   only when it carries the token it sent ([`peer_proxy_answer`]); any
//!   other answer is the app's, and its `x-signet-` headers are removed.
//!
//! Reasons become metric labels only through [`Reason`], a closed set.

use http::{HeaderMap, HeaderValue};

/// Set by an inbound proxy on an answer it made because it could not reach
/// its app: the request never got there, so any method may be retried.
pub(crate) const NOT_FORWARDED: &str = "x-signet-not-forwarded";
/// Set on every answer a Signet proxy makes itself, with the reason: one
/// of [`Reason`].
pub(crate) const ERROR: &str = "x-signet-error";
/// Sent by the caller's proxy with each attempt (128 random bits, hex) and
/// echoed by the inbound proxy on its own answers only: the proof that an
/// answer's control headers are the peer proxy's.
pub(crate) const ANSWER_TOKEN: &str = "x-signet-answer-token";

/// Why a Signet proxy answered a request itself: the only values of
/// [`ERROR`] that the outbound side acts on and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// No endpoint is known for the upstream.
    NoEndpoint,
    /// No endpoint could be connected to.
    UpstreamUnreachable,
    /// The request failed on the way to or from the upstream.
    UpstreamFailed,
    /// The route's timeout passed.
    Timeout,
    /// `max_pending_requests` were in flight.
    MaxPendingRequests,
    /// The app's body could not be read.
    RequestBodyUnreadable,
    /// The request target is not a URI.
    BadRequestTarget,
    /// Inbound: the local app refused the connection.
    AppUnreachable,
    /// Inbound: the local app failed the request.
    AppFailed,
    /// Inbound: the caller's SVID expired on a long-lived connection.
    PeerSvidExpired,
    /// Inbound: the caller's SVID no longer verifies against the bundle.
    PeerSvidUntrusted,
    /// Any other value a peer proxy sent (a newer version's reason).
    Other,
}

/// Every reason with its header value and metric label.
const REASONS: &[(Reason, &str, &str)] = &[
    (Reason::NoEndpoint, "no-endpoint", "no_endpoint"),
    (
        Reason::UpstreamUnreachable,
        "upstream-unreachable",
        "upstream_unreachable",
    ),
    (Reason::UpstreamFailed, "upstream-failed", "upstream_failed"),
    (Reason::Timeout, "timeout", "timeout"),
    (
        Reason::MaxPendingRequests,
        "max-pending-requests",
        "max_pending_requests",
    ),
    (
        Reason::RequestBodyUnreadable,
        "request-body-unreadable",
        "request_body_unreadable",
    ),
    (
        Reason::BadRequestTarget,
        "bad-request-target",
        "bad_request_target",
    ),
    (Reason::AppUnreachable, "app-unreachable", "app_unreachable"),
    (Reason::AppFailed, "app-failed", "app_failed"),
    (
        Reason::PeerSvidExpired,
        "peer-svid-expired",
        "peer_svid_expired",
    ),
    (
        Reason::PeerSvidUntrusted,
        "peer-svid-untrusted",
        "peer_svid_untrusted",
    ),
    (Reason::Other, "other", "other"),
];

impl Reason {
    fn row(self) -> &'static (Reason, &'static str, &'static str) {
        REASONS
            .iter()
            .find(|(r, _, _)| *r == self)
            .unwrap_or(&REASONS[REASONS.len() - 1])
    }

    /// The value of [`ERROR`].
    pub(crate) fn header_value(self) -> &'static str {
        self.row().1
    }

    /// The metric label (`outcome`).
    pub(crate) fn label(self) -> &'static str {
        self.row().2
    }

    /// Why a caller's connection serves no more requests.
    pub(crate) fn of_lost(lost: &signet_identity::peer_standing::StandingLost) -> Reason {
        use signet_identity::peer_standing::StandingLost;
        match lost {
            StandingLost::Expired => Reason::PeerSvidExpired,
            StandingLost::Untrusted(_) => Reason::PeerSvidUntrusted,
        }
    }

    /// The reason a header value names; [`Reason::Other`] for anything
    /// else, so a label never carries a value from outside the set.
    pub(crate) fn parse(value: &[u8]) -> Reason {
        REASONS
            .iter()
            .find(|(_, v, _)| v.as_bytes() == value)
            .map_or(Reason::Other, |(r, _, _)| *r)
    }
}

/// What a peer proxy said about an answer it made itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerProxyAnswer {
    /// Its reason.
    pub reason: Reason,
    /// Whether the request never reached the app.
    pub not_forwarded: bool,
}

/// A fresh [`ANSWER_TOKEN`] value: 128 bits from the thread's CSPRNG.
pub(crate) fn new_answer_token() -> HeaderValue {
    let bits: u128 = rand::random();
    let mut hex = [0u8; 32];
    for (i, b) in hex.iter_mut().enumerate() {
        let nibble = ((bits >> (124 - 4 * i)) & 0xf) as u8;
        *b = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
    }
    // 32 hex digits are always a valid header value.
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The control headers of an answer, if it is the peer proxy's own: it
/// carries `token` (sent with the attempt) and an [`ERROR`] or
/// [`NOT_FORWARDED`] header. `None` for every answer of an app, whatever
/// headers it set.
pub(crate) fn peer_proxy_answer(
    headers: &HeaderMap,
    token: &HeaderValue,
) -> Option<PeerProxyAnswer> {
    if headers.get(ANSWER_TOKEN) != Some(token) {
        return None;
    }
    let not_forwarded = headers.contains_key(NOT_FORWARDED);
    let reason = headers.get(ERROR).map(|v| Reason::parse(v.as_bytes()));
    if reason.is_none() && !not_forwarded {
        return None;
    }
    Some(PeerProxyAnswer {
        reason: reason.unwrap_or(Reason::Other),
        not_forwarded,
    })
}

/// Whether `name` is in Signet's `x-signet-` namespace as an app framework
/// could read it: CGI-style servers map every character that is not a
/// letter or digit onto `_` (`x.signet.peer.id` and `x_signet_peer_id`
/// both become `HTTP_X_SIGNET_PEER_ID`).
pub(crate) fn in_namespace(name: &str) -> bool {
    const PREFIX: &[u8] = b"x-signet-";
    let name = name.as_bytes();
    name.len() >= PREFIX.len() && folds_onto(&name[..PREFIX.len()], PREFIX)
}

/// Whether `name` folds onto `canonical` (lowercase, `-` for every
/// character that is not a letter or digit).
pub(crate) fn folds_onto(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len()
        && name.iter().zip(canonical).all(|(&a, &b)| {
            if b == b'-' {
                !a.is_ascii_alphanumeric()
            } else {
                a.to_ascii_lowercase() == b
            }
        })
}

/// Removes every header of the `x-signet-` namespace, in any spelling.
pub(crate) fn strip_namespace(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| in_namespace(k.as_str())) {
        return;
    }
    let names: Vec<_> = headers
        .keys()
        .filter(|k| in_namespace(k.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Marks an answer the inbound proxy makes itself: the reason, and the
/// caller's token when it sent one.
pub(crate) fn mark_own_answer(
    headers: &mut HeaderMap,
    reason: Reason,
    token: Option<&HeaderValue>,
) {
    headers.insert(ERROR, HeaderValue::from_static(reason.header_value()));
    if let Some(t) = token {
        headers.insert(ANSWER_TOKEN, t.clone());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_an_answer_with_the_token_sent_is_the_peer_proxys() {
        let token = new_answer_token();
        let forged = headers(&[(NOT_FORWARDED, "1"), (ERROR, "app-unreachable")]);
        assert_eq!(peer_proxy_answer(&forged, &token), None, "no token");
        let mut guessed = forged.clone();
        guessed.insert(ANSWER_TOKEN, new_answer_token());
        assert_eq!(peer_proxy_answer(&guessed, &token), None, "another token");
        let mut own = forged.clone();
        own.insert(ANSWER_TOKEN, token.clone());
        assert_eq!(
            peer_proxy_answer(&own, &token),
            Some(PeerProxyAnswer {
                reason: Reason::AppUnreachable,
                not_forwarded: true
            })
        );
        let token_only = headers(&[(ANSWER_TOKEN, token.to_str().unwrap())]);
        assert_eq!(
            peer_proxy_answer(&token_only, &token),
            None,
            "a token alone says nothing"
        );
    }

    #[test]
    fn tokens_are_fresh_hex() {
        let a = new_answer_token();
        let b = new_answer_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }

    #[test]
    fn a_reason_outside_the_set_is_other_and_labels_are_closed() {
        assert_eq!(Reason::parse(b"timeout"), Reason::Timeout);
        assert_eq!(Reason::parse(b"zz-unbounded-1234"), Reason::Other);
        for (r, v, l) in REASONS {
            assert_eq!(Reason::parse(v.as_bytes()), *r);
            assert_eq!(r.label(), *l);
            assert_eq!(l.replace('_', "-"), *v);
        }
    }

    #[test]
    fn every_spelling_of_the_namespace_is_stripped() {
        let mut h = headers(&[
            ("x-signet-not-forwarded", "1"),
            ("X-Signet-Error", "app-unreachable"),
            ("x_signet_error", "x"),
            ("x.signet.peer.id", "spiffe://example.org/admin"),
            ("x-signet", "kept: not in the namespace"),
            ("x-signetx-a", "kept"),
            ("content-type", "text/plain"),
        ]);
        strip_namespace(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-signet", "x-signetx-a"]);
    }

    #[test]
    fn folding_is_what_cgi_does() {
        assert!(folds_onto(b"x.signet.peer.id", b"x-signet-peer-id"));
        assert!(folds_onto(b"X_SIGNET_PEER_ID", b"x-signet-peer-id"));
        assert!(folds_onto(b"x~signet~peer~id", b"x-signet-peer-id"));
        assert!(!folds_onto(b"x-signet-peer-ip", b"x-signet-peer-id"));
        assert!(!folds_onto(b"xasignet-peer-id", b"x-signet-peer-id"));
    }
}
