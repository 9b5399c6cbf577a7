//! Mutual TLS on the gRPC listener (`listen.grpc_tls`): Baton's server certificate, a REQUIRED
//! client certificate chaining to `client_ca_file`, and the certificate's identity (a SAN) checked
//! against `allowed_callers`. A caller that fails any of it is refused during the handshake, so it
//! never reaches a gRPC handler. The files are re-read when they rotate; a bad new file keeps the
//! last good ones. This module owns that section, its matching rule and the TLS-accepting stream
//! handed to tonic; it must never log what a key file holds, nor anything a caller sends after the
//! handshake.
//!
//! The matching rule (documented in docs/configuration.md): a pattern starting `spiffe://` is compared with the
//! certificate's URI SANs, any other with its DNS SANs. A pattern matches exactly, or its single `*`
//! stands for one whole path segment at the end (`spiffe://td/ns/shop/sa/*`) or one whole leading
//! DNS label (`*.shop.svc.cluster.local`). Never a substring, a prefix, or several segments or labels.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use baton_core::credentials::Watched;
use baton_core::files::read_bounded;
use baton_decide::settings::Errors;

/// The largest certificate chain, key or CA bundle file read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;
/// A handshake not finished in this long is dropped (a slow-loris caller holds no slot for long).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; a connection beyond this is closed at once.
const MAX_HANDSHAKES: usize = 256;
/// How long a mutual-TLS connection may live before the server closes it gracefully (HTTP/2
/// GOAWAY; Envoy reconnects), so that every caller is verified again at least this often.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(600);
/// How long requests in flight on a connection past its age may take to finish.
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);
/// The longest `allowed_callers` pattern, and the longest SAN looked at.
const MAX_IDENTITY_BYTES: usize = 2048;

// === Configuration ===

/// `listen.grpc_tls:`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawGrpcTls {
    /// Baton's certificate chain, leaf first (PEM).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// The CA bundle (PEM) a caller's certificate must chain to.
    pub client_ca_file: Option<PathBuf>,
    /// The identities allowed to call (see the module's matching rule); at least one.
    pub allowed_callers: Vec<String>,
}

/// A validated `listen.grpc_tls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: PathBuf,
    pub allowed_callers: Vec<CallerPattern>,
}

impl RawGrpcTls {
    /// The section's shape; the files are read (and their content checked) by `check-config` and
    /// at startup through `Acceptor::new`.
    pub fn validate(self, errors: &mut Errors) -> Option<GrpcTls> {
        let mut file = |value: Option<PathBuf>, field: &str| match value {
            Some(path) if !path.as_os_str().is_empty() => Some(path),
            _ => {
                errors.add(format!("listen.grpc_tls.{field}"), "is required (a PEM file)");
                None
            }
        };
        let cert_file = file(self.cert_file, "cert_file");
        let key_file = file(self.key_file, "key_file");
        let client_ca_file = file(self.client_ca_file, "client_ca_file");
        if self.allowed_callers.is_empty() {
            errors.add(
                "listen.grpc_tls.allowed_callers",
                "is required: the SPIFFE IDs (`spiffe://...`) or DNS names allowed to call",
            );
        }
        let mut patterns = Vec::with_capacity(self.allowed_callers.len());
        for (i, text) in self.allowed_callers.iter().enumerate() {
            match CallerPattern::parse(text) {
                Ok(p) => patterns.push(p),
                Err(why) => errors.add(format!("listen.grpc_tls.allowed_callers[{i}]"), why),
            }
        }
        Some(GrpcTls {
            cert_file: cert_file?,
            key_file: key_file?,
            client_ca_file: client_ca_file?,
            allowed_callers: patterns,
        })
    }
}

// === The matching rule ===

/// One `allowed_callers` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallerPattern {
    /// `spiffe://td/path`: this URI SAN exactly.
    SpiffeExact(String),
    /// `spiffe://td/path/*`: the prefix `spiffe://td/path/` and then exactly one segment.
    SpiffeSegment(String),
    /// `name.example`: this DNS SAN (ASCII case-insensitive; stored lowercase).
    DnsExact(String),
    /// `*.name.example`: one label, then `.name.example` (stored lowercase, with the leading dot).
    DnsLabel(String),
}

