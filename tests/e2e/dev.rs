//! `signet dev` as a new user runs it: start it, wait for the ready text,
//! run the printed next steps, check the allowed and denied calls, edit the
//! policy, Ctrl-C, and check every child is gone and the directory removed.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

use signet_test_support::*;

fn value_after<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{text}"))
}

fn curl_port(text: &str, who: &str) -> u16 {
    let line = text
        .lines()
        .find(|l| l.contains("curl http://") && l.contains(who))
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    url.trim_start_matches("http://127.0.0.1:")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

fn get(port: u16) -> u16 {
    signet_test_support::http::request(port, "GET", "x", "/", "", Duration::from_secs(10)).status
}

fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[test]
fn signet_dev_runs_the_demo_and_cleans_up_after_ctrl_c() {
    let mut child = signet()
        .arg("dev")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut text = String::new();
    let mut reader = BufReader::new(stdout);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !text.contains("Press Ctrl-C") {
        assert!(
            Instant::now() < deadline,
            "signet dev did not become ready:\n{text}"
        );
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("signet dev exited early:\n{text}\n{err}");
        }
        text.push_str(&line);
    }
    assert!(text.contains("Signet dev environment is ready."), "{text}");
    let dir = value_after(&text, "directory").to_owned();
    let admin = value_after(&text, "CA admin socket").to_owned();
    let api = value_after(&text, "Workload API").to_owned();
    let policy_dir = value_after(&text, "policy dir").to_owned();
    assert!(
        value_after(&text, "allowed call").contains("HTTP 200"),
        "{text}"
    );
    assert!(
        value_after(&text, "denied call").contains("HTTP 403"),
        "{text}"
    );

    // `signet` is not on PATH here: the next steps say how to run it.
    assert!(
        text.contains(&format!("alias signet={}", signet_bin().display())),
        "{text}"
    );

    // The printed next steps work.
    let entries = signet()
        .args(["entry", "list"])
        .env("SIGNET_ADMIN_SOCKET", &admin)
        .output()
        .unwrap();
    let entries = String::from_utf8_lossy(&entries.stdout).into_owned();
    assert!(
        entries.contains("spiffe://example.org/demo/payments"),
        "{entries}"
    );
    let me = signet()
        .args(["id", "show"])
        .env("SPIFFE_ENDPOINT_SOCKET", &api)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&me.stdout).contains("spiffe://example.org/dev/you"),
        "{}",
        String::from_utf8_lossy(&me.stderr)
    );
    let eval = signet()
        .args([
            "policy",
            "eval",
            "--policy",
            &policy_dir,
            "--from",
            "spiffe://example.org/demo/web",
            "--to",
            "spiffe://example.org/demo/payments",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&eval.stdout).starts_with("DENY by deny"),
        "{}",
        String::from_utf8_lossy(&eval.stdout)
    );
    let (checkout, web) = (curl_port(&text, "as checkout"), curl_port(&text, "as web"));
    assert_eq!(get(checkout), 200);
    assert_eq!(get(web), 403);

    // Editing the printed policy file visibly changes what the demo allows.
    std::fs::write(
        std::path::Path::new(&policy_dir).join("payments.toml"),
        "[[allow]]\nto = \"spiffe://example.org/demo/payments\"\nfrom = [\"spiffe://example.org/demo/checkout\", \"spiffe://example.org/demo/web\"]\n",
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "web to be allowed after the policy edit",
        || (get(web) == 200).then_some(()),
    );

    // Ctrl-C: everything stops and the directory goes away.
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "signet dev did not exit after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        !std::path::Path::new(&dir).exists(),
        "{dir} was not removed"
    );
    let left = processes_mentioning(&dir);
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
