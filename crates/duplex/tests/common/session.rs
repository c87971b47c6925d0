//! A `Hub.Connect` session driven frame by frame, for tests.

use bytes::Bytes;
use duplex_proto::hub::hub_client::HubClient;
use duplex_proto::hub::server_frame::Frame;
use duplex_proto::hub::{ClientFrame, Join, Publish, ServerFrame, client_frame::Command};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use super::STEP;

/// One `Hub.Connect` session driven by the test.
pub(crate) struct Session {
    pub commands: mpsc::Sender<ClientFrame>,
    pub frames: Streaming<ServerFrame>,
    pub next_command: u64,
}

impl Session {
    /// Opens a session shown in presence as `name`.
    pub(crate) async fn open(channel: &Channel, name: &str) -> Self {
        Self::open_as(channel, |commands| {
            let mut request = tonic::Request::new(commands);
            request
                .metadata_mut()
                .insert("duplex-name", name.parse().unwrap());
            request
        })
        .await
    }

    /// Opens a session carrying the bearer `token`.
    pub(crate) async fn open_with_token(channel: &Channel, token: &str) -> Self {
        Self::open_as(channel, |commands| super::with_bearer(commands, token)).await
    }

    /// Opens a session whose call is the request `dress` makes around its commands.
    async fn open_as(
        channel: &Channel,
        dress: impl FnOnce(ReceiverStream<ClientFrame>) -> tonic::Request<ReceiverStream<ClientFrame>>,
    ) -> Self {
        let (commands, rx) = mpsc::channel(1024);
        let request = dress(ReceiverStream::new(rx));
        let frames = HubClient::new(channel.clone())
            .connect(request)
            .await
            .expect("open a session")
            .into_inner();
        Self {
            commands,
            frames,
            next_command: 1,
        }
    }
}

pub(crate) fn texts(messages: &[duplex_proto::hub::Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect()
}

/// The steps a test takes on a Hub session, whatever carries it (`Hub.Connect` here, `/ws`
/// in `ws.rs`): a transport says how a command goes out and a frame comes in; joining,
/// publishing and collecting messages are the same over both.
pub(crate) trait SessionSteps {
    /// Sends one command; returns its id.
    async fn send(&mut self, command: Command) -> u64;

    /// The next frame; panics when none comes within [`STEP`].
    async fn next(&mut self) -> Frame;

    /// The next frame that is not a presence event.
    async fn next_non_presence(&mut self) -> Frame {
        loop {
            match self.next().await {
                Frame::Presence(_) => continue,
                frame => return frame,
            }
        }
    }

    async fn join(&mut self, room: &str, after: Option<u64>) -> duplex_proto::hub::Joined {
        self.send(Command::Join(Join {
            room: room.into(),
            after_offset: after,
            hidden: false,
            replay_last: 0,
        }))
        .await;
        match self.next_non_presence().await {
            Frame::Joined(joined) => joined,
            other => panic!("expected joined, got {other:?}"),
        }
    }

    async fn publish(&mut self, room: &str, payload: impl Into<Bytes>) -> u64 {
        self.send(Command::Publish(Publish {
            room: room.into(),
            payload: payload.into(),
            ..Default::default()
        }))
        .await
    }

    /// Collects `count` messages (skipping acks and presence).
    async fn messages(&mut self, count: usize) -> Vec<duplex_proto::hub::Message> {
        let mut messages = Vec::with_capacity(count);
        while messages.len() < count {
            if let Frame::Message(message) = self.next().await {
                messages.push(message);
            }
        }
        messages
    }
}

impl SessionSteps for Session {
    async fn send(&mut self, command: Command) -> u64 {
        let command_id = self.next_command;
        self.next_command += 1;
        self.commands
            .send(ClientFrame {
                command_id,
                command: Some(command),
            })
            .await
            .expect("session open");
        command_id
    }

    async fn next(&mut self) -> Frame {
        timeout(STEP, self.frames.message())
            .await
            .expect("a frame in time")
            .expect("stream healthy")
            .expect("stream open")
            .frame
            .expect("frame set")
    }
}
