//! Node attestation by proof with the real binaries: node certificates made
//! with `openssl` as an operator would, a CA configured to trust their
//! root, agents that attest with them (or are refused, each with its
//! reason), and a rogue node on its own TLS connection replaying an answer.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use signet_proto::node as pb;
use signet_test_support::*;

/// Runs `openssl` in `dir`; panics with its stderr.
fn openssl(dir: &Path, args: &[&str]) {
    run_tool(dir, "openssl", "openssl", args);
}

/// A node PKI made with openssl: a root, and node certificates it issues.
struct Pki {
    dir: PathBuf,
}

/// How a node's key is stored.
#[derive(Clone, Copy)]
enum KeyKind {
    /// EC P-256, PKCS#8 (`openssl genpkey`).
    EcPkcs8,
    /// EC P-256, SEC1 "EC PRIVATE KEY" (`openssl ecparam -genkey`).
    EcSec1,
    /// RSA 2048, PKCS#1 "RSA PRIVATE KEY" (`openssl genrsa -traditional`).
    RsaPkcs1,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "root.key",
                "-out",
                "root.pem",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Pki { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root.pem")
    }

    fn key(&self, node: &str, kind: KeyKind) -> PathBuf {
        let key = format!("{node}.key");
        match kind {
            KeyKind::EcPkcs8 => openssl(
                &self.dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    &key,
                ],
            ),
            KeyKind::EcSec1 => openssl(
                &self.dir,
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    &key,
                ],
            ),
            KeyKind::RsaPkcs1 => {
                openssl(&self.dir, &["genrsa", "-traditional", "-out", &key, "2048"])
            }
        }
        self.dir.join(key)
    }

    /// A certificate for `node` (CN and DNS SAN) with extended key usage
    /// `eku`; `expired` dates it 2020–2021. Returns (cert, key).
    fn node(&self, node: &str, kind: KeyKind, eku: &str, expired: bool) -> (PathBuf, PathBuf) {
        let key = self.key(node, kind);
        let csr = format!("{node}.csr");
        let cert = format!("{node}.pem");
        let ext = format!("{node}.ext");
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-key",
                key.to_str().unwrap(),
                "-subj",
                &format!("/CN={node}"),
                "-out",
                &csr,
            ],
        );
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={eku}\nsubjectAltName=DNS:{node}.prod.example.com\n"
            ),
        )
        .unwrap();
        if expired {
            // `openssl x509` cannot backdate; `openssl ca` can.
            std::fs::write(self.dir.join("index.txt"), "").unwrap();
            std::fs::write(self.dir.join("serial"), "1000\n").unwrap();
            std::fs::write(
                self.dir.join("ca.cnf"),
                format!(
                    "[ca]\ndefault_ca = d\n[d]\ndatabase = {0}/index.txt\nnew_certs_dir = {0}\nserial = {0}/serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n",
                    self.dir.display()
                ),
            )
            .unwrap();
            openssl(
                &self.dir,
                &[
                    "ca",
                    "-batch",
                    "-config",
                    "ca.cnf",
                    "-cert",
                    "root.pem",
                    "-keyfile",
                    "root.key",
                    "-in",
                    &csr,
                    "-out",
                    &cert,
                    "-startdate",
                    "20200101000000Z",
                    "-enddate",
                    "20210101000000Z",
                    "-extfile",
                    &ext,
                    "-notext",
                ],
            );
        } else {
            openssl(
                &self.dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "root.pem",
                    "-CAkey",
                    "root.key",
                    "-CAcreateserial",
                    "-days",
                    "1",
                    "-extfile",
                    &ext,
                    "-out",
                    &cert,
                ],
            );
        }
        (self.dir.join(cert), key)
    }
}

/// The SHA-1 of a certificate's DER, as `openssl x509 -fingerprint` says it.
fn sha1_fingerprint(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase()
}

/// A CA started with `config` as its `--config` file.
fn ca_with(config: &str) -> CaProcess {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.toml");
    std::fs::write(&path, config).unwrap();
    CaProcess::start_in(dir, &["--config", path.to_str().unwrap()])
}

