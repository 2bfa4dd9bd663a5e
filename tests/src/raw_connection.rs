//! A sync WebSocket driven by hand: the test decides every byte sent and
//! sees every frame the server answers, decoded. For hostile input, for
//! checking exactly what the server does with one push, and for upgrade
//! answers (status codes) that the SDK would hide.

use automerge::ActorId;
use baraza_protocol::codec;
use baraza_protocol::{ErrorMsg, Hello, Limits, Message, Welcome, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::net::{tls_connector, FRAME_TIMEOUT};
use crate::server_process::{device_of, ServerProcess};

/// How a test reads what the server sends: every structural bound of the
/// codec, but no frame size limit, so a test sees whatever the server
/// chose to send rather than a limit of its own.
const SERVER_FRAMES: Limits = Limits {
    frame_bytes_max: usize::MAX,
    ..Limits::DEFAULT
};

type Socket = WebSocketStream<TlsStream<TcpStream>>;

/// The automerge actor a device writes under: its id, then `install`
/// (one byte, repeated) for the install, as the server requires.
pub fn actor_for(device: &str, install: u8) -> ActorId {
    let mut bytes: Vec<u8> = (0..device.len() / 2)
        .map(|i| u8::from_str_radix(&device[2 * i..2 * i + 2], 16).expect("a hex device id"))
        .collect();
    bytes.extend_from_slice(&[install; 4]);
    ActorId::from(bytes)
}

/// A push of `doc`'s changes since `base`, as a hand-made client sends it.
pub fn push_since(
    id: baraza_protocol::DocId,
    base: &[baraza_protocol::Head],
    doc: &automerge::Automerge,
) -> Message {
    Message::Push(baraza_protocol::Push {
        doc: id,
        base: base.to_vec(),
        heads: baraza_protocol::to_heads(&doc.get_heads()),
        changes: doc
            .get_changes(&baraza_protocol::to_hashes(base))
            .iter()
            .map(|c| serde_bytes::ByteBuf::from(c.raw_bytes().to_vec()))
            .collect(),
    })
}

/// Opens TLS to the server and attempts the WebSocket upgrade.
async fn upgrade(
    server: &ServerProcess,
    authorization: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let tcp = TcpStream::connect(server.addr())
        .await
        .expect("TCP connect to the server");
    let name = ServerName::try_from("localhost").expect("a server name");
    let tls = tls_connector(&server.ca_path())
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the server");
    let mut request = format!("wss://localhost:{}/v1/sync", server.addr().port())
        .into_client_request()
        .expect("a WebSocket request");
    if let Some(value) = authorization {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    tokio_tungstenite::client_async_with_config(request, tls, None)
        .await
        .map(|(ws, _)| ws)
}

/// The HTTP status the sync endpoint answers an upgrade with, given this
/// `Authorization` header (or none): 101 when it upgrades.
pub async fn upgrade_status(server: &ServerProcess, authorization: Option<&str>) -> u16 {
    let attempt = tokio::time::timeout(FRAME_TIMEOUT, upgrade(server, authorization))
        .await
        .expect("the upgrade is answered in time");
    match attempt {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("the upgrade failed without an HTTP answer: {other}"),
    }
}

/// A sync WebSocket driven by hand: the test decides every byte sent.
pub struct RawConnection {
    ws: Socket,
    device_id: String,
}

impl RawConnection {
    /// Connects as the device holding `token`.
    pub async fn open(server: &ServerProcess, token: &str) -> RawConnection {
        let bearer = format!("Bearer {token}");
        let ws = tokio::time::timeout(FRAME_TIMEOUT, upgrade(server, Some(&bearer)))
            .await
            .expect("the upgrade is answered in time")
            .expect("the server upgrades a device with a valid token");
        let device_id = device_of(token);
        RawConnection { ws, device_id }
    }

    /// The id of the device this connection authenticated as.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Sends one binary frame as is.
    pub async fn send_bytes(&mut self, frame: Vec<u8>) {
        tokio::time::timeout(FRAME_TIMEOUT, self.ws.send(WsMessage::binary(frame)))
            .await
            .expect("the frame is sent in time")
            .expect("send a frame");
    }

    /// Encodes and sends one protocol message.
    pub async fn send(&mut self, message: &Message) {
        let frame = codec::encode(message).expect("encode a message");
        self.send_bytes(frame).await;
    }

    /// Says hello as a new device (no store, cursor 0) and returns the
    /// server's welcome.
    pub async fn hello(&mut self) -> Welcome {
        self.send(&Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            store: None,
            cursor: 0,
            names: false,
            // Unpacked: every message is read as the server sends it.
            packing: Vec::new(),
        }))
        .await;
        match self.next_message().await {
            Some(Message::Welcome(welcome)) => welcome,
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// Waits on the catch-up stream for record `id` and returns it as the
    /// server holds it.
    pub async fn record_from_feed(&mut self, id: baraza_protocol::DocId) -> automerge::Automerge {
        loop {
            match self.next_message().await {
                Some(Message::Changes(c)) if c.doc == id => {
                    let mut doc = automerge::Automerge::new();
                    doc.load_incremental(&c.data)
                        .expect("the server's changes load");
                    return doc;
                }
                Some(_) => {}
                None => panic!("the server closed before sending the record"),
            }
        }
    }

    /// The server's next protocol message, or None once it has closed the
    /// connection. Fails the test if nothing arrives within
    /// [`FRAME_TIMEOUT`] or a frame does not decode.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            let next = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .expect("the server answers (or closes) in time");
            match next {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    return Some(
                        codec::decode(&bytes, &SERVER_FRAMES).unwrap_or_else(|e| {
                            panic!("the server sent an undecodable frame: {e}")
                        }),
                    )
                }
                Some(Ok(WsMessage::Close(_))) | None => return None,
                // A reset right after the close frame is still a close.
                Some(Err(_)) => return None,
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                Some(Ok(WsMessage::Text(text))) => {
                    panic!("the server sent a text frame: {text:?}")
                }
            }
        }
    }

    /// The next message that is not feed traffic (`changes` and `cursor`
    /// messages carrying other devices' records), or None once closed.
    pub async fn next_reply(&mut self) -> Option<Message> {
        loop {
            match self.next_message().await {
                Some(Message::Changes(_) | Message::Cursor(_)) => {}
                other => return other,
            }
        }
    }

    /// The next reply must be an error frame; returns it.
    pub async fn expect_error(&mut self) -> ErrorMsg {
        match self.next_reply().await {
            Some(Message::Error(error)) => error,
            other => panic!("expected an error frame, got {other:?}"),
        }
    }

    /// The server must close the connection without another reply.
    pub async fn expect_closed(&mut self) {
        if let Some(message) = self.next_reply().await {
            panic!("expected the server to close the connection, got {message:?}");
        }
    }
}
