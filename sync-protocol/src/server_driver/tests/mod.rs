//! The driver's ordering rules (here) and its timer, standing and bounds
//! (`standing`), each told as what one tablet sees.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::Automerge;
use serde_bytes::ByteBuf;

use super::*;
use crate::codec;
use crate::limits::Limits;
use crate::session::DocDelta;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn config() -> DriverConfig {
    let mut config = DriverConfig::new(Limits::DEFAULT, StoreId::from_bytes([2; 16]));
    config.idle = secs(60);
    config
}

fn opening(durable: Seq, standing: Standing) -> Opening {
    Opening {
        durable,
        refeed: false,
        standing,
        own_name: None,
    }
}

fn frame(message: Message) -> Vec<u8> {
    codec::encode(&message).unwrap()
}

fn hello() -> Vec<u8> {
    frame(Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        store: None,
        cursor: 0,
        names: false,
        packing: Vec::new(),
    }))
}

fn record(n: u8) -> (DocId, Automerge) {
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    tx.put(automerge::ROOT, "place", format!("market {n}"))
        .unwrap();
    tx.commit();
    (DocId::from_bytes([n; 16]), doc)
}

fn push(id: DocId, doc: &Automerge) -> Vec<u8> {
    frame(Message::Push(Push {
        doc: id,
        base: Vec::new(),
        heads: to_heads(&doc.get_heads()),
        changes: doc
            .get_changes(&[])
            .iter()
            .map(|c| ByteBuf::from(c.raw_bytes().to_vec()))
            .collect(),
    }))
}

fn stored(doc: &Automerge, seq: Seq) -> Commit {
    Commit::Stored {
        heads: to_heads(&doc.get_heads()),
        reply: Vec::new(),
        seq,
        base_missing: false,
        names: Vec::new(),
        changed: true,
    }
}

fn sent(driver: &mut ServerDriver) -> Vec<Message> {
    std::iter::from_fn(|| driver.poll_transmit())
        .map(|f| codec::decode(&f, &Limits::DEFAULT).unwrap())
        .collect()
}

fn kinds(messages: &[Message]) -> Vec<&'static str> {
    messages.iter().map(|m| m.kind()).collect()
}

fn tasks(driver: &mut ServerDriver) -> Vec<Task> {
    std::iter::from_fn(|| driver.poll_task()).collect()
}

fn audits(driver: &mut ServerDriver) -> Vec<AuditEvent> {
    std::iter::from_fn(|| driver.poll_audit()).collect()
}

/// The write id of the one `Admit` among `tasks`.
fn admitted(tasks: &[Task]) -> WriteId {
    let writes: Vec<WriteId> = tasks
        .iter()
        .filter_map(|t| match t {
            Task::Admit(w) => Some(w.write),
            _ => None,
        })
        .collect();
    assert_eq!(writes.len(), 1, "{tasks:?}");
    writes[0]
}

fn feed_reads(tasks: &[Task]) -> Vec<FeedRead> {
    tasks
        .iter()
        .filter_map(|t| match t {
            Task::ReadFeed(r) => Some(*r),
            _ => None,
        })
        .collect()
}

/// A feed of whole records by position, noting every read.
#[derive(Default)]
struct Records {
    feed: BTreeMap<Seq, (DocId, Automerge)>,
    reads: Vec<(Seq, Seq)>,
}

impl Records {
    fn with(records: impl IntoIterator<Item = (DocId, Automerge)>) -> Self {
        let mut feed = Records::default();
        for (i, r) in records.into_iter().enumerate() {
            feed.feed.insert(i as Seq + 1, r);
        }
        feed
    }
}

impl Feed for Records {
    type Error = Infallible;
    fn entries_after(
        &mut self,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DocId)>, Infallible> {
        self.reads.push((after, upto));
        Ok(self
            .feed
            .range(after + 1..=upto)
            .take(limit)
            .map(|(s, (id, _))| (*s, *id))
            .collect())
    }
    fn changes_since(
        &mut self,
        doc: DocId,
        _: Seq,
        _: Seq,
    ) -> Result<Option<DocDelta>, Infallible> {
        Ok(self
            .feed
            .iter()
            .find(|(_, (id, _))| *id == doc)
            .map(|(seq, (_, d))| DocDelta {
                heads: to_heads(&d.get_heads()),
                data: d.save(),
                seq: *seq,
            }))
    }
}

/// A driver past the welcome, with its first tasks and frames taken.
fn welcomed(durable: Seq) -> ServerDriver {
    let mut driver = ServerDriver::new(config(), opening(durable, Standing::Active), secs(0));
    driver.handle_frame(secs(0), &hello()).unwrap();
    assert_eq!(kinds(&sent(&mut driver)), ["welcome"]);
    tasks(&mut driver);
    driver
}

fn changes_docs(messages: &[Message]) -> Vec<DocId> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Changes(c) => Some(c.doc),
            _ => None,
        })
        .collect()
}

