//! Prometheus metrics of the CA, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::keys::issuance::IssueError;

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

/// Labels for connections a listener refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerRefusalLabels {
    /// `oidc`, `metrics` or `admin`.
    pub listener: String,
    /// The limit's name.
    pub reason: String,
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
    /// Entries in the in-memory cache agents are served from.
    pub cached_entries: Gauge,
    /// The change-feed revision the cache is at.
    pub cache_revision: Gauge,
    /// Agent entry streams open on this replica.
    pub sync_streams: Gauge,
    /// Entry-stream updates sent, by kind (`snapshot`, `delta`).
    pub sync_updates: Family<KindLabel, Counter>,
    /// Entry-stream messages sent (an update longer than a page is several).
    pub sync_messages: Counter,
    /// Endpoints published in the mesh (all replicas' agents).
    pub endpoints: Gauge,
    /// Endpoint watch streams open on this replica.
    pub endpoint_watches: Gauge,
    /// Endpoints refused from agents' updates.
    pub endpoints_refused: Counter,
    /// Endpoint updates replaced by a newer one from the same node before
    /// they were written (a node updating faster than the CA writes).
    pub endpoint_updates_coalesced: Counter,
    /// Connections refused by the limits of the OIDC, metrics and admin
    /// listeners (the node API's are in `node_refusals`).
    pub listener_refusals: Family<ListenerRefusalLabels, Counter>,
}

/// A `kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: String,
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
        let cached_entries = Gauge::default();
        registry.register(
            "cached_entries",
            "Entries in the in-memory cache agent streams are served from",
            cached_entries.clone(),
        );
        let cache_revision = Gauge::default();
        registry.register(
            "cache_revision",
            "Change-feed revision the entry cache is at",
            cache_revision.clone(),
        );
        let sync_streams = Gauge::default();
        registry.register(
            "sync_streams",
            "Agent entry streams open on this replica",
            sync_streams.clone(),
        );
        let sync_updates = Family::<KindLabel, Counter>::default();
        registry.register(
            "sync_updates",
            "Entry-stream updates sent, by kind (snapshot, delta)",
            sync_updates.clone(),
        );
        let sync_messages = Counter::default();
        registry.register(
            "sync_messages",
            "Entry-stream messages sent (pages)",
            sync_messages.clone(),
        );
        let endpoints = Gauge::default();
        registry.register(
            "endpoints",
            "Endpoints published in the mesh",
            endpoints.clone(),
        );
        let endpoint_watches = Gauge::default();
        registry.register(
            "endpoint_watches",
            "Endpoint watch streams open on this replica",
            endpoint_watches.clone(),
        );
        let endpoints_refused = Counter::default();
        registry.register(
            "endpoints_refused",
            "Endpoints refused from agents' updates (identity not held, bad address, cap)",
            endpoints_refused.clone(),
        );
        let endpoint_updates_coalesced = Counter::default();
        registry.register(
            "endpoint_updates_coalesced",
            "Endpoint updates replaced by a newer one from the same node before they were written",
            endpoint_updates_coalesced.clone(),
        );
        let listener_refusals = Family::<ListenerRefusalLabels, Counter>::default();
        registry.register(
            "listener_refusals",
            "Connections refused by the limits of the OIDC, metrics and admin listeners",
            listener_refusals.clone(),
        );
        Self {
            endpoint_updates_coalesced,
            listener_refusals,
            endpoints,
            endpoint_watches,
            endpoints_refused,
            cached_entries,
            cache_revision,
            sync_streams,
            sync_updates,
            sync_messages,
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

    /// Counts a connection `listener` refused for `reason`.
    pub fn listener_refused(&self, listener: &str, reason: &str) {
        self.listener_refusals
            .get_or_create(&ListenerRefusalLabels {
                listener: listener.into(),
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

    /// Sets the entry cache gauges.
    pub fn set_cache(&self, entries: usize, revision: i64) {
        self.cached_entries.set(entries as i64);
        self.cache_revision.set(revision);
    }

    /// Counts one update sent on an entry stream, in `pages` messages.
    pub fn sync_update(&self, delta: bool, pages: usize) {
        let kind = if delta { "delta" } else { "snapshot" };
        self.sync_updates
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
        self.sync_messages.inc_by(pages as u64);
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
