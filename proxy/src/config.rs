//! Proxy configuration (`proxy.toml`). The key names are a contract that
//! scripts and docs rely on: extend, never rename.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::IdPattern;

pub use signet_identity::daemon::ConfigError;

/// Application protocol of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque bytes both ways (any protocol).
    #[default]
    Tcp,
    /// HTTP/1.1 and HTTP/2, so policy can match methods and paths.
    Http,
}

/// The inbound side: terminate mTLS, authorize, forward to the local app.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Where peers connect, e.g. `0.0.0.0:15006`.
    pub listen: String,
    /// The local app, e.g. `127.0.0.1:8080`.
    pub forward_to: String,
    /// `tcp` (default) or `http`.
    #[serde(default)]
    pub protocol: Protocol,
    /// The address callers should dial, registered with the agent (which
    /// relays it to the CA) while the proxy is up: `host:port`, or `:port`
    /// for the node's address as the CA sees it. Default `:<listen port>`.
    /// Registration needs the Workload API (not a static identity).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Optional locality advertised with the endpoint.
    #[serde(default)]
    pub zone: Option<String>,
    /// Relative share of traffic callers send here, 1-1000. Default 100.
    #[serde(default)]
    pub weight: Option<u32>,
    /// HTTP mode: how to speak to the app, `http1` (default) or `h2`
    /// (HTTP/2 with prior knowledge, as gRPC servers expect; trailers are
    /// carried).
    #[serde(default)]
    pub app_protocol: AppProtocol,
    /// TLS ALPN protocols offered to peers, most preferred first. Default:
    /// `["h2", "http/1.1"]` in HTTP mode, none in TCP mode.
    #[serde(default)]
    pub alpn: Option<Vec<String>>,
    /// The tunnel listener (HTTP/2 CONNECT over mTLS, HBONE-compatible):
    /// callers' connections arrive as streams of a few pooled connections.
    /// Default: `listen`'s host, port 15008, and the proxy runs without a
    /// tunnel (saying so) if that port is taken; set explicitly, failing to
    /// bind it is an error. `"off"`: no tunnel listener.
    #[serde(default)]
    pub tunnel_listen: Option<String>,
}

/// The tunnel port of an inbound listener without `tunnel_listen` (Istio's
/// HBONE port).
pub const DEFAULT_TUNNEL_PORT: u16 = 15008;

/// Where the inbound tunnel listener goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelListen {
    /// None (`tunnel_listen = "off"`).
    Off,
    /// `listen`'s host and port 15008; skipped with a warning if taken.
    Default(String),
    /// This address; failing to bind it is an error.
    Explicit(String),
}

impl InboundConfig {
    /// Where the tunnel listener binds.
    pub fn tunnel_listen(&self) -> TunnelListen {
        match self.tunnel_listen.as_deref() {
            Some("off") => TunnelListen::Off,
            Some(a) => TunnelListen::Explicit(a.to_owned()),
            None => {
                let host = self.listen.rsplit_once(':').map_or("0.0.0.0", |(h, _)| h);
                TunnelListen::Default(format!("{host}:{DEFAULT_TUNNEL_PORT}"))
            }
        }
    }
}

/// How an HTTP-mode inbound listener speaks to its app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/1.1, pooled.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c), one multiplexed connection.
    H2,
}

/// The ALPN list to offer: `configured`, else the default for `protocol`
/// (`h2`, `http/1.1` in HTTP mode; `h2_only` leaves out HTTP/1.1).
pub fn alpn(configured: &Option<Vec<String>>, protocol: Protocol, h2_only: bool) -> Vec<Vec<u8>> {
    match (configured, protocol) {
        (Some(list), _) => list.iter().map(|p| p.as_bytes().to_vec()).collect(),
        (None, Protocol::Http) if h2_only => vec![b"h2".to_vec()],
        (None, Protocol::Http) => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        (None, Protocol::Tcp) => Vec::new(),
    }
}

