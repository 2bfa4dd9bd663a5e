//! Protocol-level clients for S3's ingest measurement.
//!
//! A light client speaks the real wire protocol ([`baraza_protocol`]
//! messages through its codec) over a real TLS WebSocket with its own
//! device token, but keeps its records as plain automerge documents in
//! memory and never applies what the server sends: `Changes` frames are
//! decoded and counted, nothing more. Its frames are encoded before the
//! measured phase, so during it a client only writes bytes, reads frames
//! and takes timestamps, and the machine's CPU goes to the server.
//!
//! Every wait is bounded by a deadline; all traffic is to the server's
//! loopback address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use automerge::{ActorId, Automerge};
use baraza_protocol::{
    codec, docsync, to_heads, DocId, Head, Hello, Limits, Message, Push, Seq, StoreId, Welcome,
    PROTOCOL_VERSION,
};
use baraza_records::{ops, FieldValue, Header, Kind};
use baraza_tests::http::{self, Endpoint, HttpReply, Request};
use baraza_tests::net::tcp_from;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use serde_bytes::ByteBuf;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::records::Gen;

/// An open sync connection.
pub type Socket = WebSocketStream<TlsStream<TcpStream>>;

/// How long one HTTPS exchange (connect included) may take.
const HTTPS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long closing a finished connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Refusal messages kept per session.
const REFUSALS_KEPT: usize = 3;

/// Opens TLS WebSockets to one server's sync endpoint.
pub struct Connector {
    addr: SocketAddr,
    tls: TlsConnector,
    ws_config: WebSocketConfig,
}

impl Connector {
    /// Trusts the certificates in `ca` (PEM) for connections to `addr`.
    /// TLS session resumption is off: every device does a full handshake,
    /// as separate tablets would.
    pub fn new(addr: SocketAddr, ca: &Path) -> anyhow::Result<Connector> {
        let mut config = baraza_tests::net::client_config(ca)?;
        config.resumption = rustls::client::Resumption::disabled();
        let frame_bytes_max = Limits::DEFAULT.frame_bytes_max;
        let mut ws_config = WebSocketConfig::default();
        ws_config.max_message_size = Some(frame_bytes_max.saturating_mul(4));
        ws_config.max_frame_size = Some(frame_bytes_max.saturating_mul(4));
        Ok(Connector {
            addr,
            tls: TlsConnector::from(Arc::new(config)),
            ws_config,
        })
    }

    /// TCP connect, TLS handshake and WebSocket upgrade with `token`.
    pub async fn connect(&self, token: &str) -> anyhow::Result<Socket> {
        let tcp = tcp_from(self.addr, None).await?;
        let tls = self
            .tls
            .connect(ServerName::from(self.addr.ip()), tcp)
            .await
            .context("TLS handshake")?;
        let mut request = format!("wss://{}/v1/sync", self.addr).into_client_request()?;
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the token cannot be a header value")?,
        );
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, tls, Some(self.ws_config))
                .await
                .context("WebSocket upgrade")?;
        Ok(ws)
    }
}

