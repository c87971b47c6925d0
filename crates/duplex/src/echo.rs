//! `duplex echo`: the article's client, made robust.
//!
//! Each stdin line goes out as one `Msg` while replies print as `server: <<line>>`. The
//! two directions are independent: stdin is read into a bounded channel that the HTTP/2
//! send side drains, and replies are printed as they arrive, so a slow terminal never stops
//! the writer (only HTTP/2 flow control does). EOF half-closes the call; the program exits
//! 0 once the server has answered everything and ended the call with OK.

use std::time::Duration;

use anyhow::Context as _;
use duplex_proto::chat::{Echo, Msg};
use http::uri::PathAndQuery;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::client::Grpc;
use tonic::transport::Endpoint;
use tonic_prost::ProstCodec;

/// Lines read ahead of what HTTP/2 has sent. A bound, so a fast stdin meets backpressure.
const STDIN_READ_AHEAD: usize = 256;

/// Arguments of `duplex echo`.
#[derive(Debug, clap::Args)]
pub(crate) struct EchoArgs {
    /// Server address: HOST:PORT or a full URL (http://HOST:PORT).
    #[arg(long, default_value = "localhost:50051", env = "DUPLEX_ADDR")]
    addr: String,

    /// Deadline for the whole call (sent as `grpc-timeout`), e.g. 30s or 500ms.
    /// By default the call may last as long as stdin stays open.
    #[arg(long, value_parser = humantime::parse_duration)]
    deadline: Option<Duration>,

    /// Give up connecting after this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,

    /// gRPC method path to call. The default is the packaged service from
    /// `proto/chat.proto`; use `/Chat/Chat` for a server built from the article's
    /// package-less proto.
    #[arg(long, default_value = "/chat.Chat/Chat", value_parser = parse_method_path)]
    path: PathAndQuery,

    #[command(flatten)]
    tls: crate::tls::ClientTlsArgs,

    #[command(flatten)]
    token: crate::token::ClientTokenArgs,

    /// Largest reply accepted, in bytes (a 4MiB message echoes back 4 bytes longer).
    #[arg(long, default_value = "4MiB", value_parser = duplex_server::parse_size)]
    max_message_size: usize,
}

pub(crate) async fn run(args: EchoArgs) -> anyhow::Result<()> {
    let tls = args.tls.config()?;
    let authorization = args.token.authorization()?;
    let url = crate::address::client_url(&args.addr, tls.is_some())?;
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("`{}` is not a valid server address", args.addr))?
        .connect_timeout(args.connect_timeout)
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url} (is `duplex serve` running there?)"))?;
    // The generic client rather than the generated stub, so the method path is ours to pick.
    let mut client = Grpc::new(channel).max_decoding_message_size(args.max_message_size + 4);

    let (lines_tx, lines_rx) = mpsc::channel(STDIN_READ_AHEAD);
    let stdin_reader = tokio::spawn(read_lines(lines_tx));

    let mut request = tonic::Request::new(ReceiverStream::new(lines_rx));
    if let Some(deadline) = args.deadline {
        request.set_timeout(deadline);
    }
    if let Some(authorization) = authorization {
        request
            .metadata_mut()
            .insert("authorization", authorization);
    }
    let path = args.path.clone();
    client
        .ready()
        .await
        .context("the connection closed before the call started")?;
    let mut replies = client
        .streaming::<_, Msg, Echo, _>(request, args.path, ProstCodec::default())
        .await
        .map_err(|status| call_failed(status, &path))?
        .into_inner();

    let mut stdout = tokio::io::stdout();
    while let Some(reply) = replies
        .message()
        .await
        .map_err(|status| call_failed(status, &path))?
    {
        let line = format!("server: {}\n", reply.text);
        stdout.write_all(line.as_bytes()).await?;
        stdout.flush().await?;
    }
    if stdin_reader.is_finished() {
        stdin_reader.await??;
    }
    Ok(())
}

/// Sends each stdin line (without its line ending; invalid UTF-8 replaced) until EOF, then
/// drops the sender, which half-closes the call.
async fn read_lines(lines: mpsc::Sender<Msg>) -> std::io::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        if stdin.read_until(b'\n', &mut buffer).await? == 0 {
            return Ok(());
        }
        let line = buffer.strip_suffix(b"\n").unwrap_or(&buffer);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line).into_owned();
        if lines.send(Msg { text }).await.is_err() {
            // The call ended; the reply side reports why.
            return Ok(());
        }
    }
}

fn call_failed(status: tonic::Status, path: &PathAndQuery) -> anyhow::Error {
    let hint = match (status.code(), path.path()) {
        (tonic::Code::Unimplemented, "/chat.Chat/Chat") => {
            " (a server built from the article's package-less chat.proto serves /Chat/Chat: \
             try --path /Chat/Chat)"
        }
        (tonic::Code::Unimplemented, "/Chat/Chat") => {
            " (a server built from duplex's proto/chat.proto serves /chat.Chat/Chat: try \
             --path /chat.Chat/Chat)"
        }
        _ => "",
    };
    anyhow::anyhow!(
        "call failed: {:?}: {}{hint}",
        status.code(),
        status.message()
    )
}

fn parse_method_path(text: &str) -> Result<PathAndQuery, String> {
    let valid = text.starts_with('/') && text[1..].split('/').count() == 2;
    match text.parse() {
        Ok(path) if valid => Ok(path),
        _ => Err(format!(
            "`{text}` is not a gRPC method path like /package.Service/Method"
        )),
    }
}
