//! The `token` fuzz target's body (`duplex_server::auth::fuzzing::token`) on stable:
//! real token shapes (valid, expired, tampered, alg none, garbage JSON) and bounded
//! deterministic mutations of them. `DUPLEX_FUZZ_ITERATIONS` raises the count.

use duplex_server::auth::fuzzing::{SECRET, token};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let sign = |claims: serde_json::Value, secret: &[u8]| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
        .into_bytes()
    };
    let far = duplex_server::auth::unix_now() + 3600;
    vec![
        sign(
            serde_json::json!({"sub":"a","exp":far,"rooms":{"read":["*"],"write":["x.*"]}}),
            b"some-other-secret-of-plenty-length!!",
        ),
        sign(
            serde_json::json!({"sub":"a","exp":1}),
            b"some-other-secret-of-plenty-length!!",
        ),
        b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.".to_vec(),
        br#"{"sub":"a","exp":4000000000,"rooms":{"read":["a*b","*"],"write":[]}}"#.to_vec(),
        br#"{"sub":"","exp":1,"rooms":{"read":[1,2]}}"#.to_vec(),
        b"....".to_vec(),
        Vec::new(),
    ]
}

#[test]
fn no_input_panics_and_none_forges_an_identity() {
    // The verifier itself accepts a properly signed token (the property is not vacuous).
    let far = duplex_server::auth::unix_now() + 3600;
    let good = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub":"ok","exp":far}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    token(good.as_bytes());

    let iterations = std::env::var("DUPLEX_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let seeds = seeds();
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for seed in &seeds {
        token(seed);
    }
    for _ in 0..iterations {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(3) {
            let at = rng.below(input.len() + 1);
            match rng.below(3) {
                0 if at < input.len() => input[at] ^= 1 << rng.below(8),
                1 => input.truncate(at),
                _ => input.insert(at, b"{}[]\":,.=-_aZ09\x00\xff"[rng.below(17)]),
            }
        }
        token(&input);
    }
}
