//! Signing JWT-SVIDs: what the CA (and tests forging tokens) sign with, and
//! the claims Signet puts in the tokens it issues.

use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature;
use serde_json::{Map, Value};

use super::authority::{bit_string, der, der_oid, spki_der_ec};
use super::JwtAlgorithm;
use crate::spiffe_id::SpiffeId;
use crate::x509_svid::unix_seconds;

/// A private key that signs JWT-SVIDs: the CA's, or a test's.
pub enum JwtSigningKey {
    /// ECDSA P-256 (ES256).
    Es256(signature::EcdsaKeyPair),
    /// RSA (RS256).
    Rs256(signature::RsaKeyPair),
}

/// Why a JWT signing key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("JWT signing key: {0}")]
pub struct JwtSignError(String);

impl JwtSigningKey {
    /// Reads a PKCS#8 (DER) private key of the given algorithm.
    pub fn from_pkcs8(alg: JwtAlgorithm, pkcs8: &[u8]) -> Result<Self, JwtSignError> {
        match alg {
            JwtAlgorithm::Es256 => signature::EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                pkcs8,
                &ring::rand::SystemRandom::new(),
            )
            .map(Self::Es256)
            .map_err(|e| JwtSignError(e.to_string())),
            JwtAlgorithm::Rs256 => signature::RsaKeyPair::from_pkcs8(pkcs8)
                .map(Self::Rs256)
                .map_err(|e| JwtSignError(e.to_string())),
            other => Err(JwtSignError(format!(
                "signing with {} is not supported",
                other.name()
            ))),
        }
    }

    /// Makes a new ES256 key; returns it and its PKCS#8 DER (to be stored).
    pub fn generate_es256() -> Result<(Self, Vec<u8>), JwtSignError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .map_err(|e| JwtSignError(e.to_string()))?;
        let key = Self::from_pkcs8(JwtAlgorithm::Es256, pkcs8.as_ref())?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// Makes a new RSA key (RS256) of `bits` bits; returns it and its
    /// PKCS#8 DER. Slow (hundreds of milliseconds): done once per rotation.
    pub fn generate_rs256(bits: usize) -> Result<(Self, Vec<u8>), JwtSignError> {
        use rsa::pkcs8::EncodePrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)
            .map_err(|e| JwtSignError(e.to_string()))?;
        let pkcs8 = key
            .to_pkcs8_der()
            .map_err(|e| JwtSignError(e.to_string()))?
            .as_bytes()
            .to_vec();
        Ok((Self::from_pkcs8(JwtAlgorithm::Rs256, &pkcs8)?, pkcs8))
    }

    /// The algorithm of the tokens this key signs.
    pub fn algorithm(&self) -> JwtAlgorithm {
        match self {
            Self::Es256(_) => JwtAlgorithm::Es256,
            Self::Rs256(_) => JwtAlgorithm::Rs256,
        }
    }

    /// The public half as SubjectPublicKeyInfo DER.
    pub fn public_spki_der(&self) -> Vec<u8> {
        use ring::signature::KeyPair;
        match self {
            Self::Es256(k) => spki_der_ec(&[1, 2, 840, 10045, 3, 1, 7], k.public_key().as_ref()),
            Self::Rs256(k) => {
                // ring gives the RSAPublicKey DER; wrap it in an SPKI.
                let alg = der(
                    0x30,
                    &[der_oid(&[1, 2, 840, 113549, 1, 1, 1]), vec![0x05, 0x00]].concat(),
                );
                der(0x30, &[alg, bit_string(k.public_key().as_ref())].concat())
            }
        }
    }

    /// Signs `claims` into a compact JWS with header `{alg, kid, typ: JWT}`.
    pub fn sign(&self, kid: &str, claims: &Map<String, Value>) -> Result<String, JwtSignError> {
        let header =
            serde_json::json!({ "alg": self.algorithm().name(), "kid": kid, "typ": "JWT" });
        let signing_input = format!("{}.{}", base64_json(&header)?, base64_json(claims)?);
        let rng = ring::rand::SystemRandom::new();
        let sig = match self {
            Self::Es256(k) => k
                .sign(&rng, signing_input.as_bytes())
                .map_err(|e| JwtSignError(e.to_string()))?
                .as_ref()
                .to_vec(),
            Self::Rs256(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signing_input.as_bytes(),
                    &mut sig,
                )
                .map_err(|e| JwtSignError(e.to_string()))?;
                sig
            }
        };
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

fn base64_json<T: serde::Serialize>(value: &T) -> Result<String, JwtSignError> {
    let bytes = serde_json::to_vec(value).map_err(|e| JwtSignError(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The claims Signet puts in a JWT-SVID it issues.
pub fn jwt_svid_claims(
    subject: &SpiffeId,
    audience: &[String],
    issued_at: SystemTime,
    expires_at: SystemTime,
    issuer: Option<&str>,
) -> Map<String, Value> {
    let mut claims = Map::new();
    claims.insert("sub".into(), subject.as_str().into());
    // Always a list: some validators read a lone string as a set of characters.
    claims.insert("aud".into(), audience.to_vec().into());
    claims.insert("exp".into(), unix_seconds(expires_at).into());
    claims.insert("iat".into(), unix_seconds(issued_at).into());
    if let Some(iss) = issuer {
        claims.insert("iss".into(), iss.into());
    }
    claims
}
