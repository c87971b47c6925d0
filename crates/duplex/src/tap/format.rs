//! How `duplex tap` shows what it decoded: one line per frame (time, connection,
//! direction, stream, type, flags, length, type-specific fields, the sender's windows),
//! then indented lines for decoded headers, gRPC messages and problems. Colored only
//! when asked or when stdout is a terminal. With `--json`, one JSON object per line.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::time::Duration;

use duplex_wire::{
    ConnectionSummary, Direction, Event, FlowNote, FrameEvent, GrpcMessage, HeaderBlock,
    HeaderRole, Payload, Schema, Scope,
};
use serde_json::{Value, json};

/// When to color the output.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(super) enum ColorChoice {
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    pub(super) fn enabled(self) -> bool {
        match self {
            Self::Auto => std::io::stdout().is_terminal(),
            Self::Always => true,
            Self::Never => false,
        }
    }
}

/// Header names whose values are credentials.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Indentation of the lines under a frame line.
const DETAIL: &str = "                        ";

/// ANSI styles.
#[derive(Clone, Copy)]
enum Style {
    Dim,
    Bold,
    Client,
    Server,
    Warn,
    Alert,
    Good,
}

impl Style {
    fn code(self) -> &'static str {
        match self {
            Self::Dim => "2",
            Self::Bold => "1",
            Self::Client => "36",
            Self::Server => "35",
            Self::Warn => "33",
            Self::Alert => "1;31",
            Self::Good => "32",
        }
    }
}

/// Turns decoder events into output lines.
pub(super) struct Formatter {
    schema: Schema,
    color: bool,
    json: bool,
    hex_bytes: usize,
    max_text: usize,
    show_secrets: bool,
}

/// What the output looks like (from the command line).
pub(super) struct Options {
    pub color: bool,
    pub json: bool,
    /// Bytes of an undecoded message shown as hex.
    pub hex_bytes: usize,
    /// Characters of a decoded message shown in text output (JSON has it whole).
    pub max_text: usize,
    pub show_secrets: bool,
}

impl Formatter {
    pub(super) fn new(schema: Schema, options: Options) -> Self {
        Self {
            schema,
            color: options.color,
            json: options.json,
            hex_bytes: options.hex_bytes,
            max_text: options.max_text,
            show_secrets: options.show_secrets,
        }
    }

    fn paint(&self, style: Style, text: impl std::fmt::Display) -> String {
        if self.color {
            format!("\x1b[{}m{text}\x1b[0m", style.code())
        } else {
            text.to_string()
        }
    }

    fn prefix(&self, conn: u64, at: Duration, direction: Option<Direction>) -> String {
        let time = self.paint(Style::Dim, format!("{:>10.6}", at.as_secs_f64()));
        let arrow = match direction {
            Some(d @ Direction::ClientToServer) => self.paint(Style::Client, d.arrow()),
            Some(d @ Direction::ServerToClient) => self.paint(Style::Server, d.arrow()),
            None => " ".to_owned(),
        };
        format!("{time} c{conn} {arrow}")
    }

    /// A new proxied connection.
    pub(super) fn connected(
        &self,
        conn: u64,
        at: Duration,
        client: SocketAddr,
        upstream: Option<SocketAddr>,
        tls: Option<&str>,
    ) -> String {
        let upstream = upstream.map_or_else(|| "?".to_owned(), |a| a.to_string());
        if self.json {
            return json!({"t": at.as_secs_f64(), "conn": conn, "event": "connected",
                "client": client.to_string(), "upstream": upstream, "tls": tls})
            .to_string();
        }
        let tls = tls.map(|t| format!(" ({t})")).unwrap_or_default();
        format!(
            "{} connected {client} ⇄ {upstream}{tls}",
            self.prefix(conn, at, None)
        )
    }

