//! TLS to shard servers, with libpq's `sslmode` semantics read from the shard
//! URL: the data path negotiates it on its raw connections here, and the
//! control plane (tokio-postgres) gets the same rustls configuration.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{Stream, read_certs, read_key};

/// libpq's `sslmode`, without `allow` (plain first, TLS if refused), which
/// protects nothing that `prefer` does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => return Err("sslmode=allow is not supported; use prefer, require or verify-full".into()),
            other => return Err(format!("unknown sslmode `{other}`")),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS parameters of a shard URL, as libpq names them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TlsParams {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub sslsni: Option<String>,
}

impl TlsParams {
    /// Takes the TLS parameters out of a `postgres://` URL's query, which
    /// tokio-postgres would refuse (it knows no `verify-full`, no
    /// `sslrootcert`); returns the URL without them.
    pub fn split_url(url: &str) -> Result<(String, TlsParams), String> {
        let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
            if !is_url && url.contains("ssl") {
                return Err(
                    "write TLS options in URL form: postgres://user@host/db?sslmode=verify-full&sslrootcert=…".into()
                );
            }
            return Ok((url.to_string(), TlsParams::default()));
        };
        let mut params = TlsParams::default();
        let mut rest = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = value.into_owned();
            match &*key {
                "sslmode" => params.sslmode = Some(value),
                "sslrootcert" => params.sslrootcert = Some(value.into()),
                "sslcert" => params.sslcert = Some(value.into()),
                "sslkey" => params.sslkey = Some(value.into()),
                "sslsni" => params.sslsni = Some(value),
                _ => {
                    rest.append_pair(&key, &value);
                }
            }
        }
        let rest = rest.finish();
        Ok((if rest.is_empty() { base.to_string() } else { format!("{base}?{rest}") }, params))
    }
}

/// How shardcar talks TLS to one server: the mode and, unless it is
/// `disable`, the rustls configuration built from the URL's files.
#[derive(Clone)]
pub struct ShardTls {
    pub mode: SslMode,
    config: Option<Arc<ClientConfig>>,
    server_name: ServerName<'static>,
    /// "sslmode=verify-full, sslrootcert=/etc/ca.pem": for error messages.
    described: String,
}

impl std::fmt::Debug for ShardTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.described)
    }
}

impl ShardTls {
    /// Reads the certificate files now, so that a missing or unreadable
    /// file is a config error (`shardcar check`), not a failed connection.
    /// Without `sslmode`, loopback hosts default to `disable` (the per-pod
    /// case: nothing crosses a network) and every other host to `prefer`.
    pub fn new(host: &str, params: &TlsParams) -> Result<ShardTls, String> {
        let mode = match &params.sslmode {
            Some(m) => SslMode::parse(m)?,
            None if is_loopback(host) => SslMode::Disable,
            None => SslMode::Prefer,
        };
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("`{host}` is not a valid TLS server name: {e}"))?;
        let mut described = format!("sslmode={}", mode.as_str());
        if let Some(root) = &params.sslrootcert {
            described.push_str(&format!(", sslrootcert={}", root.display()));
        }
        let config = match mode {
            SslMode::Disable => None,
            _ => Some(Arc::new(client_config(mode, params)?)),
        };
        Ok(ShardTls { mode, config, server_name, described })
    }

    /// Asks the server for TLS on a fresh connection (SSLRequest) and
    /// performs the handshake, as the mode requires.
    pub async fn negotiate(&self, mut tcp: TcpStream) -> Result<Stream, String> {
        let Some(config) = &self.config else { return Ok(Stream::Plain(tcp)) };
        let mut request = BytesMut::with_capacity(8);
        frontend::ssl_request(&mut request);
        tcp.write_all(&request).await.map_err(|e| e.to_string())?;
        // Exactly one byte: anything after it belongs to the TLS handshake.
        let answer = tcp.read_u8().await.map_err(|e| format!("no answer to the TLS request: {e}"))?;
        match answer {
            b'S' => TlsConnector::from(config.clone())
                .connect(self.server_name.clone(), tcp)
                .await
                .map(|s| Stream::Tls(Box::new(s.into())))
                .map_err(|e| format!("TLS handshake failed ({}): {e}", self.described)),
            b'N' if self.mode == SslMode::Prefer => Ok(Stream::Plain(tcp)),
            b'N' => Err(format!("the server does not accept TLS connections, and {} requires TLS", self.described)),
            other => Err(format!("unexpected answer {:?} to the TLS request", other as char)),
        }
    }

    /// tokio-postgres's mode and connector for the control plane: the same
    /// rustls configuration (and so the same verification) as the data path.
    pub fn control(&self) -> (tokio_postgres::config::SslMode, Option<tokio_postgres_rustls::MakeRustlsConnect>) {
        use tokio_postgres::config::SslMode as Pg;
        let mode = match self.mode {
            SslMode::Disable => Pg::Disable,
            SslMode::Prefer => Pg::Prefer,
            _ => Pg::Require,
        };
        let connector = self.config.as_ref().map(|c| tokio_postgres_rustls::MakeRustlsConnect::new((**c).clone()));
        (mode, connector)
    }
}

