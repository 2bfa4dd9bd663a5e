//! A broken or hostile client sends the server bytes no real tablet would.
//! Each kind of bad input gets the error frame that names it, ends at most
//! its own connection, and never the server: a real tablet syncing at the
//! same moment finishes its sync, and the records stored before are intact.

use baraza_protocol::{to_heads, DocId, ErrorCode, Hello, Message, Push};
use baraza_tests::{upgrade_status, user_for, RawConnection, ServerProcess, Tablet};
use serde_bytes::ByteBuf;

/// The frame limit the server runs with in these tests.
const FRAME_BYTES_MAX: usize = 65_536;

/// A server with one tablet (the witness) that has synced a record.
struct Station {
    _tmp: tempfile::TempDir,
    server: ServerProcess,
    witness: Tablet,
    record: String,
    edits: std::cell::Cell<u32>,
}

impl Station {
    async fn open() -> Station {
        let tmp = tempfile::tempdir().unwrap();
        let server = ServerProcess::start_with_config(
            &tmp.path().join("server"),
            &format!("[limits]\nframe_bytes_max = {FRAME_BYTES_MAX}\n"),
        );
        let witness = Tablet::new(&server, "duty officer's tablet");
        let record = witness
            .create(vec![("title".into(), "Lost goat, Mathare".into())])
            .unwrap();
        let first = witness.sync().await;
        assert_eq!((first.docs_sent, first.unacknowledged), (1, 0));
        Station {
            _tmp: tmp,
            server,
            witness,
            record,
            edits: std::cell::Cell::new(0),
        }
    }

    /// Runs `attack` while the witness edits its record and syncs; the
    /// witness's sync must succeed in full.
    async fn while_the_witness_syncs<T>(&self, attack: impl std::future::Future<Output = T>) -> T {
        let n = self.edits.get() + 1;
        self.edits.set(n);
        self.witness
            .set(&self.record, "status", &format!("update {n}"))
            .unwrap();
        let (outcome, report) = tokio::join!(attack, self.witness.sync());
        assert_eq!(report.docs_sent, 1, "{report:?}");
        assert_eq!(report.unacknowledged, 0, "{report:?}");
        outcome
    }

    /// The server still runs, the witness still syncs, and a tablet that
    /// has never synced gets exactly what the witness holds.
    async fn assert_unharmed(mut self) {
        assert!(
            self.server.is_running(),
            "the server died; log:\n{}",
            self.server.log()
        );
        let after = self.witness.sync().await;
        assert_eq!(after.unacknowledged, 0);
        let newcomer = Tablet::new(&self.server, "relief officer's tablet");
        newcomer.sync().await;
        let held = self.witness.all_heads();
        assert!(held.contains_key(&self.record));
        assert_eq!(newcomer.all_heads(), held);
        assert_eq!(
            newcomer.field(&self.record, "status").value,
            format!("update {}", self.edits.get())
        );
        assert!(
            !self.server.log().contains("panicked"),
            "{}",
            self.server.log()
        );
    }

    async fn connect(&self, name: &str) -> RawConnection {
        RawConnection::open(&self.server, &self.server.add_device(name)).await
    }
}