    /// The connection ended; `sent` is the bytes each side sent.
    pub(super) fn closed(
        &self,
        conn: u64,
        at: Duration,
        sent: [u64; 2],
        why: Option<&str>,
    ) -> String {
        if self.json {
            return json!({"t": at.as_secs_f64(), "conn": conn, "event": "closed",
                "client_bytes": sent[0], "server_bytes": sent[1], "reason": why})
            .to_string();
        }
        let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
        format!(
            "{} closed: client sent {} bytes, server sent {} bytes{why}",
            self.prefix(conn, at, None),
            sent[0],
            sent[1]
        )
    }

    /// Something went wrong with a connection before it was proxied.
    pub(super) fn problem(&self, conn: u64, at: Duration, why: &str) -> String {
        if self.json {
            return json!({"t": at.as_secs_f64(), "conn": conn, "event": "error", "error": why})
                .to_string();
        }
        format!(
            "{} {}",
            self.prefix(conn, at, None),
            self.paint(Style::Alert, why)
        )
    }

    /// The lines for one decoder event.
    pub(super) fn event(&self, conn: u64, at: Duration, event: &Event) -> Vec<String> {
        match event {
            Event::Preface { direction } => {
                if self.json {
                    return vec![
                        json!({"t": at.as_secs_f64(), "conn": conn,
                        "dir": dir_name(*direction), "type": "PREFACE"})
                        .to_string(),
                    ];
                }
                vec![format!(
                    "{}    {}",
                    self.prefix(conn, at, Some(*direction)),
                    self.paint(Style::Bold, "PREFACE")
                )]
            }
            Event::Error { direction, error } => {
                if self.json {
                    return vec![
                        json!({"t": at.as_secs_f64(), "conn": conn,
                        "dir": dir_name(*direction), "error": error.to_string()})
                        .to_string(),
                    ];
                }
                vec![format!(
                    "{}    {}",
                    self.prefix(conn, at, Some(*direction)),
                    self.paint(Style::Alert, format!("! {error}"))
                )]
            }
            Event::Frame(frame) if self.json => vec![self.frame_json(conn, at, frame)],
            Event::Frame(frame) => self.frame_text(conn, at, frame),
        }
    }

    fn frame_text(&self, conn: u64, at: Duration, ev: &FrameEvent) -> Vec<String> {
        let header = &ev.frame.header;
        let mut line = self.prefix(conn, at, Some(ev.direction));
        let _ = write!(
            line,
            " {:<4} {} ",
            format!("s{}", header.stream_id),
            self.paint(Style::Bold, format!("{:<13}", header.kind.to_string()))
        );
        let flags = header.flags.names(header.kind);
        if !flags.is_empty() {
            let _ = write!(line, "[{}] ", flags.join(" "));
        }
        let _ = write!(line, "len={}", header.length);
        let fields = self.payload_fields(ev);
        if !fields.is_empty() {
            let _ = write!(line, "  {fields}");
        }
        let flow = self.flow_text(ev);
        if !flow.is_empty() {
            let _ = write!(line, "  {flow}");
        }
        let mut lines = vec![line];

        if let Some(headers) = &ev.headers {
            let role = role_name(headers.role);
            lines.push(format!(
                "{DETAIL}{}",
                self.paint(Style::Dim, format!("{role}:"))
            ));
            for (name, value) in &headers.fields {
                let value = self.header_value(name, value);
                let styled = match name.as_str() {
                    ":path" | "grpc-status" | "grpc-message" | "grpc-timeout" => {
                        self.paint(Style::Bold, format!("{name}: {value}"))
                    }
                    _ => format!("{name}: {value}"),
                };
                lines.push(format!("{DETAIL}  {styled}"));
            }
        }
        for message in &ev.messages {
            lines.push(format!("{DETAIL}{}", self.message_text(ev, message)));
        }
        if let Some(partial) = ev.partial {
            lines.push(format!(
                "{DETAIL}{}",
                self.paint(
                    Style::Dim,
                    format!(
                        "message #{}: {} of {} bytes so far",
                        partial.index, partial.received, partial.length
                    )
                )
            ));
        }
        for note in &ev.notes {
            lines.push(format!(
                "{DETAIL}{}",
                self.paint(Style::Warn, format!("! {note}"))
            ));
        }
        lines
    }

