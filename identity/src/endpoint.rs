//! The words of the mesh's endpoint registry every component shares: the
//! address an endpoint is dialled at, its protocol and weight, and the
//! limits the CA, the agent and the proxy all apply to them.

use std::fmt;
use std::net::IpAddr;

/// Default relative share of traffic of an endpoint.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest weight an endpoint may carry.
pub const MAX_WEIGHT: u32 = 1000;
/// Longest zone name.
pub const MAX_ZONE_LEN: usize = 64;

/// Whether `name` is a DNS name (RFC 1123 labels; `*.` allowed in front
/// when `wildcard`).
pub fn valid_dns_name(name: &str, wildcard: bool) -> bool {
    let name = match name.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        _ => name,
    };
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Where an endpoint is dialled: a host (IP address or DNS name) and a
/// port. Registered without a host (`":8443"`), the CA fills in the node's
/// address as it sees the agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointAddress {
    /// IP address or DNS name; `None`: the node's address.
    pub host: Option<Host>,
    /// TCP port, never 0.
    pub port: u16,
}

/// The host part of an [`EndpointAddress`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IP address.
    Ip(IpAddr),
    /// A DNS name, resolved by whoever dials.
    Name(String),
}

/// Why an endpoint address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("endpoint address {address:?}: {reason}; expected host:port, [ipv6]:port or :port")]
pub struct AddressError {
    /// The address as given.
    pub address: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Whether `ip` can never be a mesh endpoint: link-local addresses (the
/// cloud metadata services live there: 169.254.169.254, fd00:ec2::254
/// aside, which is unique-local but AWS's), the Alibaba metadata address,
/// unspecified, broadcast and multicast. A node advertising one would point
/// callers at whatever answers there on *their* host.
pub fn never_an_endpoint(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4 == std::net::Ipv4Addr::new(100, 100, 100, 200)
        }
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| never_an_endpoint(IpAddr::V4(v4)))
        }
    }
}

/// Host names of cloud metadata services, refused like their addresses.
const METADATA_NAMES: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "instance-data",
    "instance-data.ec2.internal",
];

impl EndpointAddress {
    /// Parses `host:port`, `[v6]:port` or `:port`.
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let err = |reason| AddressError {
            address: s.chars().take(300).collect(),
            reason,
        };
        let (host, port) = s.rsplit_once(':').ok_or(err("no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| err("the port is not a number 1-65535"))?;
        if port == 0 {
            return Err(err("port 0"));
        }
        let host = if host.is_empty() {
            None
        } else if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            match v6.parse::<std::net::Ipv6Addr>() {
                Ok(ip) => Some(Host::Ip(IpAddr::V6(ip))),
                Err(_) => return Err(err("not an IPv6 address in brackets")),
            }
        } else if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            Some(Host::Ip(IpAddr::V4(ip)))
        } else if host.contains(':') {
            return Err(err("an IPv6 address needs brackets"));
        } else if valid_dns_name(host, false) {
            Some(Host::Name(host.to_ascii_lowercase()))
        } else {
            return Err(err("the host is neither an IP address nor a DNS name"));
        };
        match &host {
            Some(Host::Ip(ip)) if never_an_endpoint(*ip) => {
                return Err(err("a link-local, metadata-service, unspecified, broadcast or multicast address is never an endpoint"))
            }
            Some(Host::Name(n)) if METADATA_NAMES.contains(&n.trim_end_matches('.')) => {
                return Err(err("a cloud metadata service is never an endpoint"))
            }
            _ => {}
        }
        Ok(Self { host, port })
    }

    /// The address with `ip` as host when it has none.
    pub fn or_host(self, ip: IpAddr) -> Self {
        Self {
            host: Some(self.host.unwrap_or(Host::Ip(ip))),
            port: self.port,
        }
    }
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            None => write!(f, ":{}", self.port),
            Some(Host::Ip(IpAddr::V6(ip))) => write!(f, "[{ip}]:{}", self.port),
            Some(Host::Ip(ip)) => write!(f, "{ip}:{}", self.port),
            Some(Host::Name(n)) => write!(f, "{n}:{}", self.port),
        }
    }
}

/// How an inbound listener reads traffic, as endpoints advertise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointProtocol {
    /// Bytes, relayed as they come.
    Tcp,
    /// HTTP/1.1 or HTTP/2, per request.
    Http,
}

impl EndpointProtocol {
    /// Parses `tcp` or `http` (empty: `tcp`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" | "tcp" => Ok(Self::Tcp),
            "http" => Ok(Self::Http),
            other => Err(format!(
                "endpoint protocol {other:?}: expected \"tcp\" or \"http\""
            )),
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
        }
    }
}

