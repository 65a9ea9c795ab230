//! gRPC clients of the agent's Workload API and the CA's node and admin
//! APIs, as tests need them.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::agent::AgentProcess;
use crate::ca::CaProcess;

/// A Workload API client on the agent's Unix socket.
pub async fn workload_api_client(
    socket: &Path,
) -> signet_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
    tonic::transport::Channel,
> {
    let channel = signet_identity::workload_api::connect(socket)
        .await
        .unwrap();
    signet_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel)
}

#[allow(unused_imports)]
pub use signet_identity::workload_api::with_security_header;

/// TLS for talking to the CA's node API as anyone on the network can:
/// the CA authenticated against its bundle, no client certificate, h2.
pub fn anonymous_node_tls(bundle_pem: &str) -> std::sync::Arc<rustls::ClientConfig> {
    let bundle = signet_identity::TrustBundle::from_pem(
        signet_identity::TrustDomain::new("example.org").unwrap(),
        bundle_pem,
    )
    .unwrap();
    let verifier = signet_identity::tls::SpiffeServerVerifier::new(
        signet_identity::tls::BundleHandle::new(bundle),
        std::sync::Arc::new(|_: &signet_identity::SpiffeId| true),
    );
    let mut config = rustls::ClientConfig::builder_with_provider(signet_identity::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    std::sync::Arc::new(config)
}

/// A node API client to `ca_addr` authenticated as `agent`, with the SVID
/// and bundle it keeps in its data dir.
pub async fn node_client_as(
    agent: &AgentProcess,
    ca_addr: &str,
) -> signet_proto::node::node_client::NodeClient<tonic::transport::Channel> {
    node_client_in(&agent.dir.path().join("data"), ca_addr).await
}

/// A node API client to `ca_addr` authenticated with the agent SVID kept
/// in agent data dir `data_dir`.
pub async fn node_client_in(
    data_dir: &Path,
    ca_addr: &str,
) -> signet_proto::node::node_client::NodeClient<tonic::transport::Channel> {
    let td = signet_identity::TrustDomain::new("example.org").unwrap();
    let (svid, bundle) = signet_agent::agent_identity::load(data_dir, &td)
        .unwrap()
        .unwrap();
    let trust = signet_agent::node_client::ServerTrust::Bundle(
        signet_identity::tls::BundleHandle::new(bundle),
    );
    signet_agent::node_client::connect(&[ca_addr.to_owned()], &td, &trust, Some(&svid.cert))
        .await
        .unwrap()
}

/// Attests a new agent for node `node` over the node API, without an agent
/// process (a simulated agent), and returns a client authenticated by its
/// SVID.
pub async fn attested_node_client(
    ca: &CaProcess,
    node: &str,
) -> signet_proto::node::node_client::NodeClient<tonic::transport::Channel> {
    let td = signet_identity::TrustDomain::new("example.org").unwrap();
    let bundle =
        signet_identity::TrustBundle::from_pem(td.clone(), &ca.run_ok(&["bundle", "show"]))
            .unwrap();
    let trust = signet_agent::node_client::ServerTrust::Bundle(
        signet_identity::tls::BundleHandle::new(bundle),
    );
    let addr = [ca.node_addr()];
    let mut anonymous = signet_agent::node_client::connect(&addr, &td, &trust, None)
        .await
        .unwrap();
    let (key, csr) = signet_agent::agent_identity::new_key_and_csr().unwrap();
    let resp = anonymous
        .attest_agent(signet_proto::node::AttestAgentRequest {
            join_token: ca.token(node),
            csr,
        })
        .await
        .unwrap()
        .into_inner();
    let (svid, _) =
        signet_agent::agent_identity::from_response(&resp, &key, std::time::SystemTime::now())
            .unwrap();
    signet_agent::node_client::connect(&addr, &td, &trust, Some(&svid.cert))
        .await
        .unwrap()
}

/// An admin API client on the CA's socket (for tests that make many calls).
pub async fn admin_client(
    ca: &CaProcess,
) -> signet_proto::admin::admin_client::AdminClient<tonic::transport::Channel> {
    let channel = signet_identity::unix_grpc::channel(&ca.admin_socket)
        .await
        .unwrap();
    signet_proto::admin::admin_client::AdminClient::new(channel)
}

/// The workload's `FetchX509SVID` stream on `agent`, once a message has
/// exactly `n` SVIDs (retried for 30 s: the agent may not have them yet),
/// and that message.
pub async fn svid_stream(
    agent: &AgentProcess,
    n: usize,
) -> (
    tonic::Streaming<signet_proto::workload::X509svidResponse>,
    signet_proto::workload::X509svidResponse,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "{n} SVIDs within 30 s");
        let mut client = workload_api_client(&agent.socket).await;
        if let Ok(s) = client
            .fetch_x509svid(with_security_header(
                signet_proto::workload::X509svidRequest {},
            ))
            .await
        {
            let mut s = s.into_inner();
            if let Ok(Some(m)) = s.message().await {
                if m.svids.len() == n {
                    return (s, m);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node API client without a client certificate (what any node can
/// open before it is attested), trusting `ca`'s bundle.
pub async fn anonymous_node_client(
    ca: &CaProcess,
) -> signet_proto::node::node_client::NodeClient<tonic::transport::Channel> {
    let bundle = std::fs::read_to_string(ca.bundle_file()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(anonymous_node_tls(&bundle));
    let target = ca.node_addr();
    let channel = tonic::transport::Endpoint::from_static("http://signet-ca")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            let target = target.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(target).await?;
                let name = rustls::pki_types::ServerName::try_from("signet-ca").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    signet_proto::node::node_client::NodeClient::new(channel)
}