/// The `[node_attestation.x509pop]` section trusting `pki`'s root.
fn x509pop_section(pki: &Pki) -> String {
    format!(
        "[node_attestation.x509pop]\nca_bundle = \"{}\"\n",
        pki.root().display()
    )
}

/// A CA trusting `pki`'s root for x509pop nodes.
fn ca_trusting(pki: &Pki) -> CaProcess {
    ca_with(&x509pop_section(pki))
}

/// [`ca_trusting`] with more top-level configuration `extra`.
fn ca_trusting_with(pki: &Pki, extra: &str) -> CaProcess {
    ca_with(&format!("{extra}{}", x509pop_section(pki)))
}

/// The workload's SVID through the spiffe crate, within 20 s.
async fn workload_svid(agent: &AgentProcess) -> spiffe::X509Svid {
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.fetch_x509_svid().await {
            Ok(svid) => return svid,
            Err(e) if Instant::now() > deadline => panic!("no SVID within 20 s: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until the agent SVID stored in `dir` has been expired for a while.
fn until_the_stored_agent_svid_expired(dir: &Path) {
    let td = signet_identity::TrustDomain::new("example.org").unwrap();
    let (svid, _) = signet_agent::agent_identity::load(&dir.join("data"), &td)
        .unwrap()
        .unwrap();
    let expired = std::time::UNIX_EPOCH + Duration::from_secs(svid.not_after as u64 + 2);
    while std::time::SystemTime::now() < expired {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Agent SVIDs live 4 s here. An x509pop agent stopped until its SVID
/// expired comes back by itself with the same ID, and so does one that
/// kept running while the CA was down for longer than that; its workloads
/// get SVIDs again. Once banned, it does not come back.
#[tokio::test(flavor = "multi_thread")]
async fn an_x509pop_agent_whose_svid_expired_attests_again_by_itself_unless_banned() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::new(work.path(), "Node Root");
    let mut ca = ca_trusting_with(&pki, "default_x509_svid_ttl = 4\n");
    let (cert, key) = pki.node("web-17", KeyKind::EcPkcs8, "clientAuth", false);
    let agent_path = format!("x509pop/{}", sha1_fingerprint(&cert));
    let agent_id = format!("spiffe://example.org/signet/agent/{agent_path}");
    let workload = "spiffe://example.org/web-17/app";
    ca.entry(
        workload,
        &agent_path,
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let args = x509pop_args(&cert, &key);
    let mut agent = AgentProcess::start_attested_by(&ca, &args, &[]);
    assert_eq!(
        workload_svid(&agent).await.spiffe_id().to_string(),
        workload
    );

    // Stopped until its SVID expired, then started again.
    agent.daemon.terminate();
    until_the_stored_agent_svid_expired(agent.dir.path());
    agent.daemon = Daemon::spawn(AgentProcess::command_in(agent.dir.path(), &ca, &args, &[]));
    let ready = agent
        .daemon
        .wait_for("signet agent ready", Duration::from_secs(30));
    assert!(ready.contains(&agent_id), "{ready}");
    assert!(!agent
        .daemon
        .lines_with(&["stored agent SVID has expired"])
        .is_empty());
    assert_eq!(
        workload_svid(&agent).await.spiffe_id().to_string(),
        workload
    );

    // Running while the CA is away for longer than its SVID lives.
    let config = ca.dir.path().join("ca.toml");
    ca.kill_and_restart(
        &["--config", config.to_str().unwrap()],
        Duration::from_secs(6),
    );
    agent
        .daemon
        .wait_for("the node attested again by itself", Duration::from_secs(60));
    let svid = workload_svid(&agent).await;
    assert_eq!(svid.spiffe_id().to_string(), workload);
    let agents = ca.run_ok(&["agent", "list", "--output", "json"]);
    assert_eq!(
        agents.matches("spiffe://example.org/signet/agent/").count(),
        1,
        "one agent ID: {agents}"
    );

    // Banned: it does not come back, by any stored or new proof.
    ca.run_ok(&["agent", "ban", &agent_id]);
    agent.daemon.terminate();
    until_the_stored_agent_svid_expired(agent.dir.path());
    let (_dir, mut cmd, _) = AgentProcess::command_attested_by(&ca, &args, &[]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is banned"), "{err}");
}

fn x509pop_args<'a>(cert: &'a Path, key: &'a Path) -> Vec<&'a str> {
    vec![
        "--node-attestation",
        "x509pop",
        "--x509pop-cert",
        cert.to_str().unwrap(),
        "--x509pop-key",
        key.to_str().unwrap(),
    ]
}

/// Runs an agent that must be refused: its exit status and stderr.
fn refused_agent(ca: &CaProcess, attestation: &[&str]) -> String {
    let (_dir, mut cmd, _) = AgentProcess::command_attested_by(ca, attestation, &[]);
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(!status.success(), "a refused agent exits non-zero: {err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent neither attested nor gave up within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_an_openssl_certificate_attests_and_serves_its_workloads() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::new(work.path(), "Node Root");
    let ca = ca_trusting(&pki);
    for (node, kind) in [
        ("web-17", KeyKind::EcPkcs8),
        ("web-18", KeyKind::RsaPkcs1),
        ("web-19", KeyKind::EcSec1),
    ] {
        let (cert, key) = pki.node(node, kind, "clientAuth", false);
        let agent_path = format!("x509pop/{}", sha1_fingerprint(&cert));
        let workload = format!("spiffe://example.org/{node}/app");
        ca.entry(
            &workload,
            &agent_path,
            &[&format!("unix:uid:{}", my_uid())],
            &[],
        );
        let agent = AgentProcess::start_attested_by(&ca, &x509pop_args(&cert, &key), &[]);
        assert!(
            agent.daemon.lines_with(&["node attested", "x509pop"]).len() == 1,
            "{:?}",
            agent.daemon.log
        );
        let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
            .await
            .unwrap();
        let svid = eventually(Duration::from_secs(20), "the workload's SVID", || {
            futures_lite_block_on(client.fetch_x509_svid()).ok()
        });
        assert_eq!(svid.spiffe_id().to_string(), workload);
        let agents: serde_json::Value =
            serde_json::from_str(&ca.run_ok(&["agent", "list", "--output", "json"])).unwrap();
        let me = agents
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["spiffe_id"] == format!("spiffe://example.org/signet/agent/{agent_path}"))
            .unwrap_or_else(|| panic!("{agents}"));
        assert_eq!(me["attestation_type"], "x509pop");
        let selectors: Vec<&str> = me["node_selectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert!(
            selectors.contains(&format!("x509pop:san:dns:{node}.prod.example.com").as_str()),
            "{selectors:?}"
        );
        assert!(
            selectors.contains(&format!("x509pop:subject:cn:{node}").as_str()),
            "{selectors:?}"
        );
        assert!(
            selectors.contains(
                &format!("x509pop:ca:fingerprint:{}", sha1_fingerprint(&pki.root())).as_str()
            ),
            "{selectors:?}"
        );
    }
}

/// Blocks on a future from a sync closure inside a multi-threaded runtime.
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[test]
fn nodes_that_prove_nothing_are_refused_each_with_its_reason() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::new(work.path(), "Node Root");
    let other = Pki::new(work.path(), "Other Root");
    let ca = ca_trusting(&pki);

    let (cert, key) = other.node("stranger", KeyKind::EcPkcs8, "clientAuth", false);
    let e = refused_agent(&ca, &x509pop_args(&cert, &key));
    assert!(
        e.contains("does not chain to a CA trusted for nodes"),
        "{e}"
    );

    let (cert, key) = pki.node("old", KeyKind::EcPkcs8, "clientAuth", true);
    let e = refused_agent(&ca, &x509pop_args(&cert, &key));
    assert!(e.contains("has expired"), "{e}");

    let (cert, key) = pki.node("server", KeyKind::EcPkcs8, "serverAuth", false);
    let e = refused_agent(&ca, &x509pop_args(&cert, &key));
    assert!(e.contains("does not allow client authentication"), "{e}");

    // The certificate of one node with the key of another.
    let (cert, _) = pki.node("web-1", KeyKind::EcPkcs8, "clientAuth", false);
    let (_, other_key) = pki.node("web-2", KeyKind::EcPkcs8, "clientAuth", false);
    let e = refused_agent(&ca, &x509pop_args(&cert, &other_key));
    assert!(
        e.contains("not a signature over this stream's challenge"),
        "{e}"
    );

    // A CA without x509pop configured says how to turn it on.
    let plain = CaProcess::start(&[]);
    let (cert, key) = pki.node("web-3", KeyKind::EcPkcs8, "clientAuth", false);
    let e = refused_agent(&plain, &x509pop_args(&cert, &key));
    assert!(e.contains("[node_attestation.x509pop]"), "{e}");
    let e = plain.run_err(&["agent", "show", "spiffe://example.org/signet/agent/nobody"]);
    assert!(e.contains("is not on record"), "{e}");

    let metrics = ca.http_get("/metrics").1;
    for reason in [
        "x509pop_untrusted",
        "x509pop_expired",
        "x509pop_wrong_eku",
        "x509pop_bad_signature",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason}: {metrics}"
        );
    }
}

/// An `AttestNode` stream opened with `start` on a connection of its own,
/// once the CA has sent its challenge.
async fn challenged(
    ca: &CaProcess,
    start: pb::AttestNodeRequest,
) -> (
    tokio::sync::mpsc::Sender<pb::AttestNodeRequest>,
    tonic::Streaming<pb::AttestNodeResponse>,
    pb::Challenge,
) {
    let mut client = anonymous_node_client(ca).await;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(start).await.unwrap();
    let mut responses = client
        .attest_node(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    match responses.message().await.unwrap().unwrap().step {
        Some(pb::attest_node_response::Step::Challenge(c)) => (tx, responses, c),
        other => panic!("no challenge: {other:?}"),
    }
}

/// A rogue node records a good answer on one stream and replays it on
/// another: the nonce is per stream, so the CA refuses it.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_replayed_on_another_stream_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::new(work.path(), "Node Root");
    let ca = ca_trusting(&pki);
    let (cert, key) = pki.node("web-17", KeyKind::EcPkcs8, "clientAuth", false);
    let chain =
        signet_identity::certificates_from_pem_or_der(&std::fs::read(&cert).unwrap()).unwrap();
    let key_der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap()
    };
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .unwrap()
        .choose_scheme(signet_identity::node_attestation::X509POP_SCHEMES)
        .unwrap();
    let agent_key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&agent_key)
        .unwrap()
        .der()
        .to_vec();
    let start = || pb::AttestNodeRequest {
        step: Some(pb::attest_node_request::Step::Start(pb::AttestationStart {
            csr: csr.clone(),
            evidence: Some(pb::attestation_start::Evidence::X509pop(
                pb::X509PopEvidence {
                    cert_chain: chain.iter().map(|c| c.to_vec()).collect(),
                },
            )),
        })),
    };
    // Stream 1: the challenge, answered honestly but never sent.
    let (tx1, _s1, c1) = challenged(&ca, start()).await;
    let msg = signet_identity::node_attestation::challenge_message("x509pop", &c1.nonce, &csr);
    let recorded = pb::ChallengeResponse {
        signature: signer.sign(&msg).unwrap(),
        scheme: u16::from(signer.scheme()) as u32,
    };
    drop(tx1);
    // Stream 2: the recorded answer.
    let (tx2, mut s2, c2) = challenged(&ca, start()).await;
    assert_ne!(c1.nonce, c2.nonce);
    tx2.send(pb::AttestNodeRequest {
        step: Some(pb::attest_node_request::Step::ChallengeResponse(recorded)),
    })
    .await
    .unwrap();
    let refused = s2.message().await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().contains("replayed"),
        "{}",
        refused.message()
    );
}