/// A per-route timeout of an HTTP outbound listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Requests whose path starts with this.
    pub path_prefix: String,
    /// Milliseconds the request may take, retries included (504 after).
    pub timeout_ms: u64,
}

impl InboundConfig {
    /// The address to register: `advertise`, else `:<bound_port>` (the
    /// port the listener got).
    pub fn advertised(
        &self,
        bound_port: u16,
    ) -> Result<signet_identity::endpoint::EndpointAddress, ConfigError> {
        use signet_identity::endpoint::EndpointAddress;
        let text = match &self.advertise {
            Some(a) => a.clone(),
            None => format!(":{bound_port}"),
        };
        EndpointAddress::parse(&text)
            .map_err(|e| ConfigError::Invalid(format!("[inbound] advertise: {e}")))
    }
}

/// Where an outbound listener's upstream is: one `host:port` (a DNS name
/// is re-resolved, each address an endpoint) or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UpstreamConfig {
    /// One address.
    One(String),
    /// Several addresses, balanced over.
    Many(Vec<String>),
}

/// One outbound listener: plaintext in, mTLS to `upstream`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Local address the app connects to, e.g. `127.0.0.1:15001`.
    pub listen: String,
    /// The peer's inbound proxy: `"10.0.0.2:15006"`, a DNS name and port,
    /// or a list of addresses. Omitted: the endpoints registered for
    /// `server_id` (which must then be one SPIFFE ID), found through the
    /// agent and followed as they change.
    #[serde(default)]
    pub upstream: Option<UpstreamConfig>,
    /// The SPIFFE ID (or `.../*` pattern) the upstream must present.
    pub server_id: String,
    /// `tcp` (default): each connection relayed as bytes to one endpoint;
    /// `http`: each request balanced, retried and timed out on its own.
    #[serde(default)]
    pub protocol: Protocol,
    /// Local users (uids) whose connections may use this listener, and so
    /// this workload's identity. Default: the proxy's own uid only. Checked
    /// on every connection from this host's loopback (kernel socket table).
    #[serde(default)]
    pub allowed_uids: Option<Vec<u32>>,
    /// Milliseconds a TCP connect to an endpoint may take before another
    /// endpoint is tried. Default 1,000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Milliseconds the TLS handshake with an endpoint may take before
    /// another endpoint is tried. Default 3,000.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// HTTP mode: milliseconds a request may take when no route matches,
    /// retries included; 0 (default): no limit.
    #[serde(default)]
    pub request_timeout_ms: u64,
    /// HTTP mode: per-route timeouts (`[[outbound.routes]]`, longest
    /// prefix wins).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// HTTP mode: requests in flight to this upstream; more are answered
    /// 503 at once. Default 1,000.
    #[serde(default = "default_max_pending_requests")]
    pub max_pending_requests: usize,
    /// TLS server name (SNI) sent to the upstream. Default `signet-peer`.
    #[serde(default)]
    pub sni: Option<String>,
    /// TLS ALPN protocols offered, most preferred first. Default: `["h2"]`
    /// in HTTP mode, none in TCP mode.
    #[serde(default)]
    pub alpn: Option<Vec<String>>,
    /// TCP mode: carry each app connection as an HTTP/2 CONNECT stream over
    /// pooled mTLS connections to the endpoint's tunnel port (one TLS
    /// handshake per pooled connection, not per app connection). Default:
    /// on for endpoints with a tunnel port (advertised through discovery,
    /// or `tunnel_port`); `false`: never; `true`: always (an endpoint
    /// without a tunnel port is a failed attempt).
    #[serde(default)]
    pub tunnel: Option<bool>,
    /// The upstream's tunnel port, for a static or DNS `upstream` (whose
    /// endpoints advertise none); discovered endpoints carry their own.
    #[serde(default)]
    pub tunnel_port: Option<u16>,
    /// Streams carried by one tunnel connection before another is opened to
    /// the same endpoint. Default 100.
    #[serde(default = "default_tunnel_streams")]
    pub tunnel_streams_per_connection: usize,
    /// How endpoints are chosen: `p2c` (default: power of two choices on
    /// peak-EWMA latency in HTTP mode, on active connections in TCP mode)
    /// or `round-robin` (blind to load and latency; for comparison).
    #[serde(default)]
    pub balancer: BalancerKind,
}

