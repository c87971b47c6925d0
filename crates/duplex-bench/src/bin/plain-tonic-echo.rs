//! The reference peer of the benchmark: the article's `Chat` echo written the obvious way
//! with plain tonic, every default untouched. It is what `duplex serve` is measured against.
//!
//! Built from our `proto/chat.proto` (the generated `ChatServer`), `#[tokio::main]` with the
//! default multi-thread runtime, `Server::builder()` with no settings, and the handler as in
//! tonic's own streaming example: a task per call that reads requests and sends replies into
//! an `mpsc` channel whose receiver is the response stream.
//!
//! Usage: `plain-tonic-echo [--port 0] [--host 127.0.0.1]`. Prints `listening on ADDR` once
//! bound (port 0 picks one), serves until SIGINT or SIGTERM.

use std::net::SocketAddr;

use duplex_proto::chat::chat_server::{Chat, ChatServer};
use duplex_proto::chat::{Echo, Msg};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

#[derive(Debug, Default)]
struct EchoService;

#[tonic::async_trait]
impl Chat for EchoService {
    type ChatStream = ReceiverStream<Result<Echo, Status>>;

    async fn chat(
        &self,
        request: Request<Streaming<Msg>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(128);
        tokio::spawn(async move {
            while let Some(result) = inbound.next().await {
                let reply = result.map(|msg| Echo {
                    text: format!("<<{}>>", msg.text),
                });
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut host = "127.0.0.1".to_owned();
    let mut port = "50052".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => port = value,
            "--host" => host = value,
            other => return Err(format!("unknown flag {other}; use --host, --port").into()),
        }
    }
    let addr: SocketAddr = format!("{host}:{port}").parse()?;
    // What `Server::serve(addr)` does, kept in two steps so port 0 can be printed.
    let incoming = TcpIncoming::bind(addr)?.with_nodelay(Some(true));
    println!("listening on {}", incoming.local_addr()?);

    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("watch SIGTERM");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    Server::builder()
        .add_service(ChatServer::new(EchoService))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