/// A node that takes the challenge and never answers holds the stream for
/// the step's 10 s, no longer; one that answers in time is attested (the
/// other tests).
#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_does_not_answer_its_challenge_is_cut_off() {
    let work = tempfile::tempdir().unwrap();
    let pki = Pki::new(work.path(), "Node Root");
    let ca = ca_trusting(&pki);
    let (cert, _) = pki.node("web-17", KeyKind::EcPkcs8, "clientAuth", false);
    let chain =
        signet_identity::certificates_from_pem_or_der(&std::fs::read(&cert).unwrap()).unwrap();
    let csr = signet_agent::agent_identity::new_key_and_csr().unwrap().1;
    let start = pb::AttestNodeRequest {
        step: Some(pb::attest_node_request::Step::Start(pb::AttestationStart {
            csr,
            evidence: Some(pb::attestation_start::Evidence::X509pop(
                pb::X509PopEvidence {
                    cert_chain: chain.iter().map(|c| c.to_vec()).collect(),
                },
            )),
        })),
    };
    let (tx, mut s, _) = challenged(&ca, start).await;
    let start = Instant::now();
    let status = s.message().await.unwrap_err();
    let waited = start.elapsed();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("did not come within 10s"),
        "{status:?}"
    );
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    drop(tx);
}