impl CallerPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_IDENTITY_BYTES {
            return Err(format!("is longer than {MAX_IDENTITY_BYTES} bytes"));
        }
        if let Some(rest) = text.strip_prefix("spiffe://") {
            if let Some(prefix) = text.strip_suffix("/*") {
                if rest.matches('*').count() != 1 {
                    return Err("`*` may only be the whole last path segment".into());
                }
                if !is_spiffe_id(prefix) || !prefix["spiffe://".len()..].contains('/') {
                    return Err(format!(
                        "`{text}`: `*` must follow a SPIFFE ID with a path (spiffe://trust-domain/path/*)"
                    ));
                }
                return Ok(Self::SpiffeSegment(format!("{prefix}/")));
            }
            if !is_spiffe_id(text) {
                return Err(format!(
                    "`{text}` is not a SPIFFE ID (lowercase trust domain, path segments of letters, digits, `.`, `-`, `_`)"
                ));
            }
            return Ok(Self::SpiffeExact(text.to_owned()));
        }
        if text.contains("://") {
            return Err(format!("`{text}`: only spiffe:// URIs are matched (against URI SANs)"));
        }
        let lower = text.to_ascii_lowercase();
        if let Some(suffix) = lower.strip_prefix("*.") {
            if !is_dns_name(suffix) || suffix.split('.').count() < 2 {
                return Err(format!(
                    "`{text}`: `*` must be the whole first label of a name with at least two more labels"
                ));
            }
            return Ok(Self::DnsLabel(format!(".{suffix}")));
        }
        if !is_dns_name(&lower) {
            return Err(format!(
                "`{text}` is neither a DNS name (`*` only as the whole first label) nor a spiffe:// ID"
            ));
        }
        Ok(Self::DnsExact(lower))
    }

    fn matches_uri(&self, uri: &str) -> bool {
        if !is_spiffe_id(uri) {
            return false;
        }
        match self {
            Self::SpiffeExact(id) => uri == id,
            Self::SpiffeSegment(prefix) => uri
                .strip_prefix(prefix.as_str())
                .is_some_and(|segment| !segment.is_empty() && !segment.contains('/')),
            Self::DnsExact(_) | Self::DnsLabel(_) => false,
        }
    }

    fn matches_dns(&self, name: &str) -> bool {
        if !is_dns_name(name) {
            return false;
        }
        let name = name.to_ascii_lowercase();
        match self {
            Self::DnsExact(exact) => name == *exact,
            Self::DnsLabel(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            Self::SpiffeExact(_) | Self::SpiffeSegment(_) => false,
        }
    }
}

impl std::fmt::Display for CallerPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SpiffeExact(s) | Self::DnsExact(s) => f.write_str(s),
            Self::SpiffeSegment(prefix) => write!(f, "{prefix}*"),
            Self::DnsLabel(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// A SPIFFE ID as the SPIFFE spec defines it: `spiffe://`, a trust domain of lowercase letters,
/// digits, `.`, `-`, `_`, then optional path segments of letters, digits, `.`, `-`, `_`, none empty,
/// none `.` or `..`; no percent-encoding, query, fragment, port or user info.
fn is_spiffe_id(text: &str) -> bool {
    let Some(rest) = text.strip_prefix("spiffe://") else {
        return false;
    };
    if text.len() > MAX_IDENTITY_BYTES {
        return false;
    }
    let (domain, path) = rest.split_once('/').map_or((rest, None), |(d, p)| (d, Some(p)));
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    let path_ok = path.is_none_or(|p| {
        p.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        })
    });
    domain_ok && path_ok
}

