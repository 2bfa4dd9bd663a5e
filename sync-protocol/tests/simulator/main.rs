//! Several tablets and a server in one process, over an in-memory network
//! that drops, duplicates and reorders frames, breaks connections and
//! restarts the server. Seeded: a failing seed reproduces exactly.
//!
//! The check at the end: once the network heals and everyone syncs, every
//! replica holds the same heads as the server and every change any tablet
//! ever made is present everywhere.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;

use automerge::transaction::Transactable;
use automerge::{Automerge, ChangeHash, ObjType, ReadDoc, ROOT};
use baraza_protocol::docsync;
use baraza_protocol::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// --------------------------------------------------------------- the server

#[derive(Default)]
struct SimServer {
    docs: HashMap<DocId, Automerge>,
    /// seq -> doc, one entry per write.
    feed: BTreeMap<Seq, DocId>,
    latest: HashMap<DocId, Seq>,
    log: BTreeMap<(DocId, Seq), Vec<Head>>,
    seq: Seq,
    store: Option<StoreId>,
}

impl SimServer {
    fn store_id(&self) -> StoreId {
        self.store.unwrap_or(StoreId::from_bytes([9; 16]))
    }

    fn record(&mut self, id: DocId) -> Seq {
        self.seq += 1;
        self.latest.insert(id, self.seq);
        self.feed.insert(self.seq, id);
        let heads = to_heads(&self.docs[&id].get_heads());
        self.log.insert((id, self.seq), heads);
        self.seq
    }

    fn handle(&mut self, session: &mut ServerSession, frame: &[u8]) {
        let events = match session.handle_frame(frame) {
            Ok(events) => events,
            Err(_) => return,
        };
        for event in events {
            match event {
                ServerEvent::Hello(hello) => session.accept(&hello, self.store_id(), self.seq),
                ServerEvent::Push {
                    doc: id,
                    heads,
                    changes,
                    ..
                } => {
                    let doc = self.docs.entry(id).or_default();
                    let applied = match docsync::apply_push(doc, changes, &heads) {
                        Ok(a) => a,
                        Err(e) => {
                            session.refuse(id, ErrorCode::CorruptChanges, e.to_string());
                            continue;
                        }
                    };
                    if !applied.new_chunk.is_empty() {
                        self.record(id);
                    }
                    let seq = self.latest.get(&id).copied().unwrap_or(0);
                    let base_missing = applied.base_missing;
                    session.push_applied(
                        id,
                        PushOutcome {
                            heads: applied.heads,
                            reply: applied.reply,
                            seq,
                            base_missing,
                        },
                    );
                    if base_missing {
                        session.start_sync(id, &self.docs[&id]);
                    }
                }
                ServerEvent::Sync(s) => {
                    let doc = self.docs.entry(s.doc).or_default();
                    match session.receive_sync(s.doc, doc, &s.data) {
                        Ok(changed) => {
                            if changed {
                                self.record(s.doc);
                            }
                            let heads = to_heads(&self.docs[&s.doc].get_heads());
                            let seq = self.latest.get(&s.doc).copied().unwrap_or(0);
                            session.acknowledge(s.doc, heads, seq);
                        }
                        Err(e) => session.refuse(s.doc, ErrorCode::CorruptChanges, e.to_string()),
                    }
                }
            }
        }
    }

    fn catch_up(&mut self, session: &mut ServerSession) {
        let upto = self.seq;
        // A small batch exercises the incremental cursor.
        while session.catch_up(self, upto, 3).unwrap_or(false) {}
    }
}

impl Feed for SimServer {
    type Error = Infallible;

    fn entries_after(
        &mut self,
        after: Seq,
        upto: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, DocId)>, Infallible> {
        Ok(self
            .feed
            .range(after + 1..=upto)
            .take(limit)
            .map(|(s, d)| (*s, *d))
            .collect())
    }