/// The outbound balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BalancerKind {
    /// Power of two choices on the protocol's load.
    #[default]
    P2c,
    /// Each endpoint in turn.
    RoundRobin,
}

fn default_tunnel_streams() -> usize {
    100
}

fn default_max_pending_requests() -> usize {
    1000
}

fn default_connect_timeout_ms() -> u64 {
    1000
}

fn default_handshake_timeout_ms() -> u64 {
    3000
}

impl UpstreamConfig {
    /// The addresses given.
    pub fn addresses(&self) -> Vec<&str> {
        match self {
            Self::One(a) => vec![a.as_str()],
            Self::Many(list) => list.iter().map(String::as_str).collect(),
        }
    }
}

impl OutboundConfig {
    /// The connect timeout.
    pub fn connect_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.connect_timeout_ms)
    }

    /// The TLS handshake timeout.
    pub fn handshake_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// Everything `signet proxy run` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Workload API socket; default `SPIFFE_ENDPOINT_SOCKET`, then
    /// `unix:///run/signet/agent.sock`.
    #[serde(default)]
    pub workload_api_socket: Option<String>,
    /// Directory of policy TOML files (required with an inbound listener).
    #[serde(default)]
    pub policy_dir: Option<PathBuf>,
    /// Static identity instead of the Workload API: the SVID chain (PEM).
    /// With `svid_key_file` and `bundle_file`; read once at start.
    #[serde(default)]
    pub svid_file: Option<PathBuf>,
    /// Static identity: the SVID's private key (PKCS#8 PEM).
    #[serde(default)]
    pub svid_key_file: Option<PathBuf>,
    /// Static identity: the trust bundle (PEM).
    #[serde(default)]
    pub bundle_file: Option<PathBuf>,
    /// `/metrics`, `/ready`, `/live`. Default `127.0.0.1:15000`.
    #[serde(default = "default_admin")]
    pub admin_listen: String,
    /// How long open connections may take to finish on SIGTERM, seconds. Default 30.
    #[serde(default = "default_drain")]
    pub drain_timeout: u64,
    /// The inbound listener, if any.
    #[serde(default)]
    pub inbound: Option<InboundConfig>,
    /// Outbound listeners.
    #[serde(default)]
    pub outbound: Vec<OutboundConfig>,
    /// Limits every listener enforces (`[limits]`); each has a default.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// The smallest `http_max_header_bytes`: hyper's HTTP/1 parser cannot read
/// with a smaller buffer, so a smaller value could not be enforced as set.
pub const MIN_HTTP_HEADER_BYTES: usize = 8192;

/// What one client may hold of a proxy, and for how long. Hitting a limit
/// is counted in `signet_proxy_connections_refused_total` or
/// `signet_proxy_handshake_failures_total{reason="timeout"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Seconds a peer gets to complete its TLS handshake, from accept.
    /// Default 5.
    pub handshake_timeout: u64,
    /// Open connections per listener; more are closed at accept. Default
    /// 10,000 (the process's open-file limit is raised to its hard limit
    /// at start; each relayed connection uses two descriptors).
    pub max_connections: usize,
    /// Connections per source address still in their TLS handshake; more
    /// from that address are closed at accept. Default 256.
    pub max_handshakes_per_source: usize,
    /// HTTP mode: seconds a connection may stay open with no request in
    /// flight. Default 60.
    pub http_idle_timeout: u64,
    /// HTTP/1 mode: seconds a client gets to send a request's headers.
    /// Default 10.
    pub http_header_timeout: u64,
    /// HTTP mode: most header fields in one request. Default 100.
    pub http_max_headers: usize,
    /// HTTP mode: most bytes of a request's head (HTTP/1: request line and
    /// headers; HTTP/2: the header list). Default 65,536, at least 8,192.
    pub http_max_header_bytes: usize,
    /// HTTP/2: most concurrent streams per connection. Default 256.
    pub http2_max_concurrent_streams: u32,
    /// Tunnel listener: most concurrent CONNECT streams per tunnel
    /// connection (callers open another connection past it). Default 1,000.
    pub tunnel_max_streams: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: 5,
            max_connections: 10_000,
            max_handshakes_per_source: 256,
            http_idle_timeout: 60,
            http_header_timeout: 10,
            http_max_headers: 100,
            http_max_header_bytes: 64 * 1024,
            http2_max_concurrent_streams: 256,
            tunnel_max_streams: 1000,
        }
    }
}