    /// Type-specific fields on the frame line.
    fn payload_fields(&self, ev: &FrameEvent) -> String {
        let mut out = Vec::new();
        match &ev.frame.payload {
            Payload::Data { pad_len, .. } => {
                if let Some(pad) = pad_len {
                    out.push(format!("pad={pad}"));
                }
            }
            Payload::Headers {
                pad_len, priority, ..
            } => {
                if let Some(pad) = pad_len {
                    out.push(format!("pad={pad}"));
                }
                if let Some(p) = priority {
                    out.push(priority_text(p));
                }
            }
            Payload::Priority(p) => out.push(priority_text(p)),
            Payload::RstStream(code) => out.push(self.paint(Style::Warn, code)),
            Payload::Settings(params) => {
                for p in params {
                    out.push(format!("{}={}", p.id, p.value));
                }
                if !ev.applied.is_empty() {
                    let applied: Vec<String> = ev
                        .applied
                        .iter()
                        .map(|p| format!("{}={}", p.id, p.value))
                        .collect();
                    out.push(self.paint(Style::Dim, format!("applies {}", applied.join(" "))));
                }
            }
            Payload::PushPromise {
                promised_stream_id,
                pad_len,
                ..
            } => {
                out.push(format!("promised=s{promised_stream_id}"));
                if let Some(pad) = pad_len {
                    out.push(format!("pad={pad}"));
                }
            }
            Payload::Ping(opaque) => out.push(format!("opaque={}", duplex_wire::hex(opaque, 8))),
            Payload::GoAway {
                last_stream_id,
                error_code,
                debug_data,
            } => {
                out.push(format!("last_stream=s{last_stream_id}"));
                out.push(self.paint(Style::Warn, error_code));
                if !debug_data.is_empty() {
                    out.push(format!("debug={:?}", String::from_utf8_lossy(debug_data)));
                }
            }
            Payload::WindowUpdate { increment } => out.push(format!("+{increment}")),
            Payload::Continuation { .. } => {}
            Payload::Unknown(bytes) => out.push(duplex_wire::hex(bytes, self.hex_bytes)),
        }
        out.join(" ")
    }

    /// The sender's windows after the frame, e.g. `client window s1=1012 conn=2097140`.
    fn flow_text(&self, ev: &FrameEvent) -> String {
        let mut by_side: Vec<(Direction, Vec<String>)> = Vec::new();
        for note in &ev.flow {
            let (side, scope, window, extra) = match *note {
                FlowNote::Window {
                    side,
                    scope,
                    window,
                } => (side, scope, window, String::new()),
                FlowNote::Blocked {
                    side,
                    scope,
                    window,
                } => (side, scope, window, self.paint(Style::Alert, " BLOCKED")),
                FlowNote::Unblocked {
                    side,
                    scope,
                    window,
                    after,
                } => (
                    side,
                    scope,
                    window,
                    self.paint(
                        Style::Good,
                        format!(" (unblocked after {})", format_duration(after)),
                    ),
                ),
            };
            let item = format!("{}={window}{extra}", scope_name(scope));
            match by_side.iter_mut().find(|(s, _)| *s == side) {
                Some((_, items)) => items.push(item),
                None => by_side.push((side, vec![item])),
            }
        }
        by_side
            .into_iter()
            .map(|(side, items)| {
                self.paint(Style::Dim, format!("{} window ", side.sender())) + &items.join(" ")
            })
            .collect::<Vec<_>>()
            .join("  ")
    }