/// Runs `ssh-keygen` in `dir`; panics with its stderr.
fn ssh_keygen(dir: &Path, args: &[&str]) {
    run_tool(dir, "ssh-keygen", "openssh-client", args);
}

/// An SSH certificate authority made with ssh-keygen, and host keys it
/// certifies as an operator would (`ssh-keygen -s ca -h`).
struct SshCa {
    dir: PathBuf,
}

impl SshCa {
    fn new(dir: &Path, name: &str) -> SshCa {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        ssh_keygen(
            &dir,
            &["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", "ca"],
        );
        SshCa { dir }
    }

    /// The CA's public key line.
    fn public_key(&self) -> String {
        std::fs::read_to_string(self.dir.join("ca.pub"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A host key of `kind` (`ed25519`, `ecdsa`, `rsa`) and its
    /// certificate, signed with `sign` (extra ssh-keygen -s arguments).
    /// Returns (certificate, key).
    fn host(&self, name: &str, kind: &str, sign: &[&str]) -> (PathBuf, PathBuf) {
        let key = format!("{name}_ssh_host_{kind}_key");
        ssh_keygen(&self.dir, &["-q", "-t", kind, "-N", "", "-f", &key]);
        let mut args = vec!["-q", "-s", "ca", "-I", name];
        args.extend_from_slice(sign);
        let public = format!("{key}.pub");
        args.push(&public);
        ssh_keygen(&self.dir, &args);
        (self.dir.join(format!("{key}-cert.pub")), self.dir.join(key))
    }
}

/// The agent ID an sshpop node gets: the SHA-256 of its host key, hex
/// (ssh-keygen says it in base64).
fn sshpop_agent_path(key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(format!("{}.pub", key.display()))
        .output()
        .unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let b64 = line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .strip_prefix("SHA256:")
        .unwrap()
        .to_owned();
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(b64)
        .unwrap();
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("sshpop/{hex}")
}

/// The `[node_attestation.sshpop]` section trusting `ssh_ca`.
fn sshpop_section(ssh_ca: &SshCa) -> String {
    format!(
        "[node_attestation.sshpop]\ncert_authorities = [\"{}\"]\n",
        ssh_ca.public_key()
    )
}

/// A CA trusting `ssh_ca` for sshpop nodes.
fn ca_trusting_ssh(ssh_ca: &SshCa) -> CaProcess {
    ca_with(&sshpop_section(ssh_ca))
}

fn sshpop_args<'a>(cert: &'a Path, key: &'a Path) -> Vec<&'a str> {
    vec![
        "--node-attestation",
        "sshpop",
        "--sshpop-cert",
        cert.to_str().unwrap(),
        "--sshpop-key",
        key.to_str().unwrap(),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_an_ssh_host_certificate_attests_and_serves_its_workloads() {
    let work = tempfile::tempdir().unwrap();
    let ssh_ca = SshCa::new(work.path(), "ssh-ca");
    let ca = ca_trusting_ssh(&ssh_ca);
    for (node, kind) in [
        ("web-17", "ed25519"),
        ("web-18", "ecdsa"),
        ("web-19", "rsa"),
    ] {
        let principal = format!("{node}.prod.example.com");
        let (cert, key) = ssh_ca.host(node, kind, &["-h", "-n", &principal, "-V", "-5m:+1h"]);
        let agent_path = sshpop_agent_path(&key);
        let workload = format!("spiffe://example.org/{node}/app");
        ca.entry(
            &workload,
            &agent_path,
            &[&format!("unix:uid:{}", my_uid())],
            &[],
        );
        let agent = AgentProcess::start_attested_by(&ca, &sshpop_args(&cert, &key), &[]);
        assert_eq!(
            workload_svid(&agent).await.spiffe_id().to_string(),
            workload
        );
        let agents: serde_json::Value =
            serde_json::from_str(&ca.run_ok(&["agent", "list", "--output", "json"])).unwrap();
        let me = agents
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["spiffe_id"] == format!("spiffe://example.org/signet/agent/{agent_path}"))
            .unwrap_or_else(|| panic!("{agents}"));
        assert_eq!(me["attestation_type"], "sshpop");
        let selectors = me["node_selectors"].to_string();
        assert!(
            selectors.contains(&format!("sshpop:principal:{principal}")),
            "{selectors}"
        );
        assert!(selectors.contains("sshpop:ca:fingerprint:"), "{selectors}");
    }
}

#[test]
fn ssh_certificates_that_prove_nothing_are_refused_each_with_its_reason() {
    let work = tempfile::tempdir().unwrap();
    let ssh_ca = SshCa::new(work.path(), "ssh-ca");
    let other = SshCa::new(work.path(), "other-ca");
    let ca = ca_trusting_ssh(&ssh_ca);
    let p = ["-n", "web.prod.example.com"];

    let (cert, key) = ssh_ca.host("user", "ed25519", &p); // no -h: a user certificate
    let e = refused_agent(&ca, &sshpop_args(&cert, &key));
    assert!(e.contains("is a user certificate"), "{e}");

    let (cert, key) = ssh_ca.host("anyone", "ed25519", &["-h"]); // no -n
    let e = refused_agent(&ca, &sshpop_args(&cert, &key));
    assert!(e.contains("names no principal"), "{e}");

    let (cert, key) = ssh_ca.host(
        "old",
        "ed25519",
        &["-h", "-n", "old.example.com", "-V", "20200101:20210101"],
    );
    let e = refused_agent(&ca, &sshpop_args(&cert, &key));
    assert!(e.contains("has expired"), "{e}");

    let (cert, key) = other.host("stranger", "ed25519", &["-h", "-n", "s.example.com"]);
    let e = refused_agent(&ca, &sshpop_args(&cert, &key));
    assert!(
        e.contains("not a certificate authority trusted for nodes"),
        "{e}"
    );

    let metrics = ca.http_get("/metrics").1;
    for reason in [
        "sshpop_not_host",
        "sshpop_no_principal",
        "sshpop_expired",
        "sshpop_untrusted",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason}: {metrics}"
        );
    }
}

/// Agent SVIDs live 4 s here: an sshpop agent left running while the CA is
/// down for longer than that attests again by itself, with the same ID,
/// and its workloads get SVIDs again.
#[tokio::test(flavor = "multi_thread")]
async fn an_sshpop_agent_whose_svid_expired_attests_again_by_itself() {
    let work = tempfile::tempdir().unwrap();
    let ssh_ca = SshCa::new(work.path(), "ssh-ca");
    let mut ca = ca_with(&format!(
        "default_x509_svid_ttl = 4\n{}",
        sshpop_section(&ssh_ca)
    ));
    let (cert, key) = ssh_ca.host(
        "web-17",
        "ed25519",
        &["-h", "-n", "web-17.prod.example.com"],
    );
    let agent_path = sshpop_agent_path(&key);
    let workload = "spiffe://example.org/web-17/app";
    ca.entry(
        workload,
        &agent_path,
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let mut agent = AgentProcess::start_attested_by(&ca, &sshpop_args(&cert, &key), &[]);
    assert_eq!(
        workload_svid(&agent).await.spiffe_id().to_string(),
        workload
    );
    let config = ca.dir.path().join("ca.toml");
    ca.kill_and_restart(
        &["--config", config.to_str().unwrap()],
        Duration::from_secs(6),
    );
    agent
        .daemon
        .wait_for("the node attested again by itself", Duration::from_secs(60));
    assert_eq!(
        workload_svid(&agent).await.spiffe_id().to_string(),
        workload
    );
    let agents = ca.run_ok(&["agent", "list", "--output", "json"]);
    assert_eq!(
        agents.matches("spiffe://example.org/signet/agent/").count(),
        1,
        "{agents}"
    );
    assert!(agents.contains(&agent_path), "{agents}");
}
