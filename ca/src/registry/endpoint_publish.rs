//! What the CA accepts from an agent publishing endpoints: only endpoints
//! of identities the agent could get an SVID for (an entry parented to it),
//! at well-formed addresses, within the per-agent cap. Plain functions, so
//! every refusal is tested without a server.

use std::net::IpAddr;

use signet_identity::endpoint::{
    check_tunnel_port, check_weight, check_zone, EndpointAddress, EndpointProtocol,
};
use signet_identity::{SpiffeId, TrustDomain};
use signet_proto::mesh::{self as pb, MAX_ENDPOINTS_PER_AGENT};

use crate::store::EndpointRecord;

/// The outcome of one update: what is published, what was refused and why.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Endpoints to store, hosts filled in.
    pub accepted: Vec<EndpointRecord>,
    /// Refused endpoints with the reason.
    pub refused: Vec<(pb::Endpoint, String)>,
}

/// Checks an update from agent `agent_id`, connected from `peer_ip`.
/// `holds(id)` says whether the agent has an entry for SPIFFE ID `id`.
pub fn check_update(
    endpoints: Vec<pb::Endpoint>,
    agent_id: &str,
    peer_ip: Option<IpAddr>,
    trust_domain: &TrustDomain,
    holds: impl Fn(&str) -> bool,
) -> Checked {
    let mut out = Checked::default();
    for e in endpoints {
        if out.accepted.len() >= MAX_ENDPOINTS_PER_AGENT {
            out.refused.push((
                e,
                format!("more than {MAX_ENDPOINTS_PER_AGENT} endpoints on one node"),
            ));
            continue;
        }
        match check_one(&e, agent_id, peer_ip, trust_domain, &holds) {
            Ok(record)
                if out
                    .accepted
                    .iter()
                    .any(|a| a.spiffe_id == record.spiffe_id && a.address == record.address) =>
            {
                out.refused
                    .push((e, format!("{} registered twice", record.address)));
            }
            Ok(record) => out.accepted.push(record),
            Err(reason) => out.refused.push((e, reason)),
        }
    }
    out
}

fn check_one(
    e: &pb::Endpoint,
    agent_id: &str,
    peer_ip: Option<IpAddr>,
    trust_domain: &TrustDomain,
    holds: &impl Fn(&str) -> bool,
) -> Result<EndpointRecord, String> {
    let id = SpiffeId::parse(&e.spiffe_id).map_err(|err| format!("SPIFFE ID: {err}"))?;
    if id.trust_domain() != *trust_domain {
        return Err(format!(
            "{id} is not in trust domain {}",
            trust_domain.as_str()
        ));
    }
    if !holds(id.as_str()) {
        return Err(format!(
            "{id} is not the SPIFFE ID of an entry of agent {agent_id}: a node may only advertise identities it can get SVIDs for"
        ));
    }
    let address = EndpointAddress::parse(&e.address).map_err(|err| err.to_string())?;
    let address = match (address.host.is_some(), peer_ip) {
        (true, _) => address,
        (false, Some(ip)) => address.or_host(ip),
        (false, None) => {
            return Err("no host given and the agent's address is unknown".into());
        }
    };
    let protocol = EndpointProtocol::parse(&e.protocol)?;
    let weight = check_weight(e.weight)?;
    check_zone(&e.zone)?;
    let tunnel_port = check_tunnel_port(e.tunnel_port)?;
    Ok(EndpointRecord {
        agent_id: agent_id.to_owned(),
        spiffe_id: id.to_string(),
        address: address.to_string(),
        protocol: protocol.as_str().to_owned(),
        zone: e.zone.clone(),
        weight,
        tunnel_port,
        registered_at: 0,
        lost_at: 0,
    })
}

