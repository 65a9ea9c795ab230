//! An outbound listener's upstream: where its endpoints come from — a fixed
//! list, a DNS name re-resolved, or the mesh registry through the agent —
//! and the balancer that chooses among them for each new connection.

pub(crate) mod balancer;
pub(crate) mod connector;
pub(crate) mod outlier;
pub(crate) mod peak_ewma;

/// Most endpoints one connection (TCP mode) or request (HTTP mode) tries
/// before it fails.
pub(crate) const MAX_ATTEMPTS: usize = 3;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signet_identity::workload_api;
use signet_proto::mesh as pb;
use signet_proto::mesh::mesh_client::MeshClient;
use tokio::sync::watch;

use crate::config::UpstreamConfig;
use crate::metrics::{EndpointLabels, Metrics, UpstreamLabels};
use crate::upstream::balancer::{random_pair, Balancer, Endpoint, LoadMetric, Pick};
use crate::upstream::outlier::{EjectionPolicy, Verdict};

/// How often a DNS upstream is resolved again (the system resolver does not
/// say the TTL; this bounds how stale the addresses get).
pub(crate) const DNS_REFRESH: Duration = Duration::from_secs(5);

/// Where endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// Fixed addresses (names resolved per connection).
    Static(Vec<String>),
    /// A DNS name: each address it resolves to is an endpoint.
    Dns(String),
    /// The endpoints registered for this SPIFFE ID, through the agent at
    /// this socket.
    Discovery {
        /// The Workload API socket.
        socket: PathBuf,
        /// The identity whose endpoints to follow.
        spiffe_id: String,
    },
}