    fn changes_since(&mut self, doc: DocId, base: Seq) -> Result<Option<DocDelta>, Infallible> {
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

// --------------------------------------------------------------- a tablet

#[derive(Default)]
struct MemReplica {
    /// Saved bytes, so what a tablet holds is exactly what it stored.
    docs: BTreeMap<DocId, Vec<u8>>,
    known: HashMap<DocId, Vec<Head>>,
    unacked: BTreeSet<DocId>,
    store: Option<StoreId>,
    cursor: Seq,
    refusals: usize,
}

impl Replica for MemReplica {
    type Error = Infallible;

    fn doc(&mut self, id: DocId) -> Result<Option<Automerge>, Infallible> {
        Ok(self
            .docs
            .get(&id)
            .map(|b| Automerge::load(b).expect("own bytes load")))
    }
    fn put_doc(&mut self, id: DocId, doc: &Automerge) -> Result<(), Infallible> {
        self.docs.insert(id, doc.save());
        Ok(())
    }
    fn known(&mut self, id: DocId) -> Result<Vec<Head>, Infallible> {
        Ok(self.known.get(&id).cloned().unwrap_or_default())
    }
    fn set_known(&mut self, id: DocId, heads: &[Head], settled: bool) -> Result<(), Infallible> {
        self.known.insert(id, heads.to_vec());
        if settled {
            self.unacked.remove(&id);
        }
        Ok(())
    }
    fn unacknowledged(&mut self) -> Result<Vec<DocId>, Infallible> {
        Ok(self.unacked.iter().copied().collect())
    }
    fn cursor(&mut self) -> Result<(Option<StoreId>, Seq), Infallible> {
        Ok((self.store, self.cursor))
    }
    fn set_cursor(&mut self, store: StoreId, seq: Seq) -> Result<(), Infallible> {
        self.store = Some(store);
        self.cursor = seq;
        Ok(())
    }
    fn reset(&mut self, store: StoreId) -> Result<(), Infallible> {
        self.store = Some(store);
        self.cursor = 0;
        self.known.clear();
        self.unacked = self.docs.keys().copied().collect();
        Ok(())
    }
    fn refused(
        &mut self,
        _: DocId,
        _: ErrorCode,
        _: Option<&str>,
        _: &str,
    ) -> Result<(), Infallible> {
        self.refusals += 1;
        Ok(())
    }
    fn erase(&mut self, id: DocId) -> Result<(), Infallible> {
        self.docs.remove(&id);
        self.known.remove(&id);
        self.unacked.remove(&id);
        Ok(())
    }
}

struct Tablet {
    replica: MemReplica,
    /// Every change this tablet authored: all must end up everywhere.
    authored: Vec<(DocId, ChangeHash)>,
    actor: u8,
}

struct Conn {
    tablet: usize,
    server: ServerSession,
    client: ClientDriver,
    up: VecDeque<Vec<u8>>,
    down: VecDeque<Vec<u8>>,
}

// --------------------------------------------------------------- the world

struct World {
    rng: StdRng,
    server: SimServer,
    tablets: Vec<Tablet>,
    conns: Vec<Conn>,
    next_doc: u8,
    faults: bool,
    injected: Injected,
}

/// How many faults a run injected, so the test can show it tested them.
#[derive(Debug, Default, Clone, Copy)]
struct Injected {
    drops: usize,
    swaps: usize,
    duplicates: usize,
    restarts: usize,
}

impl World {
    fn new(seed: u64, tablets: usize) -> Self {
        World {
            rng: StdRng::seed_from_u64(seed),
            server: SimServer::default(),
            tablets: (0..tablets)
                .map(|i| Tablet {
                    replica: MemReplica::default(),
                    authored: Vec::new(),
                    actor: i as u8 + 1,
                })
                .collect(),
            conns: Vec::new(),
            next_doc: 0,
            faults: true,
            injected: Injected::default(),
        }
    }

    fn edit(&mut self, t: usize) {
        let tablet = &mut self.tablets[t];
        let existing: Vec<DocId> = tablet.replica.docs.keys().copied().collect();
        let new_doc = existing.is_empty() || self.rng.random_bool(0.2);
        let (id, mut doc) = if new_doc {
            self.next_doc += 1;
            let id = DocId::from_bytes([self.next_doc; 16]);
            let mut doc = Automerge::new();
            let mut tx = doc.transaction();
            tx.put_object(ROOT, "notes", ObjType::Text).unwrap();
            tx.put(ROOT, "title", format!("doc {}", self.next_doc))
                .unwrap();
            tx.commit();
            (id, doc)
        } else {
            let id = existing[self.rng.random_range(0..existing.len())];
            (id, tablet.replica.doc(id).unwrap().unwrap())
        };
        doc.set_actor(automerge::ActorId::from(vec![tablet.actor; 16]));
        let mut tx = doc.transaction();
        if self.rng.random_bool(0.5) {
            let field = ["place", "status", "owner"][self.rng.random_range(0..3)];
            tx.put(ROOT, field, self.rng.random_range(0..1000) as i64)
                .unwrap();
        } else if let Some((_, notes)) = tx.get(ROOT, "notes").unwrap() {
            let len = tx.length(&notes);
            let pos = self.rng.random_range(0..=len);
            tx.splice_text(&notes, pos, 0, &format!("[{}]", tablet.actor))
                .unwrap();
        }
        tx.commit();
        let mut doc_heads = doc.get_heads();
        for h in doc_heads.drain(..) {
            tablet.authored.push((id, h));
        }
        tablet.replica.put_doc(id, &doc).unwrap();
        tablet.replica.unacked.insert(id);
        for c in self.conns.iter_mut().filter(|c| c.tablet == t) {
            c.client.enqueue(id);
            let _ = c.client.pump(&mut tablet.replica);
        }
    }

    fn connect(&mut self, t: usize) {
        if self.conns.iter().any(|c| c.tablet == t) {
            return;
        }
        let client = ClientDriver::new(Limits::DEFAULT, &mut self.tablets[t].replica).unwrap();
        self.conns.push(Conn {
            tablet: t,
            server: ServerSession::new(Limits::DEFAULT),
            client,
            up: VecDeque::new(),
            down: VecDeque::new(),
        });
    }

    /// Moves queued frames into the wires, delivers one frame somewhere.
    fn step_network(&mut self) -> bool {
        for c in self.conns.iter_mut() {
            while let Some(f) = c.client.poll_transmit() {
                c.up.push_back(f);
            }
            while let Some(f) = c.server.poll_transmit() {
                c.down.push_back(f);
            }
        }
        let busy: Vec<usize> = (0..self.conns.len())
            .filter(|&i| !self.conns[i].up.is_empty() || !self.conns[i].down.is_empty())
            .collect();
        if busy.is_empty() {
            return false;
        }
        let i = busy[self.rng.random_range(0..busy.len())];
        let upward = if self.conns[i].up.is_empty() {
            false
        } else if self.conns[i].down.is_empty() {
            true
        } else {
            self.rng.random_bool(0.5)
        };
        let faults = self.faults;
        let roll: f64 = self.rng.random();
        let conn = &mut self.conns[i];
        let queue = if upward { &mut conn.up } else { &mut conn.down };
        if faults && roll < 0.02 {
            // A lost frame: the transport notices and the connection breaks.
            self.injected.drops += 1;
            self.conns.remove(i);
            return true;
        }
        if faults && roll < 0.05 && queue.len() > 1 {
            queue.swap(0, 1);
            self.injected.swaps += 1;
        }
        let Some(frame) = queue.pop_front() else {
            return true;
        };
        let copies = if faults && roll > 0.97 { 2 } else { 1 };
        self.injected.duplicates += copies - 1;
        for _ in 0..copies {
            let conn = &mut self.conns[i];
            if upward {
                self.server.handle(&mut conn.server, &frame);
            } else {
                let replica = &mut self.tablets[conn.tablet].replica;
                if conn.client.handle_frame(&frame, replica).is_err() {
                    conn.client = ClientDriver::new(Limits::DEFAULT, replica).unwrap();
                    self.conns.remove(i);
                    return true;
                }
            }
        }
        if self.conns[i].server.is_closed() || self.conns[i].client.is_closed() {
            self.conns.remove(i);
            return true;
        }
        // Live push: every established connection hears of new writes.
        for c in self.conns.iter_mut() {
            self.server.catch_up(&mut c.server);
        }
        true
    }

    fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            let t = self.rng.random_range(0..self.tablets.len());
            match self.rng.random_range(0..100) {
                0..=24 => self.edit(t),
                25..=34 => self.connect(t),
                35..=38 => self.conns.retain(|c| c.tablet != t),
                39 => {
                    // Server restart: every connection drops.
                    self.injected.restarts += 1;
                    self.conns.clear();
                }
                _ => {
                    self.step_network();
                }
            }
        }
    }

