//! `signet dev`: a complete, throwaway Signet on one machine with no
//! configuration, in the spirit of `vault server -dev`.
//!
//! It runs the CA on embedded defaults (SQLite in a fresh directory), an
//! agent attested with a join token it creates, and a demo: a payments
//! service behind a Signet proxy, called by checkout (allowed) and web
//! (denied) through their own proxies, under a policy file the user can
//! edit. It makes one allowed and one denied call and prints what happened,
//! where everything lives and what to try next. Every daemon runs as a child
//! process; Ctrl-C stops them all and removes the directory unless --keep.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use signet_proto::admin as pb;

use crate::admin_client::{AdminSocket, ResponseExt};

/// Flags of `signet dev`.
#[derive(clap::Args)]
pub(crate) struct DevArgs {
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
    stopped: bool,
}

impl ChildDaemon {
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        if let Ok(None) = self.child.try_wait() {
            let pid = rustix::process::Pid::from_child(&self.child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                eprintln!("  killed {} (did not stop within 10s)", self.name);
                return;
            }
        }
        eprintln!("  stopped {}", self.name);
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_logged(name: &'static str, args: &[&str], log: &Path) -> anyhow::Result<ChildDaemon> {
    let exe = std::env::current_exe().context("cannot find the signet binary")?;
    spawn_binary(name, &exe, args, log)
}

fn spawn_binary(
    name: &'static str,
    exe: &Path,
    args: &[&str],
    log: &Path,
) -> anyhow::Result<ChildDaemon> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(ChildDaemon {
        name,
        child,
        stopped: false,
    })
}