/// Checks a weight (0 means the default); the weight to use.
pub fn check_weight(weight: u32) -> Result<u32, String> {
    match weight {
        0 => Ok(DEFAULT_WEIGHT),
        w if w <= MAX_WEIGHT => Ok(w),
        w => Err(format!("endpoint weight {w}: at most {MAX_WEIGHT}")),
    }
}

/// Checks a tunnel port as carried on the wire (a `uint32`; 0 means no
/// tunnel); the port.
pub fn check_tunnel_port(port: u32) -> Result<u16, String> {
    u16::try_from(port).map_err(|_| format!("tunnel_port {port}: at most 65535 (0: no tunnel)"))
}

/// Checks a zone name: at most [`MAX_ZONE_LEN`] characters of letters,
/// digits, `-`, `_` and `.`.
pub fn check_zone(zone: &str) -> Result<(), String> {
    if zone.len() > MAX_ZONE_LEN {
        return Err(format!("zone: at most {MAX_ZONE_LEN} characters"));
    }
    if !zone
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "zone {zone:?}: only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_parse_and_print_back() {
        for s in [
            "10.0.0.1:8443",
            "[::1]:443",
            ":8443",
            "payments.prod.svc:80",
            "a:65535",
            "a:1",
        ] {
            assert_eq!(EndpointAddress::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(
            EndpointAddress::parse("Web.Example:80")
                .unwrap()
                .to_string(),
            "web.example:80"
        );
    }

    #[test]
    fn bad_addresses_are_refused_with_the_reason() {
        for (s, why) in [
            ("10.0.0.1", "no port"),
            ("10.0.0.1:0", "port 0"),
            ("10.0.0.1:65536", "1-65535"),
            ("10.0.0.1:http", "1-65535"),
            ("::1:443", "brackets"),
            ("[nope]:443", "IPv6"),
            ("bad_name:80", "neither"),
            ("-a.b:80", "neither"),
            ("169.254.169.254:80", "metadata-service"),
            ("169.254.1.7:8443", "link-local"),
            ("[fe80::1]:8443", "link-local"),
            ("[fd00:ec2::254]:80", "metadata-service"),
            ("[::ffff:169.254.169.254]:80", "link-local"),
            ("100.100.100.200:80", "metadata-service"),
            ("0.0.0.0:8443", "unspecified"),
            ("[::]:8443", "unspecified"),
            ("255.255.255.255:80", "broadcast"),
            ("224.0.0.1:80", "multicast"),
            ("metadata.google.internal:80", "metadata service"),
            ("Metadata:80", "metadata service"),
        ] {
            let e = EndpointAddress::parse(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
        let long = format!("{}:80", "a.".repeat(127) + "b");
        assert!(EndpointAddress::parse(&long).is_err(), "254-character name");
        let ok = format!("{}:80", "a.".repeat(126) + "b");
        assert!(EndpointAddress::parse(&ok).is_ok(), "253-character name");
        // Next to the refused ranges: fine.
        for s in [
            "169.253.255.255:80",
            "169.255.0.1:80",
            "[fec0::1]:80",
            "10.0.0.1:80",
        ] {
            assert!(EndpointAddress::parse(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn a_missing_host_is_the_node_address() {
        let a = EndpointAddress::parse(":8443").unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(a.clone().or_host(ip).to_string(), "192.0.2.7:8443");
        let named = EndpointAddress::parse("web:1").unwrap();
        assert_eq!(named.or_host(ip).to_string(), "web:1");
    }

    #[test]
    fn weights_and_zones_on_both_sides_of_their_limits() {
        assert_eq!(check_weight(0), Ok(DEFAULT_WEIGHT));
        assert_eq!(check_weight(MAX_WEIGHT), Ok(MAX_WEIGHT));
        assert!(check_weight(MAX_WEIGHT + 1).is_err());
        assert_eq!(check_tunnel_port(0), Ok(0));
        assert_eq!(check_tunnel_port(65_535), Ok(65_535));
        assert!(check_tunnel_port(65_536).is_err());
        assert!(check_zone(&"z".repeat(MAX_ZONE_LEN)).is_ok());
        assert!(check_zone(&"z".repeat(MAX_ZONE_LEN + 1)).is_err());
        assert!(check_zone("eu-west-1a").is_ok());
        assert!(check_zone("eu west").is_err());
        assert_eq!(EndpointProtocol::parse("").unwrap(), EndpointProtocol::Tcp);
        assert_eq!(
            EndpointProtocol::parse("http").unwrap(),
            EndpointProtocol::Http
        );
        assert!(EndpointProtocol::parse("udp").is_err());
    }
}
