//! The fuzz target's body (`duplex_wire::fuzzing::run`) on stable Rust: every seed of
//! `fuzz/corpus/decode/`, then a bounded number of deterministic mutations of them and
//! of random bytes. It checks what the fuzzer checks: no panic on any input, and the
//! same frames whatever the chunking. `DUPLEX_FUZZ_ITERATIONS` raises the count.

use std::path::PathBuf;

use duplex_wire::Schema;

/// Mutated inputs per run unless `DUPLEX_FUZZ_ITERATIONS` says otherwise: a few seconds
/// in a debug build.
const DEFAULT_ITERATIONS: usize = 4_000;

/// xorshift64*: small, deterministic, good enough to pick mutations.
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

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode");
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 6, "the seed corpus is missing");
    seeds
}

fn schema() -> Schema {
    let mut schema = Schema::new();
    schema
        .add_descriptor_set(duplex_proto::FILE_DESCRIPTOR_SET)
        .unwrap();
    schema
}

/// One libFuzzer-style mutation: flip bits, set interesting bytes, insert, delete,
/// duplicate a slice, or splice in part of another seed.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    const INTERESTING: [u8; 8] = [0x00, 0x01, 0x04, 0x08, 0x20, 0x7f, 0x80, 0xff];
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below(16).min(len - i);
                input.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below(64).min(len - i);
                let copy = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let i = rng.below(other.len());
                let n = rng.below(128).min(other.len() - i);
                let at = rng.below(len + 1);
                input.splice(at..at, other[i..i + n].iter().copied());
            }
            _ => {
                let at = rng.below(len + 1);
                input.truncate(at);
            }
        }
    }
}

#[test]
fn every_seed_decodes_without_panicking() {
    let schema = schema();
    for (name, seed) in seeds() {
        let result = std::panic::catch_unwind(|| duplex_wire::fuzzing::run(&seed, &schema));
        assert!(result.is_ok(), "seed {name} panicked");
    }
}

#[test]
fn mutated_and_random_inputs_never_panic() {
    let schema = schema();
    let seeds = seeds();
    let iterations = std::env::var("DUPLEX_FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_ITERATIONS);
    let mut rng = Rng(0x5eed_d00d_cafe_f00d);
    for i in 0..iterations {
        let mut input = if i % 10 == 9 {
            (0..rng.below(512)).map(|_| rng.next() as u8).collect()
        } else {
            seeds[rng.below(seeds.len())].1.clone()
        };
        let other = &seeds[rng.below(seeds.len())].1;
        mutate(&mut rng, &mut input, other);
        let result = std::panic::catch_unwind(|| duplex_wire::fuzzing::run(&input, &schema));
        if result.is_err() {
            let path = std::env::temp_dir().join(format!("duplex-fuzz-crash-{i}"));
            std::fs::write(&path, &input).unwrap();
            panic!("input {i} panicked; saved to {}", path.display());
        }
    }
}

#[test]
fn the_input_format_round_trips() {
    use duplex_wire::Direction::{ClientToServer, ServerToClient};
    let data = duplex_wire::fuzzing::encode(
        &[(ClientToServer, &[1u8; 300][..]), (ServerToClient, b"ab")],
        128,
    );
    let chunks = duplex_wire::fuzzing::chunks(&data);
    let lens: Vec<(duplex_wire::Direction, usize)> =
        chunks.iter().map(|(d, c)| (*d, c.len())).collect();
    assert_eq!(
        lens,
        [
            (ClientToServer, 128),
            (ClientToServer, 128),
            (ClientToServer, 44),
            (ServerToClient, 2)
        ]
    );
}
