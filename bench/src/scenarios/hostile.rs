//! The `hostile` scenario: what the worst inputs cost a real server.
//!
//! Part 1 sends, from one and from eight connections at once, each of four
//! inputs built against the configured limits, and reads the server's peak
//! RSS (`VmHWM`, reset before each case, and `VmRSS` sampled every 20 ms):
//!
//! - a deflate bomb: a push whose change holds a 20 MB field of one letter,
//!   DEFLATE-compressed by automerge (`Change::bytes`) to a few KB;
//! - a wide array: an 8 MB frame holding a CBOR array of eight million
//!   small integers (not a valid message);
//! - a million empty changes in one push;
//! - a 54-byte run-length bomb change claiming ten million operations.
//!
//! Part 2 times a legitimate tablet's S1 reconnect a few times with no
//! attack, then while 4,096 idle TLS connections (spread over source
//! addresses 127.0.0.2..127.0.0.127, under the per-address cap) and a
//! repeated deflate bomb are held against the server.
//!
//! Every loop is bounded; all traffic is on loopback.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use baraza_client::Client;
use baraza_protocol::{codec, to_heads, DocId, Limits, Message, Push};
use futures_util::{SinkExt, StreamExt};
use serde_bytes::ByteBuf;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{device_client, kib_json, mib, Bench, Outcome, EDIT_FIELD};
use crate::light::{self, Connector, LightRecord};
use crate::records::{self, Gen};
use crate::server::{proc_status_kib, Server};
use crate::stats::{ms, round3, summary};

/// The run-length bomb: 54 bytes of automerge change claiming 10 million
/// operations.
const RLE_BOMB_HEX: &str = "856f4a836d869bac012c0001010101000000051506340442055605700580ade204016b80ade20480ade2040180ade2040080ade20400";
/// The deflate bomb's field: this many bytes of one letter.
const DEFLATE_FIELD_BYTES: usize = 20 * 1024 * 1024;
/// Elements of the wide CBOR array.
const WIDE_ARRAY_LEN: u32 = 8_000_000;
/// Empty changes in one push.
const EMPTY_CHANGES: usize = 1_000_000;
/// Connection counts each attack runs with.
const ATTACKERS: [usize; 2] = [1, 8];
/// RSS sampling period.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// How long an attacker waits for the server's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect + TLS handshake (+ WebSocket upgrade) deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause before each case, so the previous one's memory is given back.
const SETTLE: Duration = Duration::from_millis(1500);
/// Idle connections held during part 2.
const IDLE_CONNECTIONS: usize = 4096;
/// Source addresses 127.0.0.2 ..= 127.0.0.(1 + this).
const IDLE_SOURCES: usize = 126;
/// Handshakes in progress at once while opening idle connections.
const IDLE_OPEN_PARALLEL: usize = 64;
/// How long opening the idle connections may take.
const IDLE_OPEN_DEADLINE: Duration = Duration::from_secs(120);
/// Bound on bomb pushes during part 2.
const BOMBS_MAX: u64 = 100_000;
/// Pause between bomb pushes during part 2.
const BOMB_PAUSE: Duration = Duration::from_millis(100);

/// What the attacker connections of one case saw.
struct CaseResult {
    attack: &'static str,
    connections: usize,
    frame_bytes: usize,
    rss_before_kib: Option<u64>,
    peak_kib: Option<u64>,
    hwm_kib: Option<u64>,
    sampled_max_kib: Option<u64>,
    rss_after_kib: Option<u64>,
    wall: Duration,
    answers: Vec<String>,
}

/// Samples a process's `VmRSS` every [`SAMPLE_EVERY`] until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Option<u64>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut max: Option<u64> = None;
            // Bounded: at most an hour of samples.
            for _ in 0..(3600 * 1000 / SAMPLE_EVERY.as_millis() as u64) {
                if let Some(kib) = proc_status_kib(pid, "VmRSS") {
                    max = Some(max.map_or(kib, |m| m.max(kib)));
                }
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            max
        });
        Sampler { stop, handle }
    }

    fn finish(self) -> Option<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().ok().flatten()
    }
}

