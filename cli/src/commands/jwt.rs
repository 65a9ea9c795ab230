//! `signet jwt inspect|validate`: what a JWT-SVID says and, rule by rule,
//! what is wrong with it, offline against a bundle file or through the
//! agent's `ValidateJWTSVID`.

use std::io::Read;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{anyhow, Context};
use serde_json::Value;
use signet_identity::jwt_svid::{
    check_jwt_svid, decode_jwt, jwt_authorities_from_jwks, JwtAuthority,
};
use signet_identity::workload_api;
use signet_identity::{SpiffeId, TrustDomain};
use signet_proto::workload as pb;

use crate::commands::id::{client, WorkloadSocket};
use crate::output::timestamp;

/// JWT-SVID commands.
#[derive(clap::Subcommand)]
pub(crate) enum JwtCommand {
    /// Decode a JWT-SVID and check every rule offline; exit 0 only when valid.
    ///
    /// Without --bundle the signature cannot be checked, so the token is
    /// never reported valid. Each broken rule is one line.
    ///
    /// Example:
    ///   signet bundle show --format jwks > bundle.json
    ///   signet jwt inspect --bundle bundle.json --audience api "$TOKEN"
    #[command(verbatim_doc_comment)]
    Inspect {
        /// The token, or - to read it from stdin.
        token: String,
        /// JWT authorities: a SPIFFE bundle (signet bundle show --format jwks)
        /// or a plain JWKS (an OIDC provider's).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Trust domain the bundle belongs to [default: the token's sub's].
        #[arg(long)]
        trust_domain: Option<String>,
        /// Audience to require in aud [default: any].
        #[arg(long)]
        audience: Option<String>,
    },
    /// Validate a JWT-SVID through the agent (ValidateJWTSVID) for an audience.
    ///
    /// Example:
    ///   signet jwt validate --audience api "$TOKEN"
    #[command(verbatim_doc_comment)]
    Validate {
        /// The token, or - to read it from stdin.
        token: String,
        /// The audience the token must name.
        #[arg(long)]
        audience: String,
        #[command(flatten)]
        socket: WorkloadSocket,
    },
}

fn read_token(arg: &str) -> anyhow::Result<String> {
    if arg != "-" {
        return Ok(arg.trim().to_owned());
    }
    let mut s = String::new();
    std::io::stdin()
        .take(1 << 20)
        .read_to_string(&mut s)
        .context("cannot read the token from stdin")?;
    Ok(s.trim().to_owned())
}

impl JwtCommand {
    /// Runs the command.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        match self {
            JwtCommand::Inspect {
                token,
                bundle,
                trust_domain,
                audience,
            } => inspect(
                &read_token(&token)?,
                bundle,
                trust_domain,
                audience.as_deref(),
            ),
            JwtCommand::Validate {
                token,
                audience,
                socket,
            } => {
                let mut client = client(&socket).await?;
                let req = workload_api::with_security_header(pb::ValidateJwtsvidRequest {
                    audience,
                    svid: read_token(&token)?,
                });
                match client.validate_jwtsvid(req).await {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        println!("valid: {}", resp.spiffe_id);
                        Ok(())
                    }
                    Err(s) if s.code() == tonic::Code::InvalidArgument => {
                        let message = s.message();
                        let rules = message
                            .strip_prefix("invalid JWT-SVID: ")
                            .unwrap_or(message);
                        for rule in rules.split("; ") {
                            println!("broken: {rule}");
                        }
                        Err(anyhow!("the agent refused the token"))
                    }
                    Err(s) => Err(anyhow!("Workload API: {}", s.message())),
                }
            }
        }
    }
}

fn inspect(
    token: &str,
    bundle: Option<PathBuf>,
    trust_domain: Option<String>,
    audience: Option<&str>,
) -> anyhow::Result<()> {
    let decoded = decode_jwt(token).map_err(|p| anyhow!("{p}"))?;
    println!("header: {}", Value::Object(decoded.header.clone()));
    println!("claims: {}", Value::Object(decoded.claims.clone()));
    for (name, value) in [("iat", "issued"), ("exp", "expires")] {
        if let Some(t) = decoded.claims.get(name).and_then(Value::as_i64) {
            println!("{value}: {}", timestamp(t));
        }
    }
    let mut broken: Vec<String> = Vec::new();
    let authorities: Vec<JwtAuthority> = match &bundle {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            jwt_authorities_from_jwks(&text).with_context(|| format!("{}", path.display()))?
        }
        None => {
            broken.push(
                "signature not checked: give --bundle FILE (signet bundle show --format jwks)"
                    .into(),
            );
            Vec::new()
        }
    };
    // Which trust domain the bundle speaks for: given, or the token's own
    // (then a foreign token is caught by its unknown kid or signature).
    let sub_td = decoded
        .claims
        .get("sub")
        .and_then(Value::as_str)
        .and_then(|s| SpiffeId::parse(s).ok())
        .map(|id| id.trust_domain());
    let td = match trust_domain {
        Some(t) => Some(TrustDomain::new(&t).map_err(|e| anyhow!("--trust-domain {t:?}: {e}"))?),
        None => sub_td,
    };
    // No trust domain at all (no --trust-domain, no valid sub): nothing is
    // trusted, and check_jwt_svid reports the sub.
    let keys = td.map(|td| (td, authorities));
    let problems = check_jwt_svid(&decoded, &keys, audience, SystemTime::now());
    let skip_signature = bundle.is_none();
    broken.extend(
        problems
            .iter()
            // Without a bundle, "unknown kid" says nothing new.
            .filter(|p| {
                !(skip_signature
                    && matches!(p, signet_identity::jwt_svid::JwtProblem::UnknownKid { .. }))
            })
            .map(|p| p.to_string()),
    );
    if broken.is_empty() {
        println!("valid");
        return Ok(());
    }
    for b in &broken {
        println!("broken: {b}");
    }
    Err(anyhow!("the token breaks {} rule(s)", broken.len()))
}
