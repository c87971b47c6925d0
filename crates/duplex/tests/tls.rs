//! TLS and mutual TLS between real processes: `duplex serve` with certificates made by
//! rcgen, `duplex echo` and `duplex chat` as clients; plaintext refused on the network.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{duplex, spawn_listening};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA, a server certificate for `localhost` and a client certificate, as PEM files.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["client.example".into()]);
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca_cert.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

fn serve_tls(pki: &Pki, mutual: bool) -> (common::ChildGuard, std::net::SocketAddr) {
    serve_tls_with(pki, mutual, &[])
}

/// `duplex serve` with TLS (and mTLS if `mutual`) and extra flags.
fn serve_tls_with(
    pki: &Pki,
    mutual: bool,
    extra: &[&str],
) -> (common::ChildGuard, std::net::SocketAddr) {
    let mut command = duplex();
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--tls-cert",
        ])
        .arg(&pki.server_cert)
        .arg("--tls-key")
        .arg(&pki.server_key);
    if mutual {
        command.arg("--tls-client-ca").arg(&pki.ca);
    }
    command.args(extra);
    let (child, addr, _) = spawn_listening(command);
    (child, addr)
}

/// Runs `duplex echo` with `args` and one line; returns (ok, stdout, stderr).
fn echo(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let mut command = duplex();
    command.arg("echo").args(args);
    let (code, out, err) = common::run_with_input(command, "secret hello\n");
    (code == Some(0), out, err)
}

#[test]
fn tls_echo_works_and_plaintext_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (_server, addr) = serve_tls(&pki, false);
    let addr = addr.to_string();

    let (ok, out, err) = echo(&[
        "--addr".as_ref(),
        addr.as_ref(),
        "--ca".as_ref(),
        pki.ca.as_os_str(),
        "--tls-domain".as_ref(),
        "localhost".as_ref(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "server: <<secret hello>>\n");

    let (ok, _, _) = echo(&[
        "--addr".as_ref(),
        addr.as_ref(),
        "--connect-timeout".as_ref(),
        "2s".as_ref(),
    ]);
    assert!(!ok, "a plaintext client gets nothing from a TLS port");

    // A CA that did not sign the server's certificate is refused.
    let other = tempfile::tempdir().unwrap();
    let stranger = make_pki(other.path());
    let (ok, _, err) = echo(&[
        "--addr".as_ref(),
        addr.as_ref(),
        "--ca".as_ref(),
        stranger.ca.as_os_str(),
        "--tls-domain".as_ref(),
        "localhost".as_ref(),
    ]);
    assert!(!ok);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (_server, addr) = serve_tls(&pki, true);
    let addr = addr.to_string();
    let base = [
        "--addr".as_ref(),
        addr.as_ref(),
        "--ca".as_ref(),
        pki.ca.as_os_str(),
        "--tls-domain".as_ref(),
        "localhost".as_ref(),
    ];

    let (ok, _, _) = echo(&base);
    assert!(!ok, "no client certificate, no service");

    let mut with_cert = base.to_vec();
    with_cert.extend([
        "--tls-cert".as_ref(),
        pki.client_cert.as_os_str(),
        "--tls-key".as_ref(),
        pki.client_key.as_os_str(),
    ]);
    let (ok, out, err) = echo(&with_cert);
    assert!(ok, "{err}");
    assert_eq!(out, "server: <<secret hello>>\n");
}

#[test]
fn chat_reaches_rooms_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (_server, addr) = serve_tls(&pki, false);
    let output = duplex()
        .args([
            "chat",
            "--room",
            "secure",
            "--name",
            "carol",
            "--addr",
            &addr.to_string(),
            "--tls-domain",
            "localhost",
            "--ca",
        ])
        .arg(&pki.ca)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let screen = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(screen.contains("-- joined secure as carol"), "{screen}");
}

#[test]
fn plaintext_on_a_network_address_is_refused_without_insecure() {
    // Refused before anything is bound: nothing listens beyond loopback in this test.
    let output = duplex()
        .args(["serve", "--listen", "0.0.0.0:0", "--store", "memory"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8(output.stderr).unwrap();
    assert!(
        err.contains("refusing to serve plaintext on 0.0.0.0"),
        "{err}"
    );
    assert!(err.contains("--insecure"), "{err}");
}

#[test]
fn bench_measures_a_tls_server() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (_server, addr) = serve_tls(&pki, false);
    let output = duplex()
        .args([
            "bench",
            "echo-pingpong",
            "--json",
            "--quiet",
            "--messages",
            "50",
            "--addr",
            &addr.to_string(),
        ])
        .args(["--tls-domain", "localhost", "--ca"])
        .arg(&pki.ca)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["messages"], 50);
    assert_eq!(report["errors_total"], 0, "{report}");
}

#[tokio::test]
async fn the_ping_policy_holds_on_tls_connections_too() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (_server, addr) = serve_tls_with(&pki, false, &["--min-ping-interval", "10s"]);

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki.ca).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap();
    for i in 0..10u8 {
        tls.write_all(&[0, 0, 8, 0x6, 0, 0, 0, 0, 0]).await.unwrap();
        tls.write_all(&[i; 8]).await.unwrap();
    }
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection is closed");
    let calmed = bytes
        .windows(b"too_many_pings".len())
        .any(|w| w == b"too_many_pings");
    assert!(
        calmed,
        "GOAWAY too_many_pings over TLS ({} bytes read)",
        bytes.len()
    );
}
