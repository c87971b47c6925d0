//! TLS for `duplex tap`: terminating it towards clients (`--tls-cert`/`--tls-key`) and
//! originating it towards the upstream (`--upstream-tls` with `--upstream-ca`), with
//! rustls. Either side may be plain. The tap decodes the plaintext in between, so with
//! both set it sees a TLS connection that neither peer knows is being watched only
//! because each trusts the certificates given here.
//!
//! ALPN: the tap offers and asks for `h2` only; gRPC needs nothing else.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// TLS options of `duplex tap`.
#[derive(Debug, clap::Args)]
pub(super) struct TlsArgs {
    /// Terminate TLS from clients with this certificate chain (PEM). Needs `--tls-key`.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of `--tls-cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Connect to the upstream over TLS. Needs `--upstream-ca`.
    #[arg(long, requires = "upstream_ca")]
    upstream_tls: bool,

    /// CA certificates (PEM) trusted for the upstream's certificate.
    #[arg(long, value_name = "PEM", requires = "upstream_tls")]
    upstream_ca: Option<PathBuf>,

    /// Name to verify the upstream's certificate against (default: the host of `--upstream`).
    #[arg(long, value_name = "NAME", requires = "upstream_tls")]
    upstream_server_name: Option<String>,
}

/// A byte stream the tap can proxy: plain TCP or TLS over it.
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The TLS configuration of both sides, built once at start.
pub(super) struct Tls {
    acceptor: Option<TlsAcceptor>,
    connector: Option<(TlsConnector, ServerName<'static>)>,
}

impl Tls {
    pub(super) fn from_args(args: &TlsArgs, upstream: &str) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let acceptor = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .with_context(|| format!("cannot read certificates from {}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("cannot read a private key from {}", key.display()))?;
                let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()?
                    .with_no_client_auth()
                    .with_single_cert(chain, key)
                    .context("the certificate and key do not fit together")?;
                config.alpn_protocols = vec![b"h2".to_vec()];
                Some(TlsAcceptor::from(Arc::new(config)))
            }
            _ => None,
        };
        let connector = match (&args.upstream_tls, &args.upstream_ca) {
            (true, Some(ca)) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("cannot read CA certificates from {}", ca.display()))?
                {
                    roots
                        .add(cert.with_context(|| format!("bad certificate in {}", ca.display()))?)
                        .context("unusable CA certificate")?;
                }
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"h2".to_vec()];
                let name = match &args.upstream_server_name {
                    Some(name) => name.clone(),
                    None => host_of(upstream).to_owned(),
                };
                let name = ServerName::try_from(name.clone())
                    .with_context(|| format!("`{name}` is not a valid TLS server name"))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            _ => None,
        };
        Ok(Self {
            acceptor,
            connector,
        })
    }

    /// A short description for the connection line, when TLS is used.
    pub(super) fn describe(&self) -> Option<&'static str> {
        match (&self.acceptor, &self.connector) {
            (None, None) => None,
            (Some(_), None) => Some("TLS from the client"),
            (None, Some(_)) => Some("TLS to the upstream"),
            (Some(_), Some(_)) => Some("TLS on both sides"),
        }
    }

    /// Performs the handshakes that are configured.
    pub(super) async fn wrap(
        &self,
        client: TcpStream,
        upstream: TcpStream,
    ) -> anyhow::Result<(Box<dyn Io>, Box<dyn Io>)> {
        let client: Box<dyn Io> = match &self.acceptor {
            Some(acceptor) => Box::new(acceptor.accept(client).await.context("with the client")?),
            None => Box::new(client),
        };
        let upstream: Box<dyn Io> = match &self.connector {
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), upstream)
                    .await
                    .context("with the upstream")?,
            ),
            None => Box::new(upstream),
        };
        Ok((client, upstream))
    }
}

/// The host part of HOST:PORT (brackets removed from an IPv6 literal).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}
