//! The NATS client protocol as text on the wire: what the load client writes (`CONNECT`,
//! `PING`/`PONG`, `SUB`, `UNSUB`, `PUB`) into a write buffer, and a parser of what the server
//! sends (`INFO`, `MSG`, `HMSG`, `PING`, `PONG`, `+OK`, `-ERR`) that reads a buffer in place:
//! an operation borrows its subject, reply, headers and payload from the read buffer, and an
//! incomplete one is left there until more bytes arrive.
//!
//! Bounds: a control line longer than [`MAX_CONTROL_LINE`] is an error (the server's `INFO`
//! is the longest line it sends); a message body is as long as its control line says (the
//! server enforces its `max_payload`).

use bytes::{BufMut as _, BytesMut};

/// Longest control line accepted from the server. `INFO` lists cluster URLs and can pass the
/// 4 KiB the server accepts from clients; anything near this is not NATS.
pub(crate) const MAX_CONTROL_LINE: usize = 64 * 1024;

/// One operation from the server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ServerOp<'a> {
    /// `INFO {json}`: the server's description of itself.
    Info(&'a [u8]),
    /// `MSG` or `HMSG`: a message for one of this connection's subscriptions.
    Msg(Delivery<'a>),
    /// `PING`: must be answered with `PONG`.
    Ping,
    /// `PONG`: the answer to our `PING`.
    Pong,
    /// `+OK` (only in verbose mode, which the client does not ask for).
    Ok,
    /// `-ERR 'text'`: the text without its quotes.
    Err(&'a [u8]),
}

/// A `MSG` or `HMSG`, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Delivery<'a> {
    /// The subject it was published to.
    pub(crate) subject: &'a [u8],
    /// The subscription it matched.
    pub(crate) sid: u64,
    /// The reply subject, if the publisher gave one.
    pub(crate) reply: Option<&'a [u8]>,
    /// `HMSG`: the header block (`NATS/1.0[ status]\r\n…\r\n\r\n`); empty for `MSG`.
    pub(crate) headers: &'a [u8],
    /// The payload.
    pub(crate) payload: &'a [u8],
}

impl Delivery<'_> {
    /// The status code of an `HMSG` header block (`NATS/1.0 503` → 503), if it has one.
    pub(crate) fn status(&self) -> Option<u16> {
        let line = self.headers.split(|&b| b == b'\r').next()?;
        let rest = line.strip_prefix(b"NATS/1.0")?;
        let code = rest.trim_ascii_start().split(|&b| b == b' ').next()?;
        parse_decimal(code).and_then(|code| u16::try_from(code).ok())
    }
}

/// What is wrong with the bytes the server sent.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    /// No line end within [`MAX_CONTROL_LINE`] bytes.
    #[error("control line longer than {MAX_CONTROL_LINE} bytes")]
    LineTooLong,
    /// A line that is no server operation, or one with bad arguments.
    #[error("unexpected line from the server: {0}")]
    Malformed(String),
}

fn malformed(line: &[u8]) -> WireError {
    let shown = &line[..line.len().min(120)];
    WireError::Malformed(String::from_utf8_lossy(shown).into_owned())
}

/// Parses the first operation in `buffer`: the operation and the bytes it took, or `None`
/// when the buffer holds only part of one.
pub(crate) fn parse(buffer: &[u8]) -> Result<Option<(ServerOp<'_>, usize)>, WireError> {
    let Some(newline) = buffer.iter().position(|&b| b == b'\n') else {
        return if buffer.len() > MAX_CONTROL_LINE {
            Err(WireError::LineTooLong)
        } else {
            Ok(None)
        };
    };
    if newline > MAX_CONTROL_LINE {
        return Err(WireError::LineTooLong);
    }
    let line = buffer[..newline]
        .strip_suffix(b"\r")
        .unwrap_or(&buffer[..newline]);
    let after_line = newline + 1;
    let (verb, rest) = match line.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(space) => (&line[..space], line[space + 1..].trim_ascii()),
        None => (line, &line[line.len()..]),
    };
    let op = match verb {
        b"MSG" | b"msg" => return parse_message(buffer, line, rest, after_line, false),
        b"HMSG" | b"hmsg" => return parse_message(buffer, line, rest, after_line, true),
        b"PING" | b"ping" => ServerOp::Ping,
        b"PONG" | b"pong" => ServerOp::Pong,
        b"+OK" | b"+ok" => ServerOp::Ok,
        b"-ERR" | b"-err" => ServerOp::Err(
            rest.strip_prefix(b"'")
                .and_then(|r| r.strip_suffix(b"'"))
                .unwrap_or(rest),
        ),
        b"INFO" | b"info" => ServerOp::Info(rest),
        _ => return Err(malformed(line)),
    };
    Ok(Some((op, after_line)))
}