pub fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

fn client_config(mode: SslMode, params: &TlsParams) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let algorithms = provider.signature_verification_algorithms;
    // As libpq does: with a root certificate the chain is always checked
    // (even under `prefer`/`require`); the host name only under verify-full.
    let verifier: Arc<dyn ServerCertVerifier> = match (&params.sslrootcert, mode) {
        (Some(path), _) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path, "sslrootcert")? {
                roots.add(cert).map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(NameUnchecked { chain: Some(webpki), algorithms })
            }
        }
        (None, SslMode::VerifyCa | SslMode::VerifyFull) => {
            return Err(format!(
                "sslmode={} needs sslrootcert=<CA file> (shardcar does not read ~/.postgresql/root.crt)",
                mode.as_str()
            ));
        }
        (None, _) => Arc::new(NameUnchecked { chain: None, algorithms }),
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let mut config = match (&params.sslcert, &params.sslkey) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "sslcert")?;
            let key = read_key(key, "sslkey")?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("sslcert/sslkey: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("sslcert and sslkey go together: give both or neither".into()),
    };
    config.enable_sni = match params.sslsni.as_deref() {
        None | Some("1") => true,
        Some("0") => false,
        Some(other) => return Err(format!("sslsni must be 0 or 1, not `{other}`")),
    };
    Ok(config)
}

/// Every mode short of verify-full, as libpq checks it: with a root
/// certificate the chain must lead to it (any name will do), without one
/// the certificate is not checked. The handshake's signatures always are.
#[derive(Debug)]
struct NameUnchecked {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NameUnchecked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        // webpki checks the chain before the name, so a name error means
        // the chain is good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Which of one server's connections are encrypted, for the operator.
#[derive(Debug, Default)]
pub struct Usage {
    encrypted: Arc<AtomicU64>,
    last: Mutex<Option<String>>,
    warned_plain: AtomicBool,
}

/// Counts one open encrypted connection until dropped.
#[derive(Debug)]
pub struct Encrypted(Arc<AtomicU64>);

impl Drop for Encrypted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Usage {
    /// Records a new connection; the guard keeps it counted while it is open.
    pub fn opened(&self, encryption: Option<String>) -> Option<Encrypted> {
        let described = encryption?;
        if let Ok(mut last) = self.last.lock() {
            *last = Some(described);
        }
        self.encrypted.fetch_add(1, Ordering::Relaxed);
        Some(Encrypted(self.encrypted.clone()))
    }

    pub fn encrypted(&self) -> u64 {
        self.encrypted.load(Ordering::Relaxed)
    }

    /// Protocol and cipher of the latest encrypted connection.
    pub fn last(&self) -> Option<String> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Warns once that a server under `prefer` did not offer TLS.
    pub fn warn_plain_once(&self, label: &str, address: &str) {
        if !self.warned_plain.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{label} ({address}) is not encrypted: sslmode=prefer and the server does not offer TLS; \
                 set sslmode=verify-full (or require) in its URL to refuse plain connections"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url() {
        let (rest, p) = TlsParams::split_url(
            "postgres://u@db:5432/app?sslmode=verify-full&sslrootcert=%2Fca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u@db:5432/app?connect_timeout=3");
        assert_eq!(p.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(p.sslrootcert, Some(PathBuf::from("/ca.pem")));
        let (rest, p) = TlsParams::split_url("postgres://u@db/app").unwrap();
        assert_eq!((rest.as_str(), p), ("postgres://u@db/app", TlsParams::default()));
        assert!(TlsParams::split_url("host=db sslmode=require").unwrap_err().contains("URL form"));
    }

    #[test]
    fn loopback_defaults_to_disable_and_other_hosts_to_prefer() {
        let none = TlsParams::default();
        assert_eq!(ShardTls::new("127.0.0.1", &none).unwrap().mode, SslMode::Disable);
        assert_eq!(ShardTls::new("localhost", &none).unwrap().mode, SslMode::Disable);
        assert_eq!(ShardTls::new("db.internal", &none).unwrap().mode, SslMode::Prefer);
    }

    #[test]
    fn verification_needs_a_root_certificate_and_readable_files() {
        let full = TlsParams { sslmode: Some("verify-full".into()), ..TlsParams::default() };
        assert!(ShardTls::new("db", &full).unwrap_err().contains("needs sslrootcert"));
        let missing = TlsParams { sslrootcert: Some("/nonexistent/ca.pem".into()), ..full };
        assert!(ShardTls::new("db", &missing).unwrap_err().contains("/nonexistent/ca.pem"));
        let half = TlsParams { sslmode: Some("require".into()), sslcert: Some("c.pem".into()), ..TlsParams::default() };
        assert!(ShardTls::new("db", &half).unwrap_err().contains("go together"));
        let allow = TlsParams { sslmode: Some("allow".into()), ..TlsParams::default() };
        assert!(ShardTls::new("db", &allow).is_err());
    }
}