/// A DNS name of LDH labels (no wildcard, no trailing dot, no empty label).
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The identity a verified certificate presents for the allow-list: its first URI SAN that an
/// `allowed_callers` pattern matches, else its first such DNS SAN. `Err` lists what it presented.
pub fn allowed_identity(leaf: &CertificateDer<'_>, allowed: &[CallerPattern]) -> Result<String, Presented> {
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|_| Presented(Vec::new()))?;
    let uris: Vec<&str> = cert.valid_uri_names().collect();
    let names: Vec<&str> = cert.valid_dns_names().filter(|n| !n.contains('*')).collect();
    let uri = uris.iter().find(|u| allowed.iter().any(|p| p.matches_uri(u)));
    let dns = names.iter().find(|n| allowed.iter().any(|p| p.matches_dns(n)));
    match uri.or(dns) {
        Some(identity) => Ok((*identity).to_owned()),
        None => Err(Presented(
            uris.iter()
                .chain(names.iter())
                .take(8)
                .map(|s| s.chars().take(256).collect())
                .collect(),
        )),
    }
}

/// The SANs a refused certificate presented (at most 8, each cut to 256 characters), for the log.
#[derive(Debug)]
pub struct Presented(pub Vec<String>);

// === The verifier: the CA chain (rustls' WebPKI verifier), then the allow-list ===

#[derive(Debug)]
struct AllowListVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    allowed: Vec<CallerPattern>,
}

impl ClientCertVerifier for AllowListVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self.chain.verify_client_cert(end_entity, intermediates, now) {
            // What the refused certificate claims, for the operator; it proves nothing.
            let presented = allowed_identity(end_entity, &[]).err().map(|p| p.0).unwrap_or_default();
            tracing::warn!(?presented, error = %e, "gRPC caller refused: its certificate does not verify against listen.grpc_tls.client_ca_file");
            return Err(e);
        }
        match allowed_identity(end_entity, &self.allowed) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(presented) => {
                tracing::warn!(presented = ?presented.0, "gRPC caller refused: its certificate names no identity in listen.grpc_tls.allowed_callers");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Read the three files and build the server's TLS configuration. Errors name the file, never its
/// content.
pub fn server_config(tls: &GrpcTls) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = read_certs(&tls.cert_file)?;
    let key_pem = read_bounded(&tls.key_file, MAX_PEM_BYTES)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        format!(
            "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            tls.key_file.display()
        )
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&tls.client_ca_file)? {
        roots
            .add(ca)
            .map_err(|e| format!("{}: a CA certificate cannot be used: {e}", tls.client_ca_file.display()))?;
    }
    let chain = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("{}: {e}", tls.client_ca_file.display()))?;
    let verifier = Arc::new(AllowListVerifier {
        chain,
        allowed: tls.allowed_callers.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "{} and {} do not make a TLS server identity: {e}",
                tls.cert_file.display(),
                tls.key_file.display()
            )
        })?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No resumption: every connection's certificate is verified in full, against the files of now
    // (a resumed session would carry an identity verified earlier, maybe under a CA since removed).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_bounded(path, MAX_PEM_BYTES)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("{} is not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

// === Accepting ===

/// The server's TLS configuration, re-read when one of its files changes.
#[derive(Debug, Clone)]
pub struct Acceptor {
    config: Arc<Watched<Arc<ServerConfig>>>,
    allowed: Arc<[CallerPattern]>,
}

impl Acceptor {
    /// Read the files now: an error here is a startup error.
    pub fn new(tls: &GrpcTls) -> Result<Self, String> {
        let paths = vec![tls.cert_file.clone(), tls.key_file.clone(), tls.client_ca_file.clone()];
        let allowed = tls.allowed_callers.clone().into();
        let tls = tls.clone();
        let config = Watched::new(paths, move || server_config(&tls))?;
        Ok(Self {
            config: Arc::new(config),
            allowed,
        })
    }

