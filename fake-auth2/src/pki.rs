//! Throw-away certificate authorities and server certificates for HTTPS tests.
//!
//! ```no_run
//! use fake_auth2::{pki::TestCa, FakeAuth2, FakeConfig};
//! let ca = TestCa::new("test CA");
//! let fake = FakeAuth2::start_blocking(FakeConfig::new().tls(ca.issue(&["localhost", "127.0.0.1"]))).unwrap();
//! // Trust `ca.cert_pem` in the client and connect to fake.url() (https://127.0.0.1:PORT/).
//! ```

use crate::TlsIdentity;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use std::io;
use std::path::Path;

/// A certificate authority that exists only for one test run.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate, PEM: what a client has to trust.
    pub cert_pem: String,
}

impl TestCa {
    /// A new CA (ECDSA P-256, self-signed) with `name` as its common name.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign CA");
        let cert_pem = cert.pem();
        TestCa { cert, key, cert_pem }
    }

    /// A server certificate for `names` (DNS names or IP addresses) signed by this CA.
    pub fn issue(&self, names: &[&str]) -> TlsIdentity {
        let key = KeyPair::generate().expect("generate server key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("server params");
        params.distinguished_name.push(DnType::CommonName, names.first().map_or("server", String::as_str));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign server certificate");
        TlsIdentity { cert_chain_pem: cert.pem().into_bytes(), key_pem: key.serialize_pem().into_bytes() }
    }

    /// Writes the CA certificate to `path` (a PEM bundle of one).
    pub fn write_cert(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, &self.cert_pem)
    }
}
