//! The shipped examples stay valid: each config parses with its daemon's own
//! loader, and the policy directory loads.
#![allow(clippy::unwrap_used)]

use std::path::Path;

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

#[test]
fn example_configs_and_policies_are_valid() {
    signet_ca::CaConfig::from_file(&example("ca.toml"))
        .unwrap()
        .validate()
        .unwrap();
    signet_agent::config::AgentConfig::from_file(&example("agent.toml"))
        .unwrap()
        .validate()
        .unwrap();
    signet_proxy::ProxyConfig::from_file(&example("proxy.toml")).unwrap();
    let policy = signet_proxy::policy::load_dir(&example("policies")).unwrap();
    assert_eq!(policy.rules.len(), 4);
}
