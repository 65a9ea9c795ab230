//! `signet dev`: a complete, throwaway Signet on one machine with no
//! configuration, in the spirit of `vault server -dev`.
//!
//! Today it runs the CA on embedded defaults (SQLite in a fresh directory)
//! and an agent attested with a join token it creates, registers an identity
//! for the calling user, and prints where everything lives and what to try
//! next. Every daemon runs as a child
//! process; Ctrl-C stops them all and removes the directory unless --keep.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use signet_proto::admin as pb;

use crate::admin_client::{AdminSocket, ResponseExt};

/// Flags of `signet dev`.
#[derive(clap::Args)]
pub struct DevArgs {
    /// Keep the directory (keys, database, logs) after Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// Use this directory instead of a fresh temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Trust domain of the dev CA.
    #[arg(long, default_value = "example.org")]
    trust_domain: String,
}

/// A child daemon that is sent SIGTERM when dropped.
struct ChildDaemon {
    name: &'static str,
    child: Child,
}

impl ChildDaemon {
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            eprintln!("  {} stopped", self.name);
            return;
        }
        if let Ok(None) = self.child.try_wait() {
            let pid = rustix::process::Pid::from_child(&self.child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    eprintln!("  stopped {}", self.name);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("  killed {} (did not stop within 10s)", self.name);
        }
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_logged(name: &'static str, args: &[&str], log: &Path) -> anyhow::Result<ChildDaemon> {
    let exe = std::env::current_exe().context("cannot find the signet binary")?;
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(ChildDaemon { name, child })
}

/// Runs the dev environment until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let (dir, temp) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("signet-dev-").tempdir()?;
            (t.path().to_owned(), Some(t))
        }
    };
    let result = run_in(&args, &dir).await;
    match temp {
        Some(t) if args.keep => {
            let kept = t.keep();
            eprintln!("kept {}", kept.display());
        }
        Some(t) => {
            let path = t.path().to_owned();
            t.close()
                .with_context(|| format!("cannot remove {}", path.display()))?;
            eprintln!("removed {}", path.display());
        }
        None => {}
    }
    result
}

