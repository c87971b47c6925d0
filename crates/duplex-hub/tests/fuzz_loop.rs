//! The `hub_frames` fuzz target's body (`duplex_hub::fuzzing::session_frames`) on stable:
//! hand-made command sequences, then bounded deterministic mutations of them and random
//! bytes. `DUPLEX_FUZZ_ITERATIONS` raises the count.

use duplex_proto::hub::client_frame::Command;
use duplex_proto::hub::{ClientFrame, Join, Leave, Ping, Publish};
use prost::Message as _;

const DEFAULT_ITERATIONS: usize = 1_500;

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

fn framed(commands: Vec<Command>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, command) in commands.into_iter().enumerate() {
        let bytes = ClientFrame {
            command_id: i as u64,
            command: Some(command),
        }
        .encode_to_vec();
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

fn join(room: &str, after: Option<u64>) -> Command {
    Command::Join(Join {
        room: room.into(),
        after_offset: after,
        hidden: false,
        replay_last: 3,
    })
}

fn publish(room: &str, payload: &[u8], id: &str, key: &str) -> Command {
    Command::Publish(Publish {
        room: room.into(),
        payload: payload.to_vec().into(),
        content_type: "text/plain".into(),
        client_message_id: id.into(),
        key: key.into(),
    })
}

fn seeds() -> Vec<Vec<u8>> {
    vec![
        framed(vec![
            join("room", None),
            publish("room", b"hello", "", ""),
            publish("room", b"again", "id", "k"),
        ]),
        framed(vec![
            publish("room", b"before join", "", ""),
            join("room", Some(0)),
            join("room", Some(0)),
        ]),
        framed(vec![
            join("bad room", None),
            join("", None),
            join(&"x".repeat(200), None),
        ]),
        framed(vec![
            join("room", None),
            publish("room", b"", "", ""),
            publish("room", &[0; 100], "", ""),
        ]),
        framed(vec![
            join("read-only", None),
            publish("read-only", b"denied", "", ""),
        ]),
        framed(vec![
            join("w1", None),
            publish("w1", b"a", "dup", ""),
            publish("w1", b"b", "dup", ""),
            Command::Leave(Leave { room: "w1".into() }),
            join("w1", Some(1)),
        ]),
        framed((0..6).map(|i| join(&format!("w{i}"), None)).collect()),
        framed(
            (0..20)
                .map(|i| publish("room", format!("m{i}").as_bytes(), "", ""))
                .collect(),
        ),
        framed(vec![
            Command::Ping(Ping {
                client_time_unix_micros: -1,
            }),
            Command::Leave(Leave {
                room: "never".into(),
            }),
        ]),
        framed(vec![
            join("room", Some(u64::MAX)),
            join("w2", Some(1 << 40)),
        ]),
    ]
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(4) {
            0 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let at = rng.below(input.len());
                input.truncate(at);
            }
            2 => {
                let at = rng.below(input.len() + 1);
                input.insert(at, rng.next() as u8);
            }
            _ => {
                let at = rng.below(input.len() + 1);
                let len = rng.below(16);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
        }
    }
}

#[test]
fn any_command_sequence_leaves_the_session_answering() {
    let iterations = std::env::var("DUPLEX_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ITERATIONS);
    let seeds = seeds();
    for seed in &seeds {
        duplex_hub::fuzzing::session_frames(seed);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..iterations {
        let mut input = if rng.below(8) == 0 {
            (0..rng.below(256)).map(|_| rng.next() as u8).collect()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        mutate(&mut rng, &mut input);
        duplex_hub::fuzzing::session_frames(&input);
    }
}