/// A valid meeting record made outside any tablet, authored as `device`
/// (under an actor id that starts with the device id, as the server requires).
fn handmade_record(title: &str, device: &str, user: &str) -> (DocId, automerge::Automerge) {
    use baraza_records::ops::{self, FieldValue};
    let id = DocId::from_bytes(*b"handmade-record!");
    let mut actor = hex_bytes(device);
    actor.extend_from_slice(&[0xab; 4]);
    let mut doc = automerge::Automerge::new();
    doc.set_actor(automerge::ActorId::from(actor));
    let header = baraza_records::Header {
        id: id.to_string(),
        kind: baraza_records::Kind::Meeting,
        area: "eastleigh".into(),
        created_by_user: user.into(),
        created_by_device: device.to_string(),
        created_at: 1_700_000_000_000,
        schema: baraza_records::SCHEMA_VERSION,
    };
    let at = ops::Stamp {
        now_ms: 1_700_000_000_000,
        by: user,
    };
    ops::create(&mut doc, &header, at).unwrap();
    ops::set(&mut doc, "title", FieldValue::Str(title.into()), at).unwrap();
    (id, doc)
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn push_of(id: DocId, doc: &automerge::Automerge) -> Message {
    Message::Push(Push {
        doc: id,
        base: Vec::new(),
        heads: to_heads(&doc.get_heads()),
        changes: doc
            .get_changes(&[])
            .iter()
            .map(|c| ByteBuf::from(c.raw_bytes().to_vec()))
            .collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_is_not_cbor_ends_only_that_connection() {
    let station = Station::open().await;
    let mut garbled = station.connect("garbled radio link").await;
    garbled.hello().await;
    station
        .while_the_witness_syncs(async {
            // The start of a CBOR map, cut off mid-key.
            garbled.send_bytes(vec![0xa4, 0x61, b't', 0x65, b'h']).await;
            let error = garbled.expect_error().await;
            assert_eq!(error.code, ErrorCode::MalformedFrame, "{error:?}");
            assert!(error.fatal, "{error:?}");
            assert_eq!(error.doc, None);
            garbled.expect_closed().await;
        })
        .await;
    station.assert_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_size_limit_is_refused_unread() {
    let station = Station::open().await;
    let mut flooder = station.connect("flooding client").await;
    flooder.hello().await;
    station
        .while_the_witness_syncs(async {
            let huge = Message::Push(Push {
                doc: DocId::from_bytes([7; 16]),
                base: Vec::new(),
                heads: Vec::new(),
                changes: vec![ByteBuf::from(vec![0x42; 100 * 1024])],
            });
            flooder.send(&huge).await;
            let error = flooder.expect_error().await;
            assert_eq!(error.code, ErrorCode::FrameTooLarge, "{error:?}");
            assert!(error.fatal, "{error:?}");
            assert!(
                error.message.contains(&FRAME_BYTES_MAX.to_string()),
                "the refusal names the limit: {error:?}"
            );
            flooder.expect_closed().await;
        })
        .await;
    station.assert_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_changes_are_refused_for_their_record_and_the_connection_goes_on() {
    let station = Station::open().await;
    let mut buggy = station.connect("tablet with a buggy app").await;
    buggy.hello().await;
    let corrupt = DocId::from_bytes([0xc0; 16]);
    let (good, doc) = handmade_record(
        "Stolen bicycle, Eastleigh",
        buggy.device_id(),
        &user_for("tablet with a buggy app"),
    );
    station
        .while_the_witness_syncs(async {
            buggy
                .send(&Message::Push(Push {
                    doc: corrupt,
                    base: Vec::new(),
                    heads: Vec::new(),
                    changes: vec![ByteBuf::from(b"definitely not automerge".to_vec())],
                }))
                .await;
            let error = buggy.expect_error().await;
            assert_eq!(error.code, ErrorCode::CorruptChanges, "{error:?}");
            assert_eq!(error.doc, Some(corrupt), "the refusal names the record");
            assert!(!error.fatal, "{error:?}");

            // The same connection still takes a valid push.
            buggy.send(&push_of(good, &doc)).await;
            match buggy.next_reply().await {
                Some(Message::Ack(ack)) => {
                    assert_eq!(ack.doc, good);
                    assert_eq!(ack.heads, to_heads(&doc.get_heads()));
                }
                other => panic!("expected the valid push to be acknowledged, got {other:?}"),
            }
        })
        .await;

    // The valid record reached the tablets; nothing of the corrupt one did.
    let good_id = good.to_string();
    let corrupt_id = corrupt.to_string();
    station.witness.sync().await;
    assert_eq!(
        station.witness.field(&good_id, "title").value,
        "Stolen bicycle, Eastleigh"
    );
    assert!(!station.witness.list().unwrap().contains(&corrupt_id));
    station.assert_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_of_too_many_changes_is_refused_for_its_record_before_it_is_built() {
    let station = Station::open().await;
    let mut hoarder = station.connect("tablet that never splits").await;
    hoarder.hello().await;
    let hoarded = DocId::from_bytes([0x4d; 16]);
    let (good, doc) = handmade_record(
        "Broken streetlight, Kariobangi",
        hoarder.device_id(),
        &user_for("tablet that never splits"),
    );
    let limit = baraza_protocol::Limits::DEFAULT.changes_per_message_max;
    station
        .while_the_witness_syncs(async {
            // Small enough for the frame limit, one change past the count.
            hoarder
                .send(&Message::Push(Push {
                    doc: hoarded,
                    base: Vec::new(),
                    heads: Vec::new(),
                    changes: vec![ByteBuf::new(); limit + 1],
                }))
                .await;
            let error = hoarder.expect_error().await;
            assert_eq!(error.code, ErrorCode::TooManyChanges, "{error:?}");
            assert_eq!(error.doc, Some(hoarded), "the refusal names the record");
            assert!(!error.fatal, "{error:?}");
            assert!(
                error.message.contains(&(limit + 1).to_string())
                    && error.message.contains(&limit.to_string()),
                "the refusal names the count and the limit: {error:?}"
            );

            // The same connection still takes a valid push.
            hoarder.send(&push_of(good, &doc)).await;
            match hoarder.next_reply().await {
                Some(Message::Ack(ack)) => assert_eq!(ack.doc, good),
                other => panic!("expected the valid push to be acknowledged, got {other:?}"),
            }
        })
        .await;
    station.assert_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_from_the_future_is_told_which_versions_the_server_speaks() {
    let station = Station::open().await;
    let mut future = station.connect("tablet running protocol 99").await;
    station
        .while_the_witness_syncs(async {
            future
                .send(&Message::Hello(Hello {
                    version: 99,
                    store: None,
                    cursor: 0,
                }))
                .await;
            let error = future.expect_error().await;
            assert_eq!(error.code, ErrorCode::UnsupportedVersion, "{error:?}");
            assert!(error.fatal, "{error:?}");
            assert!(
                error.message.contains("99") && error.message.contains("[1]"),
                "the refusal names the version asked for and those supported: {error:?}"
            );
            future.expect_closed().await;
        })
        .await;
    station.assert_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_message_type_is_refused_alone() {
    let station = Station::open().await;
    let mut stranger = station.connect("tablet with a newer app").await;
    station
        .while_the_witness_syncs(async {
            let teleport = serde_cbor::to_vec(&serde_cbor::Value::Map(
                [(
                    serde_cbor::Value::Text("t".into()),
                    serde_cbor::Value::Text("teleport".into()),
                )]
                .into_iter()
                .collect(),
            ))
            .unwrap();
            stranger.send_bytes(teleport).await;
            let error = stranger.expect_error().await;
            assert_eq!(error.code, ErrorCode::UnknownMessageType, "{error:?}");
            assert!(!error.fatal, "{error:?}");
            assert!(error.message.contains("teleport"), "{error:?}");
            // Refused alone: the session carries on from where it was.
            let welcome = stranger.hello().await;
            assert!(!welcome.reset);
        })
        .await;
    station.assert_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_valid_token_is_turned_away_before_the_upgrade() {
    let station = Station::open().await;
    let server = &station.server;
    let valid = format!("Bearer {}", station.witness.token());
    station
        .while_the_witness_syncs(async {
            assert_eq!(upgrade_status(server, None).await, 401);
            assert_eq!(
                upgrade_status(server, Some("Bearer bz_not_a_real_token")).await,
                401
            );
            assert_eq!(upgrade_status(server, Some(&valid)).await, 101);
        })
        .await;
    station.assert_unharmed().await;
}
