//! rustls configurations of the two sides. Both read the current identity
//! per handshake, so a rotation applies to the next handshake at once, and
//! both fail closed when the SVID has expired.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use std::sync::Mutex;

use rustls::client::{
    ClientSessionStore, ResolvesClientCert, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::NamedGroup;
use rustls::SignatureScheme;
use signet_identity::tls::{provider, Authorizer, SpiffeClientVerifier, SpiffeServerVerifier};

use crate::workload_identity::IdentityWatch;

/// Hands rustls the current SVID, or nothing once it has expired.
#[derive(Debug)]
pub struct CurrentSvid {
    identity: IdentityWatchDebug,
    /// notAfter of the expired SVID already reported, so an outage logs
    /// once, not once per refused handshake.
    warned: AtomicI64,
}

impl CurrentSvid {
    /// A resolver over the identity watch.
    pub fn new(identity: IdentityWatch) -> Self {
        Self {
            identity: IdentityWatchDebug(identity),
            warned: AtomicI64::new(i64::MIN),
        }
    }
}

/// `IdentityWatch` with a Debug impl, as rustls' traits require.
pub struct IdentityWatchDebug(pub IdentityWatch);

impl std::fmt::Debug for IdentityWatchDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityWatch")
    }
}

impl CurrentSvid {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let guard = self.identity.0.borrow();
        let id = guard.as_ref()?;
        if !id.is_valid() {
            if self.warned.swap(id.not_after, Ordering::Relaxed) != id.not_after {
                tracing::warn!(spiffe_id = %id.spiffe_id, not_after = id.not_after, "refusing handshakes: our SVID has expired and the agent has not renewed it");
            }
            return None;
        }
        Some(id.key.clone())
    }
}

impl ResolvesServerCert for CurrentSvid {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for CurrentSvid {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Inbound: present our SVID, require a client SVID of our trust domain's
/// bundle (authorization by policy happens right after the handshake).
pub fn server_config(identity: IdentityWatch) -> Result<Arc<rustls::ServerConfig>, String> {
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
            crate::inbound::any_id(),
            true,
        ))
        .with_cert_resolver(Arc::new(CurrentSvid::new(identity)));
    // Resumption between sidecars: one ticket per connection into a bounded
    // stateful cache. Each entry holds the client's chain (~1 KiB), so the
    // cache size is the main memory knob here (4,096 entries cost ~5 MiB).
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(512);
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// Outbound: present our SVID, accept only a server whose ID `authorize`s,
/// resume sessions from `sessions`.
pub fn client_config(
    identity: IdentityWatch,
    authorize: Authorizer,
    sessions: Arc<SvidBoundSessions>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let bundle = identity
        .borrow()
        .as_ref()
        .map(|i| i.bundle.clone())
        .ok_or("no identity yet")?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(SpiffeServerVerifier::new(bundle, authorize))
        .with_client_cert_resolver(Arc::new(CurrentSvid::new(identity)));
    config.resumption = rustls::client::Resumption::store(sessions);
    Ok(Arc::new(config))
}

/// Session tickets that never outlive the SVID they were made with.
///
/// A resumed session carries the certificates of its first handshake. The
/// peer checks ours again on resumption (see
/// `signet_identity::tls::established_peer`), so a ticket made with an SVID
/// we have since replaced must not be offered: this store starts empty
/// whenever our SVID changes. A ticket whose *server* certificate has
/// expired is caught on our side after the handshake; the caller then calls
/// [`SvidBoundSessions::flush`] and connects again with a full handshake.
#[derive(Debug)]
pub struct SvidBoundSessions {
    identity: IdentityWatchDebug,
    /// The SVID (by notAfter) the cached tickets were made with.
    made_with: Mutex<(i64, Arc<rustls::client::ClientSessionMemoryCache>)>,
}

/// Tickets kept per outbound listener.
const CLIENT_SESSIONS: usize = 1024;

impl SvidBoundSessions {
    /// An empty store following `identity`.
    pub fn new(identity: IdentityWatch) -> Arc<Self> {
        Arc::new(Self {
            identity: IdentityWatchDebug(identity),
            made_with: Mutex::new((
                i64::MIN,
                Arc::new(rustls::client::ClientSessionMemoryCache::new(
                    CLIENT_SESSIONS,
                )),
            )),
        })
    }

    /// The cache for the current SVID (a new, empty one after a rotation).
    fn current(&self) -> Arc<rustls::client::ClientSessionMemoryCache> {
        let svid = self
            .identity
            .0
            .borrow()
            .as_ref()
            .map_or(i64::MIN, |i| i.not_after);
        let mut g = self.made_with.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 != svid {
            *g = (
                svid,
                Arc::new(rustls::client::ClientSessionMemoryCache::new(
                    CLIENT_SESSIONS,
                )),
            );
        }
        g.1.clone()
    }

    /// Forgets every ticket (a resumed session was refused).
    pub fn flush(&self) {
        let mut g = self.made_with.lock().unwrap_or_else(|p| p.into_inner());
        g.1 = Arc::new(rustls::client::ClientSessionMemoryCache::new(
            CLIENT_SESSIONS,
        ));
    }
}

impl ClientSessionStore for SvidBoundSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.current().set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.current().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.current().set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.current().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.current().remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.current().insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.current().take_tls13_ticket(server_name)
    }
}
