//! The pieces of `signet dev`'s demo: a tiny HTTP service, per-identity
//! binary names (so one agent tells the demo proxies apart by
//! `unix:path`), and a plain HTTP GET for the demo calls.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves "hello from payments" with the caller identity its sidecar
/// vouched for, until the process ends.
pub(super) async fn serve_demo_app(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&head);
            let caller = text
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("x-signet-peer-id")
                        .then(|| v.trim().to_owned())
                })
                .unwrap_or_else(|| "(no verified caller)".into());
            let body = format!("hello from payments; your verified identity is {caller}\n");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        });
    }
}

/// A name for the running `signet` binary under `bin_dir` (hard link, or a
/// copy across file systems), so the agent can tell processes apart by path.
pub(super) fn binary_named(bin_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the signet binary")?;
    std::fs::create_dir_all(bin_dir)
        .with_context(|| format!("cannot create {}", bin_dir.display()))?;
    let target = bin_dir.join(name);
    if std::fs::hard_link(&exe, &target).is_err() {
        std::fs::copy(&exe, &target)
            .with_context(|| format!("cannot copy the signet binary to {}", target.display()))?;
    }
    Ok(std::fs::canonicalize(&target)?)
}

/// `GET /` on 127.0.0.1:`port`: (status code, body).
pub(super) async fn get(port: u16) -> anyhow::Result<(u16, String)> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n")
            .await?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&resp).into_owned())
    };
    let resp = tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .context("the demo call timed out")??;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default();
    Ok((code, body))
}
