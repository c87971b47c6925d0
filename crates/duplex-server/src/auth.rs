//! Bearer-token authentication: JWTs in `authorization` metadata, verified with a shared
//! secret (HS256) or a public key (RS256 or ES256, chosen by the key's type; the algorithm
//! is pinned to the key, never taken from the token).
//!
//! A token names the session (`sub`), says until when it holds (`exp`, required; `nbf`
//! checked) and which rooms it may read and write:
//!
//! ```json
//! {"sub": "alice", "exp": 1790000000, "rooms": {"read": ["lobby", "game.*"], "write": ["game.eu.*"]}}
//! ```
//!
//! A token whose header lists critical extensions (`crit`) is refused: RFC 7515 §4.1.11
//! asks a recipient to refuse extensions it does not understand, and duplex understands
//! none.
//!
//! With `--allow-anonymous`, a caller without a token gets the anonymous rights (read-only
//! by default: `--anonymous-read` / `--anonymous-write`), never a token's, and a name under
//! [`ANONYMOUS_PREFIX`], so dropping a limited token gains no rights and no one's name.
//! With no key configured at all (auth off), every caller is anonymous with every right.
//!
//! Tokens are never logged or echoed back: errors say what is wrong, not what was sent.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use duplex_hub::{Identity, Naming, Rights};
use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Header (gRPC metadata key) naming an anonymous session (the `sender` of its messages).
pub const NAME_HEADER: &str = "duplex-name";

/// Prefix of every anonymous caller's name when tokens are verified: a token's subject is
/// taken as is, so without it an anonymous caller could call itself `alice`.
pub const ANONYMOUS_PREFIX: &str = "anon:";

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 5;

/// Why the token verifier could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// A key or secret file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// The public key file holds no key duplex can verify with.
    #[error("{path} is not an RSA or EC (P-256) public key in PEM form")]
    Key {
        /// The file.
        path: PathBuf,
    },
    /// The HS256 secret is shorter than 32 bytes.
    #[error("{path} is too short: an HS256 secret needs at least 32 bytes")]
    ShortSecret {
        /// The file.
        path: PathBuf,
    },
    /// Both a secret and a public key were given.
    #[error("give either --jwt-secret-file or --jwt-public-key-file, not both")]
    TwoKeys,
    /// An anonymous rights pattern is not a valid room pattern.
    #[error("--anonymous-read / --anonymous-write: {0}")]
    AnonymousRights(String),
}

/// Why a caller could not be identified. Each maps to UNAUTHENTICATED (`status.rs`); the
/// messages say what is wrong with the credentials, never what they were.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Tokens are required and none was sent.
    #[error("missing token: send `authorization: Bearer <JWT>` metadata")]
    MissingToken,
    /// The `authorization` header is not `Bearer <token>` in ASCII.
    #[error("{0}")]
    MalformedHeader(&'static str),
    /// The token does not verify, has expired, or its claims are unusable.
    #[error("{0}")]
    InvalidToken(String),
}

/// Turns request headers (gRPC metadata, or a WebSocket upgrade's headers) into an
/// [`Identity`].
#[derive(Clone)]
pub struct Authenticator {
    verifier: Option<(DecodingKey, Validation)>,
    allow_anonymous: bool,
    /// What a caller without a token may do when tokens are verified and anonymous calls
    /// are allowed (with auth off, callers get every right).
    anonymous_rights: Rights,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "algorithm",
                &self.verifier.as_ref().map(|(_, v)| v.algorithms.clone()),
            )
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

/// Where the token verifier's settings come from.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// HS256 secret file (`--jwt-secret-file`); turns verification on.
    pub secret_file: Option<PathBuf>,
    /// RS256/ES256 public key file (`--jwt-public-key-file`); turns verification on.
    pub public_key_file: Option<PathBuf>,
    /// Required `iss` claim, if any.
    pub issuer: Option<String>,
    /// Required `aud` claim, if any.
    pub audience: Option<String>,
    /// With verification on, whether callers without a token are let in (anonymous).
    pub allow_anonymous: bool,
    /// Room patterns anonymous callers may read, with tokens verified.
    pub anonymous_read: Vec<String>,
    /// Room patterns anonymous callers may publish to, with tokens verified.
    pub anonymous_write: Vec<String>,
}

impl Authenticator {
    /// No verification: every call is anonymous with every right.
    pub fn open() -> Self {
        Self {
            verifier: None,
            allow_anonymous: true,
            anonymous_rights: Rights::all(),
        }
    }