    fn header_value<'a>(&self, name: &str, value: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.show_secrets && SECRET_HEADERS.contains(&name) {
            format!("<redacted, {} bytes>", value.len()).into()
        } else {
            value.into()
        }
    }

    fn message_text(&self, ev: &FrameEvent, message: &GrpcMessage) -> String {
        let mut line = format!("message #{} ", message.index);
        if message.compressed() {
            line.push_str(&self.paint(Style::Warn, format!("compressed(flag={}) ", message.flag)));
        }
        let _ = write!(line, "len={} ", message.length);
        match self.decode(ev, message) {
            Some(Ok((type_name, mut text))) => {
                let chars = text.chars().count();
                if chars > self.max_text {
                    let cut: String = text.chars().take(self.max_text).collect();
                    text = format!("{cut}…(+{} chars)", chars - self.max_text);
                }
                let _ = write!(
                    line,
                    "{} {}",
                    self.paint(Style::Dim, type_name),
                    self.paint(Style::Bold, format!("{{{text}}}"))
                );
            }
            Some(Err(error)) => {
                let _ = write!(
                    line,
                    "{} {}",
                    self.paint(Style::Warn, format!("({error})")),
                    duplex_wire::hex(&message.data, self.hex_bytes)
                );
            }
            None => line.push_str(&duplex_wire::hex(&message.data, self.hex_bytes)),
        }
        line
    }

    /// The message as protobuf text, when its method is known and it is whole and
    /// uncompressed; `None` to show hex.
    fn decode(
        &self,
        ev: &FrameEvent,
        message: &GrpcMessage,
    ) -> Option<Result<(String, String), String>> {
        let path = ev.path.as_deref()?;
        if message.compressed() {
            return None;
        }
        if message.truncated() {
            return Some(Err(format!(
                "only the first {} bytes kept",
                message.data.len()
            )));
        }
        match self.schema.decode(path, ev.direction, &message.data)? {
            Ok(decoded) => Some(Ok((decoded.type_name(), decoded.text()))),
            Err(error) => Some(Err(error.to_string())),
        }
    }

    fn frame_json(&self, conn: u64, at: Duration, ev: &FrameEvent) -> String {
        let header = &ev.frame.header;
        let mut object = json!({
            "t": at.as_secs_f64(),
            "conn": conn,
            "dir": dir_name(ev.direction),
            "stream": header.stream_id,
            "type": header.kind.to_string(),
            "flags": header.flags.names(header.kind),
            "len": header.length,
        });
        let map = object.as_object_mut().expect("an object");
        match &ev.frame.payload {
            Payload::Settings(params) if !params.is_empty() => {
                let settings: serde_json::Map<String, Value> = params
                    .iter()
                    .map(|p| (p.id.to_string(), json!(p.value)))
                    .collect();
                map.insert("settings".into(), Value::Object(settings));
            }
            Payload::WindowUpdate { increment } => {
                map.insert("increment".into(), json!(increment));
            }
            Payload::RstStream(code) => {
                map.insert("error_code".into(), json!(code.to_string()));
            }
            Payload::GoAway {
                last_stream_id,
                error_code,
                debug_data,
            } => {
                map.insert("last_stream".into(), json!(last_stream_id));
                map.insert("error_code".into(), json!(error_code.to_string()));
                map.insert("debug".into(), json!(String::from_utf8_lossy(debug_data)));
            }
            Payload::Ping(opaque) => {
                map.insert("opaque".into(), json!(duplex_wire::hex(opaque, 8)));
            }
            Payload::PushPromise {
                promised_stream_id, ..
            } => {
                map.insert("promised_stream".into(), json!(promised_stream_id));
            }
            Payload::Data { pad_len, .. } | Payload::Headers { pad_len, .. } => {
                if let Some(pad) = pad_len {
                    map.insert("pad".into(), json!(pad));
                }
            }
            Payload::Unknown(bytes) => {
                map.insert(
                    "payload".into(),
                    json!(duplex_wire::hex(bytes, self.hex_bytes)),
                );
            }
            Payload::Settings(_) | Payload::Priority(_) | Payload::Continuation { .. } => {}
        }
        if let Some(path) = &ev.path {
            map.insert("path".into(), json!(path));
        }
        if let Some(headers) = &ev.headers {
            map.insert("headers".into(), self.headers_json(headers));
        }
        if !ev.messages.is_empty() {
            let messages: Vec<Value> = ev
                .messages
                .iter()
                .map(|m| self.message_json(ev, m))
                .collect();
            map.insert("messages".into(), Value::Array(messages));
        }
        if let Some(p) = ev.partial {
            map.insert(
                "partial".into(),
                json!({"index": p.index, "received": p.received, "len": p.length}),
            );
        }
        if !ev.applied.is_empty() {
            let applied: serde_json::Map<String, Value> = ev
                .applied
                .iter()
                .map(|p| (p.id.to_string(), json!(p.value)))
                .collect();
            map.insert("applies".into(), Value::Object(applied));
        }
        if !ev.flow.is_empty() {
            let flow: Vec<Value> = ev.flow.iter().map(flow_json).collect();
            map.insert("flow".into(), Value::Array(flow));
        }
        if !ev.notes.is_empty() {
            map.insert("notes".into(), json!(ev.notes));
        }
        object.to_string()
    }

    fn headers_json(&self, headers: &HeaderBlock) -> Value {
        let fields: Vec<Value> = headers
            .fields
            .iter()
            .map(|(n, v)| json!([n, self.header_value(n, v)]))
            .collect();
        json!({"role": role_name(headers.role), "stream": headers.stream_id, "fields": fields})
    }

    fn message_json(&self, ev: &FrameEvent, message: &GrpcMessage) -> Value {
        let mut object = json!({
            "index": message.index,
            "compressed": message.compressed(),
            "len": message.length,
        });
        let map = object.as_object_mut().expect("an object");
        let decoded = ev
            .path
            .as_deref()
            .filter(|_| !message.compressed() && !message.truncated())
            .and_then(|path| self.schema.decode(path, ev.direction, &message.data));
        match decoded {
            Some(Ok(decoded)) => {
                map.insert("type".into(), json!(decoded.type_name()));
                map.insert("text".into(), json!(decoded.text()));
                if let Ok(value) = serde_json::to_value(&decoded.message) {
                    map.insert("json".into(), value);
                }
            }
            Some(Err(error)) => {
                map.insert("error".into(), json!(error.to_string()));
                map.insert(
                    "hex".into(),
                    json!(duplex_wire::hex(&message.data, self.hex_bytes)),
                );
            }
            None => {
                map.insert(
                    "hex".into(),
                    json!(duplex_wire::hex(&message.data, self.hex_bytes)),
                );
            }
        }
        object
    }

    /// The `--summary` lines: per stream, then per connection.
    pub(super) fn summary(
        &self,
        connections: &[(u64, ConnectionSummary)],
        dropped: u64,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        if self.json {
            for (conn, summary) in connections {
                for s in &summary.streams {
                    lines.push(
                        json!({"summary": "stream", "conn": conn, "stream": s.id, "path": s.path,
                            "client_messages": s.messages[0], "server_messages": s.messages[1],
                            "client_bytes": s.data_bytes[0], "server_bytes": s.data_bytes[1],
                            "client_blocked_ms": millis(s.blocked[0]),
                            "server_blocked_ms": millis(s.blocked[1]),
                            "grpc_status": s.grpc_status, "grpc_message": s.grpc_message,
                            "reset": s.reset.map(|(d, code)| json!({"by": d.sender(), "code": code.to_string()})),
                        })
                        .to_string(),
                    );
                }
                lines.push(
                    json!({"summary": "connection", "conn": conn,
                        "client_frames": summary.frames[0], "server_frames": summary.frames[1],
                        "client_blocked_ms": millis(summary.connection_blocked[0]),
                        "server_blocked_ms": millis(summary.connection_blocked[1]),
                        "streams_not_kept": summary.streams_dropped})
                    .to_string(),
                );
            }
            if dropped > 0 {
                lines
                    .push(json!({"summary": "connections_not_kept", "count": dropped}).to_string());
            }
            return lines;
        }
        lines.push(self.paint(
            Style::Bold,
            "summary (→ client to server, ← server to client; blocked = send window at or below 0)",
        ));
        lines.push(format!(
            "{:<5} {:<7} {:<24} {:>6} {:>9} {:>6} {:>9} {:>10} {:>10}  {}",
            "conn",
            "stream",
            "path",
            "→ msgs",
            "→ bytes",
            "← msgs",
            "← bytes",
            "→ blocked",
            "← blocked",
            "end"
        ));
        for (conn, summary) in connections {
            for s in &summary.streams {
                let end = match (&s.grpc_status, s.reset) {
                    (_, Some((d, code))) => format!("reset by {} ({code})", d.sender()),
                    (Some(status), None) => match &s.grpc_message {
                        Some(m) => format!("grpc-status {status}: {m}"),
                        None => format!("grpc-status {status}"),
                    },
                    (None, None) if s.ended == [true, true] => "ended".to_owned(),
                    (None, None) => "open".to_owned(),
                };
                lines.push(format!(
                    "{:<5} {:<7} {:<24} {:>6} {:>9} {:>6} {:>9} {:>10} {:>10}  {end}",
                    format!("c{conn}"),
                    format!("s{}", s.id),
                    s.path.as_deref().unwrap_or("-"),
                    s.messages[0],
                    s.data_bytes[0],
                    s.messages[1],
                    s.data_bytes[1],
                    format_duration(s.blocked[0]),
                    format_duration(s.blocked[1]),
                ));
            }
            lines.push(format!(
                "{:<5} {:<7} {:<24} {:>6} {:>9} {:>6} {:>9} {:>10} {:>10}  {} frames →, {} frames ←{}",
                format!("c{conn}"),
                "conn",
                "",
                "",
                "",
                "",
                "",
                format_duration(summary.connection_blocked[0]),
                format_duration(summary.connection_blocked[1]),
                summary.frames[0],
                summary.frames[1],
                if summary.streams_dropped > 0 {
                    format!(" ({} earlier streams not kept)", summary.streams_dropped)
                } else {
                    String::new()
                }
            ));
        }
        if dropped > 0 {
            lines.push(format!("({dropped} earlier connections not kept)"));
        }
        lines
    }
}