    /// Heals the network and lets everyone sync until nothing moves.
    fn settle(&mut self) {
        self.faults = false;
        for round in 0..4 {
            for t in 0..self.tablets.len() {
                self.connect(t);
            }
            let mut budget = 200_000;
            while budget > 0 && self.step_network() {
                budget -= 1;
            }
            assert!(budget > 0, "network never went quiet");
            let all_settled = self.conns.iter().all(|c| c.client.is_settled());
            self.conns.clear();
            if all_settled && round > 0 {
                return;
            }
        }
        panic!("the tablets never all settled on a healed network");
    }

    fn check(&mut self) {
        let server_docs: BTreeMap<DocId, Vec<ChangeHash>> = self
            .server
            .docs
            .iter()
            .map(|(id, d)| (*id, d.get_heads()))
            .collect();
        for (t, tablet) in self.tablets.iter_mut().enumerate() {
            assert!(
                tablet.replica.unacked.is_empty(),
                "tablet {t} still has unacknowledged documents"
            );
            let held: BTreeMap<DocId, Vec<ChangeHash>> = tablet
                .replica
                .docs
                .keys()
                .copied()
                .collect::<Vec<_>>()
                .into_iter()
                .map(|id| (id, tablet.replica.doc(id).unwrap().unwrap().get_heads()))
                .collect();
            for (id, heads) in &server_docs {
                assert_eq!(
                    held.get(id),
                    Some(heads),
                    "tablet {t} differs from the server on {id}"
                );
            }
            assert_eq!(
                held.len(),
                server_docs.len(),
                "tablet {t} holds other documents"
            );
        }
        let all_authored: Vec<(DocId, ChangeHash)> = self
            .tablets
            .iter()
            .flat_map(|t| t.authored.iter().copied())
            .collect();
        for (id, hash) in all_authored {
            let doc = &self.server.docs[&id];
            assert!(
                doc.get_change_by_hash(&hash).is_some(),
                "edit {hash} to {id} is missing on the server"
            );
        }
    }
}