impl Connector {
    /// TCP connect from `local` (any port; the system's choice of address
    /// when None) and a TLS handshake, nothing more: a connection that then
    /// says nothing, for the hostile scenario.
    pub async fn tls_from(&self, local: Option<IpAddr>) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = tcp_from(self.addr, local).await?;
        self.tls
            .connect(ServerName::from(self.addr.ip()), tcp)
            .await
            .context("TLS handshake")
    }

    /// One HTTPS request on a connection of its own (`Connection:
    /// close`), through the harness's HTTP client. For the review desk's API.
    pub async fn https(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<HttpReply> {
        self.https_from(None, method, path, headers, body).await
    }

    /// [`https`](Self::https) from the local address `local` (the system's
    /// choice when None): the server throttles logins per address.
    pub async fn https_from(
        &self,
        local: Option<IpAddr>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<HttpReply> {
        let endpoint = Endpoint::tls(
            self.addr,
            self.tls.clone(),
            ServerName::from(self.addr.ip()),
        )
        .from(local);
        let request = Request {
            method,
            path,
            headers,
            body,
        };
        http::send(&endpoint, request, HTTPS_TIMEOUT).await
    }

    /// Signs `user` in at the review desk and returns the session cookie
    /// (`name=value`), as a browser would keep it.
    pub async fn sign_in(&self, user: &str, password: &str) -> anyhow::Result<String> {
        let body = serde_json::json!({ "user": user, "password": password }).to_string();
        let reply = self
            .https("POST", "/review/api/login", &[], Some(&body))
            .await?;
        ensure!(
            reply.status == 200,
            "sign-in: {} {}",
            reply.status,
            reply.body
        );
        let cookie = reply
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .context("no session cookie")?;
        Ok(cookie.to_string())
    }
}

/// A record a light client holds: its document and the heads the server
/// acknowledged (empty until the first ack).
pub struct LightRecord {
    /// The record id.
    pub id: DocId,
    /// The document.
    pub doc: Automerge,
    /// The server's acknowledged heads.
    pub acked: Vec<Head>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A deterministic 16-byte id from `gen`.
pub fn id_bytes(gen: &mut Gen) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&gen.next_u64().to_le_bytes());
    out[8..].copy_from_slice(&gen.next_u64().to_le_bytes());
    out
}

/// The device id a token carries (`bz_<32 hex digits>_<secret>`).
pub fn device_id_of(token: &str) -> anyhow::Result<String> {
    let id = token
        .strip_prefix("bz_")
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id)
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .context("the device token does not carry a device id")?;
    Ok(id.to_ascii_lowercase())
}

