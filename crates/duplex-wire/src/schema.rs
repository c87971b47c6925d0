//! Protobuf descriptors for the methods a tap may see, so gRPC messages can be shown as
//! protobuf text instead of hex.
//!
//! A message is decoded with the input type of the method named by its stream's `:path`
//! (client to server) or the output type (server to client). Paths of package-less
//! protos (`/Chat/Chat` for `chat.Chat`) resolve to the one service of that short name
//! that has the method, so stubs built from the article's package-less proto are decoded
//! too.

use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, ReflectMessage as _,
};

use crate::Direction;

/// A set of protobuf descriptors.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    pool: DescriptorPool,
}

/// Why descriptors could not be added.
#[derive(Debug, thiserror::Error)]
#[error("invalid descriptor set: {0}")]
pub struct SchemaError(#[from] prost_reflect::DescriptorError);

/// A message decoded with its method's descriptor.
#[derive(Clone, Debug)]
pub struct Decoded {
    /// The message, readable field by field.
    pub message: DynamicMessage,
}

impl Decoded {
    /// The message type's full name, e.g. `chat.Msg`.
    pub fn type_name(&self) -> String {
        self.message.descriptor().full_name().to_owned()
    }

    /// The message in protobuf text format on one line, e.g. `text:"héllo"`.
    ///
    /// Text format escapes every non-ASCII byte as octal (`h\303\251llo`); runs of such
    /// escapes that form valid UTF-8 are shown as the characters instead, which is what
    /// a person watching a chat wants to read.
    pub fn text(&self) -> String {
        unescape_utf8(&self.message.to_string())
    }
}

/// Replaces runs of `\NNN` octal escapes of bytes >= 0x80 that are valid UTF-8 by the
/// characters; every other escape is kept as it is.
fn unescape_utf8(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut run: Vec<u8> = Vec::new();
    let mut run_start = 0;
    let mut i = 0;
    let flush = |out: &mut String, run: &mut Vec<u8>, original: &str| {
        match std::str::from_utf8(run) {
            Ok(chars) => out.push_str(chars),
            Err(_) => out.push_str(original),
        }
        run.clear();
    };
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| {
                u32::from(d[0] - b'0') * 64 + u32::from(d[1] - b'0') * 8 + u32::from(d[2] - b'0')
            });
        match octal {
            Some(value @ 0x80..=0xff) => {
                if run.is_empty() {
                    run_start = i;
                }
                run.push(value as u8);
                i += 4;
                continue;
            }
            _ => {
                if !run.is_empty() {
                    flush(&mut out, &mut run, &text[run_start..i]);
                }
            }
        }
        if octal.is_some() {
            // An escape of an ASCII byte: kept.
            out.push_str(&text[i..i + 4]);
            i += 4;
            continue;
        }
        let mut chars = text[i..].chars();
        let ch = chars.next().unwrap_or_default();
        out.push(ch);
        i += ch.len_utf8();
        if ch == '\\' {
            // Any other escape is kept whole, so `\\303` stays an escaped backslash.
            if let Some(next) = chars.next() {
                out.push(next);
                i += next.len_utf8();
            }
        }
    }
    if !run.is_empty() {
        flush(&mut out, &mut run, &text[run_start..]);
    }
    out
}

/// Why a message with a known method could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("not a valid {type_name}: {error}")]
pub struct MessageError {
    /// The fully qualified message type it should have been.
    pub type_name: String,
    /// Why protobuf decoding failed.
    pub error: prost::DecodeError,
}

impl Schema {
    /// An empty schema: every message is shown as hex.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the files of an encoded `FileDescriptorSet` (as `protoc
    /// --descriptor_set_out` or `protox` write it). Files already present are skipped.
    pub fn add_descriptor_set(&mut self, bytes: &[u8]) -> Result<(), SchemaError> {
        self.pool.decode_file_descriptor_set(bytes)?;
        Ok(())
    }

    /// Number of services known.
    pub fn service_count(&self) -> usize {
        self.pool.services().len()
    }