    /// The connections that completed a mutual-TLS handshake with an allowed caller. Handshakes run
    /// concurrently (at most `MAX_HANDSHAKES`, each within `HANDSHAKE_TIMEOUT`); a refused one is
    /// logged with the peer's address and dropped, never handed to the gRPC server.
    pub fn incoming(self, listener: TcpListener) -> impl Stream<Item = Result<TlsConnection, std::io::Error>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<TlsConnection>(64);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = tokio::select! {
                    () = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // EMFILE and the like: pause rather than spin.
                            tracing::warn!(error = %e, "listen.grpc: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%remote, "listen.grpc: too many TLS handshakes in progress: connection closed");
                    continue;
                };
                // Without TCP_NODELAY a reply written in two segments waits for a delayed ACK.
                let _ = tcp.set_nodelay(true);
                let config = self.config.get().await;
                let tx = tx.clone();
                let allowed = self.allowed.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::warn!(%remote, error = %e, "listen.grpc: TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(%remote, "listen.grpc: TLS handshake timed out");
                            return;
                        }
                    };
                    let leaf = stream.get_ref().1.peer_certificates().and_then(<[_]>::first);
                    let Some(Ok(identity)) = leaf.map(|leaf| allowed_identity(leaf, &allowed)) else {
                        // The verifier accepted the chain and the identity; not finding it again is a bug,
                        // and fails closed.
                        tracing::error!(%remote, "listen.grpc: no caller identity after the handshake: connection closed");
                        return;
                    };
                    tracing::debug!(%remote, caller = %identity, "listen.grpc: mutual TLS caller connected");
                    let _ = tx
                        .send(TlsConnection {
                            stream,
                            peer: PeerIdentity {
                                identity: identity.into(),
                                remote: Some(remote),
                            },
                        })
                        .await;
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)
    }
}

/// A connection from an allowed caller, with the identity its certificate presented.
#[derive(Debug)]
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: PeerIdentity,
}