#[test]
fn no_feed_goes_out_while_a_tablets_push_waits_for_its_commit() {
    let mut driver = welcomed(0);
    let (a, doc_a) = record(1);
    let (b, doc_b) = record(2);
    driver.handle_frame(secs(1), &push(a, &doc_a)).unwrap();
    let write = admitted(&tasks(&mut driver));
    // Another tablet's write to b becomes durable, then the push's own
    // write to a (position 2) while its commit is still being answered.
    driver.handle_durable(secs(1), 1);
    driver.handle_durable(secs(1), 2);
    assert!(feed_reads(&tasks(&mut driver)).is_empty());
    assert!(sent(&mut driver).is_empty());
    // The commit is answered: the ack goes first, then the feed is read.
    driver.handle_commit(secs(2), write, stored(&doc_a, 2));
    assert_eq!(kinds(&sent(&mut driver)), ["ack"]);
    let reads = feed_reads(&tasks(&mut driver));
    assert_eq!(
        reads,
        [FeedRead {
            after: 0,
            upto: 2,
            limit: DriverConfig::FEED_BATCH_DEFAULT
        }]
    );
    let mut feed = Records::with([(b, doc_b), (a, doc_a)]);
    driver.handle_feed(secs(2), &mut feed).unwrap();
    let out = sent(&mut driver);
    assert_eq!(kinds(&out), ["changes", "cursor"]);
    // The tablet is not sent its own push back.
    assert_eq!(changes_docs(&out), [b]);
}

#[test]
fn a_feed_read_overtaken_by_a_push_waits_until_the_push_is_answered() {
    let mut driver = welcomed(0);
    driver.handle_durable(secs(1), 1);
    assert_eq!(feed_reads(&tasks(&mut driver)).len(), 1);
    // Before the read is carried out, the tablet pushes.
    let (a, doc_a) = record(1);
    driver.handle_frame(secs(1), &push(a, &doc_a)).unwrap();
    let write = admitted(&tasks(&mut driver));
    let (b, doc_b) = record(2);
    let mut feed = Records::with([(b, doc_b)]);
    driver.handle_feed(secs(1), &mut feed).unwrap();
    assert!(
        feed.reads.is_empty(),
        "the feed was read while a push waited"
    );
    assert!(sent(&mut driver).is_empty());
    // The push's own write becomes durable at 2, and its commit answers.
    driver.handle_durable(secs(2), 2);
    driver.handle_commit(secs(2), write, stored(&doc_a, 2));
    assert_eq!(kinds(&sent(&mut driver)), ["ack"]);
    // Asked again, with the watermark as it stands now.
    assert_eq!(feed_reads(&tasks(&mut driver))[0].upto, 2);
    driver.handle_feed(secs(2), &mut feed).unwrap();
    assert_eq!(kinds(&sent(&mut driver)), ["changes", "cursor"]);
}

#[test]
fn acknowledgements_go_out_in_the_order_the_pushes_arrived() {
    let mut driver = welcomed(0);
    let (a, doc_a) = record(1);
    let (b, doc_b) = record(2);
    driver.handle_frame(secs(1), &push(a, &doc_a)).unwrap();
    let first = admitted(&tasks(&mut driver));
    driver.handle_frame(secs(1), &push(b, &doc_b)).unwrap();
    let second = admitted(&tasks(&mut driver));
    // The committer answers the later write first: nothing goes out yet.
    driver.handle_commit(secs(2), second, stored(&doc_b, 1));
    assert!(sent(&mut driver).is_empty());
    driver.handle_commit(secs(2), first, stored(&doc_a, 2));
    let acked: Vec<DocId> = sent(&mut driver)
        .into_iter()
        .filter_map(|m| match m {
            Message::Ack(ack) => Some(ack.doc),
            _ => None,
        })
        .collect();
    assert_eq!(acked, [a, b]);
    // A repeated answer is ignored.
    driver.handle_commit(secs(3), first, stored(&doc_a, 2));
    assert!(sent(&mut driver).is_empty());
}

#[test]
fn a_refused_push_is_answered_with_its_rule_and_nothing_is_acknowledged() {
    let mut driver = welcomed(0);
    let (a, doc_a) = record(1);
    driver.handle_frame(secs(1), &push(a, &doc_a)).unwrap();
    let write = admitted(&tasks(&mut driver));
    let refusal = Refusal {
        code: ErrorCode::Forbidden,
        rule: Some("own_areas".into()),
        message: format!("record {a} is outside your areas"),
    };
    driver.handle_commit(secs(1), write, Commit::Refused(refusal));
    let out = sent(&mut driver);
    let [Message::Error(e)] = out.as_slice() else {
        panic!("{out:?}");
    };
    assert_eq!(
        (e.code, e.doc, e.rule.as_deref(), e.fatal),
        (ErrorCode::Forbidden, Some(a), Some("own_areas"), false)
    );
    assert!(!driver.is_closed());
}

#[test]
fn the_feed_is_never_read_past_the_durable_watermark() {
    let records: Vec<(DocId, Automerge)> = (1..=5).map(record).collect();
    let mut feed = Records::with(records);
    // Positions 4 and 5 exist but may still be joined by earlier writes.
    let mut driver = ServerDriver::new(config(), opening(3, Standing::Active), secs(0));
    driver.handle_frame(secs(0), &hello()).unwrap();
    sent(&mut driver);
    assert_eq!(feed_reads(&tasks(&mut driver))[0].upto, 3);
    driver.handle_feed(secs(0), &mut feed).unwrap();
    assert_eq!(feed.reads, [(0, 3)]);
    let out = sent(&mut driver);
    assert_eq!(changes_docs(&out).len(), 3);
    assert!(matches!(out.last(), Some(Message::Cursor(c)) if c.seq == 3));
}

mod standing;