    /// The method a gRPC `:path` (`/package.Service/Method`) names.
    pub fn method(&self, path: &str) -> Option<MethodDescriptor> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        if let Some(found) = self
            .pool
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == method))
        {
            return Some(found);
        }
        // A package-less path: the service's short name, if only one service matches.
        let mut candidates = self
            .pool
            .services()
            .filter(|s| s.name() == service)
            .filter_map(|s| s.methods().find(|m| m.name() == method));
        let first = candidates.next()?;
        candidates.next().is_none().then_some(first)
    }

    /// The message type sent in `direction` on a stream with this `:path`.
    pub fn message_type(&self, path: &str, direction: Direction) -> Option<MessageDescriptor> {
        let method = self.method(path)?;
        Some(match direction {
            Direction::ClientToServer => method.input(),
            Direction::ServerToClient => method.output(),
        })
    }

    /// Decodes a message payload; `None` when the method is not known.
    pub fn decode(
        &self,
        path: &str,
        direction: Direction,
        payload: &[u8],
    ) -> Option<Result<Decoded, MessageError>> {
        let descriptor = self.message_type(path, direction)?;
        let type_name = descriptor.full_name().to_owned();
        Some(
            DynamicMessage::decode(descriptor, payload)
                .map(|message| Decoded { message })
                .map_err(|error| MessageError { type_name, error }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn builtin() -> Schema {
        let mut schema = Schema::new();
        schema
            .add_descriptor_set(duplex_proto::FILE_DESCRIPTOR_SET)
            .unwrap();
        schema
    }

    #[test]
    fn chat_messages_decode_as_text_both_ways() {
        let schema = builtin();
        let msg = duplex_proto::chat::Msg {
            text: "héllo".into(),
        }
        .encode_to_vec();
        let decoded = schema
            .decode("/chat.Chat/Chat", Direction::ClientToServer, &msg)
            .unwrap()
            .unwrap();
        assert_eq!(decoded.type_name(), "chat.Msg");
        assert_eq!(decoded.text(), r#"text:"héllo""#);
        let decoded = schema
            .decode("/chat.Chat/Chat", Direction::ServerToClient, &msg)
            .unwrap()
            .unwrap();
        assert_eq!(decoded.type_name(), "chat.Echo");
    }

    #[test]
    fn only_utf8_runs_of_octal_escapes_become_characters() {
        assert_eq!(
            unescape_utf8(r#"t:"h\303\251llo \342\234\223""#),
            r#"t:"héllo ✓""#
        );
        assert_eq!(
            unescape_utf8(r#"b:"\377\001\\303\251""#),
            r#"b:"\377\001\\303\251""#
        );
        assert_eq!(unescape_utf8(r#"b:"\303""#), r#"b:"\303""#);
        assert_eq!(unescape_utf8("trailing\\"), "trailing\\");
        assert_eq!(unescape_utf8("odd \\é"), "odd \\é");
    }

    #[test]
    fn package_less_path_resolves_to_the_unique_service() {
        let schema = builtin();
        let method = schema.method("/Chat/Chat").unwrap();
        assert_eq!(method.full_name(), "chat.Chat.Chat");
        assert!(schema.method("/chat.Chat/Nope").is_none());
        assert!(schema.method("/other.Svc/Chat").is_none());
        assert!(schema.method("no-slash").is_none());
        assert!(
            schema
                .decode("/x.Y/Z", Direction::ClientToServer, b"")
                .is_none()
        );
    }

    #[test]
    fn invalid_protobuf_is_an_error_naming_the_type() {
        let schema = builtin();
        let error = schema
            .decode("/chat.Chat/Chat", Direction::ClientToServer, b"\x0a\x0aab")
            .unwrap()
            .unwrap_err();
        assert!(error.to_string().contains("chat.Msg"), "{error}");
    }

    #[test]
    fn a_descriptor_set_can_be_added_twice_and_garbage_is_refused() {
        let mut schema = builtin();
        let before = schema.service_count();
        schema
            .add_descriptor_set(duplex_proto::FILE_DESCRIPTOR_SET)
            .unwrap();
        assert_eq!(schema.service_count(), before);
        assert!(Schema::new().add_descriptor_set(b"\x0a\x05zzz").is_err());
    }
}