/// An actor id the server accepts from this device: the device id's 16
/// bytes, then 8 more from `gen` (as the SDK makes one per install).
pub fn actor_for(device_id: &str, gen: &mut Gen) -> anyhow::Result<ActorId> {
    let mut bytes = (0..device_id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&device_id[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .context("the device id is not hex")?;
    bytes.extend_from_slice(&gen.next_u64().to_le_bytes());
    Ok(ActorId::from(bytes))
}

/// Changes as the bench user makes them.
fn stamp(now_ms: i64) -> ops::Stamp<'static> {
    ops::Stamp {
        now_ms,
        by: crate::server::BENCH_USER,
    }
}

/// Sets a scalar field from its text as `Client::set` does: typed by the
/// record's schema (the SDK's own helper is not public; the schema and the
/// edit are `baraza-records`', which refuses a field the kind lacks).
fn set_text(
    doc: &mut Automerge,
    field: &str,
    value: &str,
    at: ops::Stamp<'_>,
) -> anyhow::Result<()> {
    let kind = Header::read(doc)?.kind;
    let spec = kind
        .field(field)
        .with_context(|| format!("a {} has no field {field:?}", kind.name()))?;
    let typed = FieldValue::parse(spec.ty, value)
        .map_err(|reason| anyhow::anyhow!("field {field}: {reason}"))?;
    ops::set(doc, field, typed, at)?;
    Ok(())
}

impl LightRecord {
    /// A new record made as the SDK's `Client::create` makes it: a meeting
    /// record's header (created by `device_id`), skeleton and fields in one
    /// change, written by `actor`.
    pub fn create(
        id: DocId,
        device_id: &str,
        actor: &ActorId,
        fields: &[(String, String)],
    ) -> anyhow::Result<LightRecord> {
        let now = now_ms();
        let header = Header {
            id: id.to_string(),
            kind: Kind::Meeting,
            area: crate::server::BENCH_AREA.into(),
            created_by_user: crate::server::BENCH_USER.into(),
            created_by_device: device_id.to_string(),
            created_at: now,
            schema: baraza_records::SCHEMA_VERSION,
        };
        let mut doc = Automerge::new();
        doc.set_actor(actor.clone());
        let typed = fields
            .iter()
            .map(|(k, v)| {
                let spec = Kind::Meeting
                    .field(k)
                    .with_context(|| format!("a meeting has no field {k:?}"))?;
                let value = FieldValue::parse(spec.ty, v)
                    .map_err(|reason| anyhow::anyhow!("field {k}: {reason}"))?;
                Ok((k.as_str(), value))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        ops::create_with(&mut doc, &header, &typed, stamp(now))?;
        Ok(LightRecord {
            id,
            doc,
            acked: Vec::new(),
        })
    }

    /// Sets a field in one change, as the SDK's `Client::set` does.
    pub fn set(&mut self, field: &str, value: &str) -> anyhow::Result<()> {
        set_text(&mut self.doc, field, value, stamp(now_ms()))
    }

    /// The encoded `Push` of this record's changes since its acknowledged
    /// heads (a real base for an edit, none for a new record).
    pub fn push_frame(&self) -> anyhow::Result<Vec<u8>> {
        let changes = docsync::changes_since(&self.doc, &self.acked);
        ensure!(
            !changes.is_empty(),
            "record {} has nothing to push",
            self.id
        );
        Ok(codec::encode(&Message::Push(Push {
            doc: self.id,
            base: self.acked.clone(),
            heads: to_heads(&self.doc.get_heads()),
            changes: changes
                .iter()
                .map(|c| ByteBuf::from(c.raw_bytes().to_vec()))
                .collect(),
        }))?)
    }
}

/// The encoded `Hello`.
pub fn hello_frame(store: Option<StoreId>, cursor: Seq) -> anyhow::Result<Vec<u8>> {
    Ok(codec::encode(&Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        store,
        cursor,
        names: false,
        // Unpacked: every message is read as the server sends it.
        packing: Vec::new(),
    }))?)
}

/// What one connection sends: the hello and its pushes, all pipelined.
pub struct Plan {
    /// The encoded hello.
    pub hello: Vec<u8>,
    /// One encoded push per document (each document at most once).
    pub pushes: Vec<(DocId, Vec<u8>)>,
    /// Also wait until the cursor reaches the feed position of the welcome
    /// and of every ack (everything remote received, as a syncing tablet
    /// waits); otherwise stop at the last acknowledgement.
    pub wait_for_feed: bool,
}

/// What one connection saw. Filled as far as it got, even on failure.
#[derive(Debug, Default)]
pub struct SessionLog {
    /// The server's welcome.
    pub welcome: Option<Welcome>,
    /// When each push was handed to the socket.
    pub sent_at: Vec<Option<Instant>>,
    /// When each push's `Ack` arrived (before decoding it), with its heads.
    pub acked: Vec<Option<(Instant, Vec<Head>)>>,
    /// Pushes refused with an `Error` naming their document.
    pub refused: usize,
    /// The first few refusal messages.
    pub refusals: Vec<String>,
    /// The highest feed position an ack named.
    pub ack_seq: Seq,
    /// The highest cursor received.
    pub cursor: Seq,
    /// `Changes` frames received (decoded, never applied).
    pub changes_frames: u64,
    /// Bytes of automerge data in them.
    pub changes_bytes: u64,
    /// `Sync` frames received: the server found a push's base missing.
    /// Zero in a healthy run.
    pub sync_frames: u64,
    /// Every binary frame received, and its bytes.
    pub frames_down: u64,
    /// Bytes of those frames (WebSocket payloads).
    pub bytes_down: u64,
    /// When the plan was complete (last ack, or the cursor after it).
    pub done_at: Option<Instant>,
    /// Why the session ended early.
    pub error: Option<String>,
}

impl SessionLog {
    /// A session that never started.
    pub fn failed(pushes: usize, error: String) -> SessionLog {
        SessionLog {
            sent_at: vec![None; pushes],
            acked: vec![None; pushes],
            error: Some(error),
            ..SessionLog::default()
        }
    }

    /// Pushes acknowledged.
    pub fn acks(&self) -> usize {
        self.acked.iter().filter(|a| a.is_some()).count()
    }

    /// Per push: send → ack, for the acknowledged ones.
    pub fn ack_latencies(&self) -> impl Iterator<Item = (usize, Duration)> + '_ {
        self.sent_at
            .iter()
            .zip(&self.acked)
            .enumerate()
            .filter_map(|(i, (sent, acked))| {
                let (sent, (at, _)) = (sent.as_ref()?, acked.as_ref()?);
                Some((i, at.saturating_duration_since(*sent)))
            })
    }
}