/// The four attack frames (each already a whole WebSocket payload).
fn attack_frames(device_id: &str) -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    let mut gen = Gen::new(0xB0B);
    let actor = light::actor_for(device_id, &mut gen)?;

    // (a) Deflate bomb.
    let id = DocId::from_bytes(light::id_bytes(&mut gen));
    let big = "a".repeat(DEFLATE_FIELD_BYTES);
    let record = LightRecord::create(id, device_id, &actor, &[("title".to_string(), big)])?;
    let changes: Vec<ByteBuf> = record
        .doc
        .get_changes(&[])
        .into_iter()
        .map(|mut c| ByteBuf::from(c.bytes().into_owned()))
        .collect();
    let deflate = codec::encode(&Message::Push(Push {
        doc: id,
        base: Vec::new(),
        heads: to_heads(&record.doc.get_heads()),
        changes,
    }))?;
    drop(record);

    // (b) Wide array: CBOR array header (major type 4, 32-bit length), then
    // eight million one-byte integers.
    let mut wide = Vec::with_capacity(5 + WIDE_ARRAY_LEN as usize);
    wide.push(0x9a);
    wide.extend_from_slice(&WIDE_ARRAY_LEN.to_be_bytes());
    wide.resize(5 + WIDE_ARRAY_LEN as usize, 0x01);

    // (c) A million empty changes.
    let id = DocId::from_bytes(light::id_bytes(&mut gen));
    let empty = codec::encode(&Message::Push(Push {
        doc: id,
        base: Vec::new(),
        heads: Vec::new(),
        changes: vec![ByteBuf::new(); EMPTY_CHANGES],
    }))?;

    // (d) The run-length bomb.
    let id = DocId::from_bytes(light::id_bytes(&mut gen));
    let rle = codec::encode(&Message::Push(Push {
        doc: id,
        base: Vec::new(),
        heads: Vec::new(),
        changes: vec![ByteBuf::from(hex_bytes(RLE_BOMB_HEX)?)],
    }))?;

    Ok(vec![
        ("deflate_bomb", deflate),
        ("wide_array", wide),
        ("million_empty_changes", empty),
        ("rle_bomb", rle),
    ])
}

fn hex_bytes(hex: &str) -> anyhow::Result<Vec<u8>> {
    ensure!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).context("bad hex"))
        .collect()
}

/// Reads until the server answers the attack (an error, an ack, a close)
/// or `deadline`; returns a short description.
async fn await_answer(socket: &mut light::Socket, deadline: tokio::time::Instant) -> String {
    // Bounded by the deadline, and by a frame count.
    for _ in 0..100_000 {
        let next = match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return "no answer before the deadline".into(),
            Ok(None) => return "connection ended".into(),
            Ok(Some(Err(e))) => return format!("websocket error: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        let frame = match next {
            WsMessage::Binary(b) => b,
            WsMessage::Close(c) => {
                return format!(
                    "closed: {}",
                    c.map(|c| format!("{} {}", c.code, c.reason))
                        .unwrap_or_default()
                )
            }
            _ => continue,
        };
        match codec::decode(&frame, &reading_limits()) {
            Ok(Message::Error(e)) => {
                return format!(
                    "{}error {:?}: {}",
                    if e.fatal { "fatal " } else { "" },
                    e.code,
                    e.message
                )
            }
            Ok(Message::Ack(_)) => return "acknowledged".into(),
            Ok(_) => continue,
            Err(e) => return format!("undecodable frame: {e}"),
        }
    }
    "too many frames".into()
}