async fn run_in(args: &DevArgs, dir: &Path) -> anyhow::Result<()> {
    let admin_socket = dir.join("admin.sock");
    let ca_log = dir.join("ca.log");
    let metrics_port = free_port()?;
    let node_port = free_port()?;
    eprintln!("starting the CA (log: {})", ca_log.display());
    let mut ca = spawn_logged(
        "CA",
        &[
            "ca",
            "serve",
            "--trust-domain",
            &args.trust_domain,
            "--data-dir",
            &dir.join("ca").to_string_lossy(),
            "--admin-socket",
            &admin_socket.to_string_lossy(),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--listen",
            &format!("127.0.0.1:{node_port}"),
        ],
        &ca_log,
    )?;
    let admin = AdminSocket {
        path: admin_socket.clone(),
    };
    let mut client = wait_for_ca(&admin, &mut ca, &ca_log).await?;

    let token = client
        .create_join_token(pb::CreateJoinTokenRequest {
            ttl_seconds: 600,
            node_name: "dev-node".into(),
        })
        .await
        .into_result()?;
    let bundle = client
        .get_bundle(pb::GetBundleRequest {})
        .await
        .into_result()?;
    let bundle_path = dir.join("bundle.pem");
    let certs: Vec<_> = bundle
        .x509_authorities
        .into_iter()
        .map(signet_identity::CertificateDer::from)
        .collect();
    std::fs::write(&bundle_path, signet_identity::certificates_to_pem(&certs))
        .with_context(|| format!("cannot write {}", bundle_path.display()))?;

    let agent_socket = dir.join("agent.sock");
    let agent_log = dir.join("agent.log");
    eprintln!("starting the agent (log: {})", agent_log.display());
    let mut agent = spawn_logged(
        "agent",
        &[
            "agent",
            "run",
            "--trust-domain",
            &args.trust_domain,
            "--ca",
            &format!("127.0.0.1:{node_port}"),
            "--trust-bundle",
            &bundle_path.to_string_lossy(),
            "--join-token",
            &token.token,
            "--data-dir",
            &dir.join("agent").to_string_lossy(),
            "--socket",
            &agent_socket.to_string_lossy(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &agent_log,
    )?;
    wait_for_socket(&agent_socket, &mut agent, &agent_log, "agent").await?;

    let uid = rustix::process::getuid().as_raw();
    let me = format!("spiffe://{}/dev/uid-{uid}", args.trust_domain);
    client
        .create_entry(pb::CreateEntryRequest {
            spec: Some(pb::EntrySpec {
                spiffe_id: me.clone(),
                parent_id: token.agent_id.clone(),
                selectors: vec![format!("unix:uid:{uid}")],
                ..Default::default()
            }),
        })
        .await
        .into_result()?;

    println!();
    println!("Signet dev environment is ready.");
    println!();
    println!("  trust domain     {}", args.trust_domain);
    println!("  directory        {}", dir.display());
    println!("  CA admin socket  {}", admin_socket.display());
    println!("  CA node API      127.0.0.1:{node_port}");
    println!("  CA metrics       http://127.0.0.1:{metrics_port}/metrics  (/ready, /live)");
    println!("  CA log           {}", ca_log.display());
    println!(
        "  agent            {} (log: {})",
        token.agent_id,
        agent_log.display()
    );
    println!("  Workload API     unix://{}", agent_socket.display());
    println!("  your identity    {me} (entry for unix:uid:{uid})");
    println!();
    println!("Try:");
    println!("  export SIGNET_ADMIN_SOCKET={}", admin_socket.display());
    println!(
        "  export SPIFFE_ENDPOINT_SOCKET=unix://{}",
        agent_socket.display()
    );
    println!("  signet id show");
    println!("  signet entry list");
    println!("  signet agent list");
    println!("  signet bundle show --format jwks");
    println!();
    println!(
        "Press Ctrl-C to stop{}.",
        if args.keep {
            ""
        } else {
            " and remove the directory"
        }
    );

    tokio::select! {
        _ = super::shutdown_signal() => {}
        _ = child_exit(&mut ca) => {
            let tail = std::fs::read_to_string(&ca_log).unwrap_or_default();
            return Err(anyhow!("the CA exited unexpectedly; its log ends with: {}", last_line(&tail)));
        }
        _ = child_exit(&mut agent) => {
            let tail = std::fs::read_to_string(&agent_log).unwrap_or_default();
            return Err(anyhow!("the agent exited unexpectedly; its log ends with: {}", last_line(&tail)));
        }
    }
    eprintln!("\nstopping");
    agent.stop();
    ca.stop();
    Ok(())
}

async fn wait_for_socket(
    path: &Path,
    child: &mut ChildDaemon,
    log: &Path,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    eprintln!("waiting for the {what} to open {} ...", path.display());
    loop {
        if let Ok(Some(status)) = child.child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(anyhow!(
                "the {what} exited ({status}): {}",
                last_line(&text)
            ));
        }
        if path.exists() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "the {what} did not open {} within 60s; see {}",
                path.display(),
                log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_ca(
    admin: &AdminSocket,
    ca: &mut ChildDaemon,
    log: &Path,
) -> anyhow::Result<signet_proto::admin::admin_client::AdminClient<tonic::transport::Channel>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut said = false;
    loop {
        if let Ok(Some(status)) = ca.child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(anyhow!("the CA exited ({status}): {}", last_line(&text)));
        }
        if admin.path.exists() {
            if let Ok(c) = admin.connect().await {
                return Ok(c);
            }
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "the CA did not open {} within 60s; see {}",
                admin.path.display(),
                log.display()
            ));
        }
        if !said {
            eprintln!(
                "waiting for the CA admin socket {} ...",
                admin.path.display()
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn child_exit(ca: &mut ChildDaemon) {
    loop {
        if let Ok(Some(_)) = ca.child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn last_line(text: &str) -> String {
    text.lines().last().unwrap_or("(empty log)").to_owned()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
