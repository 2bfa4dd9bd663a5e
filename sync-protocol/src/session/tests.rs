//! Tests of the sessions and of how the server cuts frames.

use super::frames::split_for_frames;
use super::*;
use crate::codec;
use crate::docsync;
use crate::limits::Limits;
use crate::message::*;
use automerge::transaction::Transactable;
use automerge::Automerge;
use automerge::ReadDoc;

/// Text that DEFLATE cannot shrink much, so a save stays large.
fn noise(seed: usize) -> String {
    let mut x = (seed as u64).wrapping_mul(6364136223846793005) ^ 0x9e37_79b9;
    (0..300)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from(b'a' + ((x >> 33) % 26) as u8)
        })
        .collect()
}

fn written(changes: usize) -> Automerge {
    let mut doc = Automerge::new();
    for i in 0..changes {
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, format!("field{i}"), noise(i))
            .unwrap();
        tx.commit();
    }
    doc
}

#[test]
fn a_document_larger_than_a_frame_goes_in_parts_that_each_apply() {
    let doc = written(40);
    let mut data = doc.save();
    // A save, then later chunks, as the store holds them.
    let mut later = doc.fork();
    let mut tx = later.transaction();
    tx.put(automerge::ROOT, "late", noise(999)).unwrap();
    tx.commit();
    data.extend(docsync::encode_changes(
        &later.get_changes(&doc.get_heads()),
    ));
    let budget = 2_000;
    assert!(data.len() > budget);
    let parts = split_for_frames(data, budget);
    assert!(parts.len() > 1);
    let mut replica = Automerge::new();
    for part in &parts {
        assert!(part.len() <= budget, "a part of {} bytes", part.len());
        docsync::apply_chunks(&mut replica, part).unwrap();
        // Each part builds on the ones before: nothing waits for a base.
        assert!(replica.get_missing_deps(&[]).is_empty());
    }
    assert_eq!(replica.get_heads(), later.get_heads());
}

/// One document written by device 7, as a feed of one entry.
struct OneDoc {
    doc: Automerge,
    asked: Vec<Vec<DeviceId>>,
}

impl Feed for OneDoc {
    type Error = std::convert::Infallible;
    fn entries_after(
        &mut self,
        after: Seq,
        upto: Seq,
        _limit: usize,
    ) -> Result<Vec<(Seq, DocId)>, Self::Error> {
        Ok((after < 1 && upto >= 1)
            .then_some((1, DocId::from_bytes([1; 16])))
            .into_iter()
            .collect())
    }
    fn changes_since(&mut self, _: DocId, _: Seq, _: Seq) -> Result<Option<DocDelta>, Self::Error> {
        Ok(Some(DocDelta {
            heads: to_heads(&self.doc.get_heads()),
            data: self.doc.save(),
            seq: 1,
        }))
    }
    fn device_names(&mut self, devices: &[DeviceId]) -> Result<Vec<DeviceName>, Self::Error> {
        self.asked.push(devices.to_vec());
        Ok(devices
            .iter()
            .map(|d| DeviceName {
                device: *d,
                name: "Kibera tablet 3".into(),
            })
            .collect())
    }
}

fn feed_of_device_7() -> OneDoc {
    let mut doc = Automerge::new();
    let mut actor = vec![7u8; 16];
    actor.extend([9u8; 8]);
    doc.set_actor(automerge::ActorId::from(actor));
    let mut tx = doc.transaction();
    tx.put(automerge::ROOT, "place", "market").unwrap();
    tx.commit();
    OneDoc {
        doc,
        asked: Vec::new(),
    }
}

fn caught_up(names: bool, feed: &mut OneDoc) -> Vec<Message> {
    let mut session = ServerSession::new(Limits::DEFAULT);
    let hello = Hello {
        version: PROTOCOL_VERSION,
        store: None,
        cursor: 0,
        names,
        packing: Vec::new(),
    };
    session.accept(&hello, StoreId::from_bytes([2; 16]), 1);
    session.catch_up(feed, 1, 10).unwrap();
    // A second pass over the same device asks for nothing more.
    session.forget_sent();
    session.catch_up(feed, 1, 10).unwrap();
    std::iter::from_fn(|| session.poll_transmit())
        .map(|f| codec::decode(&f, &Limits::DEFAULT).unwrap())
        .collect()
}

#[test]
fn a_client_that_asks_is_told_device_names_before_their_changes_once() {
    let mut feed = feed_of_device_7();
    let kinds: Vec<&str> = caught_up(true, &mut feed)
        .iter()
        .map(|m| m.kind())
        .collect();
    assert_eq!(
        kinds,
        ["welcome", "devices", "changes", "cursor", "changes", "cursor"]
    );
    assert_eq!(feed.asked, vec![vec![DeviceId::from_bytes([7; 16])]]);
}