/// Runs `plan` over `socket` until it is complete or `deadline` passes:
/// sends the hello and every push at once (one flush) while reading
/// frames, then closes the connection.
pub async fn run(socket: Socket, plan: Plan, deadline: tokio::time::Instant) -> SessionLog {
    let (mut sink, mut stream) = socket.split();
    let n = plan.pushes.len();
    let mut log = SessionLog::failed(n, String::new());
    log.error = None;
    let index: HashMap<DocId, usize> = plan
        .pushes
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i))
        .collect();

    let mut sent_at = vec![None; n];
    let send = async {
        sink.feed(WsMessage::binary(plan.hello)).await?;
        for (i, (_, frame)) in plan.pushes.into_iter().enumerate() {
            sent_at[i] = Some(Instant::now());
            sink.feed(WsMessage::binary(frame)).await?;
        }
        sink.flush().await
    };
    let receive = receive(&mut stream, &index, plan.wait_for_feed, deadline, &mut log);
    let (sent, ()) = tokio::join!(send, receive);
    log.sent_at = sent_at;
    if let Err(e) = sent {
        log.error.get_or_insert(format!("send failed: {e}"));
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
    log
}

async fn receive<S>(
    stream: &mut S,
    index: &HashMap<DocId, usize>,
    wait_for_feed: bool,
    deadline: tokio::time::Instant,
    log: &mut SessionLog,
) where
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let limits = Limits {
        frame_bytes_max: Limits::DEFAULT.frame_bytes_max.saturating_mul(4),
        ..Limits::DEFAULT
    };
    let mut answered = 0usize;
    loop {
        if let Some(w) = &log.welcome {
            if answered == index.len() && (!wait_for_feed || log.cursor >= w.seq.max(log.ack_seq)) {
                log.done_at = Some(Instant::now());
                return;
            }
        }
        let message = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                let target = log.welcome.as_ref().map(|w| w.seq.max(log.ack_seq));
                log.error = Some(format!(
                    "timed out with {answered} of {} pushes answered, cursor {} of {target:?}",
                    index.len(),
                    log.cursor
                ));
                return;
            }
            Ok(None) => {
                log.error = Some("the server ended the connection".into());
                return;
            }
            Ok(Some(Err(e))) => {
                log.error = Some(format!("websocket error: {e}"));
                return;
            }
            Ok(Some(Ok(m))) => m,
        };
        let at = Instant::now();
        let frame = match message {
            WsMessage::Binary(b) => b,
            WsMessage::Close(c) => {
                log.error = Some(format!("the server closed the connection: {c:?}"));
                return;
            }
            _ => continue,
        };
        log.frames_down += 1;
        log.bytes_down += frame.len() as u64;
        let message = match codec::decode(&frame, &limits) {
            Ok(m) => m,
            Err(e) => {
                log.error = Some(format!("undecodable frame: {e}"));
                return;
            }
        };
        match message {
            Message::Welcome(w) => log.welcome = Some(w),
            Message::Ack(a) => {
                log.ack_seq = log.ack_seq.max(a.seq);
                if let Some(&i) = index.get(&a.doc) {
                    if log.acked[i].is_none() {
                        log.acked[i] = Some((at, a.heads));
                        answered += 1;
                    }
                }
            }
            Message::Changes(c) => {
                log.changes_frames += 1;
                log.changes_bytes += c.data.len() as u64;
            }
            Message::Cursor(c) => log.cursor = log.cursor.max(c.seq),
            Message::Sync(_) => log.sync_frames += 1,
            Message::Error(e) => {
                if e.fatal {
                    log.error = Some(format!("fatal error from the server: {}", e.message));
                    return;
                }
                if let Some(&i) = e.doc.as_ref().and_then(|d| index.get(d)) {
                    if log.acked[i].is_none() {
                        log.refused += 1;
                        answered += 1;
                    }
                }
                if log.refusals.len() < REFUSALS_KEPT {
                    log.refusals.push(format!("{:?}: {}", e.code, e.message));
                }
            }
            other => {
                log.error = Some(format!("unexpected {} from the server", other.kind()));
                return;
            }
        }
    }
}

