//! `signet proxy run`: wait for an SVID from the agent, load policy, bind
//! the listeners, log one ready line, drain gracefully on shutdown.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signet_identity::tls::Authorizer;
use signet_identity::SpiffeId;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{ConfigError, ProxyConfig};
use crate::inbound::Inbound;
use crate::metrics::Metrics;
use crate::outbound::{Outbound, Target};
use crate::policy::watch as policy_watch;
use crate::policy::{IdPattern, PolicyError};
use crate::upstream::balancer::LoadMetric;
use crate::upstream::connector::Connector;
use crate::upstream::outlier::EjectionPolicy;
use crate::upstream::{Source, Upstream};
use crate::{tls, workload_identity};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The initial policy does not load.
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error("TLS: {0}")]
    Tls(String),
}

async fn bind(addr: &str) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Listen {
            addr: addr.to_owned(),
            source,
        })
}

/// Runs the proxy until `shutdown` completes, then drains.
pub async fn run(
    config: ProxyConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ProxyError> {
    config.validate()?;
    let socket = config.socket_path()?;
    let fd_limit = signet_identity::admission::raise_fd_limit();
    tracing::debug!(fd_limit, "open-file limit");
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut identity = match (
        &config.svid_file,
        &config.svid_key_file,
        &config.bundle_file,
    ) {
        (Some(svid), Some(key), Some(bundle)) => {
            workload_identity::from_files(svid, key, bundle).map_err(ProxyError::Tls)?
        }
        _ => workload_identity::spawn(socket.clone(), stop_rx.clone()),
    };
    let admin = bind(&config.admin_listen).await?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| ProxyError::Tls(e.to_string()))?;
    tokio::spawn(crate::admin::serve(
        admin,
        metrics.clone(),
        identity.clone(),
        stopped(stop_rx.clone()),
    ));

    // Not ready, and no listener bound, until the first SVID arrives.
    tracing::info!(socket = %socket.display(), admin = %admin_addr, "waiting for an SVID from the agent");
    tokio::pin!(shutdown);
    tokio::select! {
        r = identity.wait_for(|i| i.is_some()) => { r.map_err(|_| ProxyError::Tls("identity watcher stopped".into()))?; }
        _ = &mut shutdown => { let _ = stop_tx.send(true); return Ok(()); }
    }
    let own: SpiffeId = identity
        .borrow()
        .as_ref()
        .map(|i| i.spiffe_id.clone())
        .ok_or_else(|| ProxyError::Tls("no identity".into()))?;

    // Accept loops, awaited on shutdown so that no connection is accepted
    // once draining is announced.
    let mut listeners = Vec::new();
    let mut tunnel_bound: Option<std::net::SocketAddr> = None;
    if let Some(inbound) = &config.inbound {
        let dir = config
            .policy_dir
            .clone()
            .ok_or_else(|| ConfigError::Invalid("policy_dir is required".into()))?;
        let policy = policy_watch::initial(&dir, &own, inbound.protocol)?;
        let listener = bind(&inbound.listen).await?;
        let bound_port = listener.local_addr().map_or(0, |a| a.port());
        let server = tls::server_config(
            identity.clone(),
            crate::config::alpn(&inbound.alpn, inbound.protocol, false),
        )
        .map_err(ProxyError::Tls)?;
        let open = Arc::new(crate::inbound::open_connections::OpenConnections::default());
        let app_health = crate::inbound::app_health::AppHealth::start(&inbound.forward_to);
        let tunnel_listener = match inbound.tunnel_listen() {
            crate::config::TunnelListen::Off => None,
            crate::config::TunnelListen::Explicit(addr) => Some(bind(&addr).await?),
            crate::config::TunnelListen::Default(addr) => match TcpListener::bind(&addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(tunnel_listen = %addr, error = %e, "no tunnel listener: its default port is taken (set [inbound] tunnel_listen, or \"off\")");
                    None
                }
            },
        };
        tunnel_bound = tunnel_listener.as_ref().and_then(|l| l.local_addr().ok());
        let tunnel_port = tunnel_bound.map_or(0, |a| a.port());
        let handler = Arc::new(Inbound {
            app_health: app_health.clone(),
            open: open.clone(),
            limits: config.limits.clone(),
            tls: tokio_rustls::TlsAcceptor::from(server),
            forward_to: inbound.forward_to.clone(),
            policy: policy.clone(),
            identity: identity.clone(),
            metrics: metrics.clone(),
            http: (inbound.protocol == crate::config::Protocol::Http).then(|| {
                Arc::new(crate::inbound::http::HttpForwarder::new(
                    &inbound.forward_to,
                    inbound.app_protocol,
                ))
            }),
        });
        let advertised = inbound.advertised(bound_port)?;
        if let Some(tunnel_listener) = tunnel_listener {
            let server = tls::server_config(identity.clone(), vec![b"h2".to_vec()])
                .map_err(ProxyError::Tls)?;
            // What a caller may name in its CONNECT: the app, or the
            // address it would dial without the tunnel.
            let mut targets = crate::inbound::tunnel::Targets {
                exact: vec![inbound.forward_to.clone()],
                any_host_port: None,
            };
            match advertised.host {
                Some(_) => targets.exact.push(advertised.to_string()),
                None => targets.any_host_port = Some(advertised.port),
            }
            let tunnel = Arc::new(crate::inbound::tunnel::TunnelInbound {
                inbound: handler.clone(),
                tls: tokio_rustls::TlsAcceptor::from(server),
                targets,
                stop: stop_rx.clone(),
            });
            listeners.push(tokio::spawn(tunnel.serve(tunnel_listener)));
        }
        listeners.push(tokio::spawn(handler.serve(listener, stop_rx.clone())));
        if config.svid_file.is_none() {
            let address = advertised.to_string();
            tokio::spawn(crate::inbound::registration::keep_registered(
                socket.clone(),
                crate::inbound::registration::Advertised {
                    address,
                    protocol: match inbound.protocol {
                        crate::config::Protocol::Tcp => "tcp".into(),
                        crate::config::Protocol::Http => "http".into(),
                    },
                    zone: inbound.zone.clone().unwrap_or_default(),
                    weight: inbound.weight.unwrap_or(0),
                    tunnel_port,
                },
                identity.clone(),
                app_health.subscribe(),
                stop_rx.clone(),
            ));
        }
        tokio::spawn(policy_watch::watch(
            dir,
            policy,
            identity.clone(),
            inbound.protocol,
            metrics.clone(),
            open,
            stop_rx.clone(),
        ));
    }
    for o in &config.outbound {
        let pattern = IdPattern::parse(&o.server_id)
            .map_err(|e| ConfigError::Invalid(format!("server_id {e}")))?;
        let authorize: Authorizer = Arc::new(move |id| pattern.matches(id));
        let metric = match (o.balancer, o.protocol) {
            (crate::config::BalancerKind::RoundRobin, _) => LoadMetric::RoundRobin,
            (_, crate::config::Protocol::Tcp) => LoadMetric::Connections,
            (_, crate::config::Protocol::Http) => LoadMetric::PeakEwma,
        };
        let upstream = Upstream::new(
            &o.server_id,
            EjectionPolicy::default(),
            metric,
            metrics.clone(),
        );
        upstream.set_default_tunnel_port(o.tunnel_port.unwrap_or(0));
        let tunnel_mode = match o.tunnel {
            None => crate::outbound::TunnelMode::Auto,
            Some(false) => crate::outbound::TunnelMode::Never,
            Some(true) => crate::outbound::TunnelMode::Always,
        };
        // HTTP mode pools its own HTTP/2 connections per endpoint.
        let tunnel = (o.protocol == crate::config::Protocol::Tcp
            && tunnel_mode != crate::outbound::TunnelMode::Never)
            .then(|| {
                Arc::new(crate::tunnel::pool::TunnelPool::new(
                    tls::OutboundTls::new(
                        identity.clone(),
                        authorize.clone(),
                        vec![b"h2".to_vec()],
                    ),
                    o.tunnel_streams_per_connection,
                    metrics.clone(),
                ))
            });
        match Source::of(&o.upstream, &o.server_id, socket.clone()) {
            // In place: the first connection must find them.
            Source::Static(list) => crate::upstream::apply_static(&upstream, list),
            source => {
                tokio::spawn(crate::upstream::follow(
                    source,
                    upstream.clone(),
                    stop_rx.clone(),
                ));
            }
        }
        let listener = bind(&o.listen).await?;
        let target = Arc::new(Target {
            tls: Arc::new(tls::OutboundTls::new(
                identity.clone(),
                authorize.clone(),
                crate::config::alpn(&o.alpn, o.protocol, true),
            )),
            connector: Arc::new(Connector {
                connect_timeout: o.connect_timeout(),
                handshake_timeout: o.handshake_timeout(),
                sni: rustls::pki_types::ServerName::try_from(
                    o.sni.clone().unwrap_or_else(|| "signet-peer".into()),
                )
                .map_err(|e| ConfigError::Invalid(format!("[[outbound]] sni: {e}")))?,
                authorize,
                identity: identity.clone(),
            }),
            upstream: upstream.clone(),
            server_id: o.server_id.clone(),
            limits: config.limits.clone(),
            metrics: metrics.clone(),
            tunnel_mode,
            tunnel,
        });
        let handler = Arc::new(Outbound {
            target,
            http: (o.protocol == crate::config::Protocol::Http).then(|| {
                Arc::new(crate::outbound::http::HttpState::new(
                    o.routes
                        .iter()
                        .map(|r| crate::outbound::http::RouteTimeout {
                            prefix: r.path_prefix.clone(),
                            timeout: Duration::from_millis(r.timeout_ms),
                        })
                        .collect(),
                    (o.request_timeout_ms > 0).then(|| Duration::from_millis(o.request_timeout_ms)),
                    o.max_pending_requests,
                ))
            }),
            // Default: only the user the proxy runs as.
            allowed_uids: o
                .allowed_uids
                .clone()
                .unwrap_or_else(|| vec![rustix::process::geteuid().as_raw()]),
        });
        listeners.push(tokio::spawn(handler.serve(listener, stop_rx.clone())));
    }
    metrics.listening.store(true, Ordering::Relaxed);
    tracing::info!(
        spiffe_id = %own,
        inbound = config.inbound.as_ref().map(|i| format!("{} -> {}", i.listen, i.forward_to)).unwrap_or_default(),
        tunnel = %tunnel_bound.map_or("off".to_string(), |a| a.to_string()),
        outbound = config.outbound.iter().map(|o| format!("{} -> {} ({})", o.listen, o.upstream.as_ref().map_or("discovered".to_string(), |u| u.addresses().join(" ")), o.server_id)).collect::<Vec<_>>().join(", "),
        admin = %admin_addr,
        "signet proxy ready"
    );

    shutdown.await;
    // Stop accepting; let open connections finish up to the drain timeout.
    metrics.listening.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for l in listeners {
        let _ = l.await;
    }
    let deadline = Instant::now() + Duration::from_secs(config.drain_timeout);
    let mut open = metrics.active.get();
    tracing::info!(
        open_connections = open,
        timeout_s = config.drain_timeout,
        "draining"
    );
    while open > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        open = metrics.active.get();
    }
    if open > 0 {
        tracing::warn!(
            open_connections = open,
            "drain timeout reached; closing the remaining connections"
        );
    }
    tracing::info!("signet proxy stopped");
    Ok(())
}