/// Runs the dev environment until Ctrl-C.
pub(crate) async fn run(args: DevArgs) -> anyhow::Result<()> {
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
    let td = &args.trust_domain;
    let me = format!("spiffe://{td}/dev/you");
    let exe = std::fs::canonicalize(std::env::current_exe()?)?;
    // Who is who on this one host: the same uid, told apart by binary path.
    let bin = dir.join("bin");
    let mut demo = Vec::new();
    for name in ["payments", "checkout", "web"] {
        let path = super::dev_demo::binary_named(&bin, &format!("{name}-proxy"))?;
        demo.push((name, format!("spiffe://{td}/demo/{name}"), path));
    }
    let mut register = vec![(me.clone(), exe.clone())];
    register.extend(demo.iter().map(|(_, id, path)| (id.clone(), path.clone())));
    for (id, path) in &register {
        client
            .create_entry(pb::CreateEntryRequest {
                spec: Some(pb::EntrySpec {
                    spiffe_id: id.clone(),
                    parent_id: token.agent_id.clone(),
                    selectors: vec![
                        format!("unix:uid:{uid}"),
                        format!("unix:path:{}", path.display()),
                    ],
                    ..Default::default()
                }),
            })
            .await
            .into_result()?;
    }

    // The payments service (in this process) behind an HTTP inbound proxy;
    // checkout and web call it through their own outbound proxies.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app_port = app.local_addr()?.port();
    tokio::spawn(super::dev_demo::serve_demo_app(app));
    let policy_dir = dir.join("policies");
    std::fs::create_dir_all(&policy_dir)?;
    let policy_file = policy_dir.join("payments.toml");
    std::fs::write(
        &policy_file,
        format!(
            "# Who may call payments. Edit me: changes apply within a second.\n\n\
             [[allow]]\nto = \"spiffe://{td}/demo/payments\"\nfrom = [\"spiffe://{td}/demo/checkout\"]\n\n\
             [[deny]]\nto = \"spiffe://{td}/demo/payments\"\nfrom = [\"spiffe://{td}/demo/web\"]\n"
        ),
    )?;
    let payments_port = free_port()?;
    let socket_url = format!("unix://{}", agent_socket.display());
    let mut proxies = Vec::new();
    let mut ports = Vec::new();
    for (name, _, path) in &demo {
        let config = dir.join(format!("{name}-proxy.toml"));
        let body = if *name == "payments" {
            format!(
                "workload_api_socket = \"{socket_url}\"\npolicy_dir = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\ndrain_timeout = 2\n\
                 [inbound]\nlisten = \"127.0.0.1:{payments_port}\"\nforward_to = \"127.0.0.1:{app_port}\"\nprotocol = \"http\"\n",
                policy_dir.display()
            )
        } else {
            let port = free_port()?;
            ports.push((*name, port));
            format!(
                "workload_api_socket = \"{socket_url}\"\nadmin_listen = \"127.0.0.1:0\"\ndrain_timeout = 2\n\
                 [[outbound]]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{payments_port}\"\nserver_id = \"spiffe://{td}/demo/payments\"\n"
            )
        };
        std::fs::write(&config, body)?;
        let log = dir.join(format!("{name}-proxy.log"));
        eprintln!("starting the {name} proxy (log: {})", log.display());
        let mut child = spawn_binary(
            if *name == "payments" {
                "payments proxy"
            } else if *name == "checkout" {
                "checkout proxy"
            } else {
                "web proxy"
            },
            path,
            &["proxy", "run", "--config", &config.to_string_lossy()],
            &log,
        )?;
        wait_for_log(&log, "signet proxy ready", &mut child, name).await?;
        proxies.push(child);
    }
    let port_of = |n: &str| {
        ports
            .iter()
            .find(|(x, _)| *x == n)
            .map(|(_, p)| *p)
            .unwrap_or(0)
    };
    let (checkout_port, web_port) = (port_of("checkout"), port_of("web"));
    let allowed = super::dev_demo::get(checkout_port).await?;
    let denied = super::dev_demo::get(web_port).await?;

    println!();
    // Handlers in place before the user is told Ctrl-C works.
    let shutdown = super::shutdown_signal();
    println!("Signet dev environment is ready.");
    println!();
    println!("  trust domain     {td}");
    println!("  directory        {}", dir.display());
    println!("  CA admin socket  {}", admin_socket.display());
    println!("  CA node API      127.0.0.1:{node_port}   metrics http://127.0.0.1:{metrics_port}/metrics");
    println!("  agent            {}", token.agent_id);
    println!("  Workload API     {socket_url}");
    println!("  policy dir       {}", policy_dir.display());
    println!("  logs             {}/*.log", dir.display());
    println!();
    println!("Demo: payments (spiffe://{td}/demo/payments) behind a Signet proxy on 127.0.0.1:{payments_port};");
    println!("checkout and web call it through their own Signet proxies.");
    println!(
        "  allowed call     checkout -> payments: HTTP {} \"{}\"",
        allowed.0, allowed.1
    );
    println!(
        "  denied call      web -> payments: HTTP {} \"{}\"",
        denied.0, denied.1
    );
    println!();
    println!("Try:");
    if let Some(exe) = signet_not_on_path() {
        // `cargo run -p signet-cli -- dev` leaves `signet` off PATH.
        println!(
            "  alias signet={}   # or: cargo install --path cli",
            exe.display()
        );
    }
    println!("  export SIGNET_ADMIN_SOCKET={}", admin_socket.display());
    println!("  export SPIFFE_ENDPOINT_SOCKET={socket_url}");
    println!("  signet id show                      # your identity: {me}");
    println!("  signet entry list");
    println!("  signet agent list");
    println!("  curl http://127.0.0.1:{checkout_port}/         # as checkout: allowed");
    println!("  curl http://127.0.0.1:{web_port}/         # as web: denied (403)");
    println!("  signet policy eval --policy {} --from spiffe://{td}/demo/web --to spiffe://{td}/demo/payments", policy_dir.display());
    println!(
        "  # edit {} to allow web, then curl again",
        policy_file.display()
    );
    println!();
    println!(
        "Press Ctrl-C to stop{}.",
        if args.keep {
            ""
        } else {
            " and remove the directory"
        }
    );

    let mut children: Vec<&mut ChildDaemon> = vec![&mut ca, &mut agent];
    children.extend(proxies.iter_mut());
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        name = any_child_exit(&mut children) => Err(anyhow!("the {name} exited unexpectedly; see the logs in {}", dir.display())),
    };
    eprintln!("\nstopping");
    for p in proxies.iter_mut() {
        p.stop();
    }
    agent.stop();
    ca.stop();
    result
}

/// Completes with the name of the first child that exits.
async fn any_child_exit(children: &mut [&mut ChildDaemon]) -> &'static str {
    loop {
        for c in children.iter_mut() {
            if let Ok(Some(_)) = c.child.try_wait() {
                return c.name;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `log` contains `needle`, or the child exits.
async fn wait_for_log(
    log: &Path,
    needle: &str,
    child: &mut ChildDaemon,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.child.try_wait() {
            return Err(anyhow!(
                "the {what} proxy exited ({status}): {}",
                last_line(&text)
            ));
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "the {what} proxy is not ready after 60s; see {}",
                log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

fn last_line(text: &str) -> String {
    text.lines().last().unwrap_or("(empty log)").to_owned()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// This binary's path when `signet` on PATH is not this binary (or there is
/// none), so the printed next steps can say how to run it.
fn signet_not_on_path() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let me = exe.canonicalize().unwrap_or_else(|_| exe.clone());
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join("signet"))
        .find(|candidate| candidate.is_file());
    match found.and_then(|f| f.canonicalize().ok()) {
        Some(on_path) if on_path == me => None,
        _ => Some(exe),
    }
}