/// What a push probe's writer did: per record it pushed, when the push
/// went out and when its `Ack` came back.
#[derive(Debug, Default)]
pub struct ProbeWrites {
    /// Pushed records in order: id, sent, acknowledged.
    pub pushes: Vec<(DocId, Instant, Option<Instant>)>,
    /// Why it stopped early.
    pub error: Option<String>,
}

/// What a push probe's watcher saw: when each record's first `Changes`
/// frame arrived.
#[derive(Debug, Default)]
pub struct ProbeArrivals {
    /// First arrival per record.
    pub first: HashMap<DocId, Instant>,
    /// Why it stopped early.
    pub error: Option<String>,
}

/// Reads one frame within `deadline`, or says why the session is over.
async fn next_message<S>(stream: &mut S, deadline: tokio::time::Instant) -> Result<Message, String>
where
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    let limits = Limits {
        frame_bytes_max: Limits::DEFAULT.frame_bytes_max.saturating_mul(4),
        ..Limits::DEFAULT
    };
    loop {
        let message = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Err("timed out".into()),
            Ok(None) => return Err("the server ended the connection".into()),
            Ok(Some(Err(e))) => return Err(format!("websocket error: {e}")),
            Ok(Some(Ok(m))) => m,
        };
        match message {
            WsMessage::Binary(frame) => {
                return codec::decode(&frame, &limits)
                    .map_err(|e| format!("undecodable frame: {e}"))
            }
            WsMessage::Close(c) => return Err(format!("the server closed the connection: {c:?}")),
            _ => {}
        }
    }
}

/// The device a push probe writes as.
pub struct ProbeDevice {
    /// Its id.
    pub device_id: String,
    /// The actor its records are written by.
    pub actor: ActorId,
    /// Where its record ids and fields come from.
    pub gen: Gen,
}