fn dir_name(direction: Direction) -> &'static str {
    match direction {
        Direction::ClientToServer => "client",
        Direction::ServerToClient => "server",
    }
}

fn role_name(role: HeaderRole) -> &'static str {
    match role {
        HeaderRole::Request => "request",
        HeaderRole::Response => "response",
        HeaderRole::Trailers => "trailers",
        HeaderRole::TrailersOnly => "trailers-only",
        HeaderRole::Push => "push",
    }
}

fn scope_name(scope: Scope) -> String {
    match scope {
        Scope::Connection => "conn".to_owned(),
        Scope::Stream(id) => format!("s{id}"),
    }
}

fn priority_text(p: &duplex_wire::frame::Priority) -> String {
    format!(
        "depends_on=s{}{} weight={}",
        p.dependency,
        if p.exclusive { " exclusive" } else { "" },
        u16::from(p.weight) + 1
    )
}

fn flow_json(note: &FlowNote) -> Value {
    let (side, scope, window, state, after) = match *note {
        FlowNote::Window {
            side,
            scope,
            window,
        } => (side, scope, window, "open", None),
        FlowNote::Blocked {
            side,
            scope,
            window,
        } => (side, scope, window, "blocked", None),
        FlowNote::Unblocked {
            side,
            scope,
            window,
            after,
        } => (side, scope, window, "unblocked", Some(after)),
    };
    let mut value = json!({"side": side.sender(), "scope": scope_name(scope), "window": window, "state": state});
    if let Some(after) = after {
        value["blocked_ms"] = json!(millis(after));
    }
    value
}

/// Milliseconds with microsecond precision, for JSON.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        "0".to_owned()
    } else if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else if d < Duration::from_secs(10) {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
