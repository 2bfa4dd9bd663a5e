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
            .set(&self.record, "place", &format!("update {n}"))
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
            newcomer.field(&self.record, "place").value,
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
                    names: false,
                    packing: Vec::new(),
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

/// A push of raw change bytes (one change per element) to `doc`.
fn raw_push(doc: DocId, changes: Vec<Vec<u8>>) -> Message {
    Message::Push(Push {
        doc,
        base: Vec::new(),
        heads: Vec::new(),
        changes: changes.into_iter().map(ByteBuf::from).collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_change_is_refused_unread_and_the_area_keeps_syncing() {
    let station = Station::open().await;
    let mut attacker = station.connect("tablet with a crafted app").await;
    attacker.hello().await;
    // A meeting whose notes are 2 MB of one letter: DEFLATE shrinks the
    // change to a few KB, well under the 64 KB frame limit.
    let (id, mut doc) = handmade_record(
        "Harmless title",
        attacker.device_id(),
        &user_for("tablet with a crafted app"),
    );
    {
        use automerge::transaction::Transactable;
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "place", "x".repeat(2 << 20))
            .unwrap();
        tx.commit();
    }
    let mut compressed = Vec::new();
    for mut change in doc.get_changes(&[]) {
        compressed.push(change.bytes().to_vec());
    }
    let wire: usize = compressed.iter().map(Vec::len).sum();
    assert!(
        wire < FRAME_BYTES_MAX / 2,
        "the bomb is small on the wire: {wire}"
    );
    station
        .while_the_witness_syncs(async {
            attacker.send(&raw_push(id, compressed)).await;
            let error = attacker.expect_error().await;
            assert_eq!(error.code, ErrorCode::CorruptChanges, "{error:?}");
            assert_eq!(error.doc, Some(id));
            assert!(error.message.contains("compressed"), "{error:?}");
            assert!(!error.fatal);
        })
        .await;
    // Nothing of it was stored: a newcomer's cold start (which would fail on
    // a 2 MB field against the 64 KB frame) gets exactly the witness's state.
    station.assert_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_claiming_millions_of_operations_is_refused_by_its_count() {
    let station = Station::open().await;
    let mut attacker = station.connect("tablet sending a run-length bomb").await;
    attacker.hello().await;
    // 54 bytes whose action column is one run of ten million operations.
    let bomb = hex::decode(
        "856f4a836d869bac012c0001010101000000051506340442055605700580ade204016b80ade20480ade2040180ade2040080ade20400",
    )
    .unwrap();
    let target = DocId::from_bytes([0xb0; 16]);
    station
        .while_the_witness_syncs(async {
            attacker.send(&raw_push(target, vec![bomb])).await;
            let error = attacker.expect_error().await;
            assert_eq!(error.code, ErrorCode::TooManyChanges, "{error:?}");
            assert!(error.message.contains("10000000 operations"), "{error:?}");
            assert_eq!(error.doc, Some(target));
        })
        .await;
    station.assert_unharmed().await;
}

/// Changes found to make automerge 0.12 panic (or silently drop
/// operations and panic when read back) while applying them, each on any
/// document: crafted op columns with valid checksums.
const PANICKING_CHANGES: &[(&str, &str)] = &[
    ("op on a missing object", "856f4a83ef8e55dc012500010101010000000701020202150334014202560270027f007f017f016b017f017f007f00"),
    ("insert after a missing element", "856f4a83d782af80013900010101010000000901040204110413041505340242035602700200017f0000017f0100017f0000017f097f016c000101017e020102000200"),
    ("put on a missing element", "856f4a83a13bfbdf013800010101010000000901040204110413041505340142035602700200017f0000017f0100017f0000017f097f016c0001027e020102000200"),
    ("map keys inside a list", "856f4a8308e722c5012e000101010100000007010402041506340142045602700200010200000102017f016c02016b037f02020103000300"),
    ("actor index out of range", "856f4a83fd1fa506012500010101010000000701020202150334014202560270027f057f017f016b017f017f007f00"),
    ("second change of an unknown actor", "856f4a8308ff18de0109000101020100000000"),
    ("op counter past 32 bits", "856f4a83dacd8362012100010101ffffffff0f000000051503340142025602700202016b02020102000200"),
    ("mark on a map key", "856f4a83cd6eed6a012300010101010000000615033401420256027002a501037f016b017f077f027f007f0162"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_make_automerge_panic_are_refused_and_the_record_stays_writable() {
    let station = Station::open().await;
    let target: DocId = station.record.parse().unwrap();
    let mut attacker = station.connect("tablet sending mutated pushes").await;
    attacker.hello().await;
    for (what, hex) in PANICKING_CHANGES {
        // Each aimed at the witness's own record, then the witness edits
        // and syncs it: a wedged record would fail its push.
        let change = hex::decode(hex).unwrap();
        station
            .while_the_witness_syncs(async {
                attacker.send(&raw_push(target, vec![change])).await;
                let error = attacker.expect_error().await;
                assert_eq!(error.doc, Some(target), "{what}: {error:?}");
                assert!(
                    matches!(error.code, ErrorCode::CorruptChanges | ErrorCode::Forbidden),
                    "{what}: {error:?}"
                );
                assert!(!error.fatal, "{what}: {error:?}");
            })
            .await;
    }
    // The server refused each alone (no panic escaped: `assert_unharmed`
    // reads its log), and every device syncs the record.
    station.assert_unharmed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_device_may_not_read_answers_pushes_as_a_missing_one() {
    let station = Station::open().await;
    // The witness's record belongs to a supervisor of the test areas; this
    // officer patrols elsewhere and may not read it.
    station
        .server
        .add_user("cst.outsider", "officer", &["far-away-area"]);
    let token = station
        .server
        .add_device_for("outsider's tablet", "cst.outsider");
    let hidden: DocId = station.record.parse().unwrap();
    let missing = DocId::from_bytes([0x5a; 16]);
    // An edit as a tablet that never had the record would make it: no
    // header, no history. Pushed to a record that exists but is not
    // this device's to read, and to one that does not exist.
    let edit = {
        use automerge::transaction::Transactable;
        let mut doc = automerge::Automerge::new();
        let mut actor = hex_bytes(&baraza_tests::device_of(&token));
        actor.extend_from_slice(&[1; 4]);
        doc.set_actor(automerge::ActorId::from(actor));
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "title", "rewritten").unwrap();
        tx.commit();
        doc.get_changes(&[]).remove(0).raw_bytes().to_vec()
    };
    let answers = |id: DocId| {
        let edit = edit.clone();
        let station = &station;
        let token = token.clone();
        async move {
            use automerge::sync::SyncDoc;
            let mut conn = RawConnection::open(&station.server, &token).await;
            conn.hello().await;
            let mut shapes = Vec::new();
            conn.send(&raw_push(id, vec![edit])).await;
            shapes.push(shape(conn.next_reply().await, id));
            conn.send(&Message::Sync(baraza_protocol::SyncMsg {
                doc: id,
                data: ByteBuf::from(
                    automerge::Automerge::new()
                        .generate_sync_message(&mut automerge::sync::State::new())
                        .map(|m| m.encode())
                        .unwrap_or_default(),
                ),
            }))
            .await;
            let second = tokio::time::timeout(std::time::Duration::from_secs(3), conn.next_reply())
                .await
                .ok()
                .flatten();
            shapes.push(shape(second, id));
            shapes
        }
    };
    let for_missing = answers(missing).await;
    let for_hidden = station.while_the_witness_syncs(answers(hidden)).await;
    assert_eq!(for_hidden, for_missing);
    assert!(
        !for_hidden.iter().any(|s| s.contains("forbidden")),
        "{for_hidden:?}"
    );
    // Nothing was stored, the attempt was audited, and the record is intact.
    let audited = station
        .server
        .audit_entries()
        .iter()
        .filter(|e| {
            e["event"] == "record_write_refused" && e["details"]["record"] == station.record
        })
        .count();
    assert!(audited >= 1, "the refused write is audited");
    station.assert_unharmed().await;
}

/// A reply with the record id taken out, to compare two records' answers.
fn shape(reply: Option<Message>, id: DocId) -> String {
    let text = format!("{reply:?}");
    text.replace(&format!("{id:?}"), "RECORD")
        .replace(&id.to_string(), "RECORD")
}
