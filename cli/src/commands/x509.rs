//! `signet x509 inspect`: offline look at an SVID.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{anyhow, Context};
use serde::Serialize;
use signet_identity::{
    certificates_from_pem_or_der, inspect_chain, verify_x509_svid, CertSummary, CertificateDer,
    TrustBundle,
};

use crate::admin_client::read_file;
use crate::duration::human;
use crate::output::{self, seconds_until, Format};

/// X.509 commands.
#[derive(clap::Subcommand)]
pub(crate) enum X509Command {
    /// Describe an X.509-SVID (PEM or DER, leaf first) and list the X.509-SVID
    /// rules it breaks. Exits non-zero when it breaks any, or when --bundle is
    /// given and the chain does not verify.
    ///
    /// Example:
    ///   signet x509 inspect svid.pem --bundle bundle.pem
    #[command(verbatim_doc_comment)]
    Inspect {
        /// Certificate file: PEM (one or more CERTIFICATE blocks) or DER (one
        /// certificate or a chain back to back, leaf first), read whole.
        file: PathBuf,
        /// Also verify the chain against this bundle (PEM or DER).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Serialize)]
struct Report {
    spiffe_id: Option<String>,
    chain: Vec<CertSummary>,
    violations: usize,
    verified: Option<Result<String, String>>,
}

impl X509Command {
    /// Runs the command.
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let X509Command::Inspect {
            file,
            bundle,
            output,
        } = self;
        // The whole file: a DER file may hold a chain, and trailing bytes
        // are an error.
        let chain: Vec<CertificateDer<'static>> = certificates_from_pem_or_der(&read_file(&file)?)
            .with_context(|| format!("{}", file.display()))?;
        let now = SystemTime::now();
        let summaries = inspect_chain(&chain, now);
        let spiffe_id = summaries
            .first()
            .and_then(|s| (s.uris.len() == 1).then(|| s.uris[0].clone()));
        let verified = match &bundle {
            None => None,
            Some(path) => {
                let roots = certificates_from_pem_or_der(&read_file(path)?)
                    .with_context(|| format!("{}", path.display()))?;
                let td = spiffe_id
                    .as_deref()
                    .and_then(|id| signet_identity::SpiffeId::parse(id).ok())
                    .map(|id| id.trust_domain())
                    .ok_or_else(|| {
                        anyhow!("the leaf has no valid SPIFFE ID, so it cannot be verified")
                    })?;
                let b =
                    TrustBundle::new(td, roots).with_context(|| format!("{}", path.display()))?;
                Some(
                    verify_x509_svid(&chain, &b, now)
                        .map(|v| v.spiffe_id.to_string())
                        .map_err(|e| e.to_string()),
                )
            }
        };
        let report = Report {
            violations: summaries.iter().map(|s| s.violations.len()).sum(),
            spiffe_id,
            chain: summaries,
            verified,
        };
        match output {
            Format::Json => output::json(&report)?,
            Format::Table => print_report(&report),
        }
        if report.violations > 0 {
            return Err(anyhow!(
                "{} breaks {} X.509-SVID rule(s)",
                file.display(),
                report.violations
            ));
        }
        if let Some(Err(e)) = &report.verified {
            return Err(anyhow!(
                "{} does not verify against the bundle: {e}",
                file.display()
            ));
        }
        Ok(())
    }
}

fn print_report(r: &Report) {
    println!("SPIFFE ID: {}", r.spiffe_id.as_deref().unwrap_or("(none)"));
    for (i, c) in r.chain.iter().enumerate() {
        let role = if i == 0 { "leaf" } else { "signing" };
        println!();
        println!("[{i}] {role}");
        println!("    subject:   {}", c.subject);
        println!(
            "    issuer:    {}{}",
            c.issuer,
            if c.self_issued { " (self-issued)" } else { "" }
        );
        println!("    serial:    {}", c.serial);
        let left = seconds_until(c.not_after_unix);
        let status = if left < 0 {
            format!("expired {} ago", human(-left))
        } else {
            format!("expires in {}", human(left))
        };
        println!(
            "    validity:  {} → {} ({status})",
            c.not_before, c.not_after
        );
        println!("    key:       {}", c.key_type);
        for u in &c.uris {
            println!("    URI SAN:   {u}");
        }
        for d in &c.dns_names {
            println!("    DNS SAN:   {d}");
        }
        println!("    CA:        {}", c.is_ca);
        if c.violations.is_empty() {
            println!("    rules:     ok");
        }
        for v in &c.violations {
            println!("    BREAKS:    {v}");
        }
    }
    match &r.verified {
        Some(Ok(id)) => println!("\nverified against bundle: yes ({id})"),
        Some(Err(e)) => println!("\nverified against bundle: NO ({e})"),
        None => {}
    }
}
