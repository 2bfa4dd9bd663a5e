//! The server's storage in memory, as the simulator's `ServerDriver`s use
//! it: admission judged on a fork of the document (the live copy changes
//! only when a change is admitted), answers held until a durability step,
//! a feed no read takes past its durable watermark, and a crash that loses
//! whatever was not yet durable.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::Duration;

use automerge::{Automerge, ReadDoc, ROOT};
use baraza_protocol::docsync;
use baraza_protocol::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// The simulator's write rules. Seeded: records of one area may not be
/// written by anyone (as a tablet outside that area would be refused).
/// And a status is never negative (random edits never make one; a test
/// does, to race a refused change against a valid one).
pub struct Rules {
    pub forbidden_area: i64,
}

fn int(doc: &Automerge, field: &str) -> Option<i64> {
    match doc.get(ROOT, field) {
        Ok(Some((automerge::Value::Scalar(s), _))) => s.as_i64(),
        _ => None,
    }
}

impl Rules {
    /// Judges a document as the changes leave it (on the fork).
    fn judge(&self, id: DocId, doc: &Automerge) -> Result<(), Refusal> {
        let area = int(doc, "area");
        if area == Some(self.forbidden_area) {
            return Err(Refusal {
                code: ErrorCode::Forbidden,
                rule: Some("own_areas".into()),
                message: format!("record {id} is in area {area:?}, which you may not write"),
            });
        }
        if int(doc, "status").is_some_and(|s| s < 0) {
            return Err(Refusal {
                code: ErrorCode::Forbidden,
                rule: Some("status_range".into()),
                message: format!("record {id}: status must not be negative"),
            });
        }
        Ok(())
    }
}

/// What a write changed, to take it back if the server crashes before
/// the write is durable.
struct Undo {
    seq: Seq,
    doc: DocId,
    before: Option<Automerge>,
    latest_before: Option<Seq>,
}

/// An answer held until the next durability step: which connection, which
/// of its writes, and the answer.
pub type Held = (u64, WriteId, Commit);

pub struct SimStore {
    /// Every committed write, durable or not (the live copies).
    pub docs: HashMap<DocId, Automerge>,
    /// seq -> doc, one entry per write.
    feed: BTreeMap<Seq, DocId>,
    latest: HashMap<DocId, Seq>,
    log: BTreeMap<(DocId, Seq), Vec<Head>>,
    /// The last position assigned.
    seq: Seq,
    /// The durable watermark: every write up to here survives a crash.
    pub durable: Seq,
    pub store: StoreId,
    /// Answers to writes, released at the next durability step.
    held: Vec<Held>,
    undo: Vec<Undo>,
    pub rule: Rules,
    /// Writes refused by the rule, so a test can show it refused some.
    pub refusals: usize,
}

impl SimStore {
    pub fn new(store: StoreId, forbidden_area: i64) -> Self {
        SimStore {
            docs: HashMap::new(),
            feed: BTreeMap::new(),
            latest: HashMap::new(),
            log: BTreeMap::new(),
            seq: 0,
            durable: 0,
            store,
            held: Vec::new(),
            undo: Vec::new(),
            rule: Rules { forbidden_area },
            refusals: 0,
        }
    }

    /// A copy to judge changes on; nothing reaches `docs` unless admitted.
    fn fork(&self, id: DocId) -> Automerge {
        self.docs.get(&id).map(|d| d.fork()).unwrap_or_default()
    }

    fn commit(&mut self, id: DocId, doc: Automerge) {
        self.seq += 1;
        let heads = to_heads(&doc.get_heads());
        let before = self.docs.insert(id, doc);
        let latest_before = self.latest.insert(id, self.seq);
        self.feed.insert(self.seq, id);
        self.log.insert((id, self.seq), heads);
        self.undo.push(Undo {
            seq: self.seq,
            doc: id,
            before,
            latest_before,
        });
    }

    fn refuse(driver: &mut ServerDriver, now: Duration, write: WriteId, refusal: Refusal) {
        // A refusal stores nothing, so it needs no durability step.
        driver.handle_commit(now, write, Commit::Refused(refusal));
    }

