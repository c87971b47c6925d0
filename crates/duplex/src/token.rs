//! Bearer tokens for the shipped tools: the `--token` / `--token-file` / `DUPLEX_TOKEN`
//! options of the client commands, and `duplex token`, which mints a development JWT with
//! the claims `duplex serve --jwt-secret-file` / `--jwt-public-key-file` checks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// How a client command proves who it is to a server that requires tokens.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientTokenArgs {
    /// JWT to send as `authorization: Bearer …` (mint one with `duplex token`). Prefer
    /// --token-file or DUPLEX_TOKEN: a command line is visible to other local users.
    #[arg(
        long,
        env = "DUPLEX_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,

    /// Read the JWT from this file (surrounding whitespace ignored).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl ClientTokenArgs {
    /// The token to send, if one was given.
    pub(crate) fn token(&self) -> anyhow::Result<Option<String>> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => token.trim().to_owned(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?
                .trim()
                .to_owned(),
            (None, None) => return Ok(None),
        };
        if token.is_empty() {
            bail!("the token is empty");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("the token has characters a JWT cannot contain (spaces or non-ASCII)");
        }
        Ok(Some(token))
    }

    /// `authorization` metadata for a call, if a token was given.
    pub(crate) fn authorization(
        &self,
    ) -> anyhow::Result<Option<tonic::metadata::AsciiMetadataValue>> {
        self.token()?
            .map(|token| {
                format!("Bearer {token}")
                    .parse()
                    .context("the token cannot be sent as a header")
            })
            .transpose()
    }
}

/// The `sub` a token names, read without verifying it (the server verifies): a client
/// shows it as its own name, since the server names token sessions after it.
pub(crate) fn subject(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Subject {
        sub: String,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Subject>(token)
        .ok()
        .map(|claims| claims.sub)
}

/// Arguments of `duplex token`.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    /// Sign with this HS256 secret (the file given to `duplex serve --jwt-secret-file`;
    /// at least 32 bytes, a trailing newline ignored).
    #[arg(
        long,
        required_unless_present = "private_key_file",
        conflicts_with = "private_key_file"
    )]
    secret_file: Option<PathBuf>,

    /// Sign with this RSA (RS256) or EC P-256 (ES256) private key in PEM form, whose public
    /// key is given to `duplex serve --jwt-public-key-file`.
    #[arg(long)]
    private_key_file: Option<PathBuf>,

    /// Who the token names: the sender and presence name of its sessions.
    #[arg(long)]
    sub: String,

    /// Room patterns the token may read (join, subscribe, history, presence): exact names,
    /// prefixes such as `game.*`, or `*` for every room. Repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    read: Vec<String>,

    /// Room patterns the token may publish to (same forms as --read).
    #[arg(long, value_delimiter = ',')]
    write: Vec<String>,

    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,

    /// `iss` claim, for servers started with --jwt-issuer.
    #[arg(long)]
    issuer: Option<String>,

    /// `aud` claim, for servers started with --jwt-audience.
    #[arg(long)]
    audience: Option<String>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    rooms: Rooms<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct Rooms<'a> {
    read: &'a [String],
    write: &'a [String],
}

/// Prints a signed token on stdout.
pub(crate) fn run(args: TokenArgs) -> anyhow::Result<()> {
    println!("{}", mint(&args)?);
    Ok(())
}

fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    if args.sub.is_empty() || args.sub.len() > 128 {
        bail!("--sub must be 1 to 128 bytes");
    }
    if args.ttl.is_zero() {
        bail!("--ttl must be longer than 0s");
    }
    let (key, algorithm) = match (&args.secret_file, &args.private_key_file) {
        (Some(path), _) => {
            let secret = read(path)?;
            let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
            let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
            if secret.len() < 32 {
                bail!(
                    "{} is too short: an HS256 secret needs at least 32 bytes \
                     (make one with `head -c 32 /dev/urandom | base64 > {}`)",
                    path.display(),
                    path.display()
                );
            }
            (EncodingKey::from_secret(secret), Algorithm::HS256)
        }
        (None, Some(path)) => {
            let pem = read(path)?;
            if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
                (key, Algorithm::RS256)
            } else if let Ok(key) = EncodingKey::from_ec_pem(&pem) {
                (key, Algorithm::ES256)
            } else {
                bail!(
                    "{} is not an RSA or EC (P-256) private key in PEM form",
                    path.display()
                );
            }
        }
        (None, None) => bail!("give --secret-file or --private-key-file"),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let claims = Claims {
        sub: &args.sub,
        iat: now,
        exp: now.saturating_add(args.ttl.as_secs().max(1)),
        rooms: Rooms {
            read: &args.read,
            write: &args.write,
        },
        iss: args.issuer.as_deref(),
        aud: args.audience.as_deref(),
    };
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).context("cannot sign the token")
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