#[test]
fn a_client_that_does_not_ask_gets_no_names_and_costs_no_lookups() {
    let mut feed = feed_of_device_7();
    let messages = caught_up(false, &mut feed);
    assert!(messages.iter().all(|m| m.kind() != "devices"));
    assert!(feed.asked.is_empty());
}

#[test]
fn the_server_session_sends_no_frame_over_its_limit() {
    let limits = Limits {
        frame_bytes_max: 4_096,
        ..Limits::DEFAULT
    };
    let doc = written(60);
    let mut session = ServerSession::new(limits.clone());
    session.send_changes(
        DocId::from_bytes([1; 16]),
        to_heads(&doc.get_heads()),
        doc.save(),
    );
    let mut frames = 0;
    while let Some(frame) = session.poll_transmit() {
        assert!(frame.len() <= limits.frame_bytes_max, "{}", frame.len());
        frames += 1;
    }
    assert!(frames > 1);
}

/// Records of one area as a feed, one entry each.
struct ManyDocs(Vec<(DocId, Automerge)>);

impl ManyDocs {
    fn new(count: u8) -> ManyDocs {
        ManyDocs(
            (0..count)
                .map(|i| {
                    let mut doc = Automerge::new();
                    // Fixed actors, so two feeds built alike are the same.
                    doc.set_actor(automerge::ActorId::from([i; 16]));
                    let mut tx = doc.transaction();
                    tx.put(automerge::ROOT, "kind", "meeting").unwrap();
                    tx.put(automerge::ROOT, "place", "Kibera market").unwrap();
                    tx.put(automerge::ROOT, "title", format!("Meeting {i} on lighting"))
                        .unwrap();
                    tx.commit();
                    (DocId::from_bytes([i; 16]), doc)
                })
                .collect(),
        )
    }
}

impl Feed for ManyDocs {
    type Error = std::convert::Infallible;
    fn entries_after(
        &mut self,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DocId)>, Self::Error> {
        Ok((after + 1..=upto.min(self.0.len() as Seq))
            .take(limit)
            .map(|seq| (seq, self.0[seq as usize - 1].0))
            .collect())
    }
    fn changes_since(
        &mut self,
        doc: DocId,
        _: Seq,
        at: Seq,
    ) -> Result<Option<DocDelta>, Self::Error> {
        let found = self.0.iter().find(|(id, _)| *id == doc).map(|(_, d)| d);
        Ok(found.map(|d| DocDelta {
            heads: to_heads(&d.get_heads()),
            data: d.save(),
            seq: at,
        }))
    }
}

/// A client's session welcomed by a server session, with the hello's
/// packing offer as given; the welcome is delivered.
fn welcomed(packing: Vec<Packing>) -> (ClientSession, ServerSession) {
    let mut client = ClientSession::new(Limits::DEFAULT, None, 0);
    let hello = client.poll_transmit().unwrap();
    let Ok(Message::Hello(mut hello)) = codec::decode(&hello, &Limits::DEFAULT) else {
        panic!("the client's first frame is its hello");
    };
    assert_eq!(hello.packing, [Packing::Deflate], "the SDK offers packing");
    hello.packing = packing;
    let mut server = ServerSession::new(Limits::DEFAULT);
    server.accept(&hello, StoreId::from_bytes([2; 16]), 200);
    let welcome = server.poll_transmit().unwrap();
    assert_eq!(
        codec::decode(&welcome, &Limits::DEFAULT).unwrap().kind(),
        "welcome",
        "the welcome that agrees packing goes unpacked"
    );
    client.handle_frame(&welcome).unwrap();
    (client, server)
}

/// What a client hears of a whole catch-up: its events, the frames and
/// the bytes that carried them.
fn cold_start(packing: Vec<Packing>) -> (Vec<ClientEvent>, usize, usize, Vec<&'static str>) {
    let (mut client, mut server) = welcomed(packing);
    let mut feed = ManyDocs::new(200);
    while server.catch_up(&mut feed, 200, 64).unwrap() {}
    let (mut events, mut frames, mut bytes, mut kinds) = (Vec::new(), 0, 0, Vec::new());
    while let Some(frame) = server.poll_transmit() {
        frames += 1;
        bytes += frame.len();
        kinds.push(codec::decode(&frame, &Limits::DEFAULT).unwrap().kind());
        events.extend(client.handle_frame(&frame).unwrap());
    }
    assert!(client.is_settled());
    (events, frames, bytes, kinds)
}