impl LimitsConfig {
    /// The TLS handshake timeout.
    pub fn handshake_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.handshake_timeout)
    }
}

fn default_admin() -> String {
    "127.0.0.1:15000".into()
}

fn default_drain() -> u64 {
    30
}

impl ProxyConfig {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let config: ProxyConfig = signet_identity::daemon::read_toml(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.inbound.is_none() && self.outbound.is_empty() {
            return Err(ConfigError::Invalid(
                "configure [inbound] and/or at least one [[outbound]]".into(),
            ));
        }
        if self.inbound.is_some() && self.policy_dir.is_none() {
            return Err(ConfigError::Invalid(
                "an [inbound] listener needs policy_dir (default deny: without policy nothing gets in)".into(),
            ));
        }
        let alpns = self
            .inbound
            .iter()
            .map(|i| &i.alpn)
            .chain(self.outbound.iter().map(|o| &o.alpn));
        for list in alpns.flatten() {
            if list.is_empty() || list.iter().any(|p| p.is_empty() || p.len() > 255) {
                return Err(ConfigError::Invalid(format!(
                    "alpn {list:?}: give one or more protocol names of 1 to 255 bytes (e.g. [\"h2\", \"http/1.1\"]), or leave alpn out for the default"
                )));
            }
        }
        let statics = [&self.svid_file, &self.svid_key_file, &self.bundle_file];
        let set = statics.iter().filter(|f| f.is_some()).count();
        if set != 0 && set != 3 {
            return Err(ConfigError::Invalid(
                "svid_file, svid_key_file and bundle_file go together: set all three or none"
                    .into(),
            ));
        }
        if set == 3 && self.workload_api_socket.is_some() {
            return Err(ConfigError::Invalid(
                "give either workload_api_socket or the svid_file/svid_key_file/bundle_file trio, not both".into(),
            ));
        }
        let l = &self.limits;
        if l.handshake_timeout == 0
            || l.max_connections == 0
            || l.max_handshakes_per_source == 0
            || l.http_idle_timeout == 0
            || l.http_header_timeout == 0
            || l.http_max_headers == 0
            || l.http_max_header_bytes < MIN_HTTP_HEADER_BYTES
            || l.http2_max_concurrent_streams == 0
            || l.tunnel_max_streams == 0
        {
            return Err(ConfigError::Invalid(
                format!("[limits]: every limit must be positive (http_max_header_bytes at least {MIN_HTTP_HEADER_BYTES}, the HTTP/1 parser's smallest buffer)"),
            ));
        }
        for o in &self.outbound {
            let bad =
                |m: String| ConfigError::Invalid(format!("[[outbound]] listen {}: {m}", o.listen));
            IdPattern::parse(&o.server_id).map_err(|e| bad(format!("server_id {e}")))?;
            match &o.upstream {
                None => {
                    signet_identity::SpiffeId::parse(&o.server_id).map_err(|e| {
                        bad(format!("without upstream, server_id must be one SPIFFE ID (its endpoints are discovered): {e}"))
                    })?;
                    if set == 3 {
                        return Err(bad("without upstream, endpoints are discovered through the agent: a static identity (svid_file) has none; set upstream".into()));
                    }
                }
                Some(UpstreamConfig::Many(list)) if list.is_empty() => {
                    return Err(bad(
                        "upstream: an empty list; omit it to discover endpoints".into(),
                    ));
                }
                Some(u) => {
                    for a in u.addresses() {
                        let parsed = signet_identity::endpoint::EndpointAddress::parse(a)
                            .map_err(|e| bad(format!("upstream: {e}")))?;
                        if parsed.host.is_none() {
                            return Err(bad(format!("upstream {a:?}: needs a host")));
                        }
                    }
                }
            }
            if o.max_pending_requests == 0 || o.routes.iter().any(|r| r.timeout_ms == 0) {
                return Err(bad(
                    "max_pending_requests and route timeouts must be positive".into(),
                ));
            }
            if let Some(sni) = &o.sni {
                rustls::pki_types::ServerName::try_from(sni.as_str())
                    .map_err(|e| bad(format!("sni {sni:?}: {e}")))?;
            }
            if o.tunnel_streams_per_connection == 0 || o.tunnel_port == Some(0) {
                return Err(bad(
                    "tunnel_streams_per_connection and tunnel_port must be positive".into(),
                ));
            }
            if o.tunnel == Some(true) && o.protocol == Protocol::Http {
                return Err(bad("tunnel = true is for protocol = \"tcp\": HTTP mode already multiplexes requests over pooled HTTP/2 connections".into()));
            }
            if o.tunnel == Some(true) && o.upstream.is_some() && o.tunnel_port.is_none() {
                return Err(bad(
                    "tunnel = true with a fixed upstream needs tunnel_port (the upstream's tunnel listener port, e.g. 15008)".into(),
                ));
            }
            if o.connect_timeout_ms == 0 || o.handshake_timeout_ms == 0 {
                return Err(bad(
                    "connect_timeout_ms and handshake_timeout_ms must be positive".into(),
                ));
            }
        }
        if let Some(i) = &self.inbound {
            i.advertised(1)?;
            if let TunnelListen::Explicit(a) = i.tunnel_listen() {
                a.parse::<std::net::SocketAddr>().map_err(|e| {
                    ConfigError::Invalid(format!(
                        "[inbound] tunnel_listen {a:?}: {e} (an IP:port, or \"off\")"
                    ))
                })?;
            }
            if let Some(z) = &i.zone {
                signet_identity::endpoint::check_zone(z)
                    .map_err(|e| ConfigError::Invalid(format!("[inbound] {e}")))?;
            }
            if let Some(w) = i.weight {
                if w == 0 {
                    return Err(ConfigError::Invalid("[inbound] weight: 1-1000".into()));
                }
                signet_identity::endpoint::check_weight(w)
                    .map_err(|e| ConfigError::Invalid(format!("[inbound] {e}")))?;
            }
        }
        Ok(())
    }