/// `n` connections (device tokens `tokens[..n]`) each send the hello and
/// `frame` at the same moment and wait for the answer.
async fn attack(
    connector: &Connector,
    tokens: &[String],
    n: usize,
    hello: &[u8],
    frame: &[u8],
) -> Vec<String> {
    let connects = tokens.iter().take(n).map(|token| async move {
        match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(token)).await {
            Ok(Ok(socket)) => Ok(socket),
            Ok(Err(e)) => Err(format!("connect failed: {e:#}")),
            Err(_) => Err("connect timed out".to_string()),
        }
    });
    let sockets = futures_util::future::join_all(connects).await;
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    let sends = sockets.into_iter().map(|socket| async move {
        let mut socket = socket?;
        socket
            .feed(WsMessage::binary(hello.to_vec()))
            .await
            .map_err(|e| format!("send failed: {e}"))?;
        if let Err(e) = socket.send(WsMessage::binary(frame.to_vec())).await {
            // The server may have closed at once: read why.
            let why = await_answer(&mut socket, deadline).await;
            return Err(format!("send failed: {e}; then {why}"));
        }
        let answer = await_answer(&mut socket, deadline).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
        Ok(answer)
    });
    futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|r: Result<String, String>| r.unwrap_or_else(|e| e))
        .collect()
}

/// One ordinary session: hello, welcome, close.
async fn warm_up(connector: &Connector, token: &str, hello: &[u8]) -> String {
    let mut socket = match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(token)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return format!("connect failed: {e:#}"),
        Err(_) => return "connect timed out".into(),
    };
    if let Err(e) = socket.send(WsMessage::binary(hello.to_vec())).await {
        return format!("send failed: {e}");
    }
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    let mut out = "no welcome before the deadline".to_string();
    for _ in 0..10_000 {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(WsMessage::Binary(b)))) => {
                if let Ok(Message::Welcome(_)) = codec::decode(&b, &reading_limits()) {
                    out = "welcomed".into();
                    break;
                }
            }
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    out
}

/// Counters of the idle connections of part 2.
#[derive(Default)]
struct IdleStats {
    /// Handshakes completed (first connections and reopened ones).
    handshakes: AtomicU64,
    /// Of the first [`IDLE_CONNECTIONS`] attempts, handshakes completed.
    first_open: AtomicU64,
    /// Of the first attempts, connections that failed or timed out.
    first_failed: AtomicU64,
    /// Of the first connections opened, those the server closed.
    first_closed: AtomicU64,
    /// All closes by the server (reopened connections too).
    closed: AtomicU64,
    /// Connect or handshake failures, reopening included.
    failed: AtomicU64,
    /// Connections still open when the phase ended.
    open_at_end: AtomicU64,
}

impl IdleStats {
    fn json(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        json!({
            "target": IDLE_CONNECTIONS,
            "source_addresses": IDLE_SOURCES,
            "first_handshakes_ok": g(&self.first_open),
            "first_attempts_failed": g(&self.first_failed),
            "first_closed_by_server": g(&self.first_closed),
            "handshakes_total": g(&self.handshakes),
            "closed_by_server_total": g(&self.closed),
            "failures_total": g(&self.failed),
            "open_at_end": g(&self.open_at_end),
        })
    }
}

