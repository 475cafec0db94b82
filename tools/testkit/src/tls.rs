//! The TLS client: rustls with the ring provider, accepting the server's self-signed
//! certificate (the server under test makes its own, or is given a throwaway one), and
//! [`Transport`], a client connection that is plain TCP or TLS.
//!
//! One certificate verifier serves every client here; whether it still checks the
//! handshake signature is the caller's choice ([`Signatures`]). Not here: the WebSocket
//! upgrade ([`crate::ws`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned,
    SupportedProtocolVersion,
};

/// The SNI name the tests' clients send (the server serves any name).
pub const TEST_SERVER_NAME: &str = "localhost";

/// Whether the client checks the server's handshake signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signatures {
    /// Verify it with the provider: the server must hold the key of the certificate it
    /// shows. What tests and the soak want.
    Check,
    /// Take it on trust: a load tool keeps its CPU for the load.
    Skip,
}

/// Accepts whatever certificate the server shows (it is self-signed), and checks the
/// handshake signature or not as [`Signatures`] says.
#[derive(Debug)]
struct AnyCertificate {
    /// Its signature algorithms verify the handshake signature.
    provider: Arc<CryptoProvider>,
    /// Whether they are used at all.
    signatures: Signatures,
}

/// rustls's check of a TLS 1.2 or 1.3 handshake signature (they share the shape).
type VerifySignature = fn(
    &[u8],
    &CertificateDer<'_>,
    &DigitallySignedStruct,
    &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error>;

impl AnyCertificate {
    /// Runs `verify` when [`Signatures::Check`], else takes the signature on trust.
    fn check(
        &self,
        verify: VerifySignature,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self.signatures {
            Signatures::Skip => Ok(HandshakeSignatureValid::assertion()),
            Signatures::Check => verify(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            ),
        }
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check(verify_tls12_signature, message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check(verify_tls13_signature, message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration over `provider`, limited to `versions`, that accepts any
/// certificate; no ALPN, rustls's default session cache (so connections made from one
/// configuration resume). Callers set ALPN or resumption on the result.
pub fn client_config(
    provider: CryptoProvider,
    versions: &[&'static SupportedProtocolVersion],
    signatures: Signatures,
) -> ClientConfig {
    let provider = Arc::new(provider);
    ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .expect("ring supports the versions asked for")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate {
            provider,
            signatures,
        }))
        .with_no_client_auth()
}

/// A client configuration that accepts any certificate but checks the handshake
/// signature, offering `alpn`; its session cache lives as long as it does.
pub fn tls_config(alpn: Vec<Vec<u8>>) -> Arc<ClientConfig> {
    tls_config_versions(alpn, rustls::DEFAULT_VERSIONS)
}

/// As [`tls_config`], limited to these TLS versions.
pub fn tls_config_versions(
    alpn: Vec<Vec<u8>>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut config = client_config(
        rustls::crypto::ring::default_provider(),
        versions,
        Signatures::Check,
    );
    config.alpn_protocols = alpn;
    Arc::new(config)
}

/// A TLS client that offers no ALPN, as mtt-client does.
pub fn tls_client() -> ClientConnection {
    tls_client_with(Vec::new())
}

/// A TLS client offering `alpn`, named [`TEST_SERVER_NAME`].
pub fn tls_client_with(alpn: Vec<Vec<u8>>) -> ClientConnection {
    client(tls_config(alpn), TEST_SERVER_NAME)
}

/// A client connection from `config` for the SNI `name` (a valid DNS name).
pub fn client(config: Arc<ClientConfig>, name: &str) -> ClientConnection {
    let name = ServerName::try_from(name.to_string()).expect("a valid DNS name");
    ClientConnection::new(config, name).expect("a client configuration rustls accepts")
}

/// A client connection to the data port, plain or TLS.
pub enum Transport {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (boxed: rustls's state is large).
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Transport {
    /// TLS over `tcp`; the handshake happens on the first read or write (or
    /// [`Transport::handshake`]).
    pub fn tls(tcp: TcpStream, client: ClientConnection) -> Transport {
        Transport::Tls(Box::new(StreamOwned::new(client, tcp)))
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Tcp(s) => s,
            Transport::Tls(s) => &s.sock,
        }
    }

    /// Sets the socket's read timeout (best effort: a closed socket keeps its error for
    /// the next read).
    pub fn set_read_timeout(&self, t: Duration) {
        let _ = self.tcp().set_read_timeout(Some(t));
    }

    /// Completes the TLS handshake now (nothing for plain TCP).
    pub fn handshake(&mut self) -> io::Result<()> {
        if let Transport::Tls(s) = self {
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock)?;
            }
        }
        Ok(())
    }

    /// Whether the TLS handshake was a resumption (`None` without TLS).
    pub fn resumed(&self) -> Option<bool> {
        match self {
            Transport::Tcp(_) => None,
            Transport::Tls(s) => {
                Some(s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
            }
        }
    }

    /// Ends politely: TLS close_notify, then the TCP close when dropped.
    pub fn close(mut self) {
        if let Transport::Tls(s) = &mut self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.write_all(buf),
            Transport::Tls(s) => s.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

/// Connects within 10 s with `timeout` on reads and writes and no Nagle; with `tls`,
/// completes the handshake for the SNI `name`.
pub fn connect(
    addr: SocketAddr,
    tls: Option<(&Arc<ClientConfig>, &str)>,
    timeout: Duration,
) -> io::Result<Transport> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let Some((config, name)) = tls else {
        return Ok(Transport::Tcp(tcp));
    };
    let mut t = Transport::tls(tcp, client(Arc::clone(config), name));
    t.handshake()?;
    Ok(t)
}

/// A real ClientHello, as rustls sends it: the bytes, not sent anywhere.
pub fn client_hello() -> Vec<u8> {
    let mut client = tls_client();
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).unwrap();
    }
    assert_eq!(out[0], 0x16, "a handshake record");
    out
}

/// Asserts `got` is nothing but TLS alert records (what a TLS server may say before it
/// hangs up on garbage), and in particular no HTTP.
pub fn assert_only_alerts(got: &[u8]) {
    let mut rest = got;
    while !rest.is_empty() {
        assert!(
            rest.len() >= 5 && rest[0] == 0x15,
            "not a TLS alert: {:?}",
            crate::sock::lossy(rest)
        );
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        rest = &rest[(5 + len).min(rest.len())..];
    }
}
