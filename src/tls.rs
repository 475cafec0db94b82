//! TLS set-up: one rustls `ServerConfig` shared by every worker, built from PEM files or
//! from a self-signed certificate made at start-up with rcgen.
//!
//! It owns the choices a prober or a client can see: the crypto provider (ring, named
//! explicitly), ALPN (`http/1.1` only: a WebSocket port must not advertise h2), and session
//! resumption (a session cache for TLS 1.2 and stateless tickets for TLS 1.3, because
//! mtt-client caches and resumes sessions). It does not accept connections; the workers do.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerSessionMemoryCache;
use rustls::ServerConfig;

/// How many TLS 1.2 sessions the server remembers for resumption, shared by all workers.
const SESSION_CACHE_ENTRIES: usize = 4096;

/// Builds the server configuration from a PEM certificate chain and a PEM private key.
/// Every error names the file it came from.
pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("certificate file {}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate file {}: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "certificate file {}: no PEM certificate in it",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("key file {}: {e}", key_path.display()))?;
    build(chain, key).map_err(|e| {
        format!(
            "certificate {} with key {}: {e}",
            cert_path.display(),
            key_path.display()
        )
    })
}

/// Generates an ECDSA P-256 self-signed certificate for `name` and builds the server
/// configuration around it.
pub fn self_signed(name: &str) -> Result<Arc<ServerConfig>, String> {
    let generated = rcgen::generate_simple_self_signed(vec![name.to_string()])
        .map_err(|e| format!("generating a self-signed certificate for {name}: {e}"))?;
    let chain = vec![generated.cert.der().clone()];
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| format!("self-signed key: {e}"))?;
    build(chain, key)
}

fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(provider::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        // Checks that the key belongs to the certificate.
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    config.ticketer = provider::Ticketer::new().map_err(|e| e.to_string())?;
    // Two tickets (rustls' default is 2 too) let a client resume twice in parallel.
    config.send_tls13_tickets = 2;
    Ok(Arc::new(config))
}