#[test]
fn tablets_converge_despite_drops_duplicates_reordering_and_restarts() {
    let mut total = Injected::default();
    for seed in 0..24 {
        let mut world = World::new(seed, 4);
        world.run(600);
        total.drops += world.injected.drops;
        total.swaps += world.injected.swaps;
        total.duplicates += world.injected.duplicates;
        total.restarts += world.injected.restarts;
        world.settle();
        world.check();
    }
    assert!(
        total.drops > 0 && total.swaps > 0 && total.duplicates > 0 && total.restarts > 0,
        "the runs injected too few faults to mean anything: {total:?}"
    );
}

#[test]
fn a_replaced_server_store_is_healed_from_the_tablets() {
    let mut world = World::new(99, 3);
    world.faults = false;
    world.run(300);
    world.settle();
    world.check();
    // The server loses everything (a new store): tablets hold full replicas.
    world.server = SimServer {
        store: Some(StoreId::from_bytes([1; 16])),
        ..SimServer::default()
    };
    world.settle();
    world.check();
    assert!(!world.server.docs.is_empty());
}

#[test]
fn a_new_tablet_catches_up_in_batches_after_records_were_edited() {
    let mut world = World::new(11, 3);
    world.faults = false;
    for _ in 0..30 {
        world.edit(0);
    }
    world.settle();
    // Edit some records again, so the feed holds several writes for them.
    for _ in 0..15 {
        world.edit(1);
    }
    world.settle();
    world.check();
    let held = world.tablets[0].replica.docs.len();
    // A new tablet with nothing pulls everything in one connection, in
    // small catch-up batches, with no document needing repair.
    world.tablets[2].replica = MemReplica::default();
    world.connect(2);
    let mut budget = 100_000;
    while budget > 0 && world.step_network() {
        budget -= 1;
    }
    let c = world.conns.iter().find(|c| c.tablet == 2).unwrap();
    assert!(
        c.client.is_settled(),
        "the new tablet settled in one connection"
    );
    let counts = c.client.counts();
    assert_eq!(counts.repairs, 0);
    assert_eq!(counts.docs_received, held);
    world.conns.clear();
    world.check();
}

#[test]
fn reconnect_reconciles_only_what_changed() {
    let mut world = World::new(7, 2);
    world.faults = false;
    for _ in 0..60 {
        world.edit(0);
    }
    world.settle();
    world.check();
    let before: usize = world.tablets[1].replica.docs.len();
    assert!(before > 5);
    // Tablet 0 changes 3 documents while tablet 1 changes 2 others, offline.
    let ids: Vec<DocId> = world.tablets[0].replica.docs.keys().copied().collect();
    for (t, id) in [
        (0, ids[0]),
        (0, ids[1]),
        (0, ids[2]),
        (1, ids[3]),
        (1, ids[4]),
    ] {
        let tablet = &mut world.tablets[t];
        let mut doc = tablet.replica.doc(id).unwrap().unwrap();
        let mut tx = doc.transaction();
        tx.put(ROOT, "status", format!("changed by {t}")).unwrap();
        tx.commit();
        tablet.replica.put_doc(id, &doc).unwrap();
        tablet.replica.unacked.insert(id);
    }
    // Tablet 0 syncs first, then tablet 1, whose session must touch its 2
    // documents and tablet 0's 3, and nothing else.
    for t in [0, 1] {
        world.connect(t);
        while world.step_network() {}
        let c = world.conns.iter().find(|c| c.tablet == t).unwrap();
        assert!(c.client.is_settled());
        if t == 1 {
            let counts = c.client.counts();
            assert_eq!(counts.docs_sent, 2);
            assert_eq!(counts.docs_received, 3);
            assert_eq!(counts.docs_reconciled, 5);
        }
        world.conns.clear();
    }
    world.settle();
    world.check();
}
