//! TLS set-up: the rustls `ServerConfig` every worker uses, built from PEM files or from a
//! self-signed certificate made at start-up with rcgen, and rebuilt when the files change.
//!
//! It owns the choices a prober or a client can see: the crypto provider (ring, named
//! explicitly), ALPN (`http/1.1` only: a WebSocket port must not advertise h2), and session
//! resumption (a session cache for TLS 1.2 and stateless tickets for TLS 1.3, because
//! mtt-client caches and resumes sessions). A reload keeps the same ticket keys and session
//! cache, so clients resume across certificate renewals. It does not accept connections;
//! the workers do, and they get a reloaded configuration by message.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::ServerConfig;

/// How many TLS 1.2 sessions the server remembers for resumption, shared by all workers.
const SESSION_CACHE_ENTRIES: usize = 4096;

/// What resumption needs to survive a reload.
#[derive(Clone)]
struct Resumption {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
}

impl Resumption {
    fn new() -> Result<Self, String> {
        Ok(Self {
            ticketer: provider::Ticketer::new().map_err(|e| e.to_string())?,
            cache: ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
        })
    }
}

/// A certificate and key on disk, and what was last loaded from them.
pub(crate) struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    /// The file contents behind the configuration in use, to notice changes (a symlink
    /// swap included: contents are compared, not inodes or times).
    loaded: (Vec<u8>, Vec<u8>),
    resumption: Resumption,
}

impl CertFiles {
    /// Loads the pair. Every error names the file it came from.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<(CertFiles, Arc<ServerConfig>), String> {
        let resumption = Resumption::new()?;
        let contents = read_pair(cert, key)?;
        let config = from_pem(cert, key, &contents, &resumption)?;
        Ok((
            CertFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                loaded: contents,
                resumption,
            },
            config,
        ))
    }

    /// A new configuration if the files changed since the last load (or always, with
    /// `force`); `None` when there is nothing new. On error the caller keeps the old one.
    pub(crate) fn reload(&mut self, force: bool) -> Option<Result<Arc<ServerConfig>, String>> {
        let contents = match read_pair(&self.cert, &self.key) {
            Ok(contents) => contents,
            Err(e) => return Some(Err(e)),
        };
        if !force && contents == self.loaded {
            return None;
        }
        let result = from_pem(&self.cert, &self.key, &contents, &self.resumption);
        // A broken pair is remembered too, so it is reported once, not at every check.
        self.loaded = contents;
        Some(result)
    }
}

impl CertFiles {
    /// When the leaf (first) certificate of the files last loaded expires, in Unix
    /// seconds; `None` if it cannot be read.
    pub(crate) fn not_after(&self) -> Option<i64> {
        let leaf = CertificateDer::pem_slice_iter(&self.loaded.0)
            .next()?
            .ok()?;
        crate::net::certificate::not_after(&leaf)
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    let cert_pem =
        std::fs::read(cert).map_err(|e| format!("certificate file {}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("key file {}: {e}", key.display()))?;
    Ok((cert_pem, key_pem))
}

fn from_pem(
    cert_path: &Path,
    key_path: &Path,
    (cert_pem, key_pem): &(Vec<u8>, Vec<u8>),
    resumption: &Resumption,
) -> Result<Arc<ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate file {}: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "certificate file {}: no PEM certificate in it",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("key file {}: {e}", key_path.display()))?;
    build(chain, key, resumption).map_err(|e| {
        format!(
            "certificate {} with key {}: {e}",
            cert_path.display(),
            key_path.display()
        )
    })
}

/// Generates an ECDSA P-256 self-signed certificate for `name` and builds the server
/// configuration around it; also returns the certificate's expiry (Unix seconds).
pub(crate) fn self_signed_with_expiry(
    name: &str,
) -> Result<(Arc<ServerConfig>, Option<i64>), String> {
    let generated = rcgen::generate_simple_self_signed(vec![name.to_string()])
        .map_err(|e| format!("generating a self-signed certificate for {name}: {e}"))?;
    let expiry = crate::net::certificate::not_after(generated.cert.der());
    let chain = vec![generated.cert.der().clone()];
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| format!("self-signed key: {e}"))?;
    Ok((build(chain, key, &Resumption::new()?)?, expiry))
}

fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    resumption: &Resumption,
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
    config.session_storage = Arc::clone(&resumption.cache);
    config.ticketer = Arc::clone(&resumption.ticketer);
    // Two tickets (rustls' default is 2 too) let a client resume twice in parallel.
    config.send_tls13_tickets = 2;
    // TLS 1.3 records are sealed and opened by our own record layer (tls_stream.rs)
    // with the traffic keys rustls hands over after the handshake, and the traffic
    // secrets its key log gives, from which KeyUpdate derives the next keys.
    config.enable_secret_extraction = true;
    config.key_log = Arc::new(crate::net::tls_stream::SecretCapture);
    Ok(Arc::new(config))
}