impl Source {
    /// The source an outbound listener's config names.
    pub(crate) fn of(upstream: &Option<UpstreamConfig>, server_id: &str, socket: PathBuf) -> Self {
        match upstream {
            None => Self::Discovery {
                socket,
                spiffe_id: server_id.to_owned(),
            },
            Some(UpstreamConfig::Many(list)) => Self::Static(list.clone()),
            Some(UpstreamConfig::One(a)) => {
                let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
                let literal = host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[');
                if literal {
                    Self::Static(vec![a.clone()])
                } else {
                    Self::Dns(a.clone())
                }
            }
        }
    }
}

/// The endpoints of one upstream and the balancer over them.
pub(crate) struct Upstream {
    /// The upstream's name in logs and metrics (its `server_id`).
    pub name: String,
    balancer: Mutex<Balancer>,
    /// Counts endpoint-set updates (a connection that finds no endpoint
    /// waits for the first one).
    updates: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    /// The tunnel port of endpoints that advertise none (`tunnel_port` of
    /// the listener's config; 0: none).
    tunnel_port: std::sync::atomic::AtomicU16,
}

impl Upstream {
    /// An upstream with no endpoints yet.
    pub(crate) fn new(
        name: &str,
        policy: EjectionPolicy,
        metric: LoadMetric,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            balancer: Mutex::new(Balancer::new(policy, metric)),
            updates: watch::channel(0).0,
            metrics,
            tunnel_port: std::sync::atomic::AtomicU16::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Balancer> {
        self.balancer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn labels(&self) -> UpstreamLabels {
        UpstreamLabels {
            upstream: self.name.clone(),
        }
    }

    /// Sets the tunnel port of endpoints that advertise none (a static or
    /// DNS upstream's, from config).
    pub(crate) fn set_default_tunnel_port(&self, port: u16) {
        self.tunnel_port
            .store(port, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes a new endpoint set.
    pub(crate) fn set_endpoints(&self, mut endpoints: Vec<Endpoint>) {
        let n = endpoints.len();
        let default_tunnel = self.tunnel_port.load(std::sync::atomic::Ordering::Relaxed);
        for e in endpoints.iter_mut().filter(|e| e.tunnel_port == 0) {
            e.tunnel_port = default_tunnel;
        }
        let mut b = self.lock();
        b.set_endpoints(endpoints);
        let ejected = b.ejected(Instant::now());
        drop(b);
        self.updates.send_modify(|v| *v += 1);
        self.metrics
            .upstream_endpoints
            .get_or_create(&self.labels())
            .set(n as i64);
        self.metrics
            .upstream_ejected
            .get_or_create(&self.labels())
            .set(ejected as i64);
    }

    /// An endpoint for a new connection, not one of `tried`.
    pub(crate) fn pick(&self, tried: &[String]) -> Option<Pick> {
        self.lock().pick(Instant::now(), tried, random_pair())
    }

    /// Like [`Upstream::pick`], but while no endpoint has been learned yet
    /// (discovery or DNS still starting), waits up to `wait` for the first.
    pub(crate) async fn pick_or_wait(&self, tried: &[String], wait: Duration) -> Option<Pick> {
        let mut updates = self.updates.subscribe();
        if *updates.borrow_and_update() > 0 || !tried.is_empty() {
            return self.pick(tried);
        }
        let _ = tokio::time::timeout(wait, updates.changed()).await;
        self.pick(tried)
    }

    /// Records a successful connection to `address`.
    pub(crate) fn success(&self, address: &str) {
        self.lock().success(address);
        self.count(address, "success");
    }

    /// Records a failed attempt on `address` (`reason` for metrics).
    pub(crate) fn failure(&self, address: &str, reason: &str) -> Verdict {
        let now = Instant::now();
        let mut b = self.lock();
        let verdict = b.failure(address, now);
        let ejected = b.ejected(now);
        drop(b);
        self.count(address, reason);
        if let Verdict::Ejected(length) = verdict {
            self.metrics
                .ejections
                .get_or_create(&EndpointLabels {
                    upstream: self.name.clone(),
                    endpoint: address.to_owned(),
                    result: "ejected".into(),
                })
                .inc();
            tracing::warn!(upstream = %self.name, endpoint = %address, seconds = length.as_secs(), "endpoint ejected after failing");
        }
        self.metrics
            .upstream_ejected
            .get_or_create(&self.labels())
            .set(ejected as i64);
        verdict
    }

    fn count(&self, address: &str, result: &str) {
        self.metrics
            .endpoint_attempts
            .get_or_create(&EndpointLabels {
                upstream: self.name.clone(),
                endpoint: address.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }
}

/// Keeps `upstream`'s endpoints current from `source` until `stop` (a
/// static source once; [`apply_static`] does that in place).
pub(crate) async fn follow(
    source: Source,
    upstream: Arc<Upstream>,
    mut stop: watch::Receiver<bool>,
) {
    match source {
        Source::Static(list) => apply_static(&upstream, list),
        Source::Dns(name) => {
            let mut last: Option<Vec<String>> = None;
            loop {
                match tokio::net::lookup_host(&name).await {
                    Ok(addrs) => {
                        let mut found: Vec<String> = addrs.map(|a| a.to_string()).collect();
                        found.sort();
                        found.dedup();
                        if !found.is_empty() && last.as_ref() != Some(&found) {
                            tracing::info!(upstream = %upstream.name, name = %name, addresses = ?found, "upstream resolved");
                            upstream.set_endpoints(
                                found
                                    .iter()
                                    .map(|a| Endpoint {
                                        address: a.clone(),
                                        weight: signet_identity::endpoint::DEFAULT_WEIGHT,
                                        tunnel_port: 0,
                                    })
                                    .collect(),
                            );
                            last = Some(found);
                        }
                    }
                    // The last addresses stay in use.
                    Err(e) => {
                        tracing::warn!(upstream = %upstream.name, name = %name, error = %e, "cannot resolve the upstream; keeping the last addresses")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(DNS_REFRESH) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
        Source::Discovery { socket, spiffe_id } => {
            let mut backoff = Duration::from_millis(200);
            let mut last_error: Option<String> = None;
            loop {
                let r = tokio::select! {
                    r = watch_once(&socket, &spiffe_id, &upstream, &mut backoff) => r,
                    _ = stop.wait_for(|s| *s) => return,
                };
                if last_error.as_ref() != Some(&r) {
                    tracing::warn!(upstream = %upstream.name, error = %r, "endpoint discovery interrupted; keeping the last endpoints, retrying");
                    last_error = Some(r);
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Sets a fixed list of addresses as `upstream`'s endpoints.
pub(crate) fn apply_static(upstream: &Upstream, list: Vec<String>) {
    upstream.set_endpoints(
        list.into_iter()
            .map(|address| Endpoint {
                address,
                weight: signet_identity::endpoint::DEFAULT_WEIGHT,
                tunnel_port: 0,
            })
            .collect(),
    )
}

/// One watch through the agent; returns why it ended.
async fn watch_once(
    socket: &std::path::Path,
    spiffe_id: &str,
    upstream: &Upstream,
    backoff: &mut Duration,
) -> String {
    let channel = match workload_api::connect(socket).await {
        Ok(c) => c,
        Err(e) => return format!("cannot connect to the agent at {}: {e}", socket.display()),
    };
    let mut client = MeshClient::new(channel);
    let req = workload_api::with_security_header(pb::WatchRequest {
        spiffe_id: spiffe_id.to_owned(),
    });
    let mut stream = match client.watch(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => return format!("Watch: {:?}: {}", s.code(), s.message()),
    };
    loop {
        match stream.message().await {
            Ok(Some(set)) => {
                *backoff = Duration::from_millis(200);
                let endpoints: Vec<Endpoint> = set
                    .endpoints
                    .iter()
                    .map(|e| Endpoint {
                        address: e.address.clone(),
                        weight: e.weight.max(1),
                        tunnel_port: u16::try_from(e.tunnel_port).unwrap_or(0),
                    })
                    .collect();
                tracing::info!(upstream = %upstream.name, endpoints = ?endpoints.iter().map(|e| e.address.as_str()).collect::<Vec<_>>(), "endpoints updated");
                upstream.set_endpoints(endpoints);
            }
            Ok(None) => return "the agent ended the watch".into(),
            Err(s) => return format!("Watch: {:?}: {}", s.code(), s.message()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_source() {
        let sock = PathBuf::from("/run/a.sock");
        assert_eq!(
            Source::of(&None, "spiffe://td/web", sock.clone()),
            Source::Discovery {
                socket: sock.clone(),
                spiffe_id: "spiffe://td/web".into()
            }
        );
        assert_eq!(
            Source::of(
                &Some(UpstreamConfig::One("10.0.0.1:80".into())),
                "x",
                sock.clone()
            ),
            Source::Static(vec!["10.0.0.1:80".into()])
        );
        assert_eq!(
            Source::of(
                &Some(UpstreamConfig::One("[::1]:80".into())),
                "x",
                sock.clone()
            ),
            Source::Static(vec!["[::1]:80".into()])
        );
        assert_eq!(
            Source::of(
                &Some(UpstreamConfig::One("web.svc:80".into())),
                "x",
                sock.clone()
            ),
            Source::Dns("web.svc:80".into())
        );
        assert_eq!(
            Source::of(
                &Some(UpstreamConfig::Many(vec!["a:1".into(), "b:2".into()])),
                "x",
                sock
            ),
            Source::Static(vec!["a:1".into(), "b:2".into()])
        );
    }
}