/// `MSG <subject> <sid> [reply] <size>` or `HMSG <subject> <sid> [reply] <header size>
/// <total size>`, then the body and `\r\n`.
fn parse_message<'a>(
    buffer: &'a [u8],
    line: &[u8],
    rest: &'a [u8],
    body_start: usize,
    with_headers: bool,
) -> Result<Option<(ServerOp<'a>, usize)>, WireError> {
    let mut args = [&rest[..0]; 5];
    let mut count = 0;
    for arg in rest
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|a| !a.is_empty())
    {
        if count == args.len() {
            return Err(malformed(line));
        }
        args[count] = arg;
        count += 1;
    }
    let numbers = if with_headers { 2 } else { 1 };
    let reply = match count - numbers.min(count) {
        2 => None,
        3 => Some(args[2]),
        _ => return Err(malformed(line)),
    };
    let sizes = &args[count - numbers..count];
    let total = parse_decimal(sizes[numbers - 1]).ok_or_else(|| malformed(line))?;
    let header_len = if with_headers {
        parse_decimal(sizes[0])
            .filter(|&h| h <= total)
            .ok_or_else(|| malformed(line))?
    } else {
        0
    };
    let sid = parse_decimal(args[1]).ok_or_else(|| malformed(line))?;
    let total = usize::try_from(total).map_err(|_| malformed(line))?;
    let header_len = usize::try_from(header_len).map_err(|_| malformed(line))?;
    let end = body_start + total;
    if buffer.len() < end + 2 {
        return Ok(None);
    }
    if &buffer[end..end + 2] != b"\r\n" {
        return Err(malformed(line));
    }
    let body = &buffer[body_start..end];
    Ok(Some((
        ServerOp::Msg(Delivery {
            subject: args[0],
            sid,
            reply,
            headers: &body[..header_len],
            payload: &body[header_len..],
        }),
        end + 2,
    )))
}

/// A decimal number of at most 19 digits.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Appends `n` in decimal.
pub(crate) fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[start..]);
}

/// `CONNECT` with the options the load client needs, then `PING` (its `PONG` says the
/// server took the `CONNECT`).
pub(crate) fn put_connect(out: &mut BytesMut, name: &str) {
    let options = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "headers": true,
        "no_responders": true,
        "echo": false,
        "protocol": 1,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "name": name,
    });
    out.put_slice(b"CONNECT ");
    out.put_slice(options.to_string().as_bytes());
    out.put_slice(b"\r\nPING\r\n");
}

/// `SUB <subject> <sid>`.
pub(crate) fn put_sub(out: &mut BytesMut, subject: &str, sid: u64) {
    out.put_slice(b"SUB ");
    out.put_slice(subject.as_bytes());
    out.put_u8(b' ');
    put_decimal(out, sid);
    out.put_slice(b"\r\n");
}

/// `UNSUB <sid>`.
pub(crate) fn put_unsub(out: &mut BytesMut, sid: u64) {
    out.put_slice(b"UNSUB ");
    put_decimal(out, sid);
    out.put_slice(b"\r\n");
}

/// `PING`.
pub(crate) fn put_ping(out: &mut BytesMut) {
    out.put_slice(b"PING\r\n");
}

/// `PONG`.
pub(crate) fn put_pong(out: &mut BytesMut) {
    out.put_slice(b"PONG\r\n");
}

/// `PUB <subject> [<reply prefix><reply number>] <size>`, the payload and `\r\n`; the first
/// 8 bytes of the payload are replaced by `stamp` (little-endian), the publish time the
/// receiver measures latency from.
pub(crate) fn put_pub(
    out: &mut BytesMut,
    subject: &[u8],
    reply: Option<(&[u8], u64)>,
    payload: &[u8],
    stamp: u64,
) {
    out.put_slice(b"PUB ");
    out.put_slice(subject);
    out.put_u8(b' ');
    if let Some((prefix, number)) = reply {
        out.put_slice(prefix);
        put_decimal(out, number);
        out.put_u8(b' ');
    }
    put_decimal(out, payload.len() as u64);
    out.put_slice(b"\r\n");
    put_stamped(out, payload, stamp);
    out.put_slice(b"\r\n");
}

/// `payload` with its first 8 bytes replaced by `stamp` (little-endian).
fn put_stamped(out: &mut BytesMut, payload: &[u8], stamp: u64) {
    let stamp = stamp.to_le_bytes();
    let head = payload.len().min(8);
    out.put_slice(&stamp[..head]);
    out.put_slice(&payload[head..]);
}

