//! TLS for application clients: the certificate chain and key named in
//! `[listen]`, read again when either file changes, so that a renewed
//! certificate is served without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::{read_certs, read_key};

pub struct Listener {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<Loaded>,
}

struct Loaded {
    acceptor: TlsAcceptor,
    stamp: Stamp,
}

/// What the files looked like when they were read: modification time and size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp([Option<(SystemTime, u64)>; 2]);

impl Stamp {
    fn of(cert: &Path, key: &Path) -> Stamp {
        let one = |p: &Path| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        Stamp([one(cert), one(key)])
    }
}

impl Listener {
    /// Reads the files now: a missing or bad file is a config error.
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Listener, String> {
        let stamp = Stamp::of(&cert, &key);
        let acceptor = acceptor(&cert, &key)?;
        Ok(Listener { cert, key, current: ArcSwap::from_pointee(Loaded { acceptor, stamp }) })
    }

    /// The acceptor for a new handshake; the files are read again first if
    /// they changed. A renewal caught half-written (a new certificate with
    /// the old key) keeps the previous pair until the next change.
    pub fn acceptor(&self) -> TlsAcceptor {
        let stamp = Stamp::of(&self.cert, &self.key);
        let current = self.current.load();
        if current.stamp == stamp {
            return current.acceptor.clone();
        }
        let acceptor = match acceptor(&self.cert, &self.key) {
            Ok(new) => {
                tracing::info!("client TLS: read {} again", self.cert.display());
                new
            }
            Err(e) => {
                tracing::error!("client TLS: keeping the previous certificate: {e}");
                current.acceptor.clone()
            }
        };
        self.current.store(Arc::new(Loaded { acceptor: acceptor.clone(), stamp }));
        acceptor
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let chain = read_certs(cert, "listen.tls_cert")?;
    let key = read_key(key, "listen.tls_key")?;
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("listen.tls_cert/tls_key: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
