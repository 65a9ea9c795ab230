//! Why a TLS peer was refused, as the short reasons that metrics
//! (`handshake_failures_total{reason}`) and logs use. Taken from the typed
//! errors rustls and our verifiers return, never from their text.

use rustls::{CertificateError, Error as TlsError};
use signet_identity::tls::PeerRefused;
use signet_identity::{SvidError, Violation};

/// The reason for a peer our verifier refused, during the handshake or on
/// a resumed session.
pub(crate) fn refusal_reason(e: &PeerRefused) -> &'static str {
    match e {
        PeerRefused::NotAuthorized(_) => "peer_not_authorized",
        PeerRefused::Svid(SvidError::WrongTrustDomain { .. }) => "wrong_trust_domain",
        PeerRefused::Svid(SvidError::EmptyChain) => "no_client_certificate",
        PeerRefused::Svid(SvidError::Leaf(Violation::Expired(_))) => "peer_svid_expired",
        PeerRefused::Svid(_) => "peer_svid_invalid",
    }
}

/// The reason for a failed TLS handshake (as tokio-rustls reports it).
pub(crate) fn failure_reason(e: &std::io::Error) -> &'static str {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
    else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe => "connection_closed",
            _ => "io_error",
        };
    };
    match tls {
        TlsError::InvalidCertificate(CertificateError::Other(other)) => {
            match (*other.0).downcast_ref::<PeerRefused>() {
                Some(refused) => refusal_reason(refused),
                None => "peer_svid_invalid",
            }
        }
        TlsError::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "peer_svid_expired",
        TlsError::InvalidCertificate(_) => "peer_svid_invalid",
        TlsError::NoCertificatesPresented => "no_client_certificate",
        TlsError::InvalidMessage(_) | TlsError::InappropriateMessage { .. } => "not_tls",
        TlsError::AlertReceived(_) => "alert_received",
        _ => "handshake_failure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn io(e: TlsError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn reasons_come_from_the_typed_errors() {
        let refused = |r: PeerRefused| {
            io(TlsError::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(r)),
            )))
        };
        assert_eq!(
            failure_reason(&refused(PeerRefused::Svid(SvidError::Leaf(
                Violation::Expired("x".into())
            )))),
            "peer_svid_expired"
        );
        assert_eq!(
            failure_reason(&refused(PeerRefused::Svid(SvidError::EmptyChain))),
            "no_client_certificate"
        );
        assert_eq!(
            failure_reason(&io(TlsError::NoCertificatesPresented)),
            "no_client_certificate"
        );
        assert_eq!(
            failure_reason(&io(TlsError::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            "not_tls"
        );
        assert_eq!(
            failure_reason(&io(TlsError::AlertReceived(
                rustls::AlertDescription::BadCertificate
            ))),
            "alert_received"
        );
        assert_eq!(
            failure_reason(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            "connection_closed"
        );
    }
}
