//! JWT-SVIDs end to end, with the real binaries: a token fetched from one
//! agent validated by another; every forgery refused by `ValidateJWTSVID`
//! and by `signet jwt inspect`, each for its reason; the OIDC discovery
//! document and JWKS fetched over HTTP and a token verified against them by
//! PyJWT; the Python `spiffe` library and the Rust `spiffe` crate fetching,
//! validating and checking tokens locally; and JWT key rotation with no
//! token failing validation.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Map, Value};
use signet_identity::jwt_svid::{jwt_svid_claims, JwtAlgorithm, JwtSigningKey};
use signet_identity::SpiffeId;
use signet_test_support::python::{py, python, python_spiffe_available};
use signet_test_support::*;

/// A CA with JWT settings from a config file (and OIDC on a free port).
fn ca_with(config: &str) -> (CaProcess, u16) {
    let dir = tempfile::tempdir().unwrap();
    let oidc_port = signet_test_support::free_port();
    let path = dir.path().join("ca.toml");
    std::fs::write(
        &path,
        format!(
            "{config}\n[oidc]\nlisten = \"127.0.0.1:{oidc_port}\"\nissuer = \"https://oidc.example.org\"\n"
        ),
    )
    .unwrap();
    let ca = CaProcess::start_in(dir, &["--config", path.to_str().unwrap()]);
    (ca, oidc_port)
}

