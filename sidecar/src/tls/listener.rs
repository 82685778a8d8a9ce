//! TLS for application clients: the certificate chain and key named in
//! `[listen]`, read again when either file changes, so that a renewed
//! certificate is served without a restart.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::{read_certs, read_key};
use crate::watched::Watched;

pub struct Listener(Watched<TlsAcceptor>);

impl Listener {
    /// Reads the files now: a missing or bad file is a config error.
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Listener, String> {
        Watched::new(vec![cert, key], |files| acceptor(&files[0], &files[1])).map(Listener)
    }

    /// The acceptor for a new handshake, with the files as they are now.
    pub fn acceptor(&self) -> TlsAcceptor {
        (*self.0.get()).clone()
    }
}

fn acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor, String> {
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
