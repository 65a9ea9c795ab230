//! Signing for a workload: X.509-SVIDs from an agent's CSR, JWT-SVIDs.

use crate::keys::authority::AuthorityError;
use crate::keys::issuance::{sign_for_entry, sign_x509_svid, CheckedCsr, IssuedSvid};
use crate::registry::entry::EntrySpec;
use signet_identity::jwt_svid::jwt_svid_claims;
use signet_identity::x509_svid::unix_seconds;
use signet_identity::SpiffeId;
use std::time::Duration;

use super::{Ca, CaError, MintedJwt};

impl Ca {
    /// Signs a JWT-SVID for `spiffe_id` and `audience`, from the clock's
    /// now, living `ttl_secs` (0: the configured default) but never past
    /// the signing key.
    pub fn mint_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl_secs: u64,
    ) -> Result<MintedJwt, CaError> {
        let now = self.clock.now();
        let signer = self.jwt_signer();
        let ttl = if ttl_secs == 0 {
            self.config.default_jwt_svid_ttl
        } else {
            ttl_secs
        };
        let expires = (now + Duration::from_secs(ttl)).min(signer.not_after);
        if expires <= now {
            return Err(CaError::Authority(AuthorityError::Inconsistent(
                "the JWT signing key has expired; rotation is behind".into(),
            )));
        }
        let claims = jwt_svid_claims(spiffe_id, audience, now, expires, self.config.jwt_issuer());
        let token = signer
            .key()
            .sign(&signer.kid, &claims)
            .map_err(|e| CaError::Authority(AuthorityError::Inconsistent(e.to_string())))?;
        self.metrics.jwt_svids_issued.inc();
        Ok(MintedJwt {
            token,
            issued_at: unix_seconds(now),
            expires_at: unix_seconds(expires),
        })
    }

    /// Signs the node API's own server SVID (`spiffe_id` is the CA's
    /// server path) with the active key, living the default TTL.
    pub(crate) fn sign_server_svid(
        &self,
        spiffe_id: &SpiffeId,
        csr: &CheckedCsr,
    ) -> Result<IssuedSvid, CaError> {
        Ok(sign_x509_svid(
            &self.authority(),
            csr,
            spiffe_id,
            &[],
            self.config.default_ttl(),
            self.clock.now(),
        )?)
    }

    /// Signs the SVID an entry describes from a CSR.
    pub fn sign_for_entry(&self, csr_der: &[u8], entry: &EntrySpec) -> Result<IssuedSvid, CaError> {
        let result = sign_for_entry(
            &self.authority(),
            csr_der,
            entry,
            self.config.default_ttl(),
            self.clock.now(),
        );
        match &result {
            Ok(_) => {
                self.metrics.svids_issued.inc();
            }
            Err(e) => self.metrics.issuance_failed(e),
        }
        Ok(result?)
    }
}