    /// The verifier `settings` describe: [`Authenticator::open`] when no key is given.
    pub fn from_settings(settings: &AuthSettings) -> Result<Self, AuthSetupError> {
        let (key, algorithm) = match (&settings.secret_file, &settings.public_key_file) {
            (None, None) => return Ok(Self::open()),
            (Some(_), Some(_)) => return Err(AuthSetupError::TwoKeys),
            (Some(path), None) => {
                let secret = read(path)?;
                let secret = trim_newline(&secret);
                if secret.len() < 32 {
                    return Err(AuthSetupError::ShortSecret { path: path.clone() });
                }
                (DecodingKey::from_secret(secret), Algorithm::HS256)
            }
            (None, Some(path)) => public_key(path)?,
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present in the token, not merely match
        // when present; without a configured audience, a token meant for one is refused.
        let mut required = vec!["exp", "sub"];
        match &settings.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        if let Some(audience) = &settings.audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let anonymous_rights = Rights::new(&settings.anonymous_read, &settings.anonymous_write)
            .map_err(|error| AuthSetupError::AnonymousRights(error.to_string()))?;
        Ok(Self {
            verifier: Some((key, validation)),
            allow_anonymous: settings.allow_anonymous,
            anonymous_rights,
        })
    }

    /// Whether tokens are verified (`--jwt-secret-file` or `--jwt-public-key-file`).
    pub fn verifies_tokens(&self) -> bool {
        self.verifier.is_some()
    }

    /// The caller's identity: from a verified token, or anonymous (named by the
    /// `duplex-name` header) when auth is off or anonymous calls are allowed.
    pub fn identify(&self, metadata: &HeaderMap) -> Result<Identity, AuthError> {
        let Some((key, validation)) = &self.verifier else {
            // Auth is off: whatever `authorization` holds is not ours to judge.
            return Ok(anonymous(metadata));
        };
        let token = bearer_token(metadata)?;
        let Some(token) = token else {
            return if self.allow_anonymous {
                let mut identity = anonymous(metadata);
                identity.name = format!("{ANONYMOUS_PREFIX}{}", identity.name);
                identity.rights = self.anonymous_rights.clone();
                identity.naming = Naming::Chosen {
                    prefix: ANONYMOUS_PREFIX.to_owned(),
                };
                Ok(identity)
            } else {
                Err(AuthError::MissingToken)
            };
        };
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| AuthError::InvalidToken(token_error(error.kind())))?;
        if header.crit.is_some() {
            return Err(AuthError::InvalidToken(
                "token header lists critical extensions (crit) this server does not \
                 understand"
                    .into(),
            ));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|error| AuthError::InvalidToken(token_error(error.kind())))?
            .claims;
        claims_identity(claims).map_err(AuthError::InvalidToken)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, AuthSetupError> {
    std::fs::read(path).map_err(|source| AuthSetupError::Read {
        path: path.to_owned(),
        source,
    })
}

fn trim_newline(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

fn public_key(path: &Path) -> Result<(DecodingKey, Algorithm), AuthSetupError> {
    let pem = read(path)?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, Algorithm::ES256));
    }
    Err(AuthSetupError::Key {
        path: path.to_owned(),
    })
}

/// The token from `authorization: Bearer …`, if any.
fn bearer_token(metadata: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::MalformedHeader("authorization metadata is not ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(AuthError::MalformedHeader(
            "authorization metadata must be `Bearer <JWT>`",
        )),
    }
}

fn anonymous(metadata: &HeaderMap) -> Identity {
    let name = metadata
        .get(NAME_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|name| !name.is_empty() && name.len() <= 128)
        .unwrap_or("anonymous");
    Identity::anonymous(name)
}

fn token_error(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not valid yet (nbf is in the future)".into(),
        ErrorKind::InvalidSignature => "token signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "token algorithm is not the one this server accepts".into(),
        ErrorKind::InvalidIssuer => "token issuer (iss) is not accepted".into(),
        ErrorKind::InvalidAudience => "token audience (aud) is not accepted".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("token lacks the `{claim}` claim"),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "token is not a well-formed JWT".into(),
        _ => "token rejected".into(),
    }
}

/// The claims duplex reads from a token.
#[derive(Debug, serde::Deserialize)]
pub struct Claims {
    /// The subject: the caller's name.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// The rooms granted; none when absent.
    #[serde(default)]
    pub rooms: RoomClaims,
}

/// Room patterns a token grants (see `duplex_hub::Rights`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct RoomClaims {
    /// Patterns of rooms the bearer may join, subscribe to and read.
    #[serde(default)]
    pub read: Vec<String>,
    /// Patterns of rooms the bearer may publish to.
    #[serde(default)]
    pub write: Vec<String>,
}

/// The identity verified claims grant.
pub fn claims_identity(claims: Claims) -> Result<Identity, String> {
    if claims.sub.is_empty() || claims.sub.len() > 128 {
        return Err("token `sub` must be 1 to 128 bytes".into());
    }
    let rights = Rights::new(&claims.rooms.read, &claims.rooms.write)
        .map_err(|error| format!("token room claims: {error}"))?;
    let expires_at = UNIX_EPOCH
        .checked_add(Duration::from_secs(claims.exp))
        .ok_or("token `exp` is out of range")?;
    Ok(Identity {
        quota_key: format!("sub:{}", claims.sub),
        name: claims.sub,
        rights,
        expires_at: Some(expires_at),
        naming: Naming::Verified,
    })
}

