//! The client's verifier, shared by rustls_tls and rustls_tokio.
use rustls::client::{ServerCertVerified, ServerCertVerifier};
use rustls::{Certificate, ServerName};
use std::time::SystemTime;

/// Trusts one certificate, byte for byte: the test's self-signed certificate is a CA
/// certificate (openssl req -x509), which webpki refuses as an end entity. The handshake
/// signatures are still checked against its key (the trait's default methods).
pub struct Pinned(pub Vec<u8>);

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &Certificate,
        _intermediates: &[Certificate],
        _name: &ServerName,
        _scts: &mut dyn Iterator<Item = &[u8]>,
        _ocsp: &[u8],
        _now: SystemTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.0 == self.0 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }
}