/// `signet id jwt` through `agent`: the token.
fn fetch_jwt(agent: &AgentProcess, audience: &str) -> String {
    let out = signet()
        .args(["id", "jwt", "--audience", audience, "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "the token alone on stdout");
    stdout.trim().to_owned()
}

/// `signet jwt validate` through `agent`: (exit ok, stdout).
fn validate(agent: &AgentProcess, audience: &str, token: &str) -> (bool, String) {
    let out = signet()
        .args(["jwt", "validate", "--audience", audience, token, "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `signet jwt inspect --bundle FILE`: (exit ok, stdout).
fn inspect(bundle: &std::path::Path, audience: &str, token: &str) -> (bool, String) {
    let out = signet()
        .args(["jwt", "inspect", "--audience", audience, "--bundle"])
        .arg(bundle)
        .args(["--trust-domain", "example.org", token])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The CA's active JWT key, read from its data dir (what a forger who
/// stole it would have; here it signs tokens that break other rules).
fn ca_jwt_key(ca: &CaProcess, kid: &str) -> JwtSigningKey {
    let path: PathBuf = ca.dir.path().join(format!("data/keys/jwt-{kid}.pk8"));
    JwtSigningKey::from_pkcs8(JwtAlgorithm::Es256, &std::fs::read(path).unwrap()).unwrap()
}

fn header_of(token: &str) -> Map<String, Value> {
    signet_identity::jwt_svid::decode_jwt(token).unwrap().header
}

fn claims_of(token: &str) -> Map<String, Value> {
    signet_identity::jwt_svid::decode_jwt(token).unwrap().claims
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hand_made(header: Value, claims: &Map<String, Value>, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(Value::Object(claims.clone()).to_string().as_bytes()),
        b64(sig)
    )
}

#[test]
fn a_jwt_from_one_agent_validates_at_another_and_every_forgery_is_refused_for_its_reason() {
    let (ca, oidc_port) = ca_with("");
    let a = AgentProcess::start(&ca, &ca.token("node-a"), &[]);
    let b = AgentProcess::start(&ca, &ca.token("node-b"), &[]);
    let uid = format!("unix:uid:{}", my_uid());
    ca.entry(
        "spiffe://example.org/a",
        "node-a",
        &[&uid],
        &["--jwt-ttl", "2m"],
    );
    ca.entry("spiffe://example.org/b", "node-b", &[&uid], &[]);

    let token = fetch_jwt(&a, "svc-b");
    let claims = claims_of(&token);
    assert_eq!(claims["sub"], "spiffe://example.org/a");
    assert_eq!(claims["aud"], json!(["svc-b"]));
    assert_eq!(claims["iss"], "https://oidc.example.org");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        120,
        "the entry's --jwt-ttl"
    );
    let kid = header_of(&token)["kid"].as_str().unwrap().to_owned();
    // Served from the agent's cache: the same token, not a new signature.
    assert_eq!(fetch_jwt(&a, "svc-b"), token);

    // B's agent (another node) validates A's token.
    assert_eq!(
        validate(&b, "svc-b", &token),
        (true, "valid: spiffe://example.org/a\n".into())
    );
    // The offline path agrees, with the bundle as `bundle show` prints it.
    let bundle = ca.dir.path().join("bundle.json");
    std::fs::write(&bundle, ca.run_ok(&["bundle", "show", "--format", "jwks"])).unwrap();
    let jwks: Value = serde_json::from_str(&std::fs::read_to_string(&bundle).unwrap()).unwrap();
    let jwt_keys: Vec<&Value> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "jwt-svid")
        .collect();
    assert!(jwt_keys.iter().any(|k| k["kid"] == kid.as_str()));
    assert!(jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["use"] == "x509-svid"));
    let (ok, out) = inspect(&bundle, "svc-b", &token);
    assert!(ok, "{out}");
    assert!(out.ends_with("valid\n"), "{out}");

    // Forgeries, each refused by the agent and by inspect for its reason.
    let real = ca_jwt_key(&ca, &kid);
    let now = SystemTime::now();
    let a_id = SpiffeId::parse("spiffe://example.org/a").unwrap();
    let good_claims = |aud: &str| {
        jwt_svid_claims(
            &a_id,
            &[aud.to_owned()],
            now,
            now + Duration::from_secs(60),
            None,
        )
    };
    let mut forged: Vec<(&str, String, &str)> = Vec::new();
    forged.push((
        "alg none",
        hand_made(
            json!({"alg": "none", "kid": kid}),
            &good_claims("svc-b"),
            b"",
        ),
        "alg none",
    ));
    // HS256 keyed with the public key as the verifier would have it.
    let public_jwk = serde_json::to_string(jwt_keys[0]).unwrap();
    let hs = {
        let header = json!({"alg": "HS256", "kid": kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(Value::Object(good_claims("svc-b")).to_string().as_bytes())
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, public_jwk.as_bytes());
        format!(
            "{input}.{}",
            b64(ring::hmac::sign(&key, input.as_bytes()).as_ref())
        )
    };
    forged.push(("HS256 with the public key", hs, "alg HS256: symmetric"));
    let expired = jwt_svid_claims(
        &a_id,
        &["svc-b".to_owned()],
        now - Duration::from_secs(600),
        now - Duration::from_secs(300),
        None,
    );
    forged.push(("expired", real.sign(&kid, &expired).unwrap(), "expired at"));
    forged.push((
        "wrong audience",
        real.sign(&kid, &good_claims("svc-c")).unwrap(),
        "does not contain \"svc-b\"",
    ));
    let (other_key, _) = JwtSigningKey::generate_es256().unwrap();
    forged.push((
        "unknown kid",
        other_key
            .sign("no-such-kid", &good_claims("svc-b"))
            .unwrap(),
        "kid \"no-such-kid\" is not an authority of trust domain example.org",
    ));
    let foreign = jwt_svid_claims(
        &SpiffeId::parse("spiffe://evil.example/a").unwrap(),
        &["svc-b".to_owned()],
        now,
        now + Duration::from_secs(60),
        None,
    );
    forged.push((
        "foreign trust domain",
        real.sign(&kid, &foreign).unwrap(),
        "trust domain evil.example, which is not trusted",
    ));
    let mut not_id = good_claims("svc-b");
    not_id.insert("sub".into(), "admin".into());
    forged.push((
        "sub not a SPIFFE ID",
        real.sign(&kid, &not_id).unwrap(),
        "sub \"admin\" is not a SPIFFE ID",
    ));
    forged.push((
        "signature of another key",
        other_key.sign(&kid, &good_claims("svc-b")).unwrap(),
        "signature does not verify",
    ));
    for (what, token, reason) in &forged {
        let (ok, out) = validate(&b, "svc-b", token);
        assert!(!ok, "{what}: the agent accepted it");
        assert!(
            out.contains(reason),
            "{what}: agent said {out:?}, expected {reason:?}"
        );
        let (ok, out) = inspect(&bundle, "svc-b", token);
        assert!(!ok, "{what}: inspect accepted it");
        assert!(
            out.contains(reason),
            "{what}: inspect said {out:?}, expected {reason:?}"
        );
    }

    // OIDC discovery over HTTP, and an independent library verifying with it.
    let (code, doc) = http_get(oidc_port, "/.well-known/openid-configuration");
    assert_eq!(code, 200, "{doc}");
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["issuer"], "https://oidc.example.org");
    assert_eq!(doc["jwks_uri"], "https://oidc.example.org/keys");
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    let (code, keys) = http_get(oidc_port, "/keys");
    assert_eq!(code, 200);
    let keys: Value = serde_json::from_str(&keys).unwrap();
    assert!(keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["kid"] == kid.as_str() && k["use"] == "sig" && k["alg"] == "ES256"));
    if python_spiffe_available() {
        let keys_url = format!("http://127.0.0.1:{oidc_port}/keys");
        assert_eq!(
            python(&mut py(&[
                "oidc",
                &keys_url,
                "https://oidc.example.org",
                "svc-b",
                &token
            ])),
            "oidc sub=spiffe://example.org/a alg=ES256"
        );
        // And PyJWT refuses a forgery the same way.
        let out = py(&[
            "oidc",
            &keys_url,
            "https://oidc.example.org",
            "svc-b",
            &forged[7].1,
        ])
        .output()
        .unwrap();
        assert!(!out.status.success(), "PyJWT accepted a forged signature");
    }
}

#[test]
fn the_python_spiffe_library_fetches_and_validates_jwt_svids() {
    if !python_spiffe_available() {
        return;
    }
    let (ca, _) = ca_with("");
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry(
        "spiffe://example.org/python",
        "node-1",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let socket = agent.endpoint();
    let line = eventually(Duration::from_secs(10), "a JWT-SVID for Python", || {
        let out = py(&["jwt", &socket, "svc"]).output().unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    assert_eq!(
        line,
        "jwt sub=spiffe://example.org/python validated=spiffe://example.org/python local=spiffe://example.org/python keys=1"
    );
    // A wrong audience is refused by the agent, seen by the library.
    let token = fetch_jwt(&agent, "svc");
    let verdict = python(&mut py(&["validate", &socket, "other", &token]));
    assert!(
        verdict.starts_with("refused") && verdict.contains("INVALID_ARGUMENT"),
        "{verdict}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_spiffe_crate_fetches_and_validates_jwt_svids() {
    let (ca, _) = ca_with("");
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry(
        "spiffe://example.org/rust",
        "node-1",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let svid = loop {
        match client.fetch_jwt_svid(["svc", "db"], None).await {
            Ok(svid) => break svid,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/rust");
    let validated = client.validate_jwt_token("db", svid.token()).await.unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://example.org/rust"
    );
    assert!(client
        .validate_jwt_token("nope", svid.token())
        .await
        .is_err());
    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    let bundle = bundles.get(&td).unwrap();
    let kid = header_of(svid.token())["kid"].as_str().unwrap().to_owned();
    assert!(bundle.find_jwt_authority(&kid).is_some());
    // Asking for an identity this workload does not have is refused.
    let other = spiffe::SpiffeId::new("spiffe://example.org/other").unwrap();
    assert!(client.fetch_jwt_svid(["svc"], Some(&other)).await.is_err());
}

#[test]
fn jwt_keys_rotate_with_no_token_failing_validation() {
    // 12 s keys: the next is published at 6 s left and signs from 2 s left.
    let (ca, _) = ca_with("jwt_key_ttl = 12\nmax_jwt_svid_ttl = 2\ndefault_jwt_svid_ttl = 2\n");
    let a = AgentProcess::start(&ca, &ca.token("node-a"), &[]);
    let b = AgentProcess::start(&ca, &ca.token("node-b"), &[]);
    let uid = format!("unix:uid:{}", my_uid());
    ca.entry("spiffe://example.org/a", "node-a", &[&uid], &[]);
    ca.entry("spiffe://example.org/b", "node-b", &[&uid], &[]);
    let mut kids: Vec<String> = Vec::new();
    let mut checked = 0;
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        let token = fetch_jwt(&a, "svc-b");
        let kid = header_of(&token)["kid"].as_str().unwrap().to_owned();
        if kids.last() != Some(&kid) {
            kids.push(kid);
        }
        let (ok, out) = validate(&b, "svc-b", &token);
        assert!(
            ok,
            "token {checked} (kid {:?}) refused during rotation: {out}",
            kids.last()
        );
        checked += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        kids.len() >= 3,
        "only {} keys signed in 30 s: {kids:?}",
        kids.len()
    );
    eprintln!("{checked} tokens validated across {} keys", kids.len());
}

/// A CA certificate and a server certificate for 127.0.0.1 under it, as PEM
/// files: (ca.pem, server.pem, server.key).
fn oidc_tls_files(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: with rcgen's shared default, the leaf looks self-issued.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Signet test OIDC CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_ca_cert_der(ca_cert.der(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("oidc-ca.pem"),
        dir.join("oidc.pem"),
        dir.join("oidc.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// A CA with `config` and OIDC discovery over TLS on a free port, its
/// issuer `https://127.0.0.1:<port><path>`: the CA, the port, and the file
/// of the root that signed the listener's certificate.
fn ca_with_oidc_over_tls(config: &str, path: &str) -> (CaProcess, u16, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, cert, key) = oidc_tls_files(dir.path());
    let oidc_port = signet_test_support::free_port();
    let file = dir.path().join("ca.toml");
    std::fs::write(
        &file,
        format!(
            "{config}\n[oidc]\nlisten = \"127.0.0.1:{oidc_port}\"\nissuer = \"https://127.0.0.1:{oidc_port}{path}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let ca = CaProcess::start_in(dir, &["--config", file.to_str().unwrap()]);
    (ca, oidc_port, ca_pem)
}

#[test]
fn oidc_discovery_over_tls_serves_rs256_keys_that_pyjwt_verifies() {
    let (ca, oidc_port, ca_pem) = ca_with_oidc_over_tls("jwt_key_type = \"rsa-2048\"", "");
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry(
        "spiffe://example.org/rsa",
        "node-1",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let token = fetch_jwt(&agent, "svc");
    assert_eq!(header_of(&token)["alg"], "RS256");
    assert_eq!(
        claims_of(&token)["iss"],
        format!("https://127.0.0.1:{oidc_port}").as_str()
    );
    assert_eq!(
        validate(&agent, "svc", &token),
        (true, "valid: spiffe://example.org/rsa\n".into())
    );
    // Plain HTTP is not spoken on the TLS listener.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", oidc_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut s, b"GET /keys HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("\"keys\""));
    if python_spiffe_available() {
        let keys_url = format!("https://127.0.0.1:{oidc_port}/keys");
        let issuer = format!("https://127.0.0.1:{oidc_port}");
        assert_eq!(
            python(&mut py(&[
                "oidc",
                &keys_url,
                &issuer,
                "svc",
                &token,
                ca_pem.to_str().unwrap()
            ])),
            "oidc sub=spiffe://example.org/rsa alg=RS256"
        );
    }
}

/// An issuer with a path (`https://host:port/tenant-a`, as AWS and GCP
/// accept) is served under its path: PyJWT follows discovery from the
/// issuer to the JWKS it names and verifies a JWT-SVID; the root serves
/// nothing.
#[test]
fn an_issuer_with_a_path_is_served_under_it_and_pyjwt_follows_discovery() {
    let (ca, oidc_port, ca_pem) = ca_with_oidc_over_tls("", "/tenant-a");
    let issuer = format!("https://127.0.0.1:{oidc_port}/tenant-a");
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry(
        "spiffe://example.org/tenant",
        "node-1",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let token = fetch_jwt(&agent, "svc");
    assert_eq!(claims_of(&token)["iss"], issuer.as_str());
    // The root and paths outside the issuer's serve nothing.
    let status_of = |path: &str| {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import ssl,sys,urllib.request,urllib.error\n\
                 ctx=ssl.create_default_context(cafile=sys.argv[2])\n\
                 try:\n    print(urllib.request.urlopen(sys.argv[1],context=ctx,timeout=10).status)\n\
                 except urllib.error.HTTPError as e:\n    print(e.code)",
                &format!("https://127.0.0.1:{oidc_port}{path}"),
                ca_pem.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        status_of("/tenant-a/.well-known/openid-configuration"),
        "200"
    );
    assert_eq!(status_of("/tenant-a/keys"), "200");
    assert_eq!(status_of("/.well-known/openid-configuration"), "404");
    assert_eq!(status_of("/keys"), "404");
    if python_spiffe_available() {
        assert_eq!(
            python(&mut py(&[
                "discover",
                &issuer,
                "svc",
                &token,
                ca_pem.to_str().unwrap()
            ])),
            format!("discovered sub=spiffe://example.org/tenant jwks_uri={issuer}/keys")
        );
    }
}

/// `signet id jwt` for identity `id` (one of this process's).
fn fetch_jwt_as(agent: &AgentProcess, id: &str, audience: &str) -> Result<String, String> {
    let out = signet()
        .args([
            "id",
            "jwt",
            "--audience",
            audience,
            "--spiffe-id",
            id,
            "--socket",
        ])
        .arg(&agent.socket)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// One workload cannot empty the node's JWT-SVID cache for the others: an
/// identity that asks for many audiences first holds its quota and no
/// more, so another's token is cached and served while the CA is down.
#[test]
fn one_identity_cannot_crowd_the_others_out_of_the_jwt_svid_cache() {
    let mut ca = CaProcess::start(&[]);
    let cfg = ca.dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "[limits]\njwt_cache_entries = 50\njwt_cache_entries_per_identity = 20\n",
    )
    .unwrap();
    let agent = AgentProcess::start(
        &ca,
        &ca.token("node-1"),
        &["--config", cfg.to_str().unwrap()],
    );
    let uid = format!("unix:uid:{}", my_uid());
    let (victim, abuser) = ("spiffe://example.org/victim", "spiffe://example.org/abuser");
    ca.entry(victim, "node-1", &[&uid], &[]);
    ca.entry(abuser, "node-1", &[&uid], &[]);
    for i in 0..80 {
        fetch_jwt_as(&agent, abuser, &format!("aud-{i}")).unwrap();
    }
    let token = fetch_jwt_as(&agent, victim, "payments").unwrap();
    ca.kill();
    assert_eq!(
        fetch_jwt_as(&agent, victim, "payments"),
        Ok(token),
        "the victim's token, from the cache, with the CA down"
    );
    // The abuser's recent tokens are cached too; past its quota, not.
    assert!(fetch_jwt_as(&agent, abuser, "aud-79").is_ok());
    let evicted = fetch_jwt_as(&agent, abuser, "aud-0").unwrap_err();
    assert!(evicted.contains("the CA is unreachable"), "{evicted}");
}