    /// The Workload API socket path: `workload_api_socket`, else
    /// `$SPIFFE_ENDPOINT_SOCKET`, else `/run/signet/agent.sock`.
    pub fn socket_path(&self) -> Result<PathBuf, ConfigError> {
        signet_identity::workload_api::resolve_socket(self.workload_api_socket.as_deref())
            .map_err(|e| ConfigError::Invalid(format!("workload_api_socket: {e}")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with_header_bytes(n: usize) -> Result<(), ConfigError> {
        let text = format!(
            "workload_api_socket = \"unix:///tmp/agent.sock\"\n[[outbound]]\nlisten = \"127.0.0.1:7001\"\nupstream = \"127.0.0.1:7002\"\nserver_id = \"spiffe://example.org/b\"\n[limits]\nhttp_max_header_bytes = {n}\n"
        );
        toml::from_str::<ProxyConfig>(&text).unwrap().validate()
    }

    #[test]
    fn a_header_limit_the_http1_parser_cannot_enforce_is_refused_not_raised() {
        // Below 8 KiB hyper's HTTP/1 parser would silently allow 8 KiB.
        with_header_bytes(MIN_HTTP_HEADER_BYTES).unwrap();
        let e = with_header_bytes(MIN_HTTP_HEADER_BYTES - 1).unwrap_err();
        assert!(e.to_string().contains("at least 8192"), "{e}");
    }

    /// A config with one outbound listener carrying `outbound` keys and an
    /// inbound one carrying `inbound` keys, validated.
    fn tunnel_config(outbound: &str, inbound: &str) -> Result<ProxyConfig, ConfigError> {
        let text = format!(
            "workload_api_socket = \"unix:///tmp/agent.sock\"\npolicy_dir = \"/tmp/p\"\n[inbound]\nlisten = \"10.0.0.2:15006\"\nforward_to = \"127.0.0.1:8080\"\n{inbound}\n[[outbound]]\nlisten = \"127.0.0.1:7001\"\nserver_id = \"spiffe://example.org/b\"\n{outbound}\n"
        );
        let config = toml::from_str::<ProxyConfig>(&text).unwrap();
        config.validate().map(|()| config)
    }

    #[test]
    fn tunnel_settings_are_checked() {
        // Accepted: the defaults, discovery with tunnel = true, a fixed
        // upstream with its tunnel port, the listener off or explicit.
        let c = tunnel_config("", "").unwrap();
        assert_eq!(
            c.inbound.unwrap().tunnel_listen(),
            TunnelListen::Default("10.0.0.2:15008".into())
        );
        tunnel_config("tunnel = true", "").unwrap();
        tunnel_config(
            "upstream = \"10.0.0.3:15006\"\ntunnel = true\ntunnel_port = 15008",
            "",
        )
        .unwrap();
        let off = tunnel_config("", "tunnel_listen = \"off\"").unwrap();
        assert_eq!(off.inbound.unwrap().tunnel_listen(), TunnelListen::Off);
        tunnel_config("", "tunnel_listen = \"0.0.0.0:16008\"").unwrap();
        // Refused, each with the key named.
        for (outbound, inbound, says) in [
            (
                "upstream = \"10.0.0.3:15006\"\ntunnel = true",
                "",
                "needs tunnel_port",
            ),
            (
                "protocol = \"http\"\ntunnel = true",
                "",
                "tunnel = true is for protocol",
            ),
            ("tunnel_port = 0", "", "tunnel_port must be positive"),
            (
                "tunnel_streams_per_connection = 0",
                "",
                "tunnel_streams_per_connection",
            ),
            ("", "tunnel_listen = \"nowhere\"", "tunnel_listen"),
        ] {
            let e = tunnel_config(outbound, inbound).unwrap_err().to_string();
            assert!(e.contains(says), "{outbound:?} {inbound:?}: {e}");
        }
        let text = "workload_api_socket = \"unix:///tmp/agent.sock\"\n[[outbound]]\nlisten = \"127.0.0.1:7001\"\nupstream = \"127.0.0.1:7002\"\nserver_id = \"spiffe://example.org/b\"\n[limits]\ntunnel_max_streams = 0\n";
        let e = toml::from_str::<ProxyConfig>(text)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("[limits]"), "{e}");
    }

    #[test]
    fn an_alpn_list_needs_real_protocol_names() {
        let with = |alpn: &str| {
            let cfg: ProxyConfig = toml::from_str(&format!(
                "workload_api_socket = \"unix:///run/a.sock\"\n[[outbound]]\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\nserver_id = \"spiffe://example.org/a\"\n{alpn}"
            ))
            .unwrap();
            cfg.validate()
        };
        assert!(with("").is_ok());
        assert!(with("alpn = [\"h2\"]").is_ok());
        assert!(with(&format!("alpn = [\"{}\"]", "x".repeat(255))).is_ok());
        for bad in [
            "alpn = []".to_owned(),
            "alpn = [\"\"]".to_owned(),
            "alpn = [\"h2\", \"\"]".to_owned(),
            format!("alpn = [\"{}\"]", "x".repeat(256)),
        ] {
            let e = with(&bad).unwrap_err().to_string();
            assert!(e.contains("1 to 255 bytes"), "{bad}: {e}");
        }
    }
}