/// One idle connection from `local`: connect, handshake, say nothing; when
/// the server closes it, open another (at most `reopen_max` times) until
/// `stop`.
async fn hold_idle(
    connector: Arc<Connector>,
    local: IpAddr,
    opening: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<IdleStats>,
    reopen_max: usize,
) {
    for round in 0..=reopen_max {
        if *stop.borrow() {
            return;
        }
        let opened = {
            let _permit = opening.acquire().await;
            tokio::time::timeout(CONNECT_TIMEOUT, connector.tls_from(Some(local))).await
        };
        let mut tls = match opened {
            Ok(Ok(tls)) => tls,
            _ => {
                stats.failed.fetch_add(1, Ordering::SeqCst);
                if round == 0 {
                    stats.first_failed.fetch_add(1, Ordering::SeqCst);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
        };
        stats.handshakes.fetch_add(1, Ordering::SeqCst);
        if round == 0 {
            stats.first_open.fetch_add(1, Ordering::SeqCst);
        }
        let mut buf = [0u8; 256];
        let mut closed = false;
        // The server sends nothing an idle client must read, except TLS
        // records rustls handles itself; bounded anyway.
        for _ in 0..1000 {
            tokio::select! {
                read = tls.read(&mut buf) => match read {
                    Ok(n) if n > 0 => continue,
                    _ => { closed = true; break; }
                },
                _ = stop.changed() => break,
            }
        }
        if !closed {
            stats.open_at_end.fetch_add(1, Ordering::SeqCst);
            return;
        }
        stats.closed.fetch_add(1, Ordering::SeqCst);
        if round == 0 {
            stats.first_closed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Pushes the deflate bomb over and over (reconnecting when the server
/// closes) until `stop`; returns (pushes answered, connections, answers seen).
async fn bomb_loop(
    connector: Arc<Connector>,
    token: String,
    hello: Vec<u8>,
    frame: Vec<u8>,
    mut stop: watch::Receiver<bool>,
) -> (u64, u64, Vec<String>) {
    let mut pushes = 0u64;
    let mut connections = 0u64;
    let mut seen: Vec<String> = Vec::new();
    while pushes < BOMBS_MAX && !*stop.borrow() {
        let socket = tokio::select! {
            s = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(&token)) => s,
            _ = stop.changed() => break,
        };
        let mut socket = match socket {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                note(format!("connect failed: {e:#}"), &mut seen);
                tokio::time::sleep(BOMB_PAUSE).await;
                continue;
            }
            Err(_) => {
                note("connect timed out".into(), &mut seen);
                continue;
            }
        };
        connections += 1;
        if socket.send(WsMessage::binary(hello.clone())).await.is_err() {
            continue;
        }
        while pushes < BOMBS_MAX && !*stop.borrow() {
            if socket.send(WsMessage::binary(frame.clone())).await.is_err() {
                break;
            }
            let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
            let answer = await_answer(&mut socket, deadline).await;
            pushes += 1;
            let ended = answer.starts_with("fatal")
                || answer.starts_with("closed")
                || answer.starts_with("connection ended")
                || answer.starts_with("websocket error")
                || answer.starts_with("no answer");
            note(answer, &mut seen);
            if ended {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(BOMB_PAUSE) => {}
                _ = stop.changed() => {}
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    }
    (pushes, connections, seen)
}

fn note(s: String, seen: &mut Vec<String>) {
    let short: String = s.chars().take(160).collect();
    if seen.len() < 5 && !seen.contains(&short) {
        seen.push(short);
    }
}

/// The open-file limit (soft), from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A client holding records, a second device editing, for S1 rounds.
struct S1Setup {
    a: Client,
    b: Client,
    ids: Vec<String>,
}

impl Bench {
    /// The `hostile` scenario (see the module documentation).
    pub fn hostile(&self) -> anyhow::Result<Outcome> {
        let fds = open_files_limit();
        if fds.is_some_and(|n| n < (IDLE_CONNECTIONS + 512) as u64) {
            self.log(&format!(
                "warning: the open-file limit is {fds:?}, below the {} idle connections \
                 part 2 opens (the server inherits it too); raise it with `ulimit -n`",
                IDLE_CONNECTIONS
            ));
        }
        let part1 = self.hostile_inputs()?;
        let part2 = self.hostile_reconnect()?;

        let frame_limit_kib = (Limits::DEFAULT.frame_bytes_max / 1024) as u64;
        let idle_kib = part1.0;
        let cases: Vec<Value> = part1
            .1
            .iter()
            .map(|c| {
                let target = 2 * frame_limit_kib * c.connections as u64;
                let growth = c
                    .peak_kib
                    .zip(c.rss_before_kib)
                    .map(|(p, b)| p.saturating_sub(b));
                json!({
                    "attack": c.attack,
                    "connections": c.connections,
                    "frame_bytes": c.frame_bytes,
                    "peak_rss_kib": kib_json(c.peak_kib),
                    "peak_over_before_kib": kib_json(growth),
                    "peak_over_idle_kib": kib_json(c.peak_kib.zip(idle_kib).map(|(p, i)| p.saturating_sub(i))),
                    "target_kib": target,
                    "within_target": growth.map(|g| g < target),
                    "vm_hwm_kib": kib_json(c.hwm_kib),
                    "sampled_max_rss_kib": kib_json(c.sampled_max_kib),
                    "rss_before_kib": kib_json(c.rss_before_kib),
                    "rss_after_kib": kib_json(c.rss_after_kib),
                    "wall_ms": round3(ms(c.wall)),
                    "answers": dedup(&c.answers),
                })
            })
            .collect();
        let mut text = format!(
            "hostile inputs: server idle RSS {}; frame limit {} KiB; target: peak RSS growth \
             over the case's starting RSS < 2 x frame limit x connections (memory freed by one case \
             stays with the process, so later cases start higher)\n  \
             {:<22} {:>5} {:>10} {:>11} {:>11} {:>11}  answer",
            mib(idle_kib),
            frame_limit_kib,
            "attack",
            "conns",
            "frame B",
            "peak RSS",
            "growth",
            "target"
        );
        for c in &part1.1 {
            let target = 2 * frame_limit_kib * c.connections as u64;
            let growth = c
                .peak_kib
                .zip(c.rss_before_kib)
                .map(|(p, b)| p.saturating_sub(b));
            text.push_str(&format!(
                "\n  {:<22} {:>5} {:>10} {:>11} {:>11} {:>11}  {}",
                c.attack,
                c.connections,
                c.frame_bytes,
                mib(c.peak_kib),
                mib(growth),
                mib(Some(target)),
                dedup(&c.answers)
                    .first()
                    .map(|s| s.chars().take(90).collect::<String>())
                    .unwrap_or_default()
            ));
        }
        text.push('\n');
        text.push_str(&part2.1);
        let json = json!({
            "scenario": "hostile",
            "frame_limit_bytes": Limits::DEFAULT.frame_bytes_max,
            "idle_rss_kib": kib_json(idle_kib),
            "open_files_limit": fds,
            "cases": cases,
            "s1_under_attack": part2.0,
        });
        Ok(Outcome {
            name: "hostile",
            json,
            summary: text,
        })
    }

    /// Part 1: the idle baseline RSS and each attack case.
    fn hostile_inputs(&self) -> anyhow::Result<(Option<u64>, Vec<CaseResult>)> {
        let dir = self.scenario_dir("hostile-inputs")?;
        let server = Server::start(
            &self.opts.server_bin,
            &dir.join("server-data"),
            &dir.join("server.log"),
        )?;
        self.log(&format!(
            "hostile: server pid {} on {}",
            server.pid(),
            server.addr()
        ));
        let n_max = ATTACKERS.iter().copied().max().unwrap_or(1);
        let tokens = server.add_devices("bench-hostile", n_max, 4)?;
        let connector = Connector::new(server.addr(), &server.ca())?;
        let device_id = light::device_id_of(&tokens[0])?;
        let start = Instant::now();
        let frames = attack_frames(&device_id)?;
        self.log(&format!(
            "hostile: built the attack frames in {:.1} s ({})",
            start.elapsed().as_secs_f64(),
            frames
                .iter()
                .map(|(n, f)| format!("{n} {} B", f.len()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let hello = light::hello_frame(None, 0)?;
        // One ordinary session first, so the baseline includes a served
        // connection's lasting allocations.
        let warm = self.rt.block_on(warm_up(&connector, &tokens[0], &hello));
        self.log(&format!("hostile: warm-up session: {warm}"));
        std::thread::sleep(SETTLE);
        let idle_kib = server.status_kib("VmRSS");
        self.log(&format!("hostile: idle server RSS {}", mib(idle_kib)));

        let mut cases = Vec::new();
        for (attack_name, frame) in &frames {
            for &n in &ATTACKERS {
                std::thread::sleep(SETTLE);
                let rss_before_kib = server.status_kib("VmRSS");
                let reset = server.reset_peak_rss();
                let sampler = Sampler::start(server.pid());
                let start = Instant::now();
                let answers = self
                    .rt
                    .block_on(attack(&connector, &tokens, n, &hello, frame));
                let wall = start.elapsed();
                // The server may still be freeing or finishing.
                std::thread::sleep(Duration::from_millis(300));
                let sampled_max_kib = sampler.finish();
                let hwm_kib = if reset {
                    server.status_kib("VmHWM")
                } else {
                    None
                };
                let peak_kib = match (hwm_kib, sampled_max_kib) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                let rss_after_kib = server.status_kib("VmRSS");
                self.log(&format!(
                    "hostile: {attack_name} x{n}: peak RSS {} (before {}, after {}) in {:.2} s; {}",
                    mib(peak_kib),
                    mib(rss_before_kib),
                    mib(rss_after_kib),
                    wall.as_secs_f64(),
                    dedup(&answers).join(" | ")
                ));
                cases.push(CaseResult {
                    attack: attack_name,
                    connections: n,
                    frame_bytes: frame.len(),
                    rss_before_kib,
                    peak_kib,
                    hwm_kib,
                    sampled_max_kib,
                    rss_after_kib,
                    wall,
                    answers,
                });
            }
        }
        let status = server.stop()?;
        if !status.success() {
            self.log(&format!(
                "warning: the hostile-inputs server exited with {status}"
            ));
        }
        Ok((idle_kib, cases))
    }

    fn s1_setup(&self, server: &Server, dir: &std::path::Path) -> anyhow::Result<S1Setup> {
        let o = &self.opts;
        let url = server.url();
        let a = device_client(server, &url, &dir.join("client-a"), "bench-a")?;
        let b = device_client(server, &url, &dir.join("client-b"), "bench-b")?;
        let mut gen = Gen::new(1);
        let start = Instant::now();
        for n in 0..o.hostile_docs {
            a.create(records::fields(&mut gen, n))?;
        }
        self.log(&format!(
            "hostile S1 setup: {} creates in {:.1} s",
            o.hostile_docs,
            start.elapsed().as_secs_f64()
        ));
        let (up, wall, _) = self.try_sync(&a, None);
        let up = up?;
        ensure!(
            up.unacknowledged == 0,
            "A's upload left {} unacknowledged",
            up.unacknowledged
        );
        self.try_sync(&a, None).0?;
        let (cold, cold_wall, _) = self.try_sync(&b, None);
        cold?;
        self.log(&format!(
            "hostile S1 setup: upload {:.2} s, B's cold start {:.2} s",
            wall.as_secs_f64(),
            cold_wall.as_secs_f64()
        ));
        let ids = a.list()?;
        Ok(S1Setup { a, b, ids })
    }

    /// One S1 round: B edits `edits` records and syncs; A edits `edits`
    /// others offline and reconnects (timed). Returns A's sync time or error.
    fn s1_round(&self, s: &S1Setup, round: usize) -> anyhow::Result<Result<Duration, String>> {
        let e = self.opts.edits;
        let b_ids: Vec<&String> = s.ids.iter().step_by(2).take(e).collect();
        let a_ids: Vec<&String> = s.ids.iter().skip(1).step_by(2).take(e).collect();
        for (k, id) in b_ids.iter().enumerate() {
            s.b.set(id, EDIT_FIELD, &format!("reviewed by B #{k} r{round}"))?;
        }
        let (b_push, b_wall, _) = self.try_sync(&s.b, None);
        if let Err(err) = &b_push {
            self.log(&format!(
                "hostile S1 round {round}: B's sync failed after {:.1} s: {err}",
                b_wall.as_secs_f64()
            ));
        }
        for (k, id) in a_ids.iter().enumerate() {
            s.a.set(id, EDIT_FIELD, &format!("closed by A #{k} r{round}"))?;
        }
        let (result, wall, _) = self.try_sync(&s.a, None);
        Ok(match result {
            Ok(report) if report.unacknowledged == 0 => Ok(wall),
            Ok(report) => Err(format!("left {} unacknowledged", report.unacknowledged)),
            Err(err) => Err(format!("after {:.1} s: {err}", wall.as_secs_f64())),
        })
    }

    fn s1_rounds(
        &self,
        s: &S1Setup,
        label: &str,
        first_round: usize,
    ) -> anyhow::Result<(Vec<f64>, Vec<String>)> {
        let mut times = Vec::new();
        let mut errors = Vec::new();
        for r in 0..self.opts.hostile_runs.max(1) {
            match self.s1_round(s, first_round + r)? {
                Ok(wall) => {
                    self.log(&format!("hostile S1 {label} run {r}: {:.1} ms", ms(wall)));
                    times.push(ms(wall));
                }
                Err(e) => {
                    self.log(&format!("hostile S1 {label} run {r}: FAILED {e}"));
                    errors.push(e);
                }
            }
        }
        Ok((times, errors))
    }

    /// Part 2: S1 with no attack, then under idle connections and bombs.
    fn hostile_reconnect(&self) -> anyhow::Result<(Value, String)> {
        let o = &self.opts;
        ensure!(
            o.hostile_docs >= 2 * o.edits && o.hostile_docs > 0,
            "--docs must be at least twice --edits"
        );
        let dir = self.scenario_dir("hostile-s1")?;
        let server = Server::start(
            &o.server_bin,
            &dir.join("server-data"),
            &dir.join("server.log"),
        )?;
        self.log(&format!(
            "hostile S1: server pid {} on {}",
            server.pid(),
            server.addr()
        ));
        let setup = self.s1_setup(&server, &dir)?;
        let bomber = server.add_device("bench-bomber")?;
        let connector = Arc::new(Connector::new(server.addr(), &server.ca())?);
        let frames = attack_frames(&light::device_id_of(&bomber)?)?;
        let bomb = frames
            .into_iter()
            .find(|(n, _)| *n == "deflate_bomb")
            .map(|(_, f)| f)
            .context("no deflate bomb")?;
        let hello = light::hello_frame(None, 0)?;

        let (quiet, quiet_errors) = self.s1_rounds(&setup, "no attack", 0)?;

        // The attack.
        let (stop_tx, stop_rx) = watch::channel(false);
        let stats = Arc::new(IdleStats::default());
        let opening = Arc::new(Semaphore::new(IDLE_OPEN_PARALLEL));
        let rss_before = server.status_kib("VmRSS");
        let reset = server.reset_peak_rss();
        let sampler = Sampler::start(server.pid());
        let start = Instant::now();
        let mut holders = Vec::with_capacity(IDLE_CONNECTIONS);
        for i in 0..IDLE_CONNECTIONS {
            let local = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % IDLE_SOURCES) as u8));
            holders.push(self.rt.spawn(hold_idle(
                connector.clone(),
                local,
                opening.clone(),
                stop_rx.clone(),
                stats.clone(),
                o.hostile_reopen,
            )));
        }
        // Wait (bounded) until every first attempt finished.
        let deadline = Instant::now() + IDLE_OPEN_DEADLINE;
        while Instant::now() < deadline {
            let done =
                stats.first_open.load(Ordering::SeqCst) + stats.first_failed.load(Ordering::SeqCst);
            if done >= IDLE_CONNECTIONS as u64 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let open_wall = start.elapsed();
        self.log(&format!(
            "hostile S1: opened idle connections in {:.1} s: {}",
            open_wall.as_secs_f64(),
            stats.json()
        ));
        let bombs = self.rt.spawn(bomb_loop(
            connector.clone(),
            bomber,
            hello,
            bomb,
            stop_rx.clone(),
        ));
        std::thread::sleep(Duration::from_millis(500));
        let (attacked, attacked_errors) =
            self.s1_rounds(&setup, "under attack", o.hostile_runs.max(1))?;
        let attack_wall = start.elapsed();
        let stats_at_end = stats.json();
        let _ = stop_tx.send(true);
        let (bomb_pushes, bomb_connections, bomb_answers) = self
            .rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(60), bombs)
                    .await
                    .ok()
                    .and_then(|r| r.ok())
            })
            .unwrap_or_default();
        self.rt.block_on(async {
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                futures_util::future::join_all(holders),
            )
            .await;
        });
        let sampled = sampler.finish();
        let hwm = if reset {
            server.status_kib("VmHWM")
        } else {
            None
        };
        let peak = match (hwm, sampled) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let stats_final = stats.json();
        self.log(&format!(
            "hostile S1: attack over after {:.1} s; {bomb_pushes} bombs over {bomb_connections} \
             connections ({}); idle: {stats_final}",
            attack_wall.as_secs_f64(),
            bomb_answers.join(" | ")
        ));
        drop(setup);
        let status = server.stop()?;
        if !status.success() {
            self.log(&format!(
                "warning: the hostile S1 server exited with {status}"
            ));
        }

        let [q50, _, q99, qmax] = summary(&quiet);
        let [a50, _, a99, amax] = summary(&attacked);
        let g = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let json = json!({
            "docs": o.hostile_docs,
            "local_edits": o.edits,
            "remote_edits": o.edits,
            "runs": o.hostile_runs.max(1),
            "no_attack_ms": quiet.iter().map(|x| round3(*x)).collect::<Vec<_>>(),
            "no_attack": {"p50": round3(q50), "p99": round3(q99), "max": round3(qmax)},
            "no_attack_errors": quiet_errors,
            "under_attack_ms": attacked.iter().map(|x| round3(*x)).collect::<Vec<_>>(),
            "under_attack": {"p50": round3(a50), "p99": round3(a99), "max": round3(amax)},
            "under_attack_errors": attacked_errors,
            "idle_open_ms": round3(ms(open_wall)),
            "attack_wall_ms": round3(ms(attack_wall)),
            "idle_reopen_max": o.hostile_reopen,
            "idle_at_end_of_runs": stats_at_end,
            "idle_final": stats_final,
            "bomb_pushes_answered": bomb_pushes,
            "bomb_connections": bomb_connections,
            "bomb_answers": bomb_answers,
            "server_rss_before_attack_kib": kib_json(rss_before),
            "server_peak_rss_during_attack_kib": kib_json(peak),
        });
        let summary = format!(
            "hostile S1 reconnect ({} records, {}+{} edits, {} runs each): no attack p50 {:.1} ms, \
             p99 {:.1} ms ({} failed); under attack p50 {:.1} ms, p99 {:.1} ms ({} failed)\n  \
             attack: {} idle TLS connections from {} addresses (first {} handshakes ok, {} failed, \
             opened in {:.1} s); by the end of the runs the server had closed {} of the first and \
             {} in all (reopened up to {} times each); {} deflate bombs answered over {} \
             connections; server peak RSS {} (before {})",
            o.hostile_docs,
            o.edits,
            o.edits,
            o.hostile_runs.max(1),
            q50,
            q99,
            quiet_errors.len(),
            a50,
            a99,
            attacked_errors.len(),
            IDLE_CONNECTIONS,
            IDLE_SOURCES,
            g(&stats_at_end, "first_handshakes_ok"),
            g(&stats_at_end, "first_attempts_failed"),
            open_wall.as_secs_f64(),
            g(&stats_at_end, "first_closed_by_server"),
            g(&stats_at_end, "closed_by_server_total"),
            o.hostile_reopen,
            bomb_pushes,
            bomb_connections,
            mib(peak),
            mib(rss_before),
        );
        Ok((json, summary))
    }
}

/// The distinct strings of `v`, in first-seen order, each with its count.
fn dedup(v: &[String]) -> Vec<String> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for s in v {
        let short: String = s.chars().take(200).collect();
        match out.iter_mut().find(|(t, _)| *t == short) {
            Some((_, n)) => *n += 1,
            None => out.push((short, 1)),
        }
    }
    out.into_iter()
        .map(|(s, n)| if n > 1 { format!("{n}x {s}") } else { s })
        .collect()
}

/// Limits for reading the server's answers: its frames, with room to spare.
fn reading_limits() -> Limits {
    Limits {
        frame_bytes_max: Limits::DEFAULT.frame_bytes_max.saturating_mul(4),
        ..Limits::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_bomb_is_54_bytes() {
        assert_eq!(hex_bytes(RLE_BOMB_HEX).unwrap().len(), 54);
        assert!(hex_bytes("abc").is_err());
    }

    #[test]
    fn dedup_counts_repeats() {
        let v = vec!["a".to_string(), "b".into(), "a".into()];
        assert_eq!(dedup(&v), vec!["2x a".to_string(), "b".into()]);
    }
}
