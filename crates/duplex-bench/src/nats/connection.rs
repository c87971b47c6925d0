//! One TCP connection to a NATS server, speaking [`super::wire`]: the handshake (`INFO`,
//! `CONNECT`, `PING` → `PONG`), a read buffer parsed in place, a write buffer the caller fills
//! with many operations and sends with one write, `PING`s answered without the caller's help,
//! and a request/reply for the JetStream API during setup.
//!
//! Reading is cancel-safe (the socket read is the only await; parsing follows it
//! synchronously), so a load loop can `select!` on [`NatsConnection::read`] and timers.
//! Bounds: the read buffer grows by [`READ_CHUNK`] at a time and holds at most one
//! incomplete operation beyond what was parsed; the write buffer holds what the caller put
//! there until [`NatsConnection::flush`].

use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::wire::{self, ServerOp};

/// Bytes reserved in the read buffer before each socket read.
const READ_CHUNK: usize = 64 * 1024;

/// Why a connection stopped working, as the report counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NatsError {
    /// The server closed the connection (a slow consumer is cut off this way).
    #[error("DISCONNECTED")]
    Disconnected,
    /// A socket error.
    #[error("IO {0}")]
    Io(String),
    /// The server sent `-ERR`.
    #[error("-ERR {0}")]
    Server(String),
    /// The server sent something that is not NATS.
    #[error("PROTOCOL {0}")]
    Protocol(String),
}

impl NatsError {
    /// The key this error is counted under in the report.
    pub(crate) fn key(&self) -> String {
        match self {
            NatsError::Io(_) => "IO".into(),
            NatsError::Protocol(_) => "PROTOCOL".into(),
            other => other.to_string(),
        }
    }
}

impl From<std::io::Error> for NatsError {
    fn from(error: std::io::Error) -> Self {
        NatsError::Io(error.to_string())
    }
}

/// `nats://HOST:PORT[,nats://HOST:PORT…]` (the scheme and the port are optional; 4222 by
/// default) as `HOST:PORT` addresses.
pub(crate) fn parse_urls(urls: &str) -> Result<Vec<String>, String> {
    let addrs: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            let rest = url.strip_prefix("nats://").unwrap_or(url);
            if rest.contains('@') {
                return Err(format!(
                    "{url}: credentials are not supported by the load client"
                ));
            }
            if rest.contains("://") {
                return Err(format!("{url}: only nats:// URLs"));
            }
            let rest = rest.trim_end_matches('/');
            let has_port = rest
                .rsplit_once(':')
                .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
            Ok(if has_port {
                rest.to_owned()
            } else {
                format!("{rest}:4222")
            })
        })
        .collect::<Result<_, _>>()?;
    if addrs.is_empty() {
        return Err("no NATS URL given".into());
    }
    Ok(addrs)
}

/// A connected, handshaken NATS connection.
#[derive(Debug)]
pub(crate) struct NatsConnection {
    stream: TcpStream,
    /// Bytes read and not yet parsed (at most one incomplete operation after a read).
    read: BytesMut,
    /// Operations to send with the next [`Self::flush`].
    pub(crate) out: BytesMut,
    /// `HOST:PORT`, for messages.
    addr: String,
}