/// The verified identity of the gRPC caller on the mutual-TLS listener: the SAN that matched
/// `allowed_callers`. Handlers find it in the request's extensions (tonic puts a connection's
/// `ConnectInfo` there); a call over the Unix socket or plain TCP has none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    pub identity: Arc<str>,
    pub remote: Option<SocketAddr>,
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(patterns: &[&str]) -> Vec<CallerPattern> {
        patterns
            .iter()
            .map(|p| CallerPattern::parse(p).unwrap_or_else(|e| panic!("{p}: {e}")))
            .collect()
    }

    fn uri(patterns: &[CallerPattern], id: &str) -> bool {
        patterns.iter().any(|p| p.matches_uri(id))
    }

    fn dns(patterns: &[CallerPattern], name: &str) -> bool {
        patterns.iter().any(|p| p.matches_dns(name))
    }

    #[test]
    fn spiffe_patterns_match_whole_segments_only() {
        let p = allowed(&[
            "spiffe://cluster.local/ns/shop/sa/*",
            "spiffe://cluster.local/ns/ops/sa/envoy",
        ]);
        for ok in [
            "spiffe://cluster.local/ns/shop/sa/envoy",
            "spiffe://cluster.local/ns/shop/sa/a.b-c_d",
            "spiffe://cluster.local/ns/ops/sa/envoy",
        ] {
            assert!(uri(&p, ok), "{ok}");
        }
        for refused in [
            "spiffe://cluster.local/ns/shop/sa/",
            "spiffe://cluster.local/ns/shop/sa/envoy/extra",
            "spiffe://cluster.local/ns/shop/sa/../../ops/sa/envoy",
            "spiffe://cluster.local/ns/shop/sa/%2e%2e",
            "spiffe://cluster.local/ns/shop/sa/envoy?x=1",
            "spiffe://cluster.local/ns/shop/sa/envoy#f",
            "spiffe://cluster.local/ns/shop/sa//envoy",
            "spiffe://cluster.local/ns/shop/sa/.",
            "spiffe://cluster.local/ns/shopping/sa/envoy",
            "spiffe://CLUSTER.LOCAL/ns/shop/sa/envoy",
            "spiffe://cluster.local.evil/ns/shop/sa/envoy",
            "spiffe://evil/cluster.local/ns/shop/sa/envoy",
            "spiffe://cluster.local:443/ns/shop/sa/envoy",
            "spiffe://u@cluster.local/ns/shop/sa/envoy",
            "SPIFFE://cluster.local/ns/shop/sa/envoy",
            "https://cluster.local/ns/shop/sa/envoy",
            "spiffe://cluster.local/ns/ops/sa/envoy2",
            "spiffe://cluster.local/ns/ops/sa/envoy/",
            "spiffe://cluster.local/ns/ops/sa/Envoy",
        ] {
            assert!(!uri(&p, refused), "{refused}");
        }
        assert!(!dns(&p, "envoy"), "a SPIFFE pattern never matches a DNS SAN");
    }

    #[test]
    fn dns_patterns_match_one_whole_leading_label() {
        let p = allowed(&["*.shop.svc.cluster.local", "Envoy.Example"]);
        for ok in [
            "envoy.shop.svc.cluster.local",
            "ENVOY.shop.svc.cluster.local",
            "envoy.example",
        ] {
            assert!(dns(&p, ok), "{ok}");
        }
        for refused in [
            "shop.svc.cluster.local",
            ".shop.svc.cluster.local",
            "a.b.shop.svc.cluster.local",
            "evilshop.svc.cluster.local",
            "envoy.shop.svc.cluster.local.",
            "envoy.shop.svc.cluster.local.evil",
            "*.shop.svc.cluster.local",
            "envoy.example.",
            "xenvoy.example",
            "envoy.example.evil",
            "a.envoy.example",
            "envoy_x.shop.svc.cluster.local",
        ] {
            assert!(!dns(&p, refused), "{refused}");
        }
        assert!(
            !uri(&p, "spiffe://envoy.example"),
            "a DNS pattern never matches a URI SAN"
        );
    }

    proptest::proptest! {
        /// Whatever a certificate presents, a `*` pattern admits exactly one more whole segment or
        /// label, of safe characters, after its fixed part: never a substring, never two.
        #[test]
        fn a_star_admits_one_whole_segment_or_label(tail in "[a-zA-Z0-9./%*_:?#@-]{0,12}", dots in "[.a-z]{0,6}") {
            let p = allowed(&["spiffe://td.example/ns/shop/sa/*", "*.shop.example"]);
            let uri_in = format!("spiffe://td.example/ns/shop/sa/{tail}");
            if uri(&p, &uri_in) {
                proptest::prop_assert!(!tail.is_empty() && tail != "." && tail != "..");
                proptest::prop_assert!(tail.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)), "{}", tail);
            }
            let uri_near = format!("spiffe://td.example/ns/shop/sa{tail}");
            proptest::prop_assert!(!uri(&p, &uri_near) || tail.starts_with('/'), "{}", uri_near);
            let name = format!("{tail}{dots}.shop.example");
            if dns(&p, &name) {
                let label = &name[..name.len() - ".shop.example".len()];
                proptest::prop_assert!(!label.is_empty() && !label.contains('.'), "{}", name);
                proptest::prop_assert!(label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{}", name);
            }
            let glued = format!("{tail}shop.example");
            proptest::prop_assert!(!dns(&p, &glued) || tail.ends_with('.'), "{}", glued);
        }
    }

    #[test]
    fn patterns_that_could_match_too_much_are_configuration_errors() {
        for bad in [
            "*",
            "*.local",
            "**.shop.example",
            "env*.shop.example",
            "envoy.*.example",
            "shop.example.",
            "spiffe://td/*",
            "spiffe://*/ns",
            "spiffe://td/ns/*/sa/x",
            "spiffe://td/ns/a*",
            "spiffe://td/ns/*/*",
            "spiffe://td/ns/../sa",
            "spiffe://TD/ns",
            "spiffe://td/ns/",
            "https://envoy.example",
            "",
        ] {
            assert!(CallerPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(CallerPattern::parse(&"a".repeat(MAX_IDENTITY_BYTES + 1)).is_err());
    }
}
