//! A test CA that mints good and deliberately broken certificates, shared by
//! every crate's tests (feature `test-support`). Each knob of [`LeafSpec`] and
//! [`SigningSpec`] breaks one X.509-SVID rule, so each rule has a test.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CustomExtension, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls_pki_types::CertificateDer;

use crate::bundle::TrustBundle;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::x509_svid::{leaf_params, signing_params};

/// How a test leaf is built; [`LeafSpec::valid`] is a correct SVID.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    pub is_ca: bool,
    /// `None`: no key usage extension at all.
    pub key_usages: Option<Vec<KeyUsagePurpose>>,
    pub key_usage_critical: bool,
    /// Empty: no EKU extension.
    pub ekus: Vec<ExtendedKeyUsagePurpose>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Extensions added as raw bytes: (OID arcs, DER content, critical).
    /// A basicConstraints here replaces the generated one.
    pub raw_extensions: Vec<(Vec<u64>, Vec<u8>, bool)>,
}

impl LeafSpec {
    /// A leaf that follows every rule, valid for the next hour.
    pub fn valid(id: &str) -> Self {
        let now = SystemTime::now();
        Self {
            uris: vec![id.to_owned()],
            dns_names: Vec::new(),
            is_ca: false,
            key_usages: Some(vec![KeyUsagePurpose::DigitalSignature]),
            key_usage_critical: true,
            ekus: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(3600),
            raw_extensions: Vec::new(),
        }
    }

    fn params(&self) -> CertificateParams {
        // Start from the production profile and bend it.
        let base_id = SpiffeId::parse("spiffe://placeholder/x").unwrap();
        let mut p =
            leaf_params(&base_id, &self.dns_names, self.not_before, self.not_after).unwrap();
        p.subject_alt_names
            .retain(|s| !matches!(s, SanType::URI(_)));
        for uri in self.uris.iter().rev() {
            p.subject_alt_names
                .insert(0, SanType::URI(uri.as_str().try_into().unwrap()));
        }
        if self.is_ca {
            p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        apply_key_usage(&mut p, self.key_usages.clone(), self.key_usage_critical);
        p.extended_key_usages = self.ekus.clone();
        for (oid, content, critical) in &self.raw_extensions {
            if oid.as_slice() == [2, 5, 29, 19] {
                p.is_ca = IsCa::NoCa;
            }
            let mut ext = rcgen::CustomExtension::from_oid_content(oid, content.clone());
            ext.set_criticality(*critical);
            p.custom_extensions.push(ext);
        }
        p
    }
}

/// How a test signing certificate (intermediate) is built.
#[derive(Clone, Debug)]
pub struct SigningSpec {
    pub uri: Option<String>,
    pub is_ca: bool,
    pub key_usages: Option<Vec<KeyUsagePurpose>>,
    pub key_usage_critical: bool,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl SigningSpec {
    /// A correct intermediate for `td`, valid for a day.
    pub fn valid(td: &str) -> Self {
        let now = SystemTime::now();
        Self {
            uri: Some(format!("spiffe://{td}")),
            is_ca: true,
            key_usages: Some(vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]),
            key_usage_critical: true,
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(86400),
        }
    }
}

/// Sets key usage, emitting a non-critical extension by hand when asked
/// (rcgen always marks key usage critical).
fn apply_key_usage(p: &mut CertificateParams, kus: Option<Vec<KeyUsagePurpose>>, critical: bool) {
    match kus {
        None => p.key_usages = Vec::new(),
        Some(kus) if critical => p.key_usages = kus,
        Some(kus) => {
            p.key_usages = Vec::new();
            let mut bits: u8 = 0;
            for ku in kus {
                let bit = match ku {
                    KeyUsagePurpose::DigitalSignature => 0,
                    KeyUsagePurpose::ContentCommitment => 1,
                    KeyUsagePurpose::KeyEncipherment => 2,
                    KeyUsagePurpose::DataEncipherment => 3,
                    KeyUsagePurpose::KeyAgreement => 4,
                    KeyUsagePurpose::KeyCertSign => 5,
                    KeyUsagePurpose::CrlSign => 6,
                    _ => panic!("unsupported in tests"),
                };
                bits |= 0x80 >> bit;
            }
            let unused = bits.trailing_zeros().min(7) as u8;
            let mut ext =
                CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x03, 0x02, unused, bits]);
            ext.set_criticality(false);
            p.custom_extensions.push(ext);
        }
    }
}

/// A certificate with its key, able to sign further certificates.
pub struct TestIssuer {
    pub der: CertificateDer<'static>,
    pub key: KeyPair,
    /// Certificates from this one up to (excluding) the root.
    pub chain: Vec<CertificateDer<'static>>,
}

impl TestIssuer {
    fn issuer(&self) -> rcgen::Issuer<'static, &KeyPair> {
        rcgen::Issuer::from_ca_cert_der(&self.der, &self.key).unwrap()
    }

    /// A leaf signed by this issuer: `(chain leaf-first, leaf key)`.
    pub fn leaf(&self, spec: &LeafSpec) -> (Vec<CertificateDer<'static>>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let cert = spec.params().signed_by(&key, &self.issuer()).unwrap();
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        (chain, key)
    }

    /// An intermediate signed by this issuer.
    pub fn intermediate(&self, spec: &SigningSpec) -> TestIssuer {
        let key = KeyPair::generate().unwrap();
        let id = SpiffeId::parse("spiffe://placeholder").unwrap();
        let mut p =
            signing_params(&id, "Test Intermediate", spec.not_before, spec.not_after).unwrap();
        p.subject_alt_names = spec
            .uri
            .iter()
            .map(|u| SanType::URI(u.as_str().try_into().unwrap()))
            .collect();
        if !spec.is_ca {
            p.is_ca = IsCa::ExplicitNoCa;
        }
        apply_key_usage(&mut p, spec.key_usages.clone(), spec.key_usage_critical);
        let cert = p.signed_by(&key, &self.issuer()).unwrap();
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        TestIssuer {
            der: cert.der().clone(),
            key,
            chain,
        }
    }
}

/// A self-signed root for one trust domain.
pub struct TestCa {
    pub trust_domain: TrustDomain,
    pub root: TestIssuer,
}

impl TestCa {
    pub fn new(td: &str) -> Self {
        let trust_domain = TrustDomain::new(td).unwrap();
        let key = KeyPair::generate().unwrap();
        let now = SystemTime::now();
        let p = signing_params(
            &trust_domain.id(),
            "Test Root",
            now - Duration::from_secs(60),
            now + Duration::from_secs(86400 * 30),
        )
        .unwrap();
        let cert = p.self_signed(&key).unwrap();
        Self {
            trust_domain,
            root: TestIssuer {
                der: cert.der().clone(),
                key,
                chain: Vec::new(),
            },
        }
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::new(self.trust_domain.clone(), vec![self.root.der.clone()]).unwrap()
    }

    /// A leaf signed directly by the root.
    pub fn leaf(&self, spec: &LeafSpec) -> (Vec<CertificateDer<'static>>, KeyPair) {
        self.root.leaf(spec)
    }
}