#[test]
fn a_packed_catch_up_gives_the_client_the_same_events_in_fewer_frames_and_bytes() {
    let (plain, plain_frames, plain_bytes, plain_kinds) = cold_start(Vec::new());
    let (packed, packed_frames, packed_bytes, packed_kinds) =
        cold_start(vec![Packing::Unknown, Packing::Deflate]);
    // Compared whole, but not printed: 200 records of bytes.
    assert!(packed == plain, "the packed catch-up's events differ");
    assert_eq!(
        packed.len(),
        204,
        "200 records and a cursor after each batch of 64"
    );
    assert!(plain_kinds.iter().all(|k| *k != "packed"));
    assert!(packed_kinds.contains(&"packed"), "{packed_kinds:?}");
    assert!(
        packed_frames * 10 < plain_frames,
        "{packed_frames} vs {plain_frames}"
    );
    assert!(
        packed_bytes * 3 < plain_bytes,
        "{packed_bytes} vs {plain_bytes}"
    );
}

#[test]
fn a_server_packs_nothing_for_a_client_that_offers_no_packing_it_knows() {
    let (_, _, _, kinds) = cold_start(vec![Packing::Unknown]);
    assert!(kinds.iter().all(|k| *k != "packed"), "{kinds:?}");
}

/// A packed frame holding `frames`, declaring `size` and `count`.
fn packed_frame(inflated: &[u8], size: u64, count: u64) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(inflated).unwrap();
    codec::encode(&Message::Packed(Packed {
        packing: Packing::Deflate,
        size,
        frames: count,
        data: serde_bytes::ByteBuf::from(z.finish().unwrap()),
    }))
    .unwrap()
}

/// The client's answer to `frame`: the session's error and the fatal
/// error frame it queued for the server.
fn refused(client: &mut ClientSession, frame: &[u8]) -> (SessionError, ErrorMsg) {
    let err = client.handle_frame(frame).unwrap_err();
    assert!(client.is_closed());
    let told = std::iter::from_fn(|| client.poll_transmit())
        .filter_map(|f| match codec::decode(&f, &Limits::DEFAULT) {
            Ok(Message::Error(e)) => Some(e),
            _ => None,
        })
        .last()
        .expect("the server is told why");
    assert!(told.fatal, "{told:?}");
    (err, told)
}

#[test]
fn a_packed_frame_that_claims_or_inflates_past_the_limit_is_refused_before_it_costs_more() {
    let limit = Limits::DEFAULT.frame_bytes_max;
    // Declared over the limit: refused before inflating anything.
    let (mut client, _) = welcomed(vec![Packing::Deflate]);
    let (err, told) = refused(&mut client, &packed_frame(&[0; 64], limit as u64 + 1, 1));
    assert!(
        matches!(err, SessionError::Codec(codec::CodecError::PackedTooLarge { declared, .. }) if declared == limit as u64 + 1),
        "{err:?}"
    );
    assert_eq!(told.code, ErrorCode::FrameTooLarge);
    // A bomb declared small: 64 MiB of zeros deflate to about 64 KiB, and
    // inflating stops one byte past the declared size.
    let bomb = vec![0u8; 64 * 1024 * 1024];
    let (mut client, _) = welcomed(vec![Packing::Deflate]);
    let (err, told) = refused(&mut client, &packed_frame(&bomb, 1024, 1));
    assert!(
        matches!(err, SessionError::Codec(codec::CodecError::Unpack(_))),
        "{err:?}"
    );
    assert_eq!(told.code, ErrorCode::MalformedFrame);
    // Declared within the limit and inflating to exactly that, but the
    // frames inside do not add up.
    let mut inflated = 100u32.to_be_bytes().to_vec();
    inflated.extend([0; 10]);
    let (mut client, _) = welcomed(vec![Packing::Deflate]);
    let (err, _) = refused(&mut client, &packed_frame(&inflated, 14, 1));
    assert!(
        matches!(err, SessionError::Codec(codec::CodecError::Unpack(_))),
        "{err:?}"
    );
}

#[test]
fn a_packed_frame_inside_a_packed_frame_or_not_agreed_is_refused() {
    let cursor = codec::encode(&Message::Cursor(CursorMsg { seq: 0, n: 0 })).unwrap();
    let inner = codec::pack(std::slice::from_ref(&cursor), Packing::Deflate).unwrap();
    let nested = codec::pack(std::slice::from_ref(&inner), Packing::Deflate).unwrap();
    let (mut client, _) = welcomed(vec![Packing::Deflate]);
    let (err, _) = refused(&mut client, &nested);
    assert!(matches!(err, SessionError::Unexpected("packed")), "{err:?}");
    // A client whose welcome agreed no packing takes none.
    let (mut client, _) = welcomed(Vec::new());
    let (err, _) = refused(&mut client, &inner);
    assert!(matches!(err, SessionError::Unexpected("packed")), "{err:?}");
    // The same frame is taken where it was agreed.
    let (mut client, _) = welcomed(vec![Packing::Deflate]);
    assert_eq!(client.handle_frame(&inner).unwrap(), Vec::new());
    assert!(!client.is_closed());
}
