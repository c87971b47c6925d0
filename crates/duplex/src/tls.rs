//! TLS options shared by the client commands (`echo`, `chat`).

use std::path::PathBuf;

use anyhow::Context as _;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// How a client command reaches a TLS server.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientTlsArgs {
    /// Connect with TLS, verifying the server against the system's trusted roots (or --ca).
    #[arg(long)]
    pub tls: bool,

    /// Trust this CA certificate (PEM) for the server instead of the system roots. Implies --tls.
    #[arg(long)]
    pub ca: Option<PathBuf>,

    /// Name the server's certificate must carry (default: the host in --addr).
    #[arg(long)]
    pub tls_domain: Option<String>,

    /// Client certificate (PEM) for servers that require mutual TLS. Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// The TLS settings, or `None` for plaintext.
    pub(crate) fn config(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        if !self.tls && self.ca.is_none() && self.tls_cert.is_none() {
            return Ok(None);
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => config.with_native_roots(),
        };
        if let Some(domain) = &self.tls_domain {
            config = config.domain_name(domain.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(config))
    }
}
