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
