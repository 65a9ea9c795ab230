//! SPIFFE clients we did not write, against the real agent: the official
//! Python library (`spiffe` on PyPI, on grpcio = grpc-core), whose first
//! call used to end in RST_STREAM because grpc-core sends the socket path
//! as `:authority`; and go-spiffe v2 (grpc-go). And the other side of that
//! relaxation: the CA's node API (TCP) still refuses such a request.
//!
//! The Python tests skip loudly when python3 or its `spiffe` package is
//! missing, and fail instead under `SIGNET_REQUIRE_PYTHON_SPIFFE=1` (CI);
//! the Go test likewise without `go`, failing under `SIGNET_REQUIRE_GO=1`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use signet_test_support::go::run as go;
use signet_test_support::python::{py, python, python_spiffe_available};
use signet_test_support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[test]
fn the_python_spiffe_library_fetches_svids_and_bundles_and_follows_rotation() {
    if !python_spiffe_available() {
        return;
    }
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    ca.entry(
        "spiffe://example.org/python",
        "node-1",
        &[&format!("unix:uid:{}", my_uid())],
        &["--x509-ttl", "4"],
    );
    let socket = agent.endpoint();
    let line = eventually(Duration::from_secs(10), "an SVID for Python", || {
        let out = py(&["fetch", &socket]).output().unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    assert_eq!(
        line,
        "svid=spiffe://example.org/python chain=1 key_matches=True bundles=example.org"
    );
    // Rotation arrives on the open stream (4 s SVIDs, renewed at half-life).
    assert_eq!(
        python(&mut py(&["stream", &socket, "3"])),
        "distinct=3 errors=0"
    );
    // A request without the security header: INVALID_ARGUMENT (it used to
    // be INTERNAL, from the RST_STREAM, before any handler ran).
    assert_eq!(
        python(&mut py(&["no-header", &socket])),
        "code=INVALID_ARGUMENT"
    );
}

#[test]
fn the_python_spiffe_library_sees_a_refused_caller_as_permission_denied() {
    if !python_spiffe_available() {
        return;
    }
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    // An identity exists on this node, but for another user only.
    let other = my_uid().wrapping_add(4242);
    ca.entry(
        "spiffe://example.org/someone-else",
        "node-1",
        &[&format!("unix:uid:{other}")],
        &[],
    );
    let line = python(&mut py(&["error", &agent.endpoint()]));
    assert!(line.contains("PERMISSION_DENIED"), "{line}");
}

#[test]
fn the_go_spiffe_library_fetches_x509_and_jwt_svids_and_validates_tokens() {
    let Some(client) = signet_test_support::go::go_client() else {
        return;
    };
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    // Refused before any entry exists: the library reports PermissionDenied.
    let refused = go(&client, &["error", &agent.endpoint()]);
    assert!(refused.contains("PermissionDenied"), "{refused}");
    ca.entry(
        "spiffe://example.org/go",
        "node-1",
        &[&format!("unix:uid:{}", my_uid())],
        &[],
    );
    let socket = agent.endpoint();
    let line = eventually(Duration::from_secs(10), "an SVID for Go", || {
        let out = std::process::Command::new(&client)
            .args(["fetch", &socket])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    assert_eq!(
        line,
        "svid=spiffe://example.org/go chain=1 key_matches=true authorities=1"
    );
    assert_eq!(
        go(&client, &["jwt", &socket, "svc"]),
        "jwt sub=spiffe://example.org/go validated=spiffe://example.org/go local=spiffe://example.org/go wrong_audience_refused=true"
    );
}

/// One gRPC request written as raw HTTP/2 frames with `authority` as its
/// `:authority` (what grpc-core sends on a Unix socket). Returns
/// `Ok(())` when the server answers the stream with headers, or the
/// RST_STREAM/GOAWAY error code it sent instead.
async fn raw_grpc_with_authority<S>(mut io: S, authority: &str) -> Result<(), u32>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
        // HPACK literal header field without indexing, new name, no Huffman.
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/SpiffeWorkloadAPI/FetchX509SVID"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        literal(&mut block, n, v);
    }
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    let len = block.len() as u32;
    frames.extend_from_slice(&len.to_be_bytes()[1..]);
    frames.extend_from_slice(&[1, 0x4 | 0x1, 0, 0, 0, 1]); // HEADERS, END_HEADERS|END_STREAM, stream 1
    frames.extend_from_slice(&block);
    io.write_all(&frames).await.unwrap();
    loop {
        let mut head = [0u8; 9];
        if io.read_exact(&mut head).await.is_err() {
            return Err(u32::MAX);
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let kind = head[3];
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await.unwrap();
        match (kind, stream) {
            (1, 1) => return Ok(()),
            (3, 1) => return Err(u32::from_be_bytes(payload[..4].try_into().unwrap())),
            (7, _) => return Err(u32::from_be_bytes(payload[4..8].try_into().unwrap())),
            (4, 0) if head[4] & 1 == 0 => {
                io.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap(); // SETTINGS ACK
            }
            _ => {}
        }
    }
}

const PROTOCOL_ERROR: u32 = 1;

#[tokio::test(flavor = "multi_thread")]
async fn only_the_unix_socket_accepts_a_socket_path_as_authority() {
    let ca = CaProcess::start(&[]);
    let agent = AgentProcess::start(&ca, &ca.token("node-1"), &[]);
    // The agent's Unix socket: the socket path, percent-encoded or not,
    // and an empty authority are all answered.
    let path = agent.socket.display().to_string();
    for authority in [
        path.clone(),
        path.replace('/', "%2F"),
        String::new(),
        "localhost".into(),
    ] {
        let io = tokio::net::UnixStream::connect(&agent.socket)
            .await
            .unwrap();
        assert_eq!(
            raw_grpc_with_authority(io, &authority).await,
            Ok(()),
            "agent refused :authority {authority:?}"
        );
    }
    // The CA's node API (TLS over TCP) stays strict.
    let connector =
        tokio_rustls::TlsConnector::from(anonymous_node_tls(&ca.run_ok(&["bundle", "show"])));
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(ca.node_addr())
            .await
            .unwrap();
        connector
            .connect(
                rustls::pki_types::ServerName::try_from("signet-ca").unwrap(),
                tcp,
            )
            .await
            .unwrap()
    };
    assert_eq!(
        raw_grpc_with_authority(connect().await, "%2Fvar%2Frun%2Fagent.sock").await,
        Err(PROTOCOL_ERROR),
        "the node API must refuse a malformed :authority"
    );
    // Control: the same request with a valid authority is answered there.
    assert_eq!(
        raw_grpc_with_authority(connect().await, "signet-ca").await,
        Ok(())
    );
}