impl NatsConnection {
    /// Connects to `addr` (`HOST:PORT`), reads `INFO`, sends `CONNECT` and waits for the
    /// `PONG` that confirms it, all within `timeout`.
    pub(crate) async fn connect(addr: &str, name: &str, timeout: Duration) -> Result<Self, String> {
        let handshake = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let mut connection = NatsConnection {
                stream,
                read: BytesMut::with_capacity(READ_CHUNK),
                out: BytesMut::with_capacity(READ_CHUNK),
                addr: addr.to_owned(),
            };
            let mut info = false;
            connection
                .read_until(|op| {
                    if let ServerOp::Info(_) = op {
                        info = true;
                    }
                    info
                })
                .await
                .map_err(|e| format!("{addr}: no INFO from the server: {e}"))?;
            wire::put_connect(&mut connection.out, name);
            connection
                .flush()
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            connection
                .read_until(|op| op == ServerOp::Pong)
                .await
                .map_err(|e| format!("{addr}: CONNECT refused: {e}"))?;
            Ok(connection)
        };
        tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| format!("cannot connect to {addr}: no handshake within {timeout:?}"))?
    }

    /// The server's `HOST:PORT`.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends everything in the write buffer.
    pub(crate) async fn flush(&mut self) -> Result<(), NatsError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads once from the socket and hands every whole operation to `each`, answering
    /// `PING`s into the write buffer (sent with the next [`Self::flush`]). `-ERR` ends the
    /// connection's use: it is returned after the operations before it. Cancel-safe.
    pub(crate) async fn read(
        &mut self,
        mut each: impl FnMut(ServerOp<'_>),
    ) -> Result<(), NatsError> {
        self.read.reserve(READ_CHUNK);
        if self.stream.read_buf(&mut self.read).await? == 0 {
            return Err(NatsError::Disconnected);
        }
        let mut at = 0;
        let mut failure = None;
        loop {
            let parsed = match wire::parse(&self.read[at..]) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(error) => {
                    failure = Some(NatsError::Protocol(error.to_string()));
                    break;
                }
            };
            let (op, used) = parsed;
            at += used;
            match op {
                ServerOp::Ping => wire::put_pong(&mut self.out),
                ServerOp::Err(text) => {
                    failure = Some(NatsError::Server(
                        String::from_utf8_lossy(text).into_owned(),
                    ));
                    break;
                }
                op => each(op),
            }
        }
        self.read.advance(at);
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Reads (answering `PING`s) until `done` returns true for an operation.
    async fn read_until(
        &mut self,
        mut done: impl FnMut(ServerOp<'_>) -> bool,
    ) -> Result<(), NatsError> {
        let mut finished = false;
        while !finished {
            self.read(|op| finished = finished || done(op)).await?;
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends `PING` and reads until its `PONG`: everything sent before it has been
    /// processed by the server (subscriptions are registered). Operations read meanwhile go
    /// to `each`.
    pub(crate) async fn round_trip(
        &mut self,
        mut each: impl FnMut(ServerOp<'_>),
    ) -> Result<(), NatsError> {
        wire::put_ping(&mut self.out);
        self.flush().await?;
        self.read_until(|op| {
            if op == ServerOp::Pong {
                return true;
            }
            each(op);
            false
        })
        .await
    }

    /// A request on `subject` (the JetStream API during setup) answered on `inbox`, which
    /// the caller subscribed as `sid`: the reply's status (503 = no responders) and payload.
    pub(crate) async fn request(
        &mut self,
        subject: &str,
        inbox: &str,
        sid: u64,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(Option<u16>, Vec<u8>), String> {
        wire::put_request(&mut self.out, subject, inbox, body);
        let exchange = async {
            self.flush().await?;
            let mut reply = None;
            self.read_until(|op| {
                if let ServerOp::Msg(delivery) = op
                    && delivery.sid == sid
                    && delivery.subject == inbox.as_bytes()
                {
                    reply = Some((delivery.status(), delivery.payload.to_vec()));
                    return true;
                }
                false
            })
            .await?;
            Ok::<_, NatsError>(reply)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(Some(reply))) => Ok(reply),
            Ok(Ok(None)) => Err(format!("{subject}: no reply")),
            Ok(Err(error)) => Err(format!("{subject}: {error}")),
            Err(_) => Err(format!("{subject}: no reply within {timeout:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_urls;

    #[test]
    fn urls_become_addresses_with_the_default_port() {
        assert_eq!(
            parse_urls("nats://127.0.0.1:4300, localhost,nats://h/").unwrap(),
            ["127.0.0.1:4300", "localhost:4222", "h:4222"]
        );
        assert!(parse_urls("nats://u:p@h:4222").is_err());
        assert!(parse_urls("tls://h:4222").is_err());
        assert!(parse_urls(" , ").is_err());
    }
}