/// A push probe's writer: on one live connection, pushes a new record
/// every `every` until `stop` turns true (or `deadline`), noting when each
/// push went out and when it was acknowledged. Records are made as it
/// goes (a few hundred microseconds each), as a tablet makes them.
pub async fn probe_writer(
    socket: Socket,
    hello: Vec<u8>,
    writer: ProbeDevice,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    deadline: tokio::time::Instant,
) -> ProbeWrites {
    let (mut sink, mut stream) = socket.split();
    let mut out = ProbeWrites::default();
    if let Err(e) = sink.send(WsMessage::binary(hello)).await {
        out.error = Some(format!("send failed: {e}"));
        return out;
    }
    let ProbeDevice {
        device_id,
        actor,
        mut gen,
    } = writer;
    let mut index: HashMap<DocId, usize> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0usize;
    let mut unanswered = 0usize;
    loop {
        tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            _ = tokio::time::sleep_until(deadline) => {
                out.error = Some("timed out".into());
                break;
            }
            _ = tick.tick() => {
                let id = DocId::from_bytes(id_bytes(&mut gen));
                let fields = crate::records::fields(&mut gen, 2_000_000 + n);
                n += 1;
                let frame = LightRecord::create(id, &device_id, &actor, &fields)
                    .and_then(|r| r.push_frame());
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => {
                        out.error = Some(format!("cannot make a probe record: {e:#}"));
                        break;
                    }
                };
                index.insert(id, out.pushes.len());
                out.pushes.push((id, Instant::now(), None));
                unanswered += 1;
                if let Err(e) = sink.send(WsMessage::binary(frame)).await {
                    out.error = Some(format!("send failed: {e}"));
                    break;
                }
            }
            message = next_message(&mut stream, deadline) => {
                if let Err(e) = note_probe_ack(message, &index, &mut out, &mut unanswered) {
                    out.error = Some(e);
                    break;
                }
            }
        }
    }
    // Told to stop: no more pushes, but every one sent is answered before
    // hanging up, so each is known to be stored or not.
    let drain = tokio::time::Instant::now() + PROBE_DRAIN;
    while out.error.is_none() && unanswered > 0 {
        let message = next_message(&mut stream, drain.min(deadline)).await;
        if let Err(e) = note_probe_ack(message, &index, &mut out, &mut unanswered) {
            out.error = Some(format!("{e} with {unanswered} probe pushes unanswered"));
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
    out
}

/// How long a stopped probe writer waits for its last acks.
const PROBE_DRAIN: Duration = Duration::from_secs(30);

/// Notes an ack (or refusal) of one of a probe writer's pushes; an error
/// ends its session.
fn note_probe_ack(
    message: Result<Message, String>,
    index: &HashMap<DocId, usize>,
    out: &mut ProbeWrites,
    unanswered: &mut usize,
) -> Result<(), String> {
    match message? {
        Message::Ack(a) => {
            if let Some(&i) = index.get(&a.doc) {
                if out.pushes[i].2.is_none() {
                    out.pushes[i].2 = Some(Instant::now());
                    *unanswered = unanswered.saturating_sub(1);
                }
            }
            Ok(())
        }
        Message::Error(e) if e.fatal => Err(format!("fatal error from the server: {}", e.message)),
        Message::Error(e) => {
            if e.doc.is_some_and(|d| index.contains_key(&d)) {
                *unanswered = unanswered.saturating_sub(1);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A push probe's watcher: a live connection that pushes nothing and
/// notes when each record's first `Changes` frame arrives, until every
/// record of the set `expect` is given has arrived (or `deadline`).
pub async fn probe_watcher(
    socket: Socket,
    hello: Vec<u8>,
    mut expect: tokio::sync::watch::Receiver<Option<std::collections::HashSet<DocId>>>,
    deadline: tokio::time::Instant,
) -> ProbeArrivals {
    let (mut sink, mut stream) = socket.split();
    let mut out = ProbeArrivals::default();
    if let Err(e) = sink.send(WsMessage::binary(hello)).await {
        out.error = Some(format!("send failed: {e}"));
        return out;
    }
    let mut until = deadline;
    loop {
        let (told, all_in) = match expect.borrow().as_ref() {
            Some(ids) => (true, ids.iter().all(|id| out.first.contains_key(id))),
            None => (false, false),
        };
        if all_in {
            break;
        }
        if told {
            // Those still missing get this long from being asked for.
            until = until.min(tokio::time::Instant::now() + PROBE_DRAIN);
            if tokio::time::Instant::now() >= until {
                break;
            }
        }
        tokio::select! {
            _ = expect.changed() => {}
            message = next_message(&mut stream, until) => match message {
                Ok(Message::Changes(c)) => {
                    out.first.entry(c.doc).or_insert_with(Instant::now);
                }
                Ok(Message::Error(e)) if e.fatal => {
                    out.error = Some(format!("fatal error from the server: {}", e.message));
                    break;
                }
                Ok(_) => {}
                // Asked for records that did not come in time: the count
                // of those missing says so, not an error.
                Err(_) if told && tokio::time::Instant::now() >= until => break,
                Err(e) => {
                    out.error = Some(e);
                    break;
                }
            },
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
    out
}
