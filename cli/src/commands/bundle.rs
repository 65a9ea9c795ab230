//! `signet bundle show`.

use anyhow::Context;
use signet_identity::jwt_svid::JwtAuthority;
use signet_identity::{CertificateDer, TrustBundle, TrustDomain};
use signet_proto::admin as pb;

use crate::admin_client::{AdminSocket, ResponseExt};

/// Bundle formats.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum BundleFormat {
    /// PEM certificates (for openssl, curl, most TLS stacks).
    Pem,
    /// SPIFFE bundle: a JWK set (X.509 authorities with use x509-svid, JWT
    /// authorities with use jwt-svid and kid) with spiffe_sequence and
    /// spiffe_refresh_hint.
    Jwks,
}

/// Bundle commands.
#[derive(clap::Subcommand)]
pub(crate) enum BundleCommand {
    /// Print the trust domain's authorities: X.509 (pem), or X.509 and JWT
    /// with their kid (jwks, the SPIFFE bundle format).
    ///
    /// Example:
    ///   signet bundle show --format pem > bundle.pem
    #[command(verbatim_doc_comment)]
    Show {
        /// Output format.
        #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
        format: BundleFormat,
        #[command(flatten)]
        admin: AdminSocket,
    },
}

impl BundleCommand {
    /// Runs the command.
    pub(crate) async fn run(self) -> anyhow::Result<()> {
        let BundleCommand::Show { format, admin } = self;
        let b = admin
            .connect()
            .await?
            .get_bundle(pb::GetBundleRequest {})
            .await
            .into_result()?;
        let td =
            TrustDomain::new(&b.trust_domain).context("the CA sent an invalid trust domain")?;
        let mut bundle = TrustBundle::new(
            td,
            b.x509_authorities
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
        )
        .context("the CA sent an invalid bundle")?
        .with_jwt_authorities(
            b.jwt_authorities
                .iter()
                .map(|a| JwtAuthority::from_spki_der(&a.kid, &a.public_key))
                .collect::<Result<_, _>>()
                .context("the CA sent an invalid JWT authority")?,
        );
        bundle.sequence = b.sequence;
        bundle.refresh_hint_secs =
            (b.refresh_hint_seconds > 0).then_some(b.refresh_hint_seconds as u64);
        match format {
            BundleFormat::Pem => print!("{}", bundle.to_pem()),
            BundleFormat::Jwks => println!("{}", bundle.to_jwks()?),
        }
        Ok(())
    }
}
