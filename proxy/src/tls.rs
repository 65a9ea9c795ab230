//! rustls configurations of the two sides. Both take the current identity
//! per handshake, so a rotation applies to the next handshake at once, and
//! both fail closed when the SVID has expired.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use signet_identity::tls::{provider, Authorizer, SpiffeClientVerifier, SpiffeServerVerifier};

use crate::workload_identity::{Identity, IdentityWatch};

pub(crate) mod refusal;

/// Authentication on inbound accepts any SPIFFE ID of the bundle; policy
/// decides afterwards.
pub(crate) fn any_id() -> Authorizer {
    Arc::new(|_| true)
}

/// `identity`'s key, or `None` once it has expired (logged once per SVID:
/// `warned` holds the notAfter last reported, so an outage logs once, not
/// once per refused handshake).
fn usable(identity: &Identity, warned: &AtomicI64) -> Option<Arc<CertifiedKey>> {
    if !identity.is_valid() {
        if warned.swap(identity.not_after, Ordering::Relaxed) != identity.not_after {
            tracing::warn!(spiffe_id = %identity.spiffe_id, not_after = identity.not_after, "refusing handshakes: our SVID has expired and the agent has not renewed it");
        }
        return None;
    }
    Some(identity.key.clone())
}

/// Hands the inbound side's rustls the current SVID, or nothing once it
/// has expired.
#[derive(Debug)]
pub(crate) struct CurrentSvid {
    identity: IdentityWatchDebug,
    warned: AtomicI64,
}

impl CurrentSvid {
    /// A resolver over the identity watch.
    pub(crate) fn new(identity: IdentityWatch) -> Self {
        Self {
            identity: IdentityWatchDebug(identity),
            warned: AtomicI64::new(i64::MIN),
        }
    }
}

/// `IdentityWatch` with a Debug impl, as rustls' traits require.
struct IdentityWatchDebug(IdentityWatch);

impl std::fmt::Debug for IdentityWatchDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityWatch")
    }
}

impl ResolvesServerCert for CurrentSvid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let identity = self.identity.0.borrow().clone()?;
        usable(&identity, &self.warned)
    }
}

/// Inbound: present our SVID, require a client SVID of our trust domain's
/// bundle (authorization by policy happens right after the handshake).
/// `alpn`: the protocols offered, most preferred first (none: no ALPN).
pub(crate) fn server_config(
    identity: IdentityWatch,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let bundle = identity
        .borrow()
        .as_ref()
        .map(|i| i.bundle.clone())
        .ok_or("no identity yet")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(SpiffeClientVerifier::new(
            bundle,
            crate::tls::any_id(),
            true,
        ))
        .with_cert_resolver(Arc::new(CurrentSvid::new(identity)));
    // Resumption between sidecars: one ticket per connection into a bounded
    // stateful cache. Each entry holds the client's chain (~1 KiB), so the
    // cache size is the main memory knob here (4,096 entries cost ~5 MiB).
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(512);
    config.send_tls13_tickets = 1;
    // Our order (AES-128-GCM first: ring's SHA-384 is slow on AMD CPUs,
    // 23-31% dearer resumed handshakes), whatever a peer prefers (OpenSSL
    // clients put AES-256 first).
    config.ignore_client_order = true;
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

/// The outbound side's rustls configuration for the SVID held now.
///
/// A TLS 1.3 ticket carries the client certificate of the handshake that
/// first made its session, and so does every ticket issued on a session
/// resumed from it: a chain of resumptions keeps presenting that first SVID
/// until it expires and the peer refuses it. So each SVID gets its own
/// `ClientConfig`, whose certificate resolver holds only that SVID and whose
/// ticket store only tickets from connections made with it. A connection
/// opened before a rotation that receives its ticket after it puts the
/// ticket in the old configuration's store, which no new connection uses.
pub(crate) struct OutboundTls {
    identity: IdentityWatch,
    authorize: Authorizer,
    alpn: Vec<Vec<u8>>,
    /// The configuration made for the SVID (by its key) in use.
    current: Mutex<Option<(Arc<CertifiedKey>, Arc<rustls::ClientConfig>)>>,
}

/// Tickets kept per outbound listener and SVID.
const CLIENT_SESSIONS: usize = 1024;

impl OutboundTls {
    /// Configurations following `identity`, accepting only a server whose
    /// ID `authorize`s, offering `alpn` (most preferred first).
    pub(crate) fn new(identity: IdentityWatch, authorize: Authorizer, alpn: Vec<Vec<u8>>) -> Self {
        Self {
            identity,
            authorize,
            alpn,
            current: Mutex::new(None),
        }
    }

    /// The connector for a new connection: the current SVID's
    /// configuration, made on first use after a rotation.
    pub(crate) fn connector(&self) -> Result<tokio_rustls::TlsConnector, String> {
        let id = self.identity.borrow().clone().ok_or("no identity yet")?;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, config)) = current.as_ref() {
            if Arc::ptr_eq(key, &id.key) {
                return Ok(config.clone().into());
            }
        }
        let config = self.config_for(id.clone())?;
        *current = Some((id.key.clone(), config.clone()));
        Ok(config.into())
    }

    /// Forgets the current SVID's tickets (a resumed session was refused):
    /// the next connection makes a full handshake.
    pub(crate) fn flush(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn config_for(&self, id: Arc<Identity>) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(SpiffeServerVerifier::new(
                id.bundle.clone(),
                self.authorize.clone(),
            ))
            .with_client_cert_resolver(Arc::new(PinnedSvid {
                identity: id,
                warned: AtomicI64::new(i64::MIN),
            }));
        config.resumption = rustls::client::Resumption::in_memory_sessions(CLIENT_SESSIONS);
        config.alpn_protocols = self.alpn.clone();
        Ok(Arc::new(config))
    }
}

/// Hands the outbound side's rustls one SVID, the one its configuration
/// was made for, or nothing once it has expired.
struct PinnedSvid {
    identity: Arc<Identity>,
    warned: AtomicI64,
}

impl std::fmt::Debug for PinnedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PinnedSvid({}, not_after {})",
            self.identity.spiffe_id, self.identity.not_after
        )
    }
}

impl ResolvesClientCert for PinnedSvid {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        usable(&self.identity, &self.warned)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