    /// Carries out a `Task::Admit`.
    pub fn admit_push(
        &mut self,
        conn: u64,
        driver: &mut ServerDriver,
        now: Duration,
        w: PushWrite,
    ) {
        let mut fork = self.fork(w.doc);
        let applied = match docsync::apply_push(&mut fork, w.changes, &w.heads) {
            Ok(a) => a,
            Err(e) => {
                let refusal = Refusal {
                    code: apply_error_code(&e),
                    rule: None,
                    message: e.to_string(),
                };
                return Self::refuse(driver, now, w.write, refusal);
            }
        };
        let changed = !applied.new_chunk.is_empty();
        if changed {
            if let Err(refusal) = self.rule.judge(w.doc, &fork) {
                self.refusals += 1;
                return Self::refuse(driver, now, w.write, refusal);
            }
        }
        if applied.base_missing {
            driver.start_sync(w.doc, &fork);
        }
        if changed {
            self.commit(w.doc, fork);
        }
        let seq = self.latest.get(&w.doc).copied().unwrap_or(0);
        self.held.push((
            conn,
            w.write,
            Commit::Stored {
                heads: applied.heads,
                reply: applied.reply,
                seq,
                base_missing: applied.base_missing,
                names: Vec::new(),
                changed,
            },
        ));
    }

    /// Carries out a `Task::Sync`.
    pub fn admit_sync(
        &mut self,
        conn: u64,
        driver: &mut ServerDriver,
        now: Duration,
        write: WriteId,
        msg: SyncMsg,
    ) {
        let mut fork = self.fork(msg.doc);
        let changed = match driver.apply_sync(msg.doc, &mut fork, &msg.data) {
            Ok(changed) => changed,
            Err(e) => {
                let refusal = Refusal {
                    code: apply_error_code(&e),
                    rule: None,
                    message: e.to_string(),
                };
                return Self::refuse(driver, now, write, refusal);
            }
        };
        if changed {
            if let Err(refusal) = self.rule.judge(msg.doc, &fork) {
                self.refusals += 1;
                return Self::refuse(driver, now, write, refusal);
            }
        }
        let heads = to_heads(&fork.get_heads());
        if changed {
            self.commit(msg.doc, fork);
        }
        let seq = self.latest.get(&msg.doc).copied().unwrap_or(0);
        self.held.push((
            conn,
            write,
            Commit::Stored {
                heads,
                reply: Vec::new(),
                seq,
                base_missing: false,
                names: Vec::new(),
                changed,
            },
        ));
    }

    /// True when answers wait for a durability step.
    pub fn has_held(&self) -> bool {
        !self.held.is_empty() || self.durable < self.seq
    }

    /// The durability step: everything written so far survives a crash
    /// from now on, and the held answers go out, in an order `rng` picks
    /// (a committer answers writers in any order; the driver restores
    /// theirs).
    pub fn flush(&mut self, rng: &mut StdRng) -> Vec<Held> {
        self.durable = self.seq;
        self.undo.clear();
        let mut held = std::mem::take(&mut self.held);
        held.shuffle(rng);
        held
    }

    /// The server crashes: writes not yet durable are lost, and so are
    /// their answers, which nobody was sent.
    pub fn crash(&mut self) {
        while let Some(u) = self.undo.pop() {
            match u.before {
                Some(doc) => self.docs.insert(u.doc, doc),
                None => self.docs.remove(&u.doc),
            };
            match u.latest_before {
                Some(s) => self.latest.insert(u.doc, s),
                None => self.latest.remove(&u.doc),
            };
            self.feed.remove(&u.seq);
            self.log.remove(&(u.doc, u.seq));
        }
        self.seq = self.durable;
        self.held.clear();
    }
}

impl Feed for SimStore {
    type Error = Infallible;

    fn entries_after(
        &mut self,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DocId)>, Infallible> {
        assert!(
            upto <= self.durable,
            "a feed read went to {upto}, past the durable watermark {}",
            self.durable
        );
        Ok(self
            .feed
            .range(after + 1..=upto)
            .take(limit)
            .map(|(s, d)| (*s, *d))
            .collect())
    }

    fn changes_since(
        &mut self,
        doc: DocId,
        base: Seq,
        _: Seq,
    ) -> Result<Option<DocDelta>, Infallible> {
        let base = self
            .log
            .range((doc, 0)..=(doc, base))
            .next_back()
            .map(|(_, h)| h.clone());
        let base = base.as_deref();
        let seq = self.latest.get(&doc).copied().unwrap_or(0);
        Ok(self.docs.get(&doc).map(|d| {
            let data = match base {
                Some(base) => docsync::encode_changes(&docsync::changes_since(d, base)),
                None => d.save(),
            };
            DocDelta {
                heads: to_heads(&d.get_heads()),
                data,
                seq,
            }
        }))
    }
}