/// The publish rate budget of an anonymous caller at `peer`: its IP address (its /64 for
/// IPv6, which hands a client a whole /64), since it has no verified name. Every
/// transport sets [`Identity::quota_key`] with this for callers without a token.
pub fn peer_quota_key(peer: Option<std::net::SocketAddr>) -> String {
    match peer.map(|addr| addr.ip().to_canonical()) {
        Some(std::net::IpAddr::V6(ip)) => {
            let prefix = u128::from(ip) & !((1u128 << 64) - 1);
            format!("ip:{}/64", std::net::Ipv6Addr::from(prefix))
        }
        Some(ip) => format!("ip:{ip}"),
        None => "ip:unknown".into(),
    }
}

/// Seconds since the epoch, for building tokens in tests and tools.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The body of the `token` fuzz target, also run on stable by `tests/fuzz_token.rs`:
/// arbitrary bytes as a bearer token, and as a claims document. The property: never a
/// panic, and nothing but a well-signed token yields an identity.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// The secret the fuzz verifier trusts; inputs are not expected to be signed with it.
    pub const SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-fuzzing-secret";

    fn verifier() -> &'static Authenticator {
        static VERIFIER: std::sync::OnceLock<Authenticator> = std::sync::OnceLock::new();
        VERIFIER.get_or_init(|| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp", "sub"]);
            validation.validate_aud = false;
            Authenticator {
                verifier: Some((DecodingKey::from_secret(SECRET), validation)),
                allow_anonymous: false,
                anonymous_rights: Rights::all(),
            }
        })
    }

    /// Runs one input (see the module's doc).
    pub fn token(input: &[u8]) {
        let text = String::from_utf8_lossy(input);
        let mut metadata = HeaderMap::new();
        if let Ok(value) = format!("Bearer {text}").parse() {
            metadata.insert("authorization", value);
            if let Ok(identity) = verifier().identify(&metadata) {
                // Only a token signed with SECRET gets here; fuzz inputs cannot be.
                let signed = jsonwebtoken::decode::<serde::de::IgnoredAny>(
                    text.trim(),
                    &DecodingKey::from_secret(SECRET),
                    &verifier().verifier.as_ref().expect("set").1,
                );
                assert!(
                    signed.is_ok(),
                    "identity {identity:?} from an unsigned token"
                );
            }
        }
        if let Ok(claims) = serde_json::from_slice::<Claims>(input) {
            let _ = claims_identity(claims);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut metadata = HeaderMap::new();
        assert_eq!(bearer_token(&metadata).unwrap(), None);
        metadata.insert("authorization", "Bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer_token(&metadata).unwrap(), Some("abc.def.ghi"));
        metadata.insert("authorization", "bearer   xyz ".parse().unwrap());
        assert_eq!(bearer_token(&metadata).unwrap(), Some("xyz"));
        metadata.insert("authorization", "Basic dXNlcg==".parse().unwrap());
        assert!(bearer_token(&metadata).is_err());
        metadata.insert("authorization", "Bearer ".parse().unwrap());
        assert!(bearer_token(&metadata).is_err());
    }

    #[test]
    fn anonymous_callers_are_budgeted_by_address_and_ipv6_by_its_64() {
        let v4 = "192.0.2.1:5000".parse().ok();
        assert_eq!(peer_quota_key(v4), "ip:192.0.2.1");
        let mapped = "[::ffff:192.0.2.1]:5000".parse().ok();
        assert_eq!(peer_quota_key(mapped), "ip:192.0.2.1");
        let v6 = "[2001:db8:1:2:3:4:5:6]:5000".parse().ok();
        assert_eq!(peer_quota_key(v6), "ip:2001:db8:1:2::/64");
        assert_eq!(peer_quota_key(None), "ip:unknown");
    }

    #[test]
    fn claims_map_to_rights() {
        let claims: Claims = serde_json::from_str(
            r#"{"sub":"alice","exp":4000000000,"rooms":{"read":["lobby","game.*"],"write":["game.eu.*"]}}"#,
        )
        .unwrap();
        let identity = claims_identity(claims).unwrap();
        assert_eq!(identity.name, "alice");
        assert!(identity.rights.can_read("game.us.1"));
        assert!(!identity.rights.can_write("lobby"));
        let bad: Claims =
            serde_json::from_str(r#"{"sub":"x","exp":1,"rooms":{"read":["a*b"]}}"#).unwrap();
        assert!(claims_identity(bad).is_err());
        let huge: Claims =
            serde_json::from_str(r#"{"sub":"x","exp":18446744073709551615}"#).unwrap();
        assert!(
            claims_identity(huge).is_err(),
            "an exp past the clock's range is refused, not a panic"
        );
        let no_rooms: Claims = serde_json::from_str(r#"{"sub":"x","exp":1}"#).unwrap();
        let identity = claims_identity(no_rooms).unwrap();
        assert!(!identity.rights.can_read("lobby"), "no claims, no rights");
    }
}