/// The publish time in the first 8 payload bytes (see [`put_pub`]).
pub(crate) fn stamp_of(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// A request on `subject` with `reply` as its reply subject and a JSON (or empty) body.
pub(crate) fn put_request(out: &mut BytesMut, subject: &str, reply: &str, body: &[u8]) {
    out.put_slice(b"PUB ");
    out.put_slice(subject.as_bytes());
    out.put_u8(b' ');
    out.put_slice(reply.as_bytes());
    out.put_u8(b' ');
    put_decimal(out, body.len() as u64);
    out.put_slice(b"\r\n");
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of `wire`, parsed from a buffer that grows a byte at a time: nothing
    /// is returned before an operation is whole, and each one exactly once.
    fn parse_incrementally(wire: &[u8]) -> Vec<String> {
        let mut seen = Vec::new();
        let mut consumed = 0;
        for end in 0..=wire.len() {
            while let Some((op, used)) = parse(&wire[consumed..end]).unwrap() {
                seen.push(format!("{op:?}"));
                consumed += used;
            }
        }
        assert_eq!(consumed, wire.len(), "every byte belongs to one operation");
        seen
    }

    #[test]
    fn operations_split_at_any_byte_parse_once_each_when_whole() {
        let wire = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n\
PING\r\nMSG a.b 7 5\r\nhello\r\nMSG a.b 12 _INBOX.x.3 2\r\nhi\r\n\
HMSG _INBOX.x.4 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n+OK\r\n-ERR 'Slow Consumer'\r\nPONG\r\n\
MSG e 1 0\r\n\r\n";
        let seen = parse_incrementally(wire);
        let whole: Vec<String> = {
            let mut ops = Vec::new();
            let mut at = 0;
            while let Some((op, used)) = parse(&wire[at..]).unwrap() {
                ops.push(format!("{op:?}"));
                at += used;
            }
            ops
        };
        assert_eq!(seen, whole);
        assert_eq!(seen.len(), 9, "{seen:#?}");

        let mut at = 0;
        let mut next = || {
            let (op, used) = parse(&wire[at..]).unwrap().unwrap();
            at += used;
            op
        };
        assert!(matches!(next(), ServerOp::Info(json) if json.starts_with(b"{\"server_id\"")));
        assert_eq!(next(), ServerOp::Ping);
        assert_eq!(
            next(),
            ServerOp::Msg(Delivery {
                subject: b"a.b",
                sid: 7,
                reply: None,
                headers: b"",
                payload: b"hello"
            })
        );
        assert_eq!(
            next(),
            ServerOp::Msg(Delivery {
                subject: b"a.b",
                sid: 12,
                reply: Some(b"_INBOX.x.3"),
                headers: b"",
                payload: b"hi"
            })
        );
        match next() {
            ServerOp::Msg(delivery) => {
                assert_eq!(delivery.subject, b"_INBOX.x.4");
                assert_eq!(delivery.payload, b"");
                assert_eq!(delivery.status(), Some(503));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(next(), ServerOp::Ok);
        assert_eq!(next(), ServerOp::Err(b"Slow Consumer"));
        assert_eq!(next(), ServerOp::Pong);
        assert!(matches!(next(), ServerOp::Msg(d) if d.payload.is_empty() && d.sid == 1));
    }

    #[test]
    fn a_body_without_its_line_end_or_a_bad_line_is_an_error() {
        assert!(parse(b"MSG a 1 2\r\nhiXX").is_err());
        assert!(parse(b"MSG a 1\r\n").is_err());
        assert!(parse(b"MSG a x 2\r\nhi\r\n").is_err());
        assert!(
            parse(b"HMSG a 1 9 2\r\nhi\r\n").is_err(),
            "headers longer than total"
        );
        assert!(parse(b"WHAT\r\n").is_err());
        let long = vec![b'I'; MAX_CONTROL_LINE + 1];
        assert_eq!(parse(&long), Err(WireError::LineTooLong));
    }

    #[test]
    fn publishes_carry_their_stamp_and_reply_and_read_back() {
        let mut out = BytesMut::new();
        let payload = [b'x'; 12];
        put_pub(&mut out, b"s.1", Some((b"_INBOX.p.", 42)), &payload, 0x0102);
        assert_eq!(
            &out[..],
            b"PUB s.1 _INBOX.p.42 12\r\n\x02\x01\0\0\0\0\0\0xxxx\r\n"
        );
        // The same bytes as a server would deliver them.
        let mut delivered = b"MSG s.1 3 _INBOX.p.42 12\r\n".to_vec();
        delivered.extend_from_slice(&out[b"PUB s.1 _INBOX.p.42 12\r\n".len()..]);
        let (op, _) = parse(&delivered).unwrap().unwrap();
        let ServerOp::Msg(delivery) = op else {
            panic!("{op:?}")
        };
        assert_eq!(stamp_of(delivery.payload), Some(0x0102));
        out.clear();
        put_decimal(&mut out, 0);
        put_decimal(&mut out, u64::MAX);
        assert_eq!(&out[..], b"018446744073709551615");
        assert_eq!(parse_decimal(b"18446744073709551615"), None, "20 digits");
        assert_eq!(
            parse_decimal(b"9999999999999999999"),
            Some(9999999999999999999)
        );
    }
}
