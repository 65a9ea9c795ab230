//! OIDC discovery (`[oidc]`), so that cloud IAM, Vault and any OIDC relying
//! party can verify Signet's JWT-SVIDs: `/.well-known/openid-configuration`
//! names the issuer and a JWKS (`/keys`) holding every published JWT key,
//! the prepared next key included, so rotation leaves no gap.
//!
//! Its own listener, off by default: TLS with the configured certificate,
//! or plain HTTP behind a TLS-terminating load balancer, under its own
//! connection limits ([`signet_identity::http_serve`]), so that a flood of
//! idle connections takes nothing from the node API or the admin socket.
//! An issuer with a path (`https://host/tenant-a`) is served under it. The
//! documents are rebuilt at most once per [`REFRESH`], so a flood of
//! requests costs no database work.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use signet_identity::jwt_svid::jwks_of;
use tokio::net::TcpListener;

use crate::config::OidcConfig;
use crate::{Ca, CaError};

/// How long a served JWKS may be reused (and what `Cache-Control` says).
pub(crate) const REFRESH: Duration = Duration::from_secs(5);

/// The two documents, serialized once per refresh.
struct Served {
    discovery: String,
    jwks: String,
}

struct Documents {
    ca: Arc<Ca>,
    issuer: String,
    cached: Mutex<Option<(Instant, Arc<Served>)>>,
}

impl Documents {
    /// The documents, rebuilt when older than [`REFRESH`].
    async fn current(&self) -> Result<Arc<Served>, CaError> {
        if let Ok(guard) = self.cached.lock() {
            if let Some((at, docs)) = guard.as_ref() {
                if at.elapsed() < REFRESH {
                    return Ok(docs.clone());
                }
            }
        }
        let bundle = self.ca.bundle().await?;
        let keys = bundle.jwt_authorities();
        let mut algs: Vec<&str> = keys.iter().map(|k| k.signing_algorithm().name()).collect();
        algs.sort();
        algs.dedup();
        let discovery = serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/keys", self.issuer),
            "authorization_endpoint": "",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": algs,
        });
        let docs = Arc::new(Served {
            discovery: discovery.to_string(),
            jwks: jwks_of(keys, "sig").to_string(),
        });
        if let Ok(mut guard) = self.cached.lock() {
            *guard = Some((Instant::now(), docs.clone()));
        }
        Ok(docs)
    }
}

fn json(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=5"),
        ],
        body,
    )
        .into_response()
}

async fn discovery(State(docs): State<Arc<Documents>>) -> Response {
    match docs.current().await {
        Ok(d) => json(d.discovery.clone()),
        Err(e) => unavailable(e),
    }
}

async fn keys(State(docs): State<Arc<Documents>>) -> Response {
    match docs.current().await {
        Ok(d) => json(d.jwks.clone()),
        Err(e) => unavailable(e),
    }
}

fn unavailable(e: CaError) -> Response {
    tracing::warn!(error = %e, "OIDC discovery: the bundle cannot be read");
    (StatusCode::SERVICE_UNAVAILABLE, "bundle unavailable\n").into_response()
}

/// The discovery endpoints' routes, under the issuer's path.
fn router(ca: Arc<Ca>, config: &OidcConfig) -> Router {
    let docs = Arc::new(Documents {
        ca,
        issuer: config.issuer.clone(),
        cached: Mutex::new(None),
    });
    let base = config.issuer_path();
    Router::new()
        .route(
            &format!("{base}/.well-known/openid-configuration"),
            get(discovery),
        )
        .route(&format!("{base}/keys"), get(keys))
        .with_state(docs)
}

/// The TLS server configuration from `[oidc] tls_cert`/`tls_key`, if set.
pub(crate) fn tls_config(config: &OidcConfig) -> Result<Option<rustls::ServerConfig>, CaError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let bad = |what: String| CaError::InvalidArgument(format!("[oidc] {what}"));
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| bad(format!("{}: {e}", p.display())))
    };
    let chain = signet_identity::certificates_from_pem(&read(cert)?)
        .map_err(|e| bad(format!("tls_cert {}: {e}", cert.display())))?;
    let key_pem =
        pem::parse(read(key)?).map_err(|e| bad(format!("tls_key {}: {e}", key.display())))?;
    if key_pem.tag() != "PRIVATE KEY" {
        return Err(bad(format!(
            "tls_key {}: expected a PKCS#8 PRIVATE KEY block, found {}",
            key.display(),
            key_pem.tag()
        )));
    }
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pem.into_contents().into());
    let mut tls = rustls::ServerConfig::builder_with_provider(signet_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| bad(format!("tls_cert/tls_key: {e}")))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tls))
}

/// Serves discovery on `listener` (TLS when `tls` is given) under the
/// `[oidc]` limits until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    ca: Arc<Ca>,
    config: OidcConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = router(ca.clone(), &config);
    let tls = tls.map(|t| tokio_rustls::TlsAcceptor::from(Arc::new(t)));
    signet_identity::http_serve::serve(
        listener,
        tls,
        app,
        config.http_limits(),
        "oidc",
        move |reason| ca.metrics().listener_refused("oidc", reason),
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn oidc(issuer: &str) -> OidcConfig {
        toml::from_str(&format!("listen = \"127.0.0.1:0\"\nissuer = \"{issuer}\"")).unwrap()
    }

    #[test]
    fn discovery_is_served_under_the_issuers_path() {
        assert_eq!(oidc("https://oidc.example.org").issuer_path(), "");
        assert_eq!(oidc("https://oidc.example.org:8443").issuer_path(), "");
        assert_eq!(
            oidc("https://host:8443/tenant-a").issuer_path(),
            "/tenant-a"
        );
        assert_eq!(oidc("https://host/a/b").issuer_path(), "/a/b");
    }
}
