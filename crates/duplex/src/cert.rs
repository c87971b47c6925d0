//! `duplex cert`: a local certificate authority and certificates signed by it, for trying
//! TLS and mutual TLS on one machine. Not for production: a real deployment gets its
//! server certificate from the CA its clients already trust.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Arguments of `duplex cert`.
#[derive(Debug, clap::Args)]
pub(crate) struct CertArgs {
    /// Directory to write into (created if missing): ca.pem, server.pem, server.key,
    /// client.pem, client.key.
    #[arg(long, default_value = "./duplex-tls")]
    out: PathBuf,

    /// Names and IP addresses the server certificate is valid for. Repeat or separate with
    /// commas.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
    host: Vec<String>,

    /// Name in the client certificate (for `duplex serve --tls-client-ca`).
    #[arg(long, default_value = "duplex-client")]
    client_name: String,

    /// Replace files that already exist.
    #[arg(long)]
    force: bool,
}

/// The files `duplex cert` writes, in order.
const FILES: [&str; 5] = [
    "ca.pem",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
];

/// Writes the CA and the two certificates, then says how to use them.
pub(crate) fn run(args: CertArgs) -> anyhow::Result<()> {
    if !args.force
        && let Some(existing) = FILES.iter().map(|f| args.out.join(f)).find(|p| p.exists())
    {
        bail!(
            "{} exists: give --force to replace it, or another --out",
            existing.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = name("duplex development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::from_params(&ca, &ca_key);

    let leaf = |names: Vec<String>, common: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = name(common);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer)?;
        anyhow::Ok((cert.pem(), key.serialize_pem()))
    };
    let first_host = args.host.first().map_or("localhost", String::as_str);
    let (server_pem, server_key) = leaf(
        args.host.clone(),
        first_host,
        ExtendedKeyUsagePurpose::ServerAuth,
    )
    .context("cannot make the server certificate (is every --host a name or IP address?)")?;
    let (client_pem, client_key) = leaf(
        vec![args.client_name.clone()],
        &args.client_name,
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;

    write(&args.out, "ca.pem", &ca_cert.pem(), false)?;
    write(&args.out, "server.pem", &server_pem, false)?;
    write(&args.out, "server.key", &server_key, true)?;
    write(&args.out, "client.pem", &client_pem, false)?;
    write(&args.out, "client.key", &client_key, true)?;

    let dir = args.out.display();
    println!("wrote {dir}/{{ca.pem,server.pem,server.key,client.pem,client.key}}");
    println!("server:  duplex serve --tls-cert {dir}/server.pem --tls-key {dir}/server.key");
    println!("client:  duplex echo --ca {dir}/ca.pem --addr {first_host}:50051");
    println!(
        "mutual TLS: add --tls-client-ca {dir}/ca.pem to serve, and --tls-cert {dir}/client.pem \
         --tls-key {dir}/client.key to the client"
    );
    Ok(())
}

fn name(common: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common);
    name
}

/// Writes one file; private keys readable by their owner only.
fn write(dir: &Path, file: &str, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    let path = dir.join(file);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    options
        .open(&path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}
