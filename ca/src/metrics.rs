//! Prometheus metrics of the CA, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::issuance::IssueError;

/// Label for issuance failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Short machine-readable reason.
    pub reason: String,
}

/// Labels for admin API calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminCallLabels {
    /// The RPC method.
    pub method: String,
    /// The gRPC status code name.
    pub code: String,
}

/// The CA's metrics, registered once.
pub struct Metrics {
    registry: Registry,
    /// SVIDs signed.
    pub svids_issued: Counter,
    /// JWT-SVIDs signed.
    pub jwt_svids_issued: Counter,
    /// Issuance refusals and failures by reason.
    pub issuance_failures: Family<ReasonLabel, Counter>,
    /// Join tokens created.
    pub join_tokens_created: Counter,
    /// Refused agent attestations and node API calls by reason.
    pub node_refusals: Family<ReasonLabel, Counter>,
    /// Admin API calls by method and status.
    pub admin_calls: Family<AdminCallLabels, Counter>,
    /// notAfter of the active signing certificate, Unix seconds.
    pub ca_expiry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("signet_ca");
        let svids_issued = Counter::default();
        registry.register(
            "x509_svids_issued",
            "X.509-SVIDs signed",
            svids_issued.clone(),
        );
        let jwt_svids_issued = Counter::default();
        registry.register(
            "jwt_svids_issued",
            "JWT-SVIDs signed",
            jwt_svids_issued.clone(),
        );
        let issuance_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "x509_svid_issuance_failures",
            "CSRs refused or failed, by reason",
            issuance_failures.clone(),
        );
        let join_tokens_created = Counter::default();
        registry.register(
            "join_tokens_created",
            "Join tokens minted",
            join_tokens_created.clone(),
        );
        let node_refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "node_refusals",
            "Agent attestations and node API requests refused, by reason",
            node_refusals.clone(),
        );
        let admin_calls = Family::<AdminCallLabels, Counter>::default();
        registry.register(
            "admin_calls",
            "Admin API calls by method and gRPC code",
            admin_calls.clone(),
        );
        let ca_expiry = Gauge::default();
        registry.register(
            "signing_cert_expiry_timestamp_seconds",
            "notAfter of the active CA signing certificate",
            ca_expiry.clone(),
        );
        Self {
            registry,
            svids_issued,
            jwt_svids_issued,
            issuance_failures,
            join_tokens_created,
            node_refusals,
            admin_calls,
            ca_expiry,
        }
    }

    /// Records an issuance failure.
    pub fn issuance_failed(&self, e: &IssueError) {
        let reason = match e {
            IssueError::MalformedCsr(_) => "malformed_csr",
            IssueError::BadCsrSignature => "bad_csr_signature",
            IssueError::UnacceptableKey(_) => "unacceptable_key",
            IssueError::CaExpired => "ca_expired",
            IssueError::Sign(_) => "sign_error",
        };
        self.issuance_failures
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Records a refused attestation or node API request.
    pub fn attestation_failed(&self, reason: &str) {
        self.node_refusals
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Records an admin call's outcome.
    pub fn admin_call(&self, method: &str, code: tonic::Code) {
        self.admin_calls
            .get_or_create(&AdminCallLabels {
                method: method.into(),
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// Sets the signing certificate expiry gauge.
    pub fn set_ca_expiry(&self, unix: i64) {
        self.ca_expiry.set(unix);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
