//! Protobuf forms of the CA's records: what the admin and node APIs send.

use signet_identity::TrustBundle;
use signet_proto::admin;
use signet_proto::node as pb;

use crate::registry::entry::Entry;
use crate::store::AgentRecord;
use crate::AgentSvid;

/// Protobuf form of the bundle as entry streams send it: with the tainted
/// keys.
pub(crate) fn published_to_pb(p: &crate::PublishedBundle) -> pb::Bundle {
    pb::Bundle {
        tainted_key_ids: p.tainted.clone(),
        tainted_jwt_kids: p.tainted_jwt.clone(),
        ..bundle_to_pb(&p.bundle)
    }
}

/// Protobuf form of a bundle.
pub(crate) fn bundle_to_pb(b: &TrustBundle) -> pb::Bundle {
    pb::Bundle {
        trust_domain: b.trust_domain().to_string(),
        x509_authorities: b.authorities().iter().map(|c| c.to_vec()).collect(),
        sequence: b.sequence,
        jwt_authorities: b
            .jwt_authorities()
            .iter()
            .map(|a| pb::JwtAuthority {
                kid: a.kid().to_owned(),
                public_key: a.spki_der().to_vec(),
            })
            .collect(),
        tainted_key_ids: Vec::new(),
        tainted_jwt_kids: Vec::new(),
    }
}

/// Protobuf form of an entry, as agents get it.
pub(crate) fn entry_to_node_pb(e: &Entry) -> pb::WorkloadEntry {
    pb::WorkloadEntry {
        id: e.id.clone(),
        spiffe_id: e.spec.spiffe_id.to_string(),
        selectors: e.spec.selectors.iter().map(|s| s.to_string()).collect(),
        x509_svid_ttl_seconds: e.spec.x509_svid_ttl as i64,
        dns_names: e.spec.dns_names.clone(),
        revision: e.revision,
        hint: e.spec.hint.clone(),
        jwt_svid_ttl_seconds: e.spec.jwt_svid_ttl as i64,
    }
}

/// Protobuf form of an entry.
pub(crate) fn entry_to_admin_pb(e: &Entry) -> admin::Entry {
    admin::Entry {
        id: e.id.clone(),
        spec: Some(admin::EntrySpec {
            spiffe_id: e.spec.spiffe_id.to_string(),
            parent_id: e.spec.parent_id.to_string(),
            selectors: e.spec.selectors.iter().map(|s| s.to_string()).collect(),
            x509_svid_ttl_seconds: e.spec.x509_svid_ttl as i64,
            dns_names: e.spec.dns_names.clone(),
            admin: e.spec.admin,
            hint: e.spec.hint.clone(),
            jwt_svid_ttl_seconds: e.spec.jwt_svid_ttl as i64,
        }),
        created_at: e.created_at,
        updated_at: e.updated_at,
        revision: e.revision,
    }
}

/// Protobuf form of an agent's record, for the admin API.
pub(crate) fn agent_to_pb(a: &AgentRecord) -> admin::Agent {
    admin::Agent {
        spiffe_id: a.spiffe_id.clone(),
        attestation_type: a.attestation_type.clone(),
        node_selectors: a.node_selectors.clone(),
        svid_serial: a.svid_serial.clone(),
        svid_expires_at: a.svid_expires_at,
        banned: a.banned,
        created_at: a.created_at,
        updated_at: a.updated_at,
    }
}

/// Protobuf form of an agent's new SVID.
pub(crate) fn agent_svid_to_pb(s: &AgentSvid) -> pb::AgentSvid {
    pb::AgentSvid {
        spiffe_id: s.spiffe_id.to_string(),
        cert_chain: s.svid.chain.iter().map(|c| c.to_vec()).collect(),
        expires_at: s.svid.not_after,
        bundle: Some(bundle_to_pb(&s.bundle)),
    }
}