/// The protobuf form of a stored endpoint.
pub fn endpoint_to_pb(e: &EndpointRecord) -> pb::Endpoint {
    pb::Endpoint {
        spiffe_id: e.spiffe_id.clone(),
        address: e.address.clone(),
        protocol: e.protocol.clone(),
        zone: e.zone.clone(),
        weight: e.weight,
        node: e.agent_id.clone(),
        registered_at: e.registered_at,
        agent_lost_at: e.lost_at,
        tunnel_port: u32::from(e.tunnel_port),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const AGENT: &str = "spiffe://example.org/signet/agent/n1";

    fn ep(id: &str, address: &str) -> pb::Endpoint {
        pb::Endpoint {
            spiffe_id: id.into(),
            address: address.into(),
            ..Default::default()
        }
    }

    fn check(endpoints: Vec<pb::Endpoint>) -> Checked {
        let td = TrustDomain::new("example.org").unwrap();
        check_update(
            endpoints,
            AGENT,
            Some("192.0.2.9".parse().unwrap()),
            &td,
            |id| id.starts_with("spiffe://example.org/web"),
        )
    }

    #[test]
    fn an_identity_the_agent_holds_is_published_with_the_node_address_filled_in() {
        let c = check(vec![ep("spiffe://example.org/web", ":8443")]);
        assert!(c.refused.is_empty(), "{:?}", c.refused);
        let e = &c.accepted[0];
        assert_eq!(e.address, "192.0.2.9:8443");
        assert_eq!(e.protocol, "tcp");
        assert_eq!(e.weight, 100);
        assert_eq!(e.agent_id, AGENT);
    }

    #[test]
    fn an_identity_the_agent_does_not_hold_is_refused() {
        let c = check(vec![
            ep("spiffe://example.org/payments", "10.0.0.1:8443"),
            ep("spiffe://other.org/web", "10.0.0.1:8443"),
            ep("not an id", "10.0.0.1:8443"),
        ]);
        assert!(c.accepted.is_empty());
        assert!(
            c.refused[0].1.contains("not the SPIFFE ID of an entry"),
            "{:?}",
            c.refused
        );
        assert!(c.refused[1].1.contains("trust domain"), "{:?}", c.refused);
        assert!(c.refused[2].1.contains("SPIFFE ID"), "{:?}", c.refused);
    }

    #[test]
    fn bad_fields_are_refused_one_by_one() {
        let mut heavy = ep("spiffe://example.org/web", "10.0.0.1:1");
        heavy.weight = 1001;
        let mut udp = ep("spiffe://example.org/web", "10.0.0.1:2");
        udp.protocol = "udp".into();
        let mut zoned = ep("spiffe://example.org/web", "10.0.0.1:3");
        zoned.zone = "a zone".into();
        let c = check(vec![
            heavy,
            udp,
            zoned,
            ep("spiffe://example.org/web", "10.0.0.1"),
            ep("spiffe://example.org/web", "10.0.0.1:4"),
            ep("spiffe://example.org/web", "10.0.0.1:4"),
        ]);
        assert_eq!(c.accepted.len(), 1);
        let reasons: Vec<&str> = c.refused.iter().map(|r| r.1.as_str()).collect();
        assert!(reasons[0].contains("weight"));
        assert!(reasons[1].contains("protocol"));
        assert!(reasons[2].contains("zone"));
        assert!(reasons[3].contains("no port"));
        assert!(reasons[4].contains("twice"));
    }

    #[test]
    fn the_cap_on_endpoints_per_node_holds_on_both_sides() {
        let set = |n: usize| {
            (0..n)
                .map(|i| ep("spiffe://example.org/web", &format!("10.0.0.1:{}", i + 1)))
                .collect::<Vec<_>>()
        };
        let at = check(set(MAX_ENDPOINTS_PER_AGENT));
        assert_eq!(at.accepted.len(), MAX_ENDPOINTS_PER_AGENT);
        assert!(at.refused.is_empty());
        let over = check(set(MAX_ENDPOINTS_PER_AGENT + 1));
        assert_eq!(over.accepted.len(), MAX_ENDPOINTS_PER_AGENT);
        assert_eq!(over.refused.len(), 1);
        assert!(over.refused[0].1.contains("more than"));
    }
}
